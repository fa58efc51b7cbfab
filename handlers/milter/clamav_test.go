package milter_test

import (
	"path/filepath"
	"strings"
	"testing"

	"github.com/caddy-esmtp/caddy-esmtp/internal/filtertest"
)

// TestClamAV: clamav-milter (with clamd and a database made in the test)
// as a milter of real Caddy refuses a message carrying the EICAR test
// file, in the body or as a base64 attachment, and lets a clean one
// through (with its X-Virus-Scanned field).
func TestClamAV(t *testing.T) {
	addr := filtertest.ClamAVMilter(t)
	srv, dir := startCaddy(t, `
		milter `+addr+` {
			name clamav
		}
		maildir %DIR%/{esmtp.rcpt.local}
	`)
	c := hello(t, srv)

	c.cmd("MAIL FROM:<alice@example.test>", "250")
	c.cmd("RCPT TO:<bob@example.test>", "250")
	r := c.data(message("infected") + filtertest.EICAR + "\r\n")
	if !strings.HasPrefix(r, "5") {
		t.Errorf("EICAR in the body: %q, want a 5xx refusal", r)
	}

	c.cmd("MAIL FROM:<alice@example.test>", "250")
	c.cmd("RCPT TO:<bob@example.test>", "250")
	mime := "From: alice@example.test\r\nTo: bob@example.test\r\nSubject: attachment\r\nMIME-Version: 1.0\r\n" +
		"Content-Type: multipart/mixed; boundary=XX\r\n\r\n--XX\r\nContent-Type: text/plain\r\n\r\nsee attached\r\n" +
		"--XX\r\nContent-Type: application/octet-stream; name=eicar.com\r\nContent-Transfer-Encoding: base64\r\n\r\n" +
		"WDVPIVAlQEFQWzRcUFpYNTQoUF4pN0NDKTd9JEVJQ0FSLVNUQU5EQVJELUFOVElWSVJVUy1URVNU\r\nLUZJTEUhJEgrSCo=\r\n--XX--\r\n"
	if r := c.data(mime); !strings.HasPrefix(r, "5") {
		t.Errorf("EICAR attached: %q, want a 5xx refusal", r)
	}

	c.cmd("MAIL FROM:<alice@example.test>", "250")
	c.cmd("RCPT TO:<bob@example.test>", "250")
	if r := c.data(message("clean")); !strings.HasPrefix(r, "250 ") {
		t.Fatalf("clean message: %q", r)
	}
	m := one(t, filepath.Join(dir, "bob"))
	if !strings.Contains(m, "Subject: clean") || !strings.Contains(header(m), "X-Virus-Scanned:") {
		t.Errorf("clean message:\n%s", header(m))
	}
}
