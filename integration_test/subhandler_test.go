package integration_test

import (
	"bytes"
	"fmt"
	"strings"
	"testing"

	_ "github.com/caddy-esmtp/caddy-esmtp/examples/subhandler"
)

// TestExampleSubhandler runs the third-party sub-handler of
// examples/subhandler in front of maildir in real Caddy.
func TestExampleSubhandler(t *testing.T) {
	addr, maildir := startCaddyfile(t, esmtpCaddyfile(`
					example_policy {
						reject nobody@example.test
						header X-Policy "checked by example_policy"
					}
					example_judge {
						refuse_word VIAGRA
					}
					maildir %MAIL%
`))
	c := dial(t, addr)
	c.expect("220 ")
	c.send("EHLO client.test\r\nMAIL FROM:<a@client.test>\r\nRCPT TO:<Nobody@example.test>\r\nRCPT TO:<b@example.test>\r\nDATA\r\n")
	c.expect("250 ")
	c.expect("250 2.1.0")
	c.expect("550 5.1.1 No such user here")
	c.expect("250 2.1.5")
	c.expect("354 ")
	c.send(stuffed(message) + ".\r\nQUIT\r\n")
	c.expect("250 2.0.0")
	c.expect("221 ")
	// The judge refuses a message with its word, before any delivery.
	c = dial(t, addr)
	c.expect("220 ")
	c.send("EHLO client.test\r\nMAIL FROM:<a@client.test>\r\nRCPT TO:<b@example.test>\r\nDATA\r\n")
	c.expect("250 ")
	c.expect("250 2.1.0")
	c.expect("250 2.1.5")
	c.expect("354 ")
	c.send("Subject: offer\r\n\r\nbuy VIA" + "GRA now\r\n.\r\n")
	c.expect("550 5.7.1")
	files := delivered(t, maildir)
	if len(files) != 1 {
		t.Fatalf("%d files delivered, want 1", len(files))
	}
	// The judge's field is added at end of data, above our Received:.
	judged := fmt.Sprintf("X-Example-Judge: passed; %d body bytes\r\n", len(message)-strings.Index(message, "\r\n\r\n")-4)
	if !bytes.HasPrefix(files[0], []byte(judged)) {
		t.Fatalf("delivered message does not start with %q: %q", judged, files[0][:min(len(files[0]), 120)])
	}
	rcv := splitReceived(t, files[0][len(judged):], "mx.example.test", []byte("X-Policy: checked by example_policy\r\n"+message))
	if !strings.Contains(rcv, "for <b@example.test>") {
		t.Errorf("Received: field does not name the one accepted recipient: %q", rcv)
	}
}
