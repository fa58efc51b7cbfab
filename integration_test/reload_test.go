package integration_test

import (
	"bytes"
	"fmt"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
)

// reloadConfig is a JSON config with the admin API on adminPort.
func reloadConfig(adminPort, smtpPort int, hostname, maildir string) []byte {
	return []byte(fmt.Sprintf(`{
		"admin": {"listen": "127.0.0.1:%d", "config": {"persist": false}},
		"apps": {"layer4": {"servers": {"smtp": {
			"listen": ["127.0.0.1:%d"],
			"routes": [{"handle": [{
				"handler": "esmtp",
				"hostname": %q,
				"handlers": [{"handler": "maildir", "path": %q}]
			}]}]
		}}}}
	}`, adminPort, smtpPort, hostname, maildir))
}

// TestReloadWithSessionOpen reloads the config through the admin API (POST
// /load) while a session is in the middle of DATA: the session finishes on
// the configuration it started with, then is closed with 421 4.3.2; new
// sessions get the new configuration.
func TestReloadWithSessionOpen(t *testing.T) {
	adminPort, smtpPort := freePort(t), freePort(t)
	dirA, dirB := filepath.Join(t.TempDir(), "a"), filepath.Join(t.TempDir(), "b")
	load(t, reloadConfig(adminPort, smtpPort, "a.example.test", dirA))
	addr := fmt.Sprintf("127.0.0.1:%d", smtpPort)
	waitListening(t, addr)

	old := dial(t, addr)
	if g := old.expect("220 ")[0]; !strings.Contains(g, "a.example.test") {
		t.Fatalf("greeting %q", g)
	}
	old.send("EHLO client.test\r\n")
	old.expect("250 ")
	old.send("MAIL FROM:<a@client.test>\r\n")
	old.expect("250 ")
	old.send("RCPT TO:<b@example.test>\r\n")
	old.expect("250 ")
	old.send("DATA\r\n")
	old.expect("354 ")
	wire := stuffed(message)
	half := len(wire) / 2
	old.send(wire[:half])

	resp, err := http.Post(fmt.Sprintf("http://127.0.0.1:%d/load", adminPort), "application/json",
		bytes.NewReader(reloadConfig(adminPort, smtpPort, "b.example.test", dirB)))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("POST /load: %s", resp.Status)
	}

	fresh := dial(t, addr)
	if g := fresh.expect("220 ")[0]; !strings.Contains(g, "b.example.test") {
		t.Fatalf("a session started after the reload got greeting %q, want the new hostname", g)
	}

	old.send(wire[half:] + ".\r\n")
	old.expect("250 2.0.0")
	old.send("NOOP\r\n")
	old.expect("421 4.3.2")

	if files := delivered(t, dirA); len(files) != 1 {
		t.Fatalf("old configuration's Maildir has %d messages, want 1", len(files))
	} else {
		splitReceived(t, files[0], "a.example.test", []byte(message))
	}

	fresh.send("EHLO client.test\r\nMAIL FROM:<a@client.test>\r\nRCPT TO:<b@example.test>\r\nDATA\r\n")
	fresh.expect("250 ")
	fresh.expect("250 ")
	fresh.expect("250 ")
	fresh.expect("354 ")
	fresh.send(stuffed(message) + ".\r\nQUIT\r\n")
	fresh.expect("250 2.0.0")
	fresh.expect("221 ")
	if files := delivered(t, dirB); len(files) != 1 {
		t.Fatalf("new configuration's Maildir has %d messages, want 1", len(files))
	} else {
		splitReceived(t, files[0], "b.example.test", []byte(message))
	}
}
