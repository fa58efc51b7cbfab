package integration_test

import (
	"bytes"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/caddy-esmtp/caddy-esmtp/internal/filtertest"
)

// dovecotStored returns the messages a real Dovecot stored for user (its
// Maildir's new/ and cur/), each without the Return-Path: field Dovecot
// puts first.
func dovecotStored(t *testing.T, dv *filtertest.Dovecot, user string) [][]byte {
	t.Helper()
	var names []string
	for _, sub := range []string{"new", "cur"} {
		entries, _ := os.ReadDir(filepath.Join(dv.Maildir(user), sub))
		for _, e := range entries {
			names = append(names, filepath.Join(dv.Maildir(user), sub, e.Name()))
		}
	}
	sort.Strings(names)
	var out [][]byte
	for _, n := range names {
		b, err := os.ReadFile(n)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.HasPrefix(b, []byte("Return-Path: <")) {
			t.Fatalf("%s does not start with Dovecot's Return-Path: %q", n, b)
		}
		out = append(out, b[bytes.Index(b, []byte("\r\n"))+2:])
	}
	return out
}

// lmtpSession sends message from a@client.test to rcpts and returns the
// reply to the end of data.
func lmtpSession(t *testing.T, addr string, rcpts ...string) string {
	t.Helper()
	c := dial(t, addr)
	c.expect("220 ")
	c.send("EHLO client.test\r\n")
	c.expect("250 ")
	c.send("MAIL FROM:<a@client.test>\r\n")
	c.expect("250 2.1.0")
	for _, r := range rcpts {
		c.send("RCPT TO:<" + r + ">\r\n")
		c.expect("250 2.1.5")
	}
	c.send("DATA\r\n")
	c.expect("354 ")
	c.send(stuffed(message) + ".\r\n")
	lines := c.reply()
	c.send("QUIT\r\n")
	c.expect("221 ")
	return lines[len(lines)-1]
}

// TestLMTPDovecot: real Caddy delivers through `lmtp @local unix:<socket>`
// to a real Dovecot over its LMTP socket. Two recipients: 250, and each
// Maildir holds the message byte for byte after our Received: field. The
// user Dovecot does not know: its 550 5.1.1, passed through. Both in one
// message (no queue): the client gets that 550 5.1.1 for the message,
// and the known user keeps the copy Dovecot stored (at least once).
func TestLMTPDovecot(t *testing.T) {
	dv := filtertest.StartDovecot(t)
	addr, _ := startCaddyfile(t, esmtpCaddyfile(`
					@local rcpt example.test
					lmtp @local unix:`+dv.Socket+` {
						timeout 30s
					}
`))
	alice, bob, carol := "alice.caddy@example.test", "bob.caddy@example.test", "carol.caddy@example.test"
	if got := lmtpSession(t, addr, alice, bob); !strings.HasPrefix(got, "250 ") {
		t.Fatalf("two recipients: %q, want 250\nDovecot:\n%s", got, dv.Output())
	}
	for _, u := range []string{alice, bob} {
		msgs := dovecotStored(t, dv, u)
		if len(msgs) != 1 {
			t.Fatalf("%s: %d messages, want 1", u, len(msgs))
		}
		splitReceived(t, msgs[0], "mx.example.test", []byte(message))
	}

	if got := lmtpSession(t, addr, filtertest.DovecotUnknownUser); !strings.HasPrefix(got, "550 5.1.1 <"+filtertest.DovecotUnknownUser+"> User doesn't exist") {
		t.Errorf("unknown user: %q, want Dovecot's 550 5.1.1", got)
	}

	if got := lmtpSession(t, addr, carol, filtertest.DovecotUnknownUser); !strings.HasPrefix(got, "550 5.1.1 ") {
		t.Errorf("mixed: %q, want Dovecot's 550 5.1.1", got)
	}
	if msgs := dovecotStored(t, dv, carol); len(msgs) != 1 {
		t.Errorf("mixed: the known user has %d messages, want the 1 Dovecot stored", len(msgs))
	}
}

// TestLMTPDovecotQueue: real Caddy with a queue: the mixed message is
// queued (250); from the queue the known user's copy goes to Dovecot
// once, and the unknown user's 550 5.1.1 from Dovecot becomes a DSN to
// the sender (in the sender's Maildir), which reports only that
// recipient, with Dovecot's diagnostic.
func TestLMTPDovecotQueue(t *testing.T) {
	dv := filtertest.StartDovecot(t)
	qdir := filepath.Join(t.TempDir(), "queue")
	addr, maildir := startCaddyfile(t, esmtpCaddyfile(`
					queue `+qdir+` {
						retry_interval 1s
					}
					@local rcpt example.test
					@senders rcpt client.test
					lmtp @local `+dv.Addr+`
					maildir @senders %MAIL%
`))
	dave := "dave.queue@example.test"
	if got := lmtpSession(t, addr, dave, filtertest.DovecotUnknownUser); !strings.HasPrefix(got, "250 2.0.0") || !strings.HasSuffix(got, "Message queued") {
		t.Fatalf("end of data: %q, want 250 ... queued", got)
	}
	var dsns [][]byte
	for end := time.Now().Add(30 * time.Second); time.Now().Before(end); time.Sleep(50 * time.Millisecond) {
		if dsns = delivered(t, maildir); len(dsns) > 0 && len(dovecotStored(t, dv, dave)) > 0 {
			break
		}
	}
	msgs := dovecotStored(t, dv, dave)
	if len(msgs) != 1 || len(dsns) != 1 {
		t.Fatalf("%d messages in Dovecot, %d DSNs, want 1 and 1\nDovecot:\n%s", len(msgs), len(dsns), dv.Output())
	}
	splitReceived(t, msgs[0], "mx.example.test", []byte(message))
	for _, want := range []string{
		"Final-Recipient: rfc822; " + filtertest.DovecotUnknownUser,
		"Action: failed",
		"Status: 5.1.1",
		"User doesn't exist",
		"Remote-MTA: dns; ",
	} {
		if !bytes.Contains(dsns[0], []byte(want)) {
			t.Errorf("the DSN lacks %q:\n%s", want, dsns[0])
		}
	}
	if bytes.Contains(dsns[0], []byte("Final-Recipient: rfc822; "+dave)) {
		t.Errorf("the DSN reports the delivered recipient:\n%s", dsns[0])
	}
}
