package integration_test

import (
	"strings"
	"testing"

	"github.com/caddy-esmtp/caddy-esmtp/internal/dnstest"
)

// TestSPFResolvers: in real Caddy, spf looks the sender's record up through
// the handler's resolvers (here a local DNS server): a sender whose domain
// permits the client gets the message delivered with spf=pass in its
// Authentication-Results field; one whose domain forbids it is refused
// with 550 5.7.23 under reject_fail; a record that cannot be had
// (SERVFAIL) is a temperror, deferred under defer_temperror.
func TestSPFResolvers(t *testing.T) {
	dns := dnstest.Start(t,
		`client.test. 60 IN TXT "v=spf1 ip4:127.0.0.1 -all"`,
		`forged.test. 60 IN TXT "v=spf1 ip4:192.0.2.1 -all"`,
	)
	dns.ServFail("broken.test")
	addr, maildir := startCaddyfile(t, esmtpCaddyfile(`
					resolvers `+dns.Addr+`
					spf {
						reject_fail
						defer_temperror
					}
					maildir %MAIL%
`))
	c := dial(t, addr)
	c.expect("220 ")
	c.send("EHLO client.test\r\n")
	c.expect("250 ")
	c.send("MAIL FROM:<a@forged.test>\r\n")
	c.expect("550 5.7.23")
	c.send("MAIL FROM:<a@broken.test>\r\n")
	c.expect("451 4.4.3")
	c.send("MAIL FROM:<a@client.test>\r\nRCPT TO:<b@example.test>\r\nDATA\r\n")
	c.expect("250 2.1.0")
	c.expect("250 2.1.5")
	c.expect("354 ")
	c.send(stuffed(message) + ".\r\nQUIT\r\n")
	c.expect("250 2.0.0")
	c.expect("221 ")
	files := delivered(t, maildir)
	if len(files) != 1 {
		t.Fatalf("%d messages delivered, want 1", len(files))
	}
	want := "Authentication-Results: mx.example.test;\r\n\tspf=pass smtp.mailfrom=a@client.test\r\nReceived: "
	if !strings.HasPrefix(string(files[0]), want) {
		t.Fatalf("delivered message starts %q, want %q", files[0][:min(len(files[0]), 120)], want)
	}
}
