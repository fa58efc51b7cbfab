package milter_test

import (
	"path/filepath"
	"strings"
	"testing"

	"github.com/caddy-esmtp/caddy-esmtp/internal/dkimtest"
	"github.com/caddy-esmtp/caddy-esmtp/internal/dnstest"
	"github.com/caddy-esmtp/caddy-esmtp/internal/filtertest"
)

// TestOpenDKIM: OpenDKIM as a milter of real Caddy signs a submission
// (from an internal host: the signature verifies with dkimpy) and
// verifies an inbound message signed elsewhere (from an outside client,
// by XCLIENT: its Authentication-Results field, dkim=pass, reaches the
// Maildir), looking the key up in the tests' DNS server.
func TestOpenDKIM(t *testing.T) {
	keys := dkimtest.GenKeys(t)
	rec := dkimtest.RSARecord(&keys.RSA.PublicKey)
	dns := dnstest.Start(t)
	dns.SetTXT("sel._domainkey.example.test", rec)
	dns.SetTXT("far._domainkey.example.org", rec)
	addr := filtertest.OpenDKIM(t, filtertest.OpenDKIMOptions{
		Domain: "example.test", Selector: "sel", KeyPEM: dkimtest.PKCS1(keys.RSA),
		DNS: dns.Addr, AuthservID: "mx.example.test",
	})
	py := dkimtest.Python(t)
	srv, dir := startCaddy(t, `
		xclient_networks 127.0.0.1
		milter `+addr+` {
			name opendkim
		}
		maildir %DIR%/{esmtp.rcpt.local}
	`)

	t.Run("Sign", func(t *testing.T) {
		c := hello(t, srv)
		c.cmd("MAIL FROM:<alice@example.test>", "250")
		c.cmd("RCPT TO:<signed@example.net>", "250")
		if r := c.data(message("to be signed")); !strings.HasPrefix(r, "250 ") {
			t.Fatalf("submission: %q", r)
		}
		m := one(t, filepath.Join(dir, "signed"))
		if !strings.Contains(header(m), "DKIM-Signature:") || !strings.Contains(header(m), "d=example.test") {
			t.Fatalf("not signed:\n%s", header(m))
		}
		if !dkimtest.PyVerify(t, py, "sel._domainkey.example.test", rec, []byte(m)) {
			t.Errorf("dkimpy does not verify OpenDKIM's signature:\n%s", m)
		}
		changed := strings.Replace(m, "Hello Bob", "Hello Eve", 1)
		if dkimtest.PyVerify(t, py, "sel._domainkey.example.test", rec, []byte(changed)) {
			t.Errorf("dkimpy verifies a changed message")
		}
	})

	t.Run("Verify", func(t *testing.T) {
		msg := strings.Replace(message("signed elsewhere"), "alice@example.test", "carol@example.org", 1)
		keyfile := dkimtest.WriteFile(t, "far.pem", dkimtest.PKCS1(keys.RSA))
		signed := dkimtest.PySign(t, py, "far", "example.org", keyfile, "rsa-sha256", []byte(msg)) + msg
		c := hello(t, srv)
		c.cmd("XCLIENT ADDR=203.0.113.5", "220")
		c.cmd("EHLO mx.example.org", "250")
		c.cmd("MAIL FROM:<carol@example.org>", "250")
		c.cmd("RCPT TO:<verified@example.test>", "250")
		if r := c.data(signed); !strings.HasPrefix(r, "250 ") {
			t.Fatalf("inbound: %q", r)
		}
		m := one(t, filepath.Join(dir, "verified"))
		h := header(m)
		i := strings.Index(h, "Authentication-Results: mx.example.test")
		if i < 0 || !strings.Contains(h[i:], "dkim=pass") || !strings.Contains(h[i:], "header.d=example.org") {
			t.Errorf("no dkim=pass from OpenDKIM:\n%s", h)
		}
		if strings.Count(h, "DKIM-Signature:") != 1 {
			t.Errorf("an inbound message was signed again:\n%s", h)
		}
	})
}
