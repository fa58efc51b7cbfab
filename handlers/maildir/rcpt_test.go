package maildir

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest"

	"github.com/caddy-esmtp/caddy-esmtp/internal/smtptest"
	"github.com/caddy-esmtp/caddy-esmtp/session"
)

// provisionMaildir provisions m through Caddy's API; its logger writes to
// the test log.
func provisionMaildir(tb testing.TB, m *Maildir) *Maildir {
	tb.Helper()
	ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
	defer cancel()
	if err := m.Provision(ctx); err != nil {
		tb.Fatalf("provisioning maildir %q: %v", m.Path, err)
	}
	m.logger = zaptest.NewLogger(tb, zaptest.Level(zap.InfoLevel))
	return m
}

// longAddress returns an address of n bytes (n <= 254, the most RFC 5321
// and the engine allow): a 64-byte local part and a domain of labels.
func longAddress(local string, n int) string {
	local += strings.Repeat("l", 64-len(local))
	var labels []string
	for left := n - len(local) - 1; left > 0; {
		size := min(left, 63)
		if left-size == 1 { // no room for a dot and a label after it
			size--
		}
		labels = append(labels, strings.Repeat("d", size))
		left -= size + 1
	}
	return local + "@" + strings.Join(labels, ".")
}

// TestPerRecipientFoldsCase: Bob@, bob@ and BOB@ share one Maildir, and a
// message to two of them is stored there once.
func TestPerRecipientFoldsCase(t *testing.T) {
	for i, tmpl := range []string{
		"{esmtp.rcpt.domain}/{esmtp.rcpt.local}",
		"{esmtp.rcpt}",
	} {
		t.Run(string(rune('a'+i)), func(t *testing.T) {
			base := t.TempDir()
			ts := startServer(t, provision(t, filepath.Join(base, tmpl)), session.Config{})
			c := dial(ts)
			for _, rcpts := range [][]string{{"Bob@Example.TEST"}, {"bob@example.test"}, {"BOB@example.test", "bOb@EXAMPLE.test"}} {
				if r := smtptest.Mail(c, "Subject: case\r\n\r\nx\r\n", rcpts...); !strings.HasPrefix(r, "250 ") {
					t.Fatalf("%q: end of data: %q", rcpts, r)
				}
			}
			c.Cmd("QUIT", "221")
			ts.Close()
			dir := filepath.Join(base, "example.test", "bob")
			if tmpl == "{esmtp.rcpt}" {
				dir = filepath.Join(base, "bob@example.test")
			}
			if n := len(messages(t, dir)); n != 3 {
				t.Errorf("%s holds %d messages, want 3", dir, n)
			}
			var all []string
			filepath.WalkDir(base, func(p string, d os.DirEntry, err error) error {
				if err == nil && d.IsDir() && (d.Name() == "new") {
					rel, _ := filepath.Rel(base, filepath.Dir(p))
					all = append(all, rel)
				}
				return nil
			})
			if want, _ := filepath.Rel(base, dir); len(all) != 1 || all[0] != want {
				t.Errorf("Maildirs under base: %q, want only %q", all, want)
			}
		})
	}
}

// TestPerRecipientKeepCase: with keep_case the local part stays as the
// client wrote it (the domain is lower-cased still).
func TestPerRecipientKeepCase(t *testing.T) {
	base := t.TempDir()
	m := provisionMaildir(t, &Maildir{Path: filepath.Join(base, "{esmtp.rcpt.domain}", "{esmtp.rcpt.local}"), KeepCase: true})
	ts := startServer(t, m, session.Config{})
	c := dial(ts)
	for _, rcpt := range []string{"Bob@Example.TEST", "bob@example.test"} {
		if r := smtptest.Mail(c, "Subject: case\r\n\r\nx\r\n", rcpt); !strings.HasPrefix(r, "250 ") {
			t.Fatalf("%s: end of data: %q", rcpt, r)
		}
	}
	ts.Close()
	if got := files(t, filepath.Join(base, "example.test")); strings.Join(got, ",") != "Bob,bob" {
		// A case-insensitive file system makes them one directory.
		if fi, err := os.Stat(filepath.Join(base, "example.test", "BOB")); err == nil && fi.IsDir() {
			t.Skip("case-insensitive file system")
		}
		t.Errorf("example.test holds %q, want Bob and bob", got)
	}
}

// TestPerRecipientNameTooLong: a recipient whose Maildir path would have
// an element longer than a file name may be is refused at RCPT with a 5xx
// (not accepted, then failed with 451 at every retry); the other
// recipients of the transaction still get the message.
func TestPerRecipientNameTooLong(t *testing.T) {
	base := t.TempDir()
	m := provision(t, filepath.Join(base, "{esmtp.rcpt}.maildir"))
	ts := startServer(t, m, session.Config{})
	c := dial(ts)
	long := longAddress("Long", 250) // "long...@..." + ".maildir": 258 bytes
	fits := longAddress("fits", 247) // 255 bytes: the longest name there is
	if len(long) != 250 || len(fits) != 247 {
		t.Fatalf("addresses of %d and %d bytes", len(long), len(fits))
	}
	c.Cmd("MAIL FROM:<sender@example.test>", "250")
	c.Cmd("RCPT TO:<"+long+">", "553 5.1.3 ")
	c.Cmd("RCPT TO:<"+fits+">", "250")
	c.Cmd("RCPT TO:<short@example.test>", "250")
	c.Cmd("DATA", "354")
	c.Send("Subject: long\r\n\r\nx\r\n.\r\n")
	if r := c.ReadReply().Last(); !strings.HasPrefix(r, "250 ") {
		t.Fatalf("end of data: %q", r)
	}
	c.Cmd("QUIT", "221")
	ts.Close()
	only(t, filepath.Join(base, "short@example.test.maildir"))
	only(t, filepath.Join(base, strings.ToLower(fits)+".maildir"))
	if got := files(t, base); len(got) != 2 {
		t.Errorf("base holds %d entries, want 2: %q", len(got), got)
	}
}

// TestPerRecipientNameTooLongAcceptedEarlier: when an earlier sub-handler
// accepted the recipient with its own 250, so maildir was not asked at
// RCPT, the message is refused for good at end of data, not with a 451
// the client would retry for days.
func TestPerRecipientNameTooLongAcceptedEarlier(t *testing.T) {
	base := t.TempDir()
	m := provision(t, filepath.Join(base, "{esmtp.rcpt}.maildir"))
	accept := smtptest.RcptFunc(func(session.Path) *session.Reply { return session.NewReply(250, "2.1.5", "OK") })
	ts := smtptest.ServeConfig(t, session.Config{}, accept, m)
	c := ts.DialTCPHello()
	if r := smtptest.Mail(c, "Subject: long\r\n\r\nx\r\n", "short@example.test", longAddress("long", 250)); !strings.HasPrefix(r, "554 5.1.3 ") {
		t.Errorf("end of data: %q, want 554 5.1.3", r)
	}
	c.Cmd("QUIT", "221")
	ts.Close()
	if got := files(t, base); len(got) != 0 {
		t.Errorf("base holds %q, want nothing", got)
	}
}

// TestFixedPathOnly: a fixed path never refuses a recipient, however long
// its address.
func TestFixedPathOnly(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "mail")
	ts := startServer(t, provision(t, dir), session.Config{})
	c := dial(ts)
	if r := smtptest.Mail(c, "Subject: x\r\n\r\nx\r\n", longAddress("long", 254)); !strings.HasPrefix(r, "250 ") {
		t.Fatalf("end of data: %q", r)
	}
	ts.Close()
	only(t, dir)
}

func TestProvisionElementTooLong(t *testing.T) {
	path := filepath.Join(t.TempDir(), strings.Repeat("x", 256), "{esmtp.rcpt.local}")
	_, err := tryProvision(path)
	if err == nil || !strings.Contains(err.Error(), "maildir: path") || !strings.Contains(err.Error(), "longer than 255 bytes") {
		t.Errorf("got %v, want an error naming the path", err)
	}
}

func TestUnmarshalCaddyfileKeepCase(t *testing.T) {
	m := new(Maildir)
	if err := m.UnmarshalCaddyfile(caddyfile.NewTestDispenser("maildir /var/mail/{esmtp.rcpt.local} {\n\tkeep_case\n}")); err != nil {
		t.Fatal(err)
	}
	if !m.KeepCase || m.Path != "/var/mail/{esmtp.rcpt.local}" {
		t.Errorf("got %+v", m)
	}
	if err := new(Maildir).UnmarshalCaddyfile(caddyfile.NewTestDispenser("maildir ./mail {\n\tkeep_case yes\n}")); err == nil {
		t.Errorf("keep_case with an argument: no error")
	}
}
