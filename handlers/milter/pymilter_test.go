package milter_test

import (
	_ "embed"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/caddy-esmtp/caddy-esmtp/internal/filtertest"
)

// testMilter is the test milter (pymilter on libmilter): it takes the
// action its Subject names (see the script).
//
//go:embed testdata/testmilter.py
var testMilter string

// TestPymilter: real Caddy asks a real libmilter milter (pymilter), and
// every action of the milter protocol reaches the client or the Maildir.
// The milter is started once; each subtest loads its own Caddy config.
func TestPymilter(t *testing.T) {
	addr := filtertest.PyMilter(t, testMilter)

	// One milter, one Maildir per recipient's local part, and an exec
	// delivery that records the envelope sender the deliveries got.
	config := `
		milter ` + addr + ` {
			name test
		}
		maildir %DIR%/{esmtp.rcpt.local}
		exec /usr/bin/tee -a %DIR%/from-{esmtp.from}
	`
	t.Run("Actions", func(t *testing.T) {
		srv, dir := startCaddy(t, config)
		c := hello(t, srv)

		// Header edits: add (last), insert (after our Received:, index
		// 1), change, delete.
		c.cmd("MAIL FROM:<alice@example.test>", "250")
		c.cmd("RCPT TO:<hdr@example.test>", "250")
		if r := c.data(message("add-header insert-header change-header delete-header", "X-Delete-Me: please\r\n")); !strings.HasPrefix(r, "250 ") {
			t.Fatalf("headers: %q", r)
		}
		m := one(t, filepath.Join(dir, "hdr"))
		names := fieldNames(m)
		if len(names) < 3 || names[0] != "Received" || names[1] != "X-Test-Inserted" || names[len(names)-1] != "X-Test-Added" {
			t.Errorf("fields %q:\n%s", names, m)
		}
		if !strings.Contains(m, "\r\nSubject: changed by the test milter\r\n") || strings.Contains(m, "X-Delete-Me") {
			t.Errorf("change/delete header:\n%s", m)
		}
		if !strings.Contains(m, "\r\n\r\nHello Bob,\r\n.a dotted line\r\nbye\r\n") {
			t.Errorf("body changed:\n%s", m)
		}

		// Change sender: the deliveries get the new envelope sender.
		c.cmd("MAIL FROM:<alice@example.test>", "250")
		c.cmd("RCPT TO:<sender@example.test>", "250")
		if r := c.data(message("change-sender")); !strings.HasPrefix(r, "250 ") {
			t.Fatalf("change-sender: %q", r)
		}
		if _, err := os.Stat(filepath.Join(dir, "from-new-sender@example.test")); err != nil {
			t.Errorf("the delivery did not get the new sender: %v", err)
		}

		// Add and delete a recipient: their Maildirs tell.
		c.cmd("MAIL FROM:<alice@example.test>", "250")
		c.cmd("RCPT TO:<kept@example.test>", "250")
		c.cmd("RCPT TO:<deleted@example.test>", "250")
		if r := c.data(message("add-rcpt del-rcpt")); !strings.HasPrefix(r, "250 ") {
			t.Fatalf("rcpts: %q", r)
		}
		for local, want := range map[string]int{"kept": 1, "added": 1, "deleted": 0} {
			if n := len(mails(t, filepath.Join(dir, local))); n != want {
				t.Errorf("%s got %d messages, want %d", local, n, want)
			}
		}

		// Replace the body with 1.5 MB (streamed in 64 KiB packets).
		c.cmd("MAIL FROM:<alice@example.test>", "250")
		c.cmd("RCPT TO:<body@example.test>", "250")
		if r := c.data(message("replace-body")); !strings.HasPrefix(r, "250 ") {
			t.Fatalf("replace-body: %q", r)
		}
		m = one(t, filepath.Join(dir, "body"))
		_, body, _ := strings.Cut(m, "\r\n\r\n")
		line := "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789abcdefghijklmnopqrstuvwxyzAB\r\n"
		if body != strings.Repeat(line, 15000) {
			t.Errorf("replaced body: %d bytes, want %d; starts %q", len(body), 15000*len(line), body[:min(len(body), 200)])
		}
		if !strings.Contains(header(m), "Subject: replace-body") {
			t.Errorf("header lost with the body:\n%s", header(m))
		}

		// Quarantine: delivered, marked on top.
		c.cmd("MAIL FROM:<alice@example.test>", "250")
		c.cmd("RCPT TO:<quarantine@example.test>", "250")
		if r := c.data(message("quarantine")); !strings.HasPrefix(r, "250 ") {
			t.Fatalf("quarantine: %q", r)
		}
		if m := one(t, filepath.Join(dir, "quarantine")); !strings.HasPrefix(m, "X-Esmtp-Quarantine: held by the test milter\r\nReceived: ") {
			t.Errorf("quarantined message:\n%s", header(m))
		}

		// Discard at end of message: 250, delivered nowhere.
		c.cmd("MAIL FROM:<alice@example.test>", "250")
		c.cmd("RCPT TO:<discarded@example.test>", "250")
		if r := c.data(message("discard")); !strings.HasPrefix(r, "250 ") {
			t.Fatalf("discard: %q", r)
		}
		if n := len(mails(t, filepath.Join(dir, "discarded"))); n != 0 {
			t.Errorf("discarded message delivered %d times", n)
		}

		// Discard at RCPT: the whole message.
		c.cmd("MAIL FROM:<alice@example.test>", "250")
		c.cmd("RCPT TO:<other@example.test>", "250")
		c.cmd("RCPT TO:<discard@example.test>", "250")
		if r := c.data(message("plain")); !strings.HasPrefix(r, "250 ") {
			t.Fatalf("discard at rcpt: %q", r)
		}
		if n := len(mails(t, filepath.Join(dir, "other"))) + len(mails(t, filepath.Join(dir, "discard"))); n != 0 {
			t.Errorf("message discarded at RCPT delivered %d times", n)
		}

		// Reject and tempfail with the milter's own multi-line reply.
		c.cmd("MAIL FROM:<alice@example.test>", "250")
		c.cmd("RCPT TO:<refused@example.test>", "250")
		if r := c.data(message("reject")); r != "550-5.7.1 refused by the test milter\n550 5.7.1 second line of the refusal" {
			t.Errorf("reject: %q", r)
		}
		c.cmd("MAIL FROM:<alice@example.test>", "250")
		c.cmd("RCPT TO:<refused@example.test>", "250")
		if r := c.data(message("tempfail")); r != "451-4.7.1 deferred by the test milter\n451 4.7.1 try again later" {
			t.Errorf("tempfail: %q", r)
		}
		if n := len(mails(t, filepath.Join(dir, "refused"))); n != 0 {
			t.Errorf("refused messages delivered %d times", n)
		}

		// Envelope refusals: a recipient only; MAIL (then the session
		// goes on: the milter got ABORT); HELO.
		c.cmd("MAIL FROM:<alice@example.test>", "250")
		c.cmd("RCPT TO:<reject-me@example.test>", "550 5.1.1 no such user here")
		c.cmd("RCPT TO:<fine@example.test>", "250")
		if r := c.data(message("plain")); !strings.HasPrefix(r, "250 ") {
			t.Fatalf("after a refused rcpt: %q", r)
		}
		if n := len(mails(t, filepath.Join(dir, "fine"))); n != 1 {
			t.Errorf("fine got %d messages", n)
		}
		c.cmd("MAIL FROM:<reject@example.test>", "550 5.7.1 Command rejected")
		c.cmd("MAIL FROM:<alice@example.test>", "250")
		c.cmd("RCPT TO:<fine@example.test>", "250")
		c.cmd("RSET", "250")
		c.cmd("HELO reject.test", "550 5.7.1 HELO refused by the test milter")
		c.cmd("EHLO client.example.test", "250")

		// Macros, at their stages, and the ESMTP parameters one by one.
		c.cmd("MAIL FROM:<alice@example.test> BODY=8BITMIME SIZE=300", "250")
		c.cmd("RCPT TO:<macros@example.test>", "250")
		r := c.data(message("macros"))
		if !strings.HasPrefix(r, "250 ") {
			t.Fatalf("macros: %q", r)
		}
		qid := strings.Fields(r)[2]
		m = one(t, filepath.Join(dir, "macros"))
		for _, want := range []string{"j=mx.example.test", "{client_addr}=127.0.0.1", "{daemon_name}=caddy-esmtp",
			"{daemon_addr}=127.0.0.1", "v=caddy-esmtp", "_=unknown [127.0.0.1]", "{client_name}=unknown",
			"i=" + qid, "{mail_addr}=alice@example.test", "{mail_host}=example.test", "{rcpt_addr}=macros@example.test",
			"from=<alice@example.test> args=BODY=8BITMIME,SIZE=300 rcpts=<macros@example.test> client=[127.0.0.1]"} {
			if !strings.Contains(m, want) {
				t.Errorf("no %q in\n%s", want, header(m))
			}
		}

		// Accept at end of message, with an edit.
		c.cmd("MAIL FROM:<alice@example.test>", "250")
		c.cmd("RCPT TO:<accepted@example.test>", "250")
		if r := c.data(message("accept add-header")); !strings.HasPrefix(r, "250 ") {
			t.Fatalf("accept: %q", r)
		}
		if m := one(t, filepath.Join(dir, "accepted")); !strings.Contains(m, "X-Test-Added: added by the test milter") {
			t.Errorf("accepted message lost its edit:\n%s", header(m))
		}
		c.cmd("QUIT", "221")
	})

	// Two milters in order: the second sees the first's header.
	t.Run("Chain", func(t *testing.T) {
		srv, dir := startCaddy(t, `
			milter `+addr+` {
				name first
			}
			milter inet:`+strings.Split(addr, ":")[1]+`@127.0.0.1 {
				name second
			}
			maildir %DIR%/mail
		`)
		c := hello(t, srv)
		c.cmd("MAIL FROM:<alice@example.test>", "250")
		c.cmd("RCPT TO:<bob@example.test>", "250")
		if r := c.data(message("chain")); !strings.HasPrefix(r, "250 ") {
			t.Fatalf("chain: %q", r)
		}
		m := one(t, filepath.Join(dir, "mail"))
		if !strings.Contains(m, "\r\nX-Test-Chain: first then second\r\n") || strings.Count(m, "X-Test-Chain") != 1 {
			t.Errorf("chain:\n%s", header(m))
		}
	})

	// A milter that hangs: on_error decides (tempfail by default).
	t.Run("Hang", func(t *testing.T) {
		for _, c := range []struct{ onError, want string }{
			{"", "451 4.7.1 Service unavailable - try again later"},
			{"accept", "250 "},
			{"reject", "550 5.7.1 Command rejected"},
		} {
			opt := ""
			if c.onError != "" {
				opt = "on_error " + c.onError
			}
			srv, dir := startCaddy(t, `
				milter `+addr+` {
					timeout 2s
					`+opt+`
				}
				maildir %DIR%/mail
			`)
			cl := hello(t, srv)
			cl.cmd("MAIL FROM:<alice@example.test>", "250")
			cl.cmd("RCPT TO:<bob@example.test>", "250")
			if r := cl.data(message("stall")); !strings.HasPrefix(r, c.want) {
				t.Errorf("on_error %q: %q, want %q", c.onError, r, c.want)
			}
			n := len(mails(t, filepath.Join(dir, "mail")))
			if want := map[bool]int{true: 1, false: 0}[c.onError == "accept"]; n != want {
				t.Errorf("on_error %q: %d delivered", c.onError, n)
			}
			// The failed milter answers the rest of the session too (or is
			// gone from it, failing open).
			want := "451 4.7.1"
			switch c.onError {
			case "accept":
				want = "250"
			case "reject":
				want = "550 5.7.1"
			}
			cl.cmd("MAIL FROM:<alice@example.test>", want)
		}
	})
}
