package relay

import (
	"net"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/miekg/dns"

	"github.com/caddy-esmtp/caddy-esmtp/dnscache"
	"github.com/caddy-esmtp/caddy-esmtp/internal/dnstest"
	"github.com/caddy-esmtp/caddy-esmtp/internal/smtptest"
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

// TestMXJudgeAddsOtherDomain checks that a recipient a judge adds in
// another domain goes in an upstream transaction of its own, to that
// domain's mail servers, and that the log line names both.
func TestMXJudgeAddsOtherDomain(t *testing.T) {
	up := startUpstream(t, upstreamOpts{})
	resolver := dnsServer(t,
		"a.test. 60 IN MX 10 mx.a.test.",
		"mx.a.test. 60 IN A 127.0.0.1",
		"b.test. 60 IN A 127.0.0.1",
	)
	r := provisioned(t, &Relay{To: "mx", Resolver: resolver, MXPort: mustPort(t, up.addr), Domains: []string{"a.test", "b.test"}})
	archive := smtptest.Judge(func(s *session.Session) {
		s.Transaction().AddRecipient(session.Path{Mailbox: "archive@b.test", Local: "archive", Domain: "b.test"}, nil)
	})
	base, logs := observed()
	c, _ := dial(t, serve(t, base, archive, r))
	if got := send(t, c, "a@client.example", "one@a.test", "two@a.test"); !strings.HasPrefix(got, "250 2.0.0") {
		t.Fatalf("end of data: %q", got)
	}
	msgs := up.messages()
	if len(msgs) != 2 || !slices.Equal(msgs[0].rcpts, []string{"one@a.test", "two@a.test"}) ||
		!slices.Equal(msgs[1].rcpts, []string{"archive@b.test"}) {
		t.Fatalf("upstream got %+v", msgs)
	}
	if n := up.connections(); n != 2 {
		t.Errorf("%d upstream connections, want 2", n)
	}
	f := messageLog(t, logs, 1)
	if want := up.addr + ", " + up.addr; f["relay"] != want || strings.Count(f["relay_reply"].(string), "; ") != 1 {
		t.Errorf("log line: relay %q, relay_reply %q", f["relay"], f["relay_reply"])
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
	// The certificate does not name localhost.u.test: without require_tls
	// it is sent all the same, encrypted (opportunistic TLS, RFC 7435)...
	if got := send(t, c, "a@client.example", "x@u.test"); !strings.HasPrefix(got, "250 2.0.0") {
		t.Fatalf("end of data: %q", got)
	}
	if msgs := up.messages(); len(msgs) != 2 || !msgs[1].tls {
		t.Fatalf("upstream got %+v", msgs)
	}
	// ...and with require_tls it is refused, not sent.
	on := true
	r = provisioned(t, &Relay{To: "mx", Resolver: resolver, MXPort: mustPort(t, up.addr), TLSCA: certs(t).caFile,
		Domains: []string{"t.test", "u.test"}, RequireTLS: &on})
	c, _ = dial(t, serve(t, session.Config{}, r))
	c.Cmd("MAIL FROM:<a@client.example>", "250 2.1.0")
	c.Cmd("RCPT TO:<x@u.test>", "451 4.7.5 ")
	c.Cmd("RSET", "250 ")
	if got := send(t, c, "a@client.example", "x@t.test"); !strings.HasPrefix(got, "250 2.0.0") {
		t.Fatalf("require_tls, verified: end of data: %q", got)
	}
}

// TestMXOpportunisticTLS checks that delivery to MX uses STARTTLS when
// offered without requiring the certificate to verify (RFC 7435; Postfix's
// "may" level), logs whether it verified, and that require_tls and a smart
// host still refuse a certificate that does not.
func TestMXOpportunisticTLS(t *testing.T) {
	up := startUpstream(t, upstreamOpts{tls: true}) // signed by the test CA: trusted only with tls_ca
	resolver := dnsServer(t,
		"t.test. 60 IN MX 10 mx.test.",
		"mx.test. 60 IN A 127.0.0.1",
	)
	mx := func(o Relay) *Relay {
		o.To, o.Resolver, o.MXPort, o.Domains = "mx", resolver, mustPort(t, up.addr), []string{"t.test"}
		return provisioned(t, &o)
	}

	cfg, logs := observed()
	c, _ := dial(t, serve(t, cfg, mx(Relay{})))
	if got := send(t, c, "a@client.example", "x@t.test"); !strings.HasPrefix(got, "250 2.0.0") {
		t.Fatalf("untrusted certificate: end of data: %q", got)
	}
	if msgs := up.messages(); len(msgs) != 1 || !msgs[0].tls {
		t.Fatalf("upstream got %+v, want one message over TLS", msgs)
	}
	if f := messageLog(t, logs, 1); f["relay_tls"] != true || f["relay_tls_verified"] != false {
		t.Errorf("per-message log: relay_tls %v, relay_tls_verified %v; want true, false", f["relay_tls"], f["relay_tls_verified"])
	}

	// The same MX with its CA trusted: verified, and logged so.
	cfg, logs = observed()
	c, _ = dial(t, serve(t, cfg, mx(Relay{TLSCA: certs(t).caFile})))
	if got := send(t, c, "a@client.example", "x@t.test"); !strings.HasPrefix(got, "250 2.0.0") {
		t.Fatalf("trusted certificate: end of data: %q", got)
	}
	if f := messageLog(t, logs, 1); f["relay_tls"] != true || f["relay_tls_verified"] != true {
		t.Errorf("per-message log: relay_tls %v, relay_tls_verified %v; want true, true", f["relay_tls"], f["relay_tls_verified"])
	}

	// require_tls asks for a verified certificate.
	on := true
	c, _ = dial(t, serve(t, session.Config{}, mx(Relay{RequireTLS: &on})))
	c.Cmd("MAIL FROM:<a@client.example>", "250 2.1.0")
	c.Cmd("RCPT TO:<x@t.test>", "451 4.7.5 ")

	// A smart host is verified by default.
	sh := provisioned(t, &Relay{To: "smtp://" + up.addr, Domains: []string{"t.test"}})
	c, _ = dial(t, serve(t, session.Config{}, sh))
	c.Cmd("MAIL FROM:<a@client.example>", "250 2.1.0")
	c.Cmd("RCPT TO:<x@t.test>", "451 4.7.5 ")

	if n := len(up.messages()); n != 2 {
		t.Fatalf("upstream got %d messages, want 2", n)
	}
}

// TestMXInternationalDomain relays to a domain given as a U-label
// (bücher.example, with SMTPUTF8): DNS is asked for its A-label, a domains
// entry in either form matches a recipient in either form, and an upstream
// without SMTPUTF8 gets the A-label, while an address that cannot be made
// ASCII (a non-ASCII local part) or a header that is not ASCII is refused
// permanently.
func TestMXInternationalDomain(t *testing.T) {
	resolver := dnsServer(t,
		"xn--bcher-kva.example. 60 IN MX 10 mx.xn--bcher-kva.example.",
		"mx.xn--bcher-kva.example. 60 IN A 127.0.0.1",
	)

	// An upstream with SMTPUTF8, and domains as a U-label.
	utf := startUpstream(t, upstreamOpts{utf8: true})
	r := provisioned(t, &Relay{To: "mx", Resolver: resolver, MXPort: mustPort(t, utf.addr), Domains: []string{"bücher.example"}})
	c, _ := dial(t, serve(t, session.Config{}, r))
	c.Cmd("MAIL FROM:<a@client.example> SMTPUTF8", "250 2.1.0")
	c.Cmd("RCPT TO:<user@bücher.example>", "250 2.1.5")
	c.Cmd("RCPT TO:<other@xn--bcher-kva.example>", "250 2.1.5") // the same domain: the same transaction
	c.Cmd("RCPT TO:<ü@BÜCHER.example>", "250 2.1.5")
	c.Cmd("DATA", "354 ")
	c.Send(stuff(message))
	c.Expect("250 2.0.0")
	msgs := utf.messages()
	if len(msgs) != 1 || !msgs[0].mailOpts.UTF8 ||
		!slices.Equal(msgs[0].rcpts, []string{"user@bücher.example", "other@xn--bcher-kva.example", "ü@BÜCHER.example"}) {
		t.Fatalf("upstream with SMTPUTF8 got %+v", msgs)
	}

	// An upstream without SMTPUTF8, and domains as an A-label.
	plain := startUpstream(t, upstreamOpts{})
	r = provisioned(t, &Relay{To: "mx", Resolver: resolver, MXPort: mustPort(t, plain.addr), Domains: []string{"xn--bcher-kva.example"}})
	c, _ = dial(t, serve(t, session.Config{}, r))
	c.Cmd("MAIL FROM:<a@exämple.test> SMTPUTF8", "250 2.1.0")
	c.Cmd("RCPT TO:<user@bücher.example>", "250 2.1.5")
	c.Cmd("RCPT TO:<ü@bücher.example>", "553 5.6.7 ")
	c.Cmd("RCPT TO:<two@xn--bcher-kva.example>", "250 2.1.5")
	c.Cmd("DATA", "354 ")
	c.Send(stuff(message))
	c.Expect("250 2.0.0")
	msgs = plain.messages()
	if len(msgs) != 1 || msgs[0].mailOpts.UTF8 || msgs[0].from != "a@xn--exmple-cua.test" ||
		!slices.Equal(msgs[0].rcpts, []string{"user@xn--bcher-kva.example", "two@xn--bcher-kva.example"}) {
		t.Fatalf("upstream without SMTPUTF8 got %+v", msgs)
	}
	splitReceived(t, msgs[0].data, message)

	// A header that needs SMTPUTF8: refused at end of data, and the
	// upstream does not get it.
	c.Cmd("MAIL FROM:<a@client.example> SMTPUTF8", "250 2.1.0")
	c.Cmd("RCPT TO:<user@bücher.example>", "250 2.1.5")
	c.Cmd("DATA", "354 ")
	c.Send(stuff("Subject: Grüße\r\n\r\nHallo\r\n"))
	c.Expect("550 5.6.9 ")
	// A sender whose local part is not ASCII.
	c.Cmd("MAIL FROM:<ä@client.example> SMTPUTF8", "250 2.1.0")
	c.Cmd("RCPT TO:<user@bücher.example>", "553 5.6.7 ")
	c.Cmd("RSET", "250 ")
	c.Cmd("MAIL FROM:<a@client.example> SMTPUTF8", "250 2.1.0")
	c.Cmd("RCPT TO:<last@bücher.example>", "250 2.1.5")
	c.Cmd("DATA", "354 ")
	c.Send(stuff(message))
	c.Expect("250 2.0.0")
	if msgs = plain.messages(); len(msgs) != 2 || !slices.Equal(msgs[1].rcpts, []string{"last@xn--bcher-kva.example"}) {
		t.Fatalf("upstream without SMTPUTF8 got %+v", msgs)
	}
}

func mustPort(t *testing.T, addr string) int {
	t.Helper()
	n, err := strconv.Atoi(port(addr))
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// TestMXHandlerResolver: without its own resolver, relay finds the mail
// servers with the esmtp handler's (Config.Resolver); its own overrides.
func TestMXHandlerResolver(t *testing.T) {
	up := startUpstream(t, upstreamOpts{})
	ds := dnstest.Start(t,
		"a.test. 60 IN MX 10 mx.a.test.",
		"mx.a.test. 60 IN A 127.0.0.1",
	)
	cache, err := dnscache.New([]string{ds.Addr}, dnscache.Options{})
	if err != nil {
		t.Fatal(err)
	}
	r := provisioned(t, &Relay{To: "mx", MXPort: mustPort(t, up.addr), Domains: []string{"a.test"}})
	c, _ := dial(t, serve(t, session.Config{Resolver: cache}, r))
	for range 2 {
		if got := send(t, c, "a@client.example", "one@a.test"); !strings.HasPrefix(got, "250 2.0.0") {
			t.Fatalf("end of data: %q", got)
		}
	}
	if n := len(up.messages()); n != 2 {
		t.Errorf("upstream got %d messages, want 2", n)
	}
	if n := ds.Queries("a.test", dns.TypeMX); n != 1 {
		t.Errorf("MX asked %d times, want 1 (then cached)", n)
	}

	// Its own resolver knows no a.test: the recipient is refused.
	r = provisioned(t, &Relay{To: "mx", Resolver: dnstest.Start(t).Addr, MXPort: mustPort(t, up.addr), Domains: []string{"a.test"}})
	c, _ = dial(t, serve(t, session.Config{Resolver: cache}, r))
	c.Cmd("MAIL FROM:<a@client.example>", "250 2.1.0")
	c.Cmd("RCPT TO:<one@a.test>", "550 5.1.2 ")
}
