package integration_test

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestQueueDeliversAndBounces: in real Caddy with a queue, the client gets
// 250 once the message is in the queue directory; the queue's workers then
// deliver the recipient a Maildir takes, and the one whose delivery
// refuses it permanently (an exec that exits EX_NOUSER: 550 5.1.1) gets a
// DSN to the sender (RFC 3464, from the null sender), which the same
// deliveries put in the sender's Maildir; the queue directory ends empty.
func TestQueueDeliversAndBounces(t *testing.T) {
	qdir := filepath.Join(t.TempDir(), "queue")
	script := filepath.Join(t.TempDir(), "nouser.sh")
	if err := os.WriteFile(script, []byte("#!/bin/sh\ncat >/dev/null\nexit 67\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	addr, maildir := startCaddyfile(t, esmtpCaddyfile(`
					queue `+qdir+` {
						retry_interval 1s
					}
					@local rcpt example.test client.test
					@fail rcpt fail.test
					maildir @local %MAIL%
					exec @fail `+script+`
`))
	c := dial(t, addr)
	c.expect("220 ")
	c.send("EHLO client.test\r\n")
	c.expect("250 ")
	c.send("MAIL FROM:<a@client.test> ENVID=env-1\r\nRCPT TO:<b@example.test>\r\nRCPT TO:<x@fail.test> NOTIFY=FAILURE ORCPT=rfc822;x@fail.test\r\nDATA\r\n")
	c.expect("250 2.1.0")
	c.expect("250 2.1.5")
	c.expect("250 2.1.5")
	c.expect("354 ")
	c.send(stuffed(message) + ".\r\nQUIT\r\n")
	ok := c.expect("250 2.0.0")
	c.expect("221 ")
	if !strings.HasSuffix(ok[len(ok)-1], "Message queued") {
		t.Fatalf("end of data: %q", ok)
	}
	qid := strings.Fields(ok[len(ok)-1])[2]

	var files [][]byte
	for end := time.Now().Add(30 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		files = delivered(t, maildir)
		if len(files) >= 2 || time.Now().After(end) {
			break
		}
	}
	if len(files) != 2 {
		t.Fatalf("%d messages in the Maildir, want the message and the DSN", len(files))
	}
	var msg, dsn []byte
	for _, f := range files {
		if bytes.Contains(f, []byte("multipart/report")) {
			dsn = f
		} else {
			msg = f
		}
	}
	if msg == nil || !bytes.Contains(msg, []byte(qid)) || !bytes.HasSuffix(msg, []byte("last line\r\n")) && !bytes.Contains(msg, []byte("first line\r\n")) {
		t.Fatalf("the delivered message:\n%s", msg)
	}
	for _, want := range []string{
		"report-type=delivery-status",
		"Original-Envelope-Id: env-1",
		"Final-Recipient: rfc822; x@fail.test",
		"Action: failed",
		"Status: 5.1.1",
		"Subject: a folded",
	} {
		if !bytes.Contains(dsn, []byte(want)) {
			t.Errorf("the DSN lacks %q:\n%s", want, dsn)
		}
	}
	if bytes.Contains(dsn, []byte("Final-Recipient: rfc822; b@example.test")) {
		t.Errorf("the DSN reports the delivered recipient:\n%s", dsn)
	}
	// Every entry done: no message or state file left.
	for end := time.Now().Add(10 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		left, _ := filepath.Glob(filepath.Join(qdir, "*.msg"))
		if len(left) == 0 {
			break
		}
		if time.Now().After(end) {
			t.Fatalf("left in the queue: %v", left)
		}
	}
}

// TestQueueSurvivesReload: a message deferred by the configuration in
// force (a command that exits EX_TEMPFAIL) stays in the queue through a
// config reload that names the same directory, and the next attempt
// delivers it with the new configuration (into a Maildir).
func TestQueueSurvivesReload(t *testing.T) {
	qdir := filepath.Join(t.TempDir(), "queue")
	script := filepath.Join(t.TempDir(), "tempfail.sh")
	if err := os.WriteFile(script, []byte("#!/bin/sh\ncat >/dev/null\nexit 75\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	port := freePort(t)
	maildir := filepath.Join(t.TempDir(), "mail")
	config := func(delivery string) []byte {
		return adapt(t, strings.NewReplacer("%PORT%", fmt.Sprint(port), "%MAIL%", maildir).Replace(esmtpCaddyfile(`
					queue `+qdir+` {
						retry_interval 1s
					}
					`+delivery)))
	}
	load(t, config("exec "+script))
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	waitListening(t, addr)
	c := dial(t, addr)
	c.expect("220 ")
	c.send("EHLO client.test\r\nMAIL FROM:<a@client.test>\r\nRCPT TO:<b@example.test>\r\nDATA\r\n")
	c.expect("250 ")
	c.expect("250 2.1.0")
	c.expect("250 2.1.5")
	c.expect("354 ")
	c.send(stuffed(message) + ".\r\nQUIT\r\n")
	c.expect("250 2.0.0")
	c.expect("221 ")
	// Deferred at least once: its state says so.
	waitFor(t, "a deferred attempt", func() bool {
		states, _ := filepath.Glob(filepath.Join(qdir, "*.state"))
		for _, s := range states {
			if b, _ := os.ReadFile(s); bytes.Contains(b, []byte(`"deferred"`)) {
				return true
			}
		}
		return false
	})
	if files := delivered(t, maildir); len(files) != 0 {
		t.Fatalf("delivered before the reload: %d", len(files))
	}
	load(t, config("maildir %MAIL%"))
	waitFor(t, "delivery after the reload", func() bool { return len(delivered(t, maildir)) == 1 })
	waitFor(t, "an empty queue", func() bool {
		msgs, _ := filepath.Glob(filepath.Join(qdir, "*.msg"))
		return len(msgs) == 0
	})
	if got := delivered(t, maildir)[0]; !bytes.Contains(got, []byte("first line\r\n")) {
		t.Errorf("delivered:\n%s", got)
	}
}
