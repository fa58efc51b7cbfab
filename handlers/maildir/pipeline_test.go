package maildir

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/caddy-esmtp/caddy-esmtp/internal/smtptest"
	"github.com/caddy-esmtp/caddy-esmtp/session"
)

// failingDelivery is a delivery that calls seen, then fails with its
// reply.
type failingDelivery struct {
	r    *session.Reply
	seen func()
}

// Deliver calls seen and returns the reply.
func (f failingDelivery) Deliver(context.Context, *session.Session, *session.Delivery) error {
	f.seen()
	return f.r
}

// blockingDelivery is a delivery that signals when it starts and waits
// for release.
type blockingDelivery struct {
	entered chan struct{}
	release chan struct{}
}

// Deliver signals entered and waits for release.
func (b *blockingDelivery) Deliver(ctx context.Context, _ *session.Session, _ *session.Delivery) error {
	close(b.entered)
	select {
	case <-b.release:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// TestJudgeEditsReachMaildir: the file holds the message as the judges
// left it, and otherwise exactly as received.
func TestJudgeEditsReachMaildir(t *testing.T) {
	for _, perRcpt := range []bool{false, true} {
		t.Run(map[bool]string{false: "fixed", true: "per-recipient"}[perRcpt], func(t *testing.T) {
			base := t.TempDir()
			path, dirs := filepath.Join(base, "mail"), []string{filepath.Join(base, "mail")}
			if perRcpt {
				path, dirs = filepath.Join(base, "{esmtp.rcpt.local}"), []string{filepath.Join(base, "a"), filepath.Join(base, "b")}
			}
			ts := smtptest.ServeConfig(t, session.Config{}, smtptest.EditJudge, provision(t, path))
			c := ts.DialTCPHello()
			msg := "From: a@example.test\r\nSubject: original\r\nSubject: second\r\n\r\n.body\r\n\r\n"
			if r := smtptest.Mail(c, msg, "a@example.test", "b@example.test"); !strings.HasPrefix(r, "250 2.0.0 ") {
				t.Fatalf("end of data: %q", r)
			}
			c.Cmd("QUIT", "221")
			ts.Close()
			want := "From: a@example.test\r\nSubject: changed\r\nSubject: second\r\n\r\n.body\r\n\r\n"
			for _, dir := range dirs {
				_, file := only(t, dir)
				rest, ok := bytes.CutPrefix(file, []byte("X-Judged: yes\r\n"))
				if !ok {
					t.Fatalf("%s: file does not start with X-Judged: %q", dir, file)
				}
				if got := smtptest.SplitReceived(t, rest); string(got) != want {
					t.Errorf("%s: got %q, want %q", dir, got, want)
				}
			}
		})
	}
}

// TestLaterDeliveryFails: maildir prepares, a later delivery fails: the
// client gets that delivery's reply, and no file is in new/ nor left in
// tmp/.
func TestLaterDeliveryFails(t *testing.T) {
	for _, r := range []*session.Reply{
		session.NewReply(451, "4.3.0", "x"),
		session.NewReply(554, "5.7.1", "refused downstream"),
	} {
		for _, perRcpt := range []bool{false, true} {
			t.Run(r.Enhanced+map[bool]string{false: "-fixed", true: "-per-recipient"}[perRcpt], func(t *testing.T) {
				base := t.TempDir()
				path, dirs := filepath.Join(base, "mail"), []string{filepath.Join(base, "mail")}
				if perRcpt {
					path, dirs = filepath.Join(base, "{esmtp.rcpt.local}"), []string{filepath.Join(base, "a"), filepath.Join(base, "b")}
				}
				prepared := 0 // files in tmp/ when the failing delivery runs
				fail := failingDelivery{r: r, seen: func() {
					prepared = 0
					for _, dir := range dirs {
						prepared += inTmp(t, dir)
					}
				}}
				ts := smtptest.ServeConfig(t, session.Config{}, provision(t, path), fail)
				c := ts.DialTCPHello()
				got := smtptest.Mail(c, "Subject: x\r\n\r\nbody\r\n", "a@example.test", "b@example.test")
				if want := fmt.Sprintf("%d %s %s", r.Code, r.Enhanced, r.Lines[0]); got != want {
					t.Errorf("end of data: %q, want %q", got, want)
				}
				if prepared != len(dirs) {
					t.Errorf("%d files in tmp/ (named or unnamed) while the other delivery ran, want %d (prepared first)", prepared, len(dirs))
				}
				for _, dir := range dirs {
					assertEmpty(t, dir)
				}
				// The next message, with the other delivery still
				// failing, leaves nothing either; the session goes on.
				smtptest.Mail(c, "Subject: again\r\n\r\nbody\r\n", "a@example.test")
				c.Cmd("QUIT", "221")
				ts.Close()
				for _, dir := range dirs {
					assertEmpty(t, dir)
				}
			})
		}
	}
}

// TestSpooledToFile: a message the engine spools to a file (its memory
// budget used up) reaches every Maildir byte for byte.
func TestSpooledToFile(t *testing.T) {
	base := t.TempDir()
	spoolDir := t.TempDir()
	ts := smtptest.ServeConfig(t, session.Config{SpoolMemory: 1, SpoolDir: spoolDir}, provision(t, filepath.Join(base, "{esmtp.rcpt.local}")))
	c := ts.DialTCPHello()
	msg := "Subject: big\r\n\r\n" + strings.Repeat(strings.Repeat("0123456789", 99)+"\r\n", 2000) // ~2 MB
	if r := smtptest.Mail(c, msg, "a@example.test", "b@example.test"); !strings.HasPrefix(r, "250 2.0.0 ") {
		t.Fatalf("end of data: %q", r)
	}
	c.Cmd("QUIT", "221")
	ts.Close()
	for _, d := range []string{"a", "b"} {
		_, file := only(t, filepath.Join(base, d))
		if got := smtptest.SplitReceived(t, file); string(got) != msg {
			t.Errorf("%s: message differs (%d bytes, want %d)", d, len(got), len(msg))
		}
	}
	smtptest.AssertNoSpool(t, spoolDir)
}

// TestLogFields: the message's log line names the Maildirs and the file
// of a delivered message, and neither for a message that failed.
func TestLogFields(t *testing.T) {
	base := t.TempDir()
	core, logs := observer.New(zapcore.InfoLevel)
	ts := smtptest.ServeConfig(t, session.Config{Logger: zap.New(core)}, provision(t, filepath.Join(base, "{esmtp.rcpt.local}")))
	c := ts.DialTCPHello()
	if r := smtptest.Mail(c, "Subject: x\r\n\r\nbody\r\n", "a@example.test", "B@example.test", "b@example.test"); !strings.HasPrefix(r, "250 ") {
		t.Fatalf("end of data: %q", r)
	}
	c.Cmd("QUIT", "221")
	ts.Close()
	name, _ := only(t, filepath.Join(base, "b"))
	lines := logs.FilterMessage("message").All()
	if len(lines) != 1 {
		t.Fatalf("%d message log lines", len(lines))
	}
	f := lines[0].ContextMap()
	want := []any{filepath.Join(base, "a"), filepath.Join(base, "b")}
	if got, _ := f["maildirs"].([]any); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("maildirs = %v, want %v", f["maildirs"], want)
	}
	if f["maildir_file"] != name {
		t.Errorf("maildir_file = %v, want %s", f["maildir_file"], name)
	}

	core, logs = observer.New(zapcore.InfoLevel)
	ts = smtptest.ServeConfig(t, session.Config{Logger: zap.New(core)}, provision(t, filepath.Join(base, "{esmtp.rcpt.local}")),
		failingDelivery{r: session.NewReply(451, "4.3.0", "x"), seen: func() {}})
	c = ts.DialTCPHello()
	if r := smtptest.Mail(c, "Subject: x\r\n\r\nbody\r\n", "a@example.test"); !strings.HasPrefix(r, "451 ") {
		t.Fatalf("end of data: %q", r)
	}
	c.Cmd("QUIT", "221")
	ts.Close()
	f = logs.FilterMessage("message").All()[0].ContextMap()
	if _, ok := f["maildir_file"]; ok {
		t.Errorf("maildir_file logged for a failed message: %v", f)
	}
}

// inTmp counts the files of dir/tmp: those with a name, and the unnamed
// ones (O_TMPFILE) this process has open there, which /proc shows as
// "dir/tmp/#<inode> (deleted)".
func inTmp(t *testing.T, dir string) int {
	t.Helper()
	n := len(files(t, filepath.Join(dir, "tmp")))
	fds, _ := os.ReadDir("/proc/self/fd")
	for _, fd := range fds {
		target, err := os.Readlink(filepath.Join("/proc/self/fd", fd.Name()))
		if err == nil && strings.HasPrefix(target, filepath.Join(dir, "tmp")+"/#") && strings.HasSuffix(target, " (deleted)") {
			n++
		}
	}
	return n
}
