package exec

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/caddy-esmtp/caddy-esmtp/internal/smtptest"
	"github.com/caddy-esmtp/caddy-esmtp/session"
)

// script writes a /bin/sh script into a fresh directory and returns its
// path.
func script(t *testing.T, body string) string {
	t.Helper()
	if runtime.GOOS == "windows" {
		t.Skip("needs /bin/sh")
	}
	if _, err := os.Stat("/bin/sh"); err != nil {
		t.Skip("needs /bin/sh")
	}
	p := filepath.Join(t.TempDir(), "deliver.sh")
	if err := os.WriteFile(p, []byte("#!/bin/sh\n"+body+"\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	return p
}

// observed returns a session logger and what it logged.
func observed() (*zap.Logger, *observer.ObservedLogs) {
	core, logs := observer.New(zapcore.InfoLevel)
	return zap.New(core), logs
}

func queueID(t *testing.T, reply string) string {
	t.Helper()
	f := strings.Fields(reply)
	if len(f) < 3 {
		t.Fatalf("no queue id in %q", reply)
	}
	return f[2]
}

var messages = map[string]string{
	"plain":                   "From: a@example.test\r\nTo: b@example.test\r\nSubject: hi\r\n\r\nHello.\r\n",
	"dots":                    "Subject: dots\r\n\r\n.\r\n..\r\n.leading dot\r\nend.\r\n",
	"folded header and 8 bit": "Subject: a\r\n folded\r\n\tfield\r\nX-8bit: \xc3\xa9t\xc3\xa9\r\n\r\nbody \xff\xfe\r\n",
	"no body":                 "Subject: only a header\r\n",
	"no header":               "just a body line, no header at all\r\nsecond\r\n",
	"big":                     "Subject: big\r\n\r\n" + strings.Repeat(strings.Repeat("0123456789", 99)+"\r\n", 300),
}

// TestStdinByteExact: the command reads the message as received, from
// the engine's spool in memory or in a file.
func TestStdinByteExact(t *testing.T) {
	sh := script(t, `cat > "$1"`)
	for _, toFile := range []bool{false, true} {
		for name, msg := range messages {
			t.Run(fmt.Sprintf("%s/spool-file=%v", name, toFile), func(t *testing.T) {
				out := filepath.Join(t.TempDir(), "out")
				e := provision(t, &Exec{Command: sh, Args: []string{out}})
				ts, spoolDir := serve(t, session.Config{}, toFile, e)
				c := ts.DialTCPHello()
				if r := smtptest.Mail(c, msg, "rcpt@example.test"); !strings.HasPrefix(r, "250 2.0.0 ") {
					t.Fatalf("end of data: %q", r)
				}
				got, err := os.ReadFile(out)
				if err != nil {
					t.Fatal(err)
				}
				if body := smtptest.SplitReceived(t, got); !bytes.Equal(body, []byte(msg)) {
					t.Errorf("stdin differs\n got: %q\nwant: %q", body, msg)
				}
				c.Cmd("QUIT", "221")
				ts.Close()
				smtptest.AssertNoSpool(t, spoolDir)
			})
		}
	}
}

func TestArgv(t *testing.T) {
	t.Setenv("EXEC_TEST_VAR", "from-env")
	sh := script(t, `out=$1; shift; for a in "$@"; do printf '%s\n' "$a"; done > "$out"`)
	out := filepath.Join(t.TempDir(), "argv")
	e := provision(t, &Exec{Command: sh, Args: []string{
		out, "-f", "{esmtp.from}", "--rcpt={esmtp.rcpt}", "id={esmtp.queue_id}", "{esmtp.remote_ip}",
		"{esmtp.helo}", "[{esmtp.auth}]", "[{esmtp.auth_user}]", "{esmtp.tls}", "{env.EXEC_TEST_VAR}",
		"{esmtp.rcpt.local} at {esmtp.rcpt.domain}", "--", "{esmtp.rcpt}",
	}})
	ts := smtptest.ServeConfig(t, session.Config{}, e)
	c := ts.DialTCPHello()
	// Envelope values that look like placeholders stay as they are.
	c.Cmd("MAIL FROM:<{esmtp.helo}@example.test>", "250")
	c.Cmd("RCPT TO:<-one@Example.TEST>", "250")
	c.Cmd("RCPT TO:<{env.EXEC_TEST_VAR}@example.test>", "250")
	c.Cmd("DATA", "354")
	c.Send("Subject: x\r\n\r\nx\r\n.\r\n")
	id := queueID(t, c.Expect("250 2.0.0 "))
	got, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	want := strings.Join([]string{
		"-f", "{esmtp.helo}@example.test",
		"--rcpt=-one@Example.TEST", "--rcpt={env.EXEC_TEST_VAR}@example.test",
		"id=" + id, "127.0.0.1", smtptest.Helo, "[]", "[]", "false", "from-env",
		"-one at example.test", "{env.EXEC_TEST_VAR} at example.test", "--",
		"-one@Example.TEST", "{env.EXEC_TEST_VAR}@example.test",
	}, "\n") + "\n"
	if string(got) != want {
		t.Errorf("argv\n got: %q\nwant: %q", got, want)
	}

	// The null sender is an empty argument.
	c.Cmd("MAIL FROM:<>", "250")
	c.Cmd("RCPT TO:<postmaster@example.test>", "250")
	c.Cmd("DATA", "354")
	c.Send("Subject: x\r\n\r\nx\r\n.\r\n")
	id = queueID(t, c.Expect("250 2.0.0 "))
	got, _ = os.ReadFile(out)
	want = strings.Join([]string{
		"-f", "", "--rcpt=postmaster@example.test", "id=" + id, "127.0.0.1", smtptest.Helo, "[]", "[]", "false", "from-env",
		"postmaster at example.test", "--", "postmaster@example.test",
	}, "\n") + "\n"
	if string(got) != want {
		t.Errorf("argv\n got: %q\nwant: %q", got, want)
	}
}

func TestExitStatus(t *testing.T) {
	big := strings.Repeat("e", 5000)
	type exitCase struct {
		name, body, reply string
		exit              int // in the log line; -1: none
		stderr            string
	}
	cases := []exitCase{
		{"zero", `cat >/dev/null; exit 0`, "250 2.0.0 ", 0, ""},
		{"zero with stderr", `echo "delivered to box" >&2; exit 0`, "250 2.0.0 ", 0, "delivered to box\n"},
		{"tempfail", `echo "mailbox locked" >&2; exit 75`, "451 4.3.0 Delivery failed: deliver.sh: temporary failure (EX_TEMPFAIL); try again later", 75, "mailbox locked\n"},
		// A crash is no verdict on the message: never a bounce.
		{"one", `echo "Traceback: KeyError" >&2; exit 1`, "451 4.3.0 Delivery failed: deliver.sh exited with status 1; try again later", 1, "Traceback: KeyError\n"},
		{"not executable", `exit 126`, "451 4.3.0 Delivery failed: deliver.sh exited with status 126; try again later", 126, ""},
		{"signal", `kill -9 $$`, "451 4.3.0 Delivery failed; try again later", -1, ""},
		{"long stderr", `printf '%s' "` + big + `" >&2; exit 2`, "451 4.3.0 ", 2, big[:4096]},
	}
	// sysexits.h, classes and enhanced codes as Postfix's sys_exits.c.
	for _, x := range []struct {
		exit  int
		reply string
	}{
		{63, "451 4.3.0 Delivery failed: deliver.sh exited with status 63; try again later"},
		{64, "554 5.3.0 Rejected by deliver.sh: command line usage error (EX_USAGE)"},
		{65, "554 5.6.0 Rejected by deliver.sh: data format error (EX_DATAERR)"},
		{66, "554 5.3.0 Rejected by deliver.sh: cannot open input (EX_NOINPUT)"},
		{67, "550 5.1.1 Rejected by deliver.sh: user unknown (EX_NOUSER)"},
		{68, "550 5.1.2 Rejected by deliver.sh: host unknown (EX_NOHOST)"},
		{69, "554 5.3.0 Rejected by deliver.sh: service unavailable (EX_UNAVAILABLE)"},
		{70, "554 5.3.0 Rejected by deliver.sh: internal software error (EX_SOFTWARE)"},
		{71, "451 4.3.0 Delivery failed: deliver.sh: system error (EX_OSERR); try again later"},
		{72, "554 5.3.0 Rejected by deliver.sh: system file missing (EX_OSFILE)"},
		{73, "550 5.2.0 Rejected by deliver.sh: cannot create output file (EX_CANTCREAT)"},
		{74, "554 5.3.0 Rejected by deliver.sh: input/output error (EX_IOERR)"},
		{76, "554 5.5.0 Rejected by deliver.sh: remote protocol error (EX_PROTOCOL)"},
		{77, "550 5.7.0 Rejected by deliver.sh: permission denied (EX_NOPERM)"},
		{78, "554 5.3.5 Rejected by deliver.sh: configuration error (EX_CONFIG)"},
		{79, "451 4.3.0 Delivery failed: deliver.sh exited with status 79; try again later"},
		{255, "451 4.3.0 Delivery failed: deliver.sh exited with status 255; try again later"},
	} {
		cases = append(cases, exitCase{fmt.Sprint("exit ", x.exit), fmt.Sprint("exit ", x.exit), x.reply, x.exit, ""})
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			e := provision(t, &Exec{Command: script(t, tc.body)})
			log, logs := observed()
			ts, spoolDir := serve(t, session.Config{Logger: log}, true, e)
			c := ts.DialTCPHello()
			c.Cmd("MAIL FROM:<a@example.test>", "250")
			c.Cmd("RCPT TO:<b@example.test>", "250")
			c.Cmd("DATA", "354")
			c.Send("Subject: x\r\n\r\nx\r\n.\r\n")
			r := c.ReadReply().Last()
			// A reply ending in a space is a prefix, any other is exact.
			if r != tc.reply && !(strings.HasSuffix(tc.reply, " ") && strings.HasPrefix(r, tc.reply)) {
				t.Fatalf("got %q, want %q", r, tc.reply)
			}
			// The queue id of a refused message is in the transaction's
			// log line only: find the one line.
			c.Cmd("QUIT", "221")
			ts.Close()
			lines := logs.FilterMessage("message").All()
			if len(lines) != 1 {
				t.Fatalf("%d message log lines", len(lines))
			}
			f := lines[0].ContextMap()
			if tc.exit >= 0 {
				if f["exec_exit"] != int64(tc.exit) {
					t.Errorf("exec_exit = %v, want %d", f["exec_exit"], tc.exit)
				}
			} else if _, ok := f["exec_exit"]; ok || f["exec_error"] == nil {
				t.Errorf("exec_exit = %v, exec_error = %v; want no exit status and an error", f["exec_exit"], f["exec_error"])
			}
			if got, _ := f["exec_stderr"].(string); got != tc.stderr {
				t.Errorf("exec_stderr = %q, want %q", got, tc.stderr)
			}
			smtptest.AssertNoSpool(t, spoolDir)
		})
	}
}

// TestTimeoutKills: a command that outlives its timeout is killed with the
// children it started, and the client gets 451.
func TestTimeoutKills(t *testing.T) {
	pidFile := filepath.Join(t.TempDir(), "pid")
	sh := script(t, `sleep 3600 & echo $! > "$1"; wait`)
	e := provision(t, &Exec{Command: sh, Args: []string{pidFile}, Timeout: caddy.Duration(200 * time.Millisecond)})
	log, logs := observed()
	ts, spoolDir := serve(t, session.Config{Logger: log}, true, e)
	c := ts.DialTCPHello()
	if r := smtptest.Mail(c, messages["plain"], "rcpt@example.test"); !strings.HasPrefix(r, "451 4.3.0 ") {
		t.Fatalf("end of data: %q", r)
	}
	c.Cmd("QUIT", "221")
	ts.Close()
	f := logs.FilterMessage("message").All()[0].ContextMap()
	if msg, _ := f["exec_error"].(string); !strings.Contains(msg, "killed after") {
		t.Errorf("exec_error = %q", msg)
	}
	smtptest.AssertNoSpool(t, spoolDir)
	if runtime.GOOS == "linux" {
		pid, err := os.ReadFile(pidFile)
		if err != nil {
			t.Fatal(err)
		}
		// The grandchild is gone (or a zombie, reaped by init). SIGKILL
		// to its group was sent; under load it may take a moment to land.
		running := func() (string, bool) {
			st, err := os.ReadFile("/proc/" + strings.TrimSpace(string(pid)) + "/stat")
			fields := strings.Fields(string(st))
			return string(st), err == nil && len(fields) > 2 && fields[2] != "Z" && fields[2] != "X"
		}
		for end := time.Now().Add(10 * time.Second); ; time.Sleep(20 * time.Millisecond) {
			st, ok := running()
			if !ok {
				break
			}
			if time.Now().After(end) {
				t.Errorf("the command's child %s still runs 10 s after the kill: %s", pid, st)
				break
			}
		}
	}
}

// TestBoundedByHandlerTimeout: the run is cut to fit the engine's
// handler_timeout, whatever timeout says.
func TestBoundedByHandlerTimeout(t *testing.T) {
	sh := script(t, `exec sleep 3600`)
	e := provision(t, &Exec{Command: sh, Timeout: caddy.Duration(time.Hour)})
	log, logs := observed()
	ts := smtptest.ServeConfig(t, session.Config{HandlerTimeout: time.Second, Logger: log}, e)
	c := ts.DialTCPHello()
	if r := smtptest.Mail(c, messages["plain"], "rcpt@example.test"); !strings.HasPrefix(r, "451 4.3.0 ") {
		t.Fatalf("end of data: %q", r)
	}
	c.Cmd("QUIT", "221")
	ts.Close()
	f := logs.FilterMessage("message").All()[0].ContextMap()
	if msg, _ := f["exec_error"].(string); !strings.Contains(msg, "killed after") {
		t.Errorf("exec_error = %q", msg)
	}
}

func TestCommandGone(t *testing.T) {
	sh := script(t, `exit 0`)
	e := provision(t, &Exec{Command: sh})
	os.Remove(sh)
	ts, spoolDir := serve(t, session.Config{}, true, e)
	c := ts.DialTCPHello()
	if r := smtptest.Mail(c, messages["plain"], "rcpt@example.test"); !strings.HasPrefix(r, "451 4.3.0 ") {
		t.Fatalf("end of data: %q", r)
	}
	ts.Close()
	smtptest.AssertNoSpool(t, spoolDir)
}

// TestTwoInstances: two exec sub-handlers in one list both deliver, each
// reading the one spool of the message.
func TestTwoInstances(t *testing.T) {
	sh := script(t, `cat > "$1"`)
	dir := t.TempDir()
	e1 := provision(t, &Exec{Command: sh, Args: []string{filepath.Join(dir, "one")}})
	e2 := provision(t, &Exec{Command: sh, Args: []string{filepath.Join(dir, "two")}})
	ts := smtptest.ServeConfig(t, session.Config{}, e1, e2)
	c := ts.DialTCPHello()
	if r := smtptest.Mail(c, messages["dots"], "rcpt@example.test"); !strings.HasPrefix(r, "250 ") {
		t.Fatalf("end of data: %q", r)
	}
	for _, n := range []string{"one", "two"} {
		got, err := os.ReadFile(filepath.Join(dir, n))
		if err != nil {
			t.Fatal(err)
		}
		if body := smtptest.SplitReceived(t, got); string(body) != messages["dots"] {
			t.Errorf("%s: %q", n, body)
		}
	}
}

// TestAbortedNeverRuns: a message refused while streaming (too big), one
// refused by a judge and a client gone mid-DATA never run the command,
// and leave no spool file, open or not.
func TestAbortedNeverRuns(t *testing.T) {
	marker := filepath.Join(t.TempDir(), "ran")
	e := provision(t, &Exec{Command: script(t, `touch "$1"`), Args: []string{marker}})
	started := make(chan struct{})
	ts, spoolDir := serve(t, session.Config{MaxMessageSize: 10000}, true, smtptest.Failing{}, e, smtptest.EOHSignal{Ch: started})
	c := ts.DialTCPHello()
	if r := smtptest.Mail(c, messages["big"], "rcpt@example.test"); !strings.HasPrefix(r, "552 ") {
		t.Fatalf("too big: %q", r)
	}
	if r := smtptest.Mail(c, "Subject: fail\r\n\r\nx\r\n", "rcpt@example.test"); !strings.HasPrefix(r, "550 5.7.1 ") {
		t.Fatalf("refused by a judge: %q", r)
	}
	c.Cmd("MAIL FROM:<a@example.test>", "250")
	c.Cmd("RCPT TO:<b@example.test>", "250")
	c.Cmd("DATA", "354")
	c.Send("Subject: x\r\n\r\n" + strings.Repeat("line\r\n", 500))
	<-started // the engine's spool file exists
	c.Conn.Close()
	ts.Close()
	if _, err := os.Stat(marker); err == nil {
		t.Errorf("the command ran for an aborted message")
	}
	smtptest.AssertNoSpool(t, spoolDir)
}

func TestProvisionErrors(t *testing.T) {
	sh := script(t, `exit 0`)
	cases := []struct {
		e    *Exec
		want string
	}{
		{&Exec{}, "command is required"},
		{&Exec{Command: filepath.Join(t.TempDir(), "missing")}, "command:"},
		{&Exec{Command: "no-such-command-esmtp-test"}, "command:"},
		{&Exec{Command: t.TempDir()}, "command:"},
		{&Exec{Command: sh, Args: []string{"x", "{esmtp.to}"}}, "args[1]: unknown placeholder {esmtp.to}"},
		{&Exec{Command: sh, Timeout: -1}, "timeout:"},
	}
	for _, tc := range cases {
		err := smtptest.Provision(tc.e)
		if err == nil || !strings.Contains(err.Error(), "exec: "+tc.want) {
			t.Errorf("%+v: got %v, want an error naming %q", tc.e, err, tc.want)
		}
	}
	// temp_dir is ignored, whatever it names: old configurations load.
	if err := smtptest.Provision(&Exec{Command: sh, TempDir: filepath.Join(t.TempDir(), "missing")}); err != nil {
		t.Errorf("temp_dir: %v", err)
	}
}

func TestUnmarshalCaddyfile(t *testing.T) {
	cases := map[string]string{
		`exec /usr/sbin/sendmail -i -f {esmtp.from} -- {esmtp.rcpt}`: `{"command":"/usr/sbin/sendmail","args":["-i","-f","{esmtp.from}","--","{esmtp.rcpt}"]}`,
		"exec /bin/deliver {\n timeout 5s\n temp_dir /var/spool\n}":  `{"command":"/bin/deliver","timeout":5000000000,"temp_dir":"/var/spool"}`,
		"exec {\n command deliver {esmtp.queue_id}\n}":               `{"command":"deliver","args":["{esmtp.queue_id}"]}`,
	}
	for in, want := range cases {
		var e Exec
		if err := e.UnmarshalCaddyfile(caddyfile.NewTestDispenser(in)); err != nil {
			t.Errorf("%q: %v", in, err)
			continue
		}
		got, _ := json.Marshal(&e)
		if string(got) != want {
			t.Errorf("%q:\n got  %s\n want %s", in, got, want)
		}
	}
	for _, bad := range []string{
		"exec",
		"exec {\n timeout 5s\n}",
		"exec /bin/x {\n command /bin/y\n}",
		"exec /bin/x {\n timeout never\n}",
		"exec /bin/x {\n bogus\n}",
	} {
		var e Exec
		if err := e.UnmarshalCaddyfile(caddyfile.NewTestDispenser(bad)); err == nil {
			t.Errorf("%q: no error", bad)
		}
	}
}
