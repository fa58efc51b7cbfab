package relay

import (
	"net"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/miekg/dns"

	"github.com/caddy-esmtp/caddy-esmtp/session"
)

// dnsServer serves the records on loopback UDP until the test ends and
// returns its address. Names without a record are NXDOMAIN.
func dnsServer(t *testing.T, records ...string) string {
	t.Helper()
	var zone []dns.RR
	for _, r := range records {
		rr, err := dns.NewRR(r)
		if err != nil {
			t.Fatalf("record %q: %v", r, err)
		}
		zone = append(zone, rr)
	}
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &dns.Server{PacketConn: pc, Handler: dns.HandlerFunc(func(w dns.ResponseWriter, req *dns.Msg) {
		m := new(dns.Msg)
		m.SetReply(req)
		m.Authoritative = true
		known := false
		for _, q := range req.Question {
			for _, rr := range zone {
				if strings.EqualFold(rr.Header().Name, q.Name) {
					known = true
					if rr.Header().Rrtype == q.Qtype {
						m.Answer = append(m.Answer, rr)
					}
				}
			}
		}
		if !known {
			m.Rcode = dns.RcodeNameError
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

// TestMX relays to the mail servers found in DNS: by preference (the first
// one does not answer), the domain itself without MX, null MX, no such
// domain, an address literal, and one domain per transaction.
func TestMX(t *testing.T) {
	up := startUpstream(t, upstreamOpts{})
	resolver := dnsServer(t,
		"a.test. 60 IN MX 10 mx1.a.test.",
		"a.test. 60 IN MX 20 mx2.a.test.",
		"mx1.a.test. 60 IN A 127.0.0.2", // nothing listens there
		"mx2.a.test. 60 IN A 127.0.0.1",
		"b.test. 60 IN A 127.0.0.1", // no MX: the domain itself
		"null.test. 60 IN MX 0 .",
		"broken.test. 60 IN MX 10 nowhere.test.",
	)
	r := provisioned(t, &Relay{To: "mx", Resolver: resolver, MXPort: mustPort(t, up.addr),
		Domains: []string{"a.test", "b.test", "null.test", "none.test", "broken.test", "[127.0.0.1]"}})
	c, _ := dial(t, serve(t, session.Config{}, r))

	c.Cmd("MAIL FROM:<a@client.example>", "250 2.1.0")
	c.Cmd("RCPT TO:<null@null.test>", "556 5.1.10 ")
	c.Cmd("RCPT TO:<x@none.test>", "550 5.1.2 ")
	c.Cmd("RCPT TO:<x@broken.test>", "451 4.4.3 ")
	c.Cmd("RCPT TO:<one@a.test>", "250 2.1.5")
	c.Cmd("RCPT TO:<two@A.TEST>", "250 2.1.5")
	c.Cmd("RCPT TO:<x@b.test>", "452 4.5.3 ")
	c.Cmd("DATA", "354 ")
	c.Send(stuff(message))
	c.Expect("250 2.0.0")

	// The deferred recipient, in the next transaction.
	c.Cmd("MAIL FROM:<a@client.example>", "250 2.1.0")
	c.Cmd("RCPT TO:<x@b.test>", "250 2.1.5")
	c.Cmd("DATA", "354 ")
	c.Send(stuff(message))
	c.Expect("250 2.0.0")

	c.Cmd("MAIL FROM:<a@client.example>", "250 2.1.0")
	c.Cmd("RCPT TO:<lit@[127.0.0.1]>", "250 2.1.5")
	c.Cmd("DATA", "354 ")
	c.Send(stuff(message))
	c.Expect("250 2.0.0")

	msgs := up.messages()
	if len(msgs) != 3 {
		t.Fatalf("upstream got %d messages, want 3", len(msgs))
	}
	for i, want := range [][]string{{"one@a.test", "two@A.TEST"}, {"x@b.test"}, {"lit@[127.0.0.1]"}} {
		if !slices.Equal(msgs[i].rcpts, want) {
			t.Errorf("message %d to %q, want %q", i, msgs[i].rcpts, want)
		}
		splitReceived(t, msgs[i].data, message)
	}
}

// TestMXSTARTTLS checks that STARTTLS is used with an MX that offers it,
// with its certificate verified against the MX host name.
func TestMXSTARTTLS(t *testing.T) {
	up := startUpstream(t, upstreamOpts{tls: true})
	resolver := dnsServer(t,
		"t.test. 60 IN MX 10 mx.test.",
		"mx.test. 60 IN A 127.0.0.1",
		"u.test. 60 IN MX 10 localhost.u.test.",
		"localhost.u.test. 60 IN A 127.0.0.1",
	)
	r := provisioned(t, &Relay{To: "mx", Resolver: resolver, MXPort: mustPort(t, up.addr), TLSCA: certs(t).caFile,
		Domains: []string{"t.test", "u.test"}})
	c, _ := dial(t, serve(t, session.Config{}, r))
	c.Cmd("MAIL FROM:<a@client.example>", "250 2.1.0")
	c.Cmd("RCPT TO:<x@t.test>", "250 2.1.5")
	c.Cmd("DATA", "354 ")
	c.Send(stuff(message))
	c.Expect("250 2.0.0")
	if msgs := up.messages(); len(msgs) != 1 || !msgs[0].tls {
		t.Fatalf("upstream got %+v", msgs)
	}
	// The certificate does not name localhost.u.test: refused, not sent
	// in the clear.
	c.Cmd("MAIL FROM:<a@client.example>", "250 2.1.0")
	c.Cmd("RCPT TO:<x@u.test>", "451 4.7.5 ")
}

func mustPort(t *testing.T, addr string) int {
	t.Helper()
	n, err := strconv.Atoi(port(addr))
	if err != nil {
		t.Fatal(err)
	}
	return n
}
