package integration_test

import (
	"bytes"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
)

// TestRecipientsPolicy runs the recipients sub-handler in real Caddy in
// front of maildir: listed recipients are delivered to, an unknown user of
// a local domain gets 550 5.1.1, a foreign domain 554 5.7.1, Postmaster is
// accepted. Then the list file changes and a forced reload through the
// admin API (what `caddy reload --force` sends) makes new sessions use it.
func TestRecipientsPolicy(t *testing.T) {
	adminPort, smtpPort := freePort(t), freePort(t)
	dir := t.TempDir()
	maildir := filepath.Join(dir, "mail")
	listFile := filepath.Join(dir, "rcpts")
	if err := os.WriteFile(listFile, []byte("# users of x.test\nfromfile@x.test\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	cfg := adapt(t, fmt.Sprintf(`{
	admin 127.0.0.1:%d
	persist_config off
	layer4 {
		127.0.0.1:%d {
			route {
				esmtp {
					hostname mx.example.test
					recipients example.test *@other.test user@x.test {
						file %s
					}
					maildir %s
				}
			}
		}
	}
}
`, adminPort, smtpPort, listFile, maildir))
	load(t, cfg)
	addr := fmt.Sprintf("127.0.0.1:%d", smtpPort)
	waitListening(t, addr)

	c := dial(t, addr)
	c.expect("220 ")
	c.send("EHLO client.test\r\n")
	c.expect("250 ")
	c.send("MAIL FROM:<a@client.test>\r\n")
	c.expect("250 2.1.0")
	for _, tc := range []struct{ rcpt, want string }{
		{"<User@X.test>", "250 2.1.5"},
		{"<anyone@example.test>", "250 2.1.5"},
		{"<someone@other.test>", "250 2.1.5"},
		{"<fromfile@x.test>", "250 2.1.5"},
		{"<Postmaster>", "250 2.1.5"},
		{"<nobody@x.test>", "550 5.1.1 No such user here"},
		{"<b@relay.test>", "554 5.7.1 Relay access denied"},
	} {
		c.send("RCPT TO:" + tc.rcpt + "\r\n")
		c.expect(tc.want)
	}
	c.send("DATA\r\n")
	c.expect("354 ")
	c.send(stuffed(message) + ".\r\nQUIT\r\n")
	c.expect("250 2.0.0")
	c.expect("221 ")
	if files := delivered(t, maildir); len(files) != 1 {
		t.Fatalf("%d files delivered, want 1", len(files))
	}

	// Change the file; the configuration itself stays the same, so the
	// reload must be forced (Cache-Control: must-revalidate).
	if err := os.WriteFile(listFile, []byte("new@x.test\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	req, _ := http.NewRequest(http.MethodPost, fmt.Sprintf("http://127.0.0.1:%d/load", adminPort), bytes.NewReader(cfg))
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Cache-Control", "must-revalidate")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("POST /load: %s", resp.Status)
	}

	c = dial(t, addr)
	c.expect("220 ")
	c.send("EHLO client.test\r\nMAIL FROM:<a@client.test>\r\n")
	c.expect("250 ")
	c.expect("250 2.1.0")
	for _, tc := range []struct{ rcpt, want string }{
		{"<new@x.test>", "250 2.1.5"},
		{"<user@x.test>", "250 2.1.5"},
		{"<fromfile@x.test>", "550 5.1.1 No such user here"},
	} {
		c.send("RCPT TO:" + tc.rcpt + "\r\n")
		c.expect(tc.want)
	}
	c.send("QUIT\r\n")
	c.expect("221 ")
}

// TestRecipientsBadFile: a list file that cannot be read fails the
// configuration with an error naming the field.
func TestRecipientsBadFile(t *testing.T) {
	missing := filepath.Join(t.TempDir(), "missing")
	cfg := fmt.Sprintf(`{
		"admin": {"disabled": true, "config": {"persist": false}},
		"apps": {"layer4": {"servers": {"smtp": {
			"listen": ["127.0.0.1:%d"],
			"routes": [{"handle": [{
				"handler": "esmtp",
				"handlers": [{"handler": "recipients", "files": [%q]}, {"handler": "discard"}]
			}]}]
		}}}}
	}`, freePort(t), missing)
	err := caddy.Load([]byte(cfg), true)
	if err == nil {
		caddy.Stop()
		t.Fatal("a config with a missing recipients file loaded")
	}
	if !strings.Contains(err.Error(), "recipients: files[0]: open "+missing) {
		t.Fatalf("error %q does not name recipients: files[0] and the file", err)
	}
}

// TestSendersPolicy runs the senders sub-handler from JSON config: listed
// senders are delivered, others and (with reject_null_sender) <> get
// 550 5.7.1.
func TestSendersPolicy(t *testing.T) {
	smtpPort := freePort(t)
	maildir := filepath.Join(t.TempDir(), "mail")
	load(t, []byte(fmt.Sprintf(`{
		"admin": {"disabled": true, "config": {"persist": false}},
		"apps": {"layer4": {"servers": {"smtp": {
			"listen": ["127.0.0.1:%d"],
			"routes": [{"handle": [{
				"handler": "esmtp",
				"hostname": "mx.example.test",
				"handlers": [
					{"handler": "senders", "allow": ["*@client.test", "boss@*.corp.test"], "reject_null_sender": true},
					{"handler": "maildir", "path": %q}
				]
			}]}]
		}}}}
	}`, smtpPort, maildir)))
	addr := fmt.Sprintf("127.0.0.1:%d", smtpPort)
	waitListening(t, addr)

	c := dial(t, addr)
	c.expect("220 ")
	c.send("EHLO client.test\r\n")
	c.expect("250 ")
	for _, tc := range []struct{ from, want string }{
		{"<>", "550 5.7.1 Sender not allowed"},
		{"<spoof@client.test.evil.test>", "550 5.7.1 Sender not allowed"},
		{"<intern@eu.corp.test>", "550 5.7.1 Sender not allowed"},
		{"<Boss@EU.corp.test>", "250 2.1.0"},
	} {
		c.send("MAIL FROM:" + tc.from + "\r\n")
		c.expect(tc.want)
	}
	c.send("RSET\r\nMAIL FROM:<a@Client.Test>\r\nRCPT TO:<b@example.test>\r\nDATA\r\n")
	c.expect("250 ")
	c.expect("250 2.1.0")
	c.expect("250 2.1.5")
	c.expect("354 ")
	c.send(stuffed(message) + ".\r\nQUIT\r\n")
	c.expect("250 2.0.0")
	c.expect("221 ")
	files := delivered(t, maildir)
	if len(files) != 1 {
		t.Fatalf("%d files delivered, want 1", len(files))
	}
	splitReceived(t, files[0], "mx.example.test", []byte(message))
}

// TestReplyPolicy runs reply sub-handlers from the Caddyfile: a custom
// greeting, HELP text, VRFY refused, EXPN refused with close; delivery in
// between is untouched. A reply code that does not fit its event fails
// `caddy adapt` naming the field.
func TestReplyPolicy(t *testing.T) {
	addr, maildir := startCaddyfile(t, esmtpCaddyfile(`
					reply connect 220 "ESMTP policy test"
					reply help 214 2.0.0 "See https://example.com/mail"
					reply vrfy 502 5.5.1 "VRFY disabled"
					reply expn 502 5.5.1 "EXPN disabled" {
						close
					}
					maildir %MAIL%
`))
	c := dial(t, addr)
	if g := c.reply(); len(g) != 1 || g[0] != "220 mx.example.test ESMTP policy test" {
		t.Fatalf("greeting %q", g)
	}
	c.send("EHLO client.test\r\nHELP\r\nVRFY root\r\n")
	c.expect("250 ")
	if h := c.reply(); len(h) != 1 || h[0] != "214 2.0.0 See https://example.com/mail" {
		t.Fatalf("HELP reply %q", h)
	}
	c.expect("502 5.5.1 VRFY disabled")
	c.send("MAIL FROM:<a@client.test>\r\nRCPT TO:<b@example.test>\r\nDATA\r\n")
	c.expect("250 2.1.0")
	c.expect("250 2.1.5")
	c.expect("354 ")
	c.send(stuffed(message) + ".\r\n")
	c.expect("250 2.0.0")
	c.send("EXPN staff\r\n")
	c.expect("502 5.5.1 EXPN disabled")
	if l, err := c.r.ReadString('\n'); err == nil {
		t.Fatalf("got %q after EXPN, want the connection closed", l)
	}
	if files := delivered(t, maildir); len(files) != 1 {
		t.Fatalf("%d files delivered, want 1", len(files))
	}

	_, _, err := caddyconfig.GetAdapter("caddyfile").Adapt([]byte(`{
	layer4 {
		127.0.0.1:2525 {
			route {
				esmtp {
					reply rcpt 354 "Go ahead"
				}
			}
		}
	}
}
`), map[string]any{"filename": "Caddyfile"})
	if err == nil || !strings.Contains(err.Error(), "reply: code: 354 does not fit event rcpt") {
		t.Fatalf("adapting a reply with a code that does not fit: got %v", err)
	}
}
