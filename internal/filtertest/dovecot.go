package filtertest

import (
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
)

// DovecotUnknownUser is the one user at example.test that the test
// Dovecot does not know: its userdb lookup fails, so its LMTP server
// refuses the recipient with 550 5.1.1. Every other user is known.
const DovecotUnknownUser = "unknown@example.test"

// Dovecot is a running Dovecot (Debian package dovecot-lmtpd, which pulls
// dovecot-core) that speaks only LMTP, private to the test binary: see
// StartDovecot.
type Dovecot struct {
	// Socket is the path of its LMTP unix socket.
	Socket string
	// Addr is the address of its LMTP TCP listener: 127.0.0.1:<port>.
	Addr string
	// Dir is its private directory: configuration, base_dir, state_dir
	// and the users' mail (see Maildir).
	Dir string
	// Version is what `dovecot --version` says.
	Version string

	proc *Process
	// life is the write end of the watchdog's standard input (see
	// rspamdWatchdog): open until the test binary exits.
	life *os.File
}

// Output is what Dovecot logged so far (its log goes to its standard
// error: connections, userdb failures, saved mail).
func (d *Dovecot) Output() string { return d.proc.Output() }

// Maildir is the Maildir of user ("alice@example.test") in Dovecot's
// mail directory; Dovecot makes it at the user's first delivery.
func (d *Dovecot) Maildir(user string) string {
	return filepath.Join(d.Dir, "mail", user, "Maildir")
}

var (
	dovecotOnce   sync.Once
	dovecotShared *Dovecot
	dovecotFailed bool
)

// StartDovecot returns the test binary's Dovecot, starting it on the
// first call (at most once per test package; its tests share it, and it
// is stopped and its directory removed when the test binary exits).
//
// Its configuration is its own (dovecot -F -c <dir>/dovecot.conf; nothing
// of /etc/dovecot is read): protocols = lmtp, an LMTP unix listener in its
// directory (Socket) and an inet listener on a free loopback port (Addr),
// ssl = no, and
//
//   - a static userdb that knows every user (allow_all_users), after a
//     passwd-file userdb that fails the lookup of DovecotUnknownUser alone;
//     usernames are the whole address (user@example.test);
//   - mail_location = maildir:<dir>/mail/%u/Maildir (Dovecot 2.3), saved
//     with CRLF line ends (mail_save_crlf), so that a stored message is
//     the bytes sent, after the Return-Path: field Dovecot puts first;
//     no Received: nor Delivered-To: field of its own
//     (lmtp_add_received_header = no, lmtp_hdr_delivery_address = none),
//     and lmtp_save_to_detail_mailbox = no.
//
// Run as root, Dovecot drops to its users (default_internal_user dovecot,
// default_login_user dovenull) and stores mail as nobody; otherwise it
// runs, and stores mail, as the current user. When Dovecot is not
// installed the test is skipped, or fails under ESMTP_REQUIRE_CLIENTS=1.
func StartDovecot(tb testing.TB) *Dovecot {
	tb.Helper()
	bin := Program(tb, "dovecot", "dovecot-lmtpd")
	if _, err := os.Stat("/usr/lib/dovecot/lmtp"); err != nil {
		Missing(tb, "Dovecot's LMTP server /usr/lib/dovecot/lmtp not installed (Debian package dovecot-lmtpd)")
	}
	dovecotOnce.Do(func() {
		dovecotFailed = true // until it started: Start ends the test on failure
		dovecotShared = startDovecot(lastingTB{tb}, bin)
		dovecotFailed = false
	})
	if dovecotFailed {
		tb.Fatal("Dovecot did not start (see the first test that asked for it)")
	}
	return dovecotShared
}

func startDovecot(tb testing.TB, bin string) *Dovecot {
	self := AccountFor(tb, "root")
	mailUser := AccountFor(tb, "nobody")
	internal, login := "dovecot", "dovenull"
	if !mailUser.Switches() {
		internal, login = self.Name, self.Name
	}
	dir := Dir(tb, self)
	d := &Dovecot{
		Socket: filepath.Join(dir, "lmtp"),
		Addr:   FreePort(tb),
		Dir:    dir,
	}
	if out, err := Command(self, bin, "--version").Output(); err == nil {
		d.Version = strings.TrimSpace(string(out))
	}
	mail := filepath.Join(dir, "mail")
	if err := os.Mkdir(mail, 0o755); err != nil {
		tb.Fatal(err)
	}
	Own(tb, mailUser, mail)
	refused := filepath.Join(dir, "refused")
	if err := os.WriteFile(refused, []byte(DovecotUnknownUser+"::"+strconv.Itoa(mailUser.UID)+":"+strconv.Itoa(mailUser.GID)+"::"+dir+"::\n"), 0o644); err != nil {
		tb.Fatal(err)
	}
	_, port, _ := net.SplitHostPort(d.Addr)
	conf := filepath.Join(dir, "dovecot.conf")
	text := fmt.Sprintf(dovecotConf, dir, internal, login, mail, refused, mailUser.UID, mailUser.GID, d.Socket, port)
	if err := os.WriteFile(conf, []byte(text), 0o644); err != nil {
		tb.Fatal(err)
	}
	cmd := Command(self, "/bin/sh", "-c", rspamdWatchdog, "dovecot-watchdog", dir, bin, "-F", "-c", conf)
	pr, pw, err := os.Pipe()
	if err != nil {
		tb.Fatal(err)
	}
	cmd.Stdin = pr
	d.life = pw
	d.proc = Start(tb, cmd, func() error {
		if err := Dials("unix", d.Socket)(); err != nil {
			return err
		}
		return Dials("tcp", d.Addr)()
	})
	pr.Close()
	tb.Logf("Dovecot %s started: LMTP on %s and %s", d.Version, d.Socket, d.Addr)
	return d
}

// dovecotConf is the test Dovecot's configuration: its directory,
// internal and login users, mail directory, the passwd-file of the
// refused user, the uid and gid mail is stored as, the LMTP socket and
// the LMTP port.
const dovecotConf = `# caddy-esmtp test Dovecot (internal/filtertest/dovecot.go)
base_dir = %[1]s/run
state_dir = %[1]s/state
log_path = /dev/stderr
info_log_path = /dev/stderr
protocols = lmtp
listen = 127.0.0.1
ssl = no
default_internal_user = %[2]s
default_login_user = %[3]s
first_valid_uid = 1
mail_location = maildir:%[4]s/%%u/Maildir
mail_save_crlf = yes
lmtp_save_to_detail_mailbox = no
lmtp_add_received_header = no
lmtp_hdr_delivery_address = none
auth_mechanisms = plain
passdb {
  driver = static
  args = nopassword=y
}
userdb {
  driver = passwd-file
  args = %[5]s
  result_success = return-fail
  result_failure = continue
}
userdb {
  driver = static
  args = uid=%[6]d gid=%[7]d home=%[4]s/%%u allow_all_users=yes
}
service lmtp {
  unix_listener %[8]s {
    mode = 0666
  }
  inet_listener lmtp {
    address = 127.0.0.1
    port = %[9]s
  }
}
`
