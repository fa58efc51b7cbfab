package integration_test

import (
	"fmt"
	"path/filepath"
	"strings"
	"testing"

	"github.com/caddy-esmtp/caddy-esmtp/internal/dnstest"
)

// TestIPRevResolvers runs iprev in real Caddy with the handler's
// `resolvers` pointing at a DNS server on loopback where 127.0.0.1 is
// mail.client.test and back: the message reaches the Maildir with
// "iprev=pass policy.iprev=127.0.0.1" in its Authentication-Results. A
// first server that answers SERVFAIL is failed over; on a second handler,
// where 127.0.0.1's name does not lead back refuses MAIL
// with reject_fail.
func TestIPRevResolvers(t *testing.T) {
	good := dnstest.Start(t,
		"1.0.0.127.in-addr.arpa. 60 IN PTR mail.client.test.",
		"mail.client.test. 60 IN A 127.0.0.1",
	)
	broken := dnstest.Start(t)
	broken.ServFail("1.0.0.127.in-addr.arpa")
	broken.ServFail("mail.client.test")
	liar := dnstest.Start(t,
		"1.0.0.127.in-addr.arpa. 60 IN PTR mail.client.test.",
		"mail.client.test. 60 IN A 192.0.2.1",
	)
	passPort, rejectPort := freePort(t), freePort(t)
	maildir := filepath.Join(t.TempDir(), "mail")
	load(t, adapt(t, fmt.Sprintf(`{
	admin off
	persist_config off
	layer4 {
		127.0.0.1:%d {
			route {
				esmtp {
					hostname mx.example.test
					resolvers %s %s
					iprev
					maildir %s
				}
			}
		}
		127.0.0.1:%d {
			route {
				esmtp {
					hostname mx.example.test
					resolvers %s
					iprev reject_fail
					discard
				}
			}
		}
	}
}
`, passPort, broken.Addr, good.Addr, maildir, rejectPort, liar.Addr)))

	c := dial(t, fmt.Sprintf("127.0.0.1:%d", passPort))
	c.expect("220 ")
	c.send("EHLO client.test\r\nMAIL FROM:<a@client.test>\r\nRCPT TO:<b@example.test>\r\nDATA\r\n")
	c.expect("250 ")
	c.expect("250 2.1.0")
	c.expect("250 2.1.5")
	c.expect("354 ")
	c.send(stuffed(message) + ".\r\nQUIT\r\n")
	c.expect("250 2.0.0")
	c.expect("221 ")
	files := delivered(t, maildir)
	if len(files) != 1 {
		t.Fatalf("%d files delivered, want 1", len(files))
	}
	if want := "Authentication-Results: mx.example.test;\r\n\tiprev=pass policy.iprev=127.0.0.1\r\n"; !strings.Contains(string(files[0]), want) {
		t.Errorf("delivered message has no %q:\n%s", want, files[0])
	}

	c = dial(t, fmt.Sprintf("127.0.0.1:%d", rejectPort))
	c.expect("220 ")
	c.send("EHLO client.test\r\nMAIL FROM:<a@client.test>\r\nQUIT\r\n")
	c.expect("250 ")
	c.expect("550 5.7.25 Client host rejected: cannot find your hostname, [127.0.0.1]")
	c.expect("221 ")
}
