package integration_test

import (
	"strings"
	"testing"
	"time"

	"github.com/caddy-esmtp/caddy-esmtp/internal/filtertest"
)

// TestPolicyPostgrey: real Caddy asks a real postgrey through the policy
// sub-handler, over loopback TCP. A new (client, sender, recipient)
// triplet is deferred (postgrey answers DEFER_IF_PERMIT: 450 4.2.0
// Greylisted); once postgrey's delay has passed the same triplet is
// accepted and the message delivered with postgrey's X-Greylist field
// on top (PREPEND). With postgrey gone, RCPT gets 451 4.3.0: never a
// silent pass. The three requests share one connection to postgrey.
func TestPolicyPostgrey(t *testing.T) {
	pg := filtertest.StartPostgrey(t, 1)
	addr, maildir := startCaddyfile(t, esmtpCaddyfile(`
					policy `+pg.Addr+` {
						timeout 10s
					}
					maildir %MAIL%
`))

	first := time.Now()
	c := dial(t, addr)
	c.expect("220 ")
	c.send("EHLO client.test\r\n")
	c.expect("250 ")
	c.send("MAIL FROM:<alice@sender.test>\r\n")
	c.expect("250 2.1.0")
	c.send("RCPT TO:<bob@example.test>\r\n")
	if got := c.reply(); !strings.HasPrefix(got[0], "450 ") && !strings.HasPrefix(got[0], "451 ") ||
		!strings.Contains(got[0], "Greylisted") {
		t.Fatalf("first try: %q, want 450/451 Greylisted\npostgrey:\n%s", got, pg.Output())
	}
	c.send("QUIT\r\n")
	c.expect("221 ")

	// Postgrey counts whole seconds: one more than its delay is past it.
	time.Sleep(time.Until(first.Add(time.Duration(pg.Delay+1) * time.Second)))

	c = dial(t, addr)
	c.expect("220 ")
	c.send("EHLO client.test\r\n")
	c.expect("250 ")
	c.send("MAIL FROM:<alice@sender.test>\r\n")
	c.expect("250 2.1.0")
	c.send("RCPT TO:<bob@example.test>\r\n")
	if got := c.reply(); !strings.HasPrefix(got[0], "250 ") {
		t.Fatalf("retry after the delay: %q, want 250\npostgrey:\n%s", got, pg.Output())
	}
	// A recipient postgrey has not seen is a new triplet: deferred, on
	// the same (reused) connection to postgrey.
	c.send("RCPT TO:<carol@example.test>\r\n")
	c.expect("450 ")
	c.send("DATA\r\n")
	c.expect("354 ")
	c.send(stuffed(message) + ".\r\n")
	c.expect("250 2.0.0")
	files := delivered(t, maildir)
	if len(files) != 1 {
		t.Fatalf("%d messages delivered, want 1", len(files))
	}
	if !strings.HasPrefix(string(files[0]), "X-Greylist: delayed ") || !strings.Contains(string(files[0]), "by postgrey-") {
		t.Errorf("delivered message starts %q, want postgrey's X-Greylist field", files[0][:min(len(files[0]), 120)])
	}

	// One connection for postgrey's readiness check, one for all three
	// requests: Net::Server logs each connection it accepts.
	if n := strings.Count(pg.Output(), "CONNECT TCP Peer"); n != 2 {
		t.Errorf("postgrey accepted %d connections, want 2 (the readiness check, then one reused)\n%s", n, pg.Output())
	}

	pg.Stop()
	c.send("MAIL FROM:<alice@sender.test>\r\n")
	c.expect("250 2.1.0")
	c.send("RCPT TO:<bob@example.test>\r\n")
	c.expect("451 4.3.0")
	c.send("QUIT\r\n")
	c.expect("221 ")
}
