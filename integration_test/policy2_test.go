package integration_test

import (
	"bytes"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/miekg/dns"
)

// TestRateLimitPolicy runs rate_limit in real Caddy: on one listener the
// third connection from 127.0.0.1 gets 421 4.7.0 and is closed; on
// another, the third RCPT gets 451 4.7.1 and so does the second MAIL,
// while the message in between is delivered.
func TestRateLimitPolicy(t *testing.T) {
	connPort, msgPort := freePort(t), freePort(t)
	maildir := filepath.Join(t.TempDir(), "mail")
	load(t, adapt(t, fmt.Sprintf(`{
	admin off
	persist_config off
	layer4 {
		127.0.0.1:%d {
			route {
				esmtp {
					hostname mx.example.test
					rate_limit {
						connections 2 1h
					}
					discard
				}
			}
		}
		127.0.0.1:%d {
			route {
				esmtp {
					hostname mx.example.test
					rate_limit {
						messages 1 1h
						recipients 2 1h
					}
					maildir %s
				}
			}
		}
	}
}
`, connPort, msgPort, maildir)))
	// caddy.Load returns once the listeners are bound. No waitListening
	// on connPort: its probe would be a counted connection.
	connAddr := fmt.Sprintf("127.0.0.1:%d", connPort)
	for range 2 {
		c := dial(t, connAddr)
		c.expect("220 ")
		c.send("QUIT\r\n")
		c.expect("221 ")
	}
	c := dial(t, connAddr)
	c.expect("421 4.7.0 Too many connections from your address")
	if l, err := c.r.ReadString('\n'); err == nil {
		t.Fatalf("got %q after the 421, want the connection closed", l)
	}

	addr := fmt.Sprintf("127.0.0.1:%d", msgPort)
	waitListening(t, addr)
	c = dial(t, addr)
	c.expect("220 ")
	c.send("EHLO client.test\r\nMAIL FROM:<a@client.test>\r\n")
	c.expect("250 ")
	c.expect("250 2.1.0")
	for _, want := range []string{"250 2.1.5", "250 2.1.5", "451 4.7.1 Too many recipients"} {
		c.send("RCPT TO:<b@example.test>\r\n")
		c.expect(want)
	}
	c.send("DATA\r\n")
	c.expect("354 ")
	c.send(stuffed(message) + ".\r\n")
	c.expect("250 2.0.0")
	c.send("MAIL FROM:<a@client.test>\r\n")
	c.expect("451 4.7.1 Too many messages")
	c.send("QUIT\r\n")
	c.expect("221 ")
	if files := delivered(t, maildir); len(files) != 1 {
		t.Fatalf("%d files delivered, want 1", len(files))
	}
}

// TestGreylistPolicy runs greylist in real Caddy with its default state
// file: a new triplet gets 451 4.7.1; after a reload through the admin API
// the retry is accepted (the reload kept the state) and a new triplet is
// still refused; after a stop, the state file holds the triplets, and a
// new start accepts the triplet first seen before the stop.
func TestGreylistPolicy(t *testing.T) {
	const delay = 50 * time.Millisecond
	adminPort, smtpPort := freePort(t), freePort(t)
	maildir := filepath.Join(t.TempDir(), "mail")
	cfg := adapt(t, fmt.Sprintf(`{
	admin 127.0.0.1:%d
	persist_config off
	layer4 {
		127.0.0.1:%d {
			route {
				esmtp {
					hostname mx.example.test
					greylist {
						delay %s
					}
					maildir %s
				}
			}
		}
	}
}
`, adminPort, smtpPort, delay, maildir))
	stateFile := filepath.Join(caddy.AppDataDir(), "esmtp", "greylist.json")
	// A sender of its own, so that a run with -count=2 starts afresh.
	from := fmt.Sprintf("<a%d@client.test>", time.Now().UnixNano())
	addr := fmt.Sprintf("127.0.0.1:%d", smtpPort)
	// try sends one message to the recipients; want are the RCPT replies.
	try := func(rcpts []string, want []string) {
		t.Helper()
		c := dial(t, addr)
		c.expect("220 ")
		c.send("EHLO client.test\r\nMAIL FROM:" + from + "\r\n")
		c.expect("250 ")
		c.expect("250 2.1.0")
		accepted := 0
		for i, r := range rcpts {
			c.send("RCPT TO:<" + r + ">\r\n")
			c.expect(want[i])
			if strings.HasPrefix(want[i], "250") {
				accepted++
			}
		}
		if accepted > 0 {
			c.send("DATA\r\n")
			c.expect("354 ")
			c.send(stuffed(message) + ".\r\n")
			c.expect("250 2.0.0")
		}
		c.send("QUIT\r\n")
		c.expect("221 ")
	}
	const greylisted = "451 4.7.1 Greylisted"

	load(t, cfg)
	waitListening(t, addr)
	try([]string{"first@example.test", "second@example.test"}, []string{greylisted, greylisted})
	time.Sleep(delay)

	// Reload the same configuration (forced, as `caddy reload --force`).
	req, _ := http.NewRequest(http.MethodPost, fmt.Sprintf("http://127.0.0.1:%d/load", adminPort), bytes.NewReader(cfg))
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Cache-Control", "must-revalidate")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("POST /load: %s", resp.Status)
	}
	try([]string{"first@example.test", "later@example.test"}, []string{"250 2.1.5", greylisted})

	// Stop, as at a restart: the state is saved.
	caddy.Stop()
	state, err := os.ReadFile(stateFile)
	if err != nil {
		t.Fatalf("no state file after stop: %v", err)
	}
	for _, r := range []string{"first@example.test", "second@example.test", "later@example.test"} {
		if !bytes.Contains(state, []byte(r)) {
			t.Errorf("the state file lacks %s:\n%s", r, state)
		}
	}
	time.Sleep(delay)
	load(t, cfg)
	waitListening(t, addr)
	try([]string{"later@example.test", "second@example.test", "first@example.test", "new@example.test"},
		[]string{"250 2.1.5", "250 2.1.5", "250 2.1.5", greylisted})
	if files := delivered(t, maildir); len(files) != 2 {
		t.Fatalf("%d files delivered, want 2", len(files))
	}
}

// TestDNSBLPolicy runs dnsbl in real Caddy against a DNS server on
// loopback that lists 127.0.0.1 in bl.test: at connect the client gets
// 554 5.7.1 naming the list and is disconnected; with `at rcpt` it may
// still write to postmaster; a list that does not name it lets it in.
func TestDNSBLPolicy(t *testing.T) {
	resolver := startBlocklist(t, "1.0.0.127.bl.test.")
	connectPort, rcptPort, cleanPort := freePort(t), freePort(t), freePort(t)
	maildir := filepath.Join(t.TempDir(), "mail")
	load(t, adapt(t, fmt.Sprintf(`{
	admin off
	persist_config off
	layer4 {
		127.0.0.1:%d {
			route {
				esmtp {
					hostname mx.example.test
					dnsbl bl.test {
						resolver %s
					}
					discard
				}
			}
		}
		127.0.0.1:%d {
			route {
				esmtp {
					hostname mx.example.test
					dnsbl bl.test {
						resolver %s
						at rcpt
					}
					maildir %s
				}
			}
		}
		127.0.0.1:%d {
			route {
				esmtp {
					hostname mx.example.test
					dnsbl clean.test {
						resolver %s
						timeout 2s
					}
					discard
				}
			}
		}
	}
}
`, connectPort, resolver, rcptPort, resolver, maildir, cleanPort, resolver)))

	c := dial(t, fmt.Sprintf("127.0.0.1:%d", connectPort))
	c.expect("554 5.7.1 Service unavailable; client [127.0.0.1] blocked using bl.test")
	if l, err := c.r.ReadString('\n'); err == nil {
		t.Fatalf("got %q after the 554, want the connection closed", l)
	}

	c = dial(t, fmt.Sprintf("127.0.0.1:%d", rcptPort))
	c.expect("220 ")
	c.send("EHLO client.test\r\nMAIL FROM:<a@client.test>\r\nRCPT TO:<b@example.test>\r\n")
	c.expect("250 ")
	c.expect("250 2.1.0")
	c.expect("554 5.7.1 Service unavailable; client [127.0.0.1] blocked using bl.test")
	c.send("RCPT TO:<postmaster@example.test>\r\nDATA\r\n")
	c.expect("250 2.1.5")
	c.expect("354 ")
	c.send(stuffed(message) + ".\r\nQUIT\r\n")
	c.expect("250 2.0.0")
	c.expect("221 ")
	if files := delivered(t, maildir); len(files) != 1 {
		t.Fatalf("%d files delivered, want 1", len(files))
	}

	c = dial(t, fmt.Sprintf("127.0.0.1:%d", cleanPort))
	c.expect("220 ")
	c.send("QUIT\r\n")
	c.expect("221 ")
}

// startBlocklist serves DNS on loopback UDP until the test ends: an A
// record 127.0.0.2 for each listed name (lower case, final dot), NXDOMAIN
// for any other. It returns the server's address.
func startBlocklist(t *testing.T, listed ...string) string {
	t.Helper()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &dns.Server{PacketConn: pc, Handler: dns.HandlerFunc(func(w dns.ResponseWriter, req *dns.Msg) {
		m := new(dns.Msg)
		q := req.Question[0]
		found := false
		for _, l := range listed {
			found = found || strings.EqualFold(q.Name, l)
		}
		switch {
		case !found:
			m.SetRcode(req, dns.RcodeNameError)
		default:
			m.SetReply(req)
			if q.Qtype == dns.TypeA {
				m.Answer = append(m.Answer, &dns.A{
					Hdr: dns.RR_Header{Name: q.Name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 60},
					A:   net.IPv4(127, 0, 0, 2),
				})
			}
		}
		w.WriteMsg(m)
	})}
	started := make(chan struct{})
	srv.NotifyStartedFunc = func() { close(started) }
	go srv.ActivateAndServe()
	<-started
	t.Cleanup(func() { srv.Shutdown() })
	return pc.LocalAddr().String()
}
