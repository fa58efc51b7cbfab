package integration_test

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/caddy-esmtp/caddy-esmtp/internal/dkimtest"
	"github.com/caddy-esmtp/caddy-esmtp/internal/dnstest"
)

// TestInboundAuthentication runs the configuration in real Caddy:
// a submission listener that signs with dkim_sign and relays to an inbound
// MX that checks iprev, spf, dkim and dmarc against a local DNS server
// (its `resolvers`) and delivers into a Maildir. A message through the
// submission listener arrives with one Authentication-Results field saying
// pass for all four, and dkimpy verifies our signature on the delivered
// copy; a forged field claiming the MX's authserv-id is gone. A message
// sent to the MX directly whose From: domain publishes p=reject and that
// nobody signed is refused with 550 5.7.1.
func TestInboundAuthentication(t *testing.T) {
	python := dkimtest.Python(t)
	keys := dkimtest.GenKeys(t)
	keyFile := dkimtest.WriteFile(t, "s1.pem", dkimtest.PKCS8(keys.RSA))
	dns := dnstest.Start(t,
		`sender.test. 60 IN TXT "v=spf1 ip4:127.0.0.1 -all"`,
		`_dmarc.sender.test. 60 IN TXT "v=DMARC1; p=reject"`,
		`strict.test. 60 IN TXT "v=spf1 ip4:192.0.2.1 -all"`,
		`_dmarc.strict.test. 60 IN TXT "v=DMARC1; p=reject"`,
		"1.0.0.127.in-addr.arpa. 60 IN PTR mail.sender.test.",
		"mail.sender.test. 60 IN A 127.0.0.1",
	)
	dns.SetTXT("s1._domainkey.sender.test", dkimtest.RSARecord(&keys.RSA.PublicKey))

	mxPort, subPort := freePort(t), freePort(t)
	maildir := filepath.Join(t.TempDir(), "mail")
	load(t, adapt(t, fmt.Sprintf(`{
	admin off
	persist_config off
	layer4 {
		127.0.0.1:%d {
			route {
				esmtp {
					hostname mx.example.test
					resolvers %s
					iprev
					spf
					dkim
					dmarc
					maildir %s
				}
			}
		}
		127.0.0.1:%d {
			route {
				esmtp {
					hostname submit.sender.test
					dkim_sign sender.test s1 %s
					relay smtp://127.0.0.1:%d {
						require_tls off
						relay_networks 127.0.0.1/32
					}
				}
			}
		}
	}
}
`, mxPort, dns.Addr, maildir, subPort, keyFile, mxPort)))
	mx, sub := fmt.Sprintf("127.0.0.1:%d", mxPort), fmt.Sprintf("127.0.0.1:%d", subPort)
	waitListening(t, mx)
	waitListening(t, sub)

	msg := "From: Alice <alice@sender.test>\r\n" +
		"To: bob@example.test\r\n" +
		"Subject: signed on the way out\r\n" +
		"Authentication-Results: mx.example.test; dkim=pass header.d=forged.test\r\n" +
		"\r\n" +
		"hello\r\n"
	c := dial(t, sub)
	c.expect("220 ")
	c.send("EHLO mail.sender.test\r\nMAIL FROM:<alice@sender.test>\r\nRCPT TO:<bob@example.test>\r\nDATA\r\n")
	c.expect("250 ")
	c.expect("250 2.1.0")
	c.expect("250 2.1.5")
	c.expect("354 ")
	c.send(stuffed(msg) + ".\r\nQUIT\r\n")
	c.expect("250 2.0.0")
	c.expect("221 ")

	files := delivered(t, maildir)
	if len(files) != 1 {
		t.Fatalf("%d messages delivered, want 1", len(files))
	}
	got := string(files[0])
	want := "Authentication-Results: mx.example.test;\r\n" +
		"\tiprev=pass policy.iprev=127.0.0.1;\r\n" +
		"\tspf=pass smtp.mailfrom=alice@sender.test;\r\n" +
		"\tdkim=pass header.d=sender.test header.s=s1 header.a=rsa-sha256;\r\n" +
		"\tdmarc=pass header.from=sender.test policy.dmarc=reject\r\n"
	if !strings.HasPrefix(got, want) {
		t.Fatalf("delivered message starts\n%q\nwant\n%q", got[:min(len(got), len(want)+80)], want)
	}
	if strings.Count(got, "Authentication-Results:") != 1 {
		t.Errorf("the forged Authentication-Results field was kept:\n%s", got)
	}
	// The copy in the Maildir still verifies with an independent
	// implementation: what was signed is what was delivered.
	if !dkimtest.PyVerify(t, python, "s1._domainkey.sender.test", dkimtest.RSARecord(&keys.RSA.PublicKey), files[0]) {
		t.Errorf("dkimpy does not verify our signature on the delivered message:\n%s", got)
	}

	// Straight to the MX, from an address its domain's SPF does not
	// allow, unsigned: DMARC p=reject refuses it.
	c = dial(t, mx)
	c.expect("220 ")
	c.send("EHLO mail.sender.test\r\nMAIL FROM:<carol@strict.test>\r\nRCPT TO:<bob@example.test>\r\nDATA\r\n")
	c.expect("250 ")
	c.expect("250 2.1.0")
	c.expect("250 2.1.5")
	c.expect("354 ")
	c.send("From: carol@strict.test\r\nSubject: unsigned\r\n\r\nhi\r\n.\r\n")
	c.expect("550 5.7.1")
	if n := len(delivered(t, maildir)); n != 1 {
		t.Fatalf("%d messages in the Maildir after the refused one, want 1", n)
	}
	if entries, _ := os.ReadDir(filepath.Join(maildir, "tmp")); len(entries) != 0 {
		t.Errorf("tmp/ holds %d files", len(entries))
	}
}
