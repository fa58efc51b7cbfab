package filtertest

import (
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"
)

// GTUBE is the test string that makes rspamd answer "reject" (its GTUBE
// symbol, with the SMTP message "Gtube pattern"), whoever sends it:
// rspamd skips every other check for it. The launcher enables rspamd's
// other test patterns too (enable_test_patterns): GTUBE with its first
// letter X replaced by Y asks for "add header", by Z for "rewrite
// subject", and by A for "no action".
const GTUBE = "XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X"

// Rspamd is a running rspamd (the Debian package's 3.x), private to the
// test binary: see StartRspamd.
type Rspamd struct {
	// URL is the base URL of the normal worker, which speaks rspamd's
	// HTTP protocol (POST /checkv2): http://127.0.0.1:<port>.
	URL string
	// Milter is the address (127.0.0.1:<port>) of the proxy worker in
	// milter mode with self_scan: a milter client talks to rspamd there.
	Milter string
	// SpamHeader is the field the proxy worker sets to "Yes" for the
	// "add header" action (its spam_header setting): "X-Spam".
	SpamHeader string
	// RejectMessage is the text the proxy worker rejects with when
	// rspamd gives no SMTP message (its reject_message setting).
	RejectMessage string
	// Dir is rspamd's private directory (configuration, database, run
	// directory).
	Dir string
	// Startup is how long rspamd took to start (until both workers
	// accepted connections).
	Startup time.Duration

	proc *Process
	// life is the write end of the pipe that is the watchdog's standard
	// input: kept open (reachable from rspamdShared, so never finalized)
	// until the test binary exits, whichever way it exits; then the
	// watchdog stops rspamd.
	life *os.File
}

// Output is what rspamd logged so far (it logs to its console at
// "notice" level, with the scans' summaries at "info" when debugging is
// not needed: see rspamdConf).
func (r *Rspamd) Output() string { return r.proc.Output() }

var (
	rspamdOnce   sync.Once
	rspamdShared *Rspamd
	rspamdFailed bool
)

// StartRspamd returns the test binary's rspamd, starting it on the first
// call (loading its configuration takes several seconds, so it is started
// at most once per test package and shared by its tests; it is stopped,
// and its directory removed, when the test binary exits).
//
// The configuration is rspamd's own (/etc/rspamd/common.conf and
// options.inc), with local overrides in its private directory: its
// database, run directory and hyperscan cache there (hyperscan off, so it
// starts faster); logging to the console; no controller nor fuzzy worker;
// no network checks (fuzzy_check, rbl, spf, dkim, dmarc, ...) and a DNS
// resolver that answers nothing, so results do not depend on the
// Internet; redis absent; GTUBE and its test variants enabled (see GTUBE)
// and no local networks, so that a message from 127.0.0.1 is scanned like
// any other; and the milter_headers module asking for X-Spamd-Result,
// X-Rspamd-Queue-Id, X-Rspamd-Server, X-Rspamd-Action, X-Spam-Status and
// Authentication-Results on every message (extended_spam_headers,
// skip_local and skip_authenticated off).
//
// Run as root, rspamd runs as _rspamd (rspamd -u _rspamd -g _rspamd);
// otherwise as the current user. When rspamd is not installed the test is
// skipped, or fails under ESMTP_REQUIRE_CLIENTS=1.
func StartRspamd(tb testing.TB) *Rspamd {
	tb.Helper()
	bin := Program(tb, "rspamd", "rspamd")
	rspamdOnce.Do(func() {
		rspamdFailed = true // until it started: Start ends the test on failure
		rspamdShared = startRspamd(lastingTB{tb}, bin)
		rspamdFailed = false
	})
	if rspamdFailed {
		tb.Fatal("rspamd did not start (see the first test that asked for it)")
	}
	return rspamdShared
}

// lastingTB is the first test's testing.TB for what must outlive it: the
// cleanups it is given are dropped (the watchdog stops rspamd and removes
// its directory when the test binary exits).
type lastingTB struct{ testing.TB }

func (lastingTB) Cleanup(func()) {}

// rspamdWatchdog runs rspamd (the arguments after the directory) in the
// foreground, removes the directory when it ends, and stops it when its
// standard input reaches end of file: when the test binary that holds the
// pipe's other end exits, even killed. (An asynchronous list's standard
// input is /dev/null unless redirected: hence descriptor 3.)
const rspamdWatchdog = `dir=$1; shift
trap 'rm -rf "$dir"' EXIT
trap 'exit 143' TERM INT HUP
exec 3<&0
( read _ <&3; kill -TERM 0 ) &
"$@" 3<&- </dev/null
`

func startRspamd(tb testing.TB, bin string) *Rspamd {
	acct := AccountFor(tb, "_rspamd")
	dir := Dir(tb, acct)
	r := &Rspamd{
		URL:           "http://" + FreePort(tb),
		Milter:        FreePort(tb),
		SpamHeader:    rspamdSpamHeader,
		RejectMessage: rspamdRejectMessage,
		Dir:           dir,
	}
	cfg := NewRspamdConfig(dir, r.URL[len("http://"):], r.Milter)
	for _, d := range cfg.Dirs {
		if err := os.Mkdir(d, 0o755); err != nil {
			tb.Fatal(err)
		}
		Own(tb, acct, d)
	}
	for name, text := range cfg.Files {
		if err := os.WriteFile(name, []byte(text), 0o644); err != nil {
			tb.Fatal(err)
		}
		Own(tb, acct, name)
	}
	args := append([]string{"-f"}, cfg.Args...)
	self := acct
	if acct.Switches() {
		// rspamd switches itself after reading its configuration; the
		// watchdog stays root so that it can remove the directory.
		args = append(args, "-u", acct.Name, "-g", acct.Name)
		self = Account{UID: os.Geteuid(), GID: os.Getegid()}
	}
	cmd := Command(self, "/bin/sh", append([]string{"-c", rspamdWatchdog, "rspamd-watchdog", dir, bin}, args...)...)
	pr, pw, err := os.Pipe()
	if err != nil {
		tb.Fatal(err)
	}
	cmd.Stdin = pr
	r.life = pw
	start := time.Now()
	r.proc = Start(tb, cmd, func() error {
		if err := Dials("tcp", r.Milter)(); err != nil {
			return err
		}
		resp, err := http.Get(r.URL + "/ping")
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("GET /ping: %s", resp.Status)
		}
		return nil
	})
	pr.Close()
	r.Startup = time.Since(start)
	tb.Logf("rspamd started in %s: %s, milter %s", r.Startup.Round(time.Millisecond), r.URL, r.Milter)
	return r
}

// RspamdConfig is a private rspamd configuration (see StartRspamd): the
// directories and files to make, and rspamd's arguments (after the
// program's name; add -f to keep it in the foreground). The benchmark
// harness starts the same rspamd as the tests with it.
type RspamdConfig struct {
	// Dirs are the directories to make (mode 0755, owned by rspamd's
	// user), in order.
	Dirs []string
	// Files are the files to write (mode 0644), by path.
	Files map[string]string
	// Args are rspamd's arguments: the configuration and directories.
	Args []string
}

// NewRspamdConfig returns the configuration of an rspamd in dir whose
// normal worker listens on normal and whose proxy worker (milter mode,
// self_scan) listens on milter (host:port each).
func NewRspamdConfig(dir, normal, milter string) RspamdConfig {
	local := filepath.Join(dir, "local.d")
	c := RspamdConfig{
		Dirs: []string{local, filepath.Join(dir, "db"), filepath.Join(dir, "run")},
		Files: map[string]string{
			filepath.Join(dir, "rspamd.conf"):           fmt.Sprintf(rspamdConf, normal, milter, rspamdSpamHeader, rspamdRejectMessage),
			filepath.Join(local, "options.inc"):         rspamdOptions,
			filepath.Join(local, "milter_headers.conf"): rspamdMilterHeaders,
		},
		Args: []string{"-c", filepath.Join(dir, "rspamd.conf"),
			"--var=LOCAL_CONFDIR=" + dir,
			"--var=DBDIR=" + filepath.Join(dir, "db"),
			"--var=RUNDIR=" + filepath.Join(dir, "run"),
			"--var=LOGDIR=" + dir,
		},
	}
	for _, m := range rspamdDisabled {
		c.Files[filepath.Join(local, m+".conf")] = "enabled = false;\n"
	}
	return c
}

// The proxy worker's spam_header and reject_message.
const (
	rspamdSpamHeader    = "X-Spam"
	rspamdRejectMessage = "Spam message rejected"
)

// rspamdConf is the top-level configuration: rspamd's common
// configuration, its options with the local ones merged in, console
// logging, and the two workers (normal and proxy) on the given addresses.
// Arguments: normal worker address, milter address, spam_header,
// reject_message.
const rspamdConf = `.include "$CONFDIR/common.conf"

options {
	pidfile = "$RUNDIR/rspamd.pid";
	.include "$CONFDIR/options.inc"
	.include(try=true; priority=1,duplicate=merge) "$LOCAL_CONFDIR/local.d/options.inc"
}

logging {
	type = "console";
	level = "notice";
	color = false;
}

worker "normal" {
	bind_socket = "%s";
	count = 1;
	.include "$CONFDIR/worker-normal.inc"
}

worker "rspamd_proxy" {
	bind_socket = "%s";
	count = 1;
	milter = yes;
	timeout = 120s;
	# Scan in the proxy itself: without a default upstream the proxy
	# aborts at the first message ("cannot find upstream for default").
	upstream "local" {
		default = yes;
		self_scan = yes;
	}
	discard_on_reject = false;
	quarantine_on_reject = false;
	spam_header = "%s";
	reject_message = "%s";
}
`

// rspamdOptions are the local options (merged into options {}).
const rspamdOptions = `disable_hyperscan = true;
enable_test_patterns = true;
local_addrs = [];
dns {
	nameserver = ["127.0.0.1:9"];
	timeout = 0.1s;
	retransmits = 1;
}
`

// rspamdMilterHeaders makes rspamd ask for its headers on every message.
const rspamdMilterHeaders = `use = ["x-spamd-result", "x-rspamd-queue-id", "x-rspamd-server", "x-rspamd-action", "x-spam-status", "authentication-results"];
extended_spam_headers = true;
skip_local = false;
skip_authenticated = false;
`

// rspamdDisabled are the modules that would reach the network (DNS,
// HTTP, redis) or write outside the directory: disabled, so that scans
// are quick and their results the same everywhere.
var rspamdDisabled = []string{
	"antivirus", "arc", "asn", "bimi", "clickhouse", "dcc", "dkim",
	"dkim_signing", "dmarc", "elastic", "emails", "external_services",
	"fuzzy_check", "greylist", "history_redis", "metric_exporter",
	"multimap", "mx_check", "neural", "p0f", "phishing", "ratelimit",
	"rbl", "replies", "reputation", "rspamd_update", "spamassassin",
	"spf", "surbl", "url_redirector", "whitelist",
}
