package relay

import (
	"bytes"
	"context"
	"crypto/x509"
	"fmt"
	"strings"
	"testing"

	"github.com/miekg/dns"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"

	"github.com/caddy-esmtp/caddy-esmtp/internal/dnstest"
	"github.com/caddy-esmtp/caddy-esmtp/session"
)

// tlsa is a TLSA record for the mail server host on port, made from cert.
func tlsa(t *testing.T, host string, port int, usage, selector, matching uint8, cert *x509.Certificate) dns.RR {
	t.Helper()
	rr := &dns.TLSA{Hdr: dns.RR_Header{Name: fmt.Sprintf("_%d._tcp.%s.", port, host), Rrtype: dns.TypeTLSA, Class: dns.ClassINET, Ttl: 60}}
	if err := rr.Sign(int(usage), int(selector), int(matching), cert); err != nil {
		t.Fatal(err)
	}
	return rr
}

// noClearText fails the test when the upstream read a MAIL command in
// clear (after TLS, what it reads is ciphertext).
func noClearText(t *testing.T, up *upstreamServer) {
	t.Helper()
	if raw := up.rawBytes(); bytes.Contains(bytes.ToUpper(raw), []byte("MAIL FROM")) {
		t.Errorf("the upstream got MAIL in clear: %q", raw)
	}
	if n := len(up.messages()); n != 0 {
		t.Errorf("the upstream got %d messages", n)
	}
}

// TestDANE relays to a mail server of d.test (secure zone: answers with
// the AD bit) whose TLSA records match its certificate or not: a match
// (DANE-EE, DANE-TA) is delivered over TLS, logged relay_tls_policy=dane;
// a mismatch, no STARTTLS, a DANE-TA chain without the MX host's name and
// a failed TLSA lookup defer (4.7.5, 4.4.3) and never send the message in
// clear; insecure records (no AD) leave TLS opportunistic; a secure TLSA
// RRset without a usable record (PKIX-EE) makes TLS mandatory without
// authentication.
func TestDANE(t *testing.T) {
	c := certs(t)
	for _, tc := range []struct {
		name     string
		up       upstreamOpts
		mx       string // the MX host (mx.d.test by default)
		insecure bool
		servfail bool
		tlsa     func(host string, port int) []dns.RR
		rcpt     string // the RCPT reply
		policy   string
		verified bool
	}{
		{name: "ee match", up: upstreamOpts{tls: true},
			tlsa: func(h string, p int) []dns.RR {
				return []dns.RR{tlsa(t, h, p, 3, 0, 1, c.caCert), tlsa(t, h, p, 3, 1, 1, c.leaf)}
			},
			rcpt: "250 2.1.5", policy: "dane", verified: true},
		{name: "ee full match", up: upstreamOpts{tls: true},
			tlsa: func(h string, p int) []dns.RR { return []dns.RR{tlsa(t, h, p, 3, 0, 0, c.leaf)} },
			rcpt: "250 2.1.5", policy: "dane", verified: true},
		{name: "ee mismatch", up: upstreamOpts{tls: true},
			tlsa: func(h string, p int) []dns.RR { return []dns.RR{tlsa(t, h, p, 3, 1, 1, c.caCert)} },
			rcpt: "451 4.7.5 "},
		{name: "no starttls", up: upstreamOpts{},
			tlsa: func(h string, p int) []dns.RR { return []dns.RR{tlsa(t, h, p, 3, 1, 1, c.leaf)} },
			rcpt: "451 4.7.5 "},
		{name: "ta match", up: upstreamOpts{tls: true, chain: true}, mx: "mx.test",
			tlsa: func(h string, p int) []dns.RR { return []dns.RR{tlsa(t, h, p, 2, 0, 1, c.caCert)} },
			rcpt: "250 2.1.5", policy: "dane", verified: true},
		{name: "ta not sent", up: upstreamOpts{tls: true}, mx: "mx.test",
			tlsa: func(h string, p int) []dns.RR { return []dns.RR{tlsa(t, h, p, 2, 0, 1, c.caCert)} },
			rcpt: "451 4.7.5 "},
		{name: "ta wrong name", up: upstreamOpts{tls: true, chain: true},
			tlsa: func(h string, p int) []dns.RR { return []dns.RR{tlsa(t, h, p, 2, 0, 1, c.caCert)} },
			rcpt: "451 4.7.5 "},
		{name: "ta record of the leaf", up: upstreamOpts{tls: true, chain: true}, mx: "mx.test",
			tlsa: func(h string, p int) []dns.RR { return []dns.RR{tlsa(t, h, p, 2, 0, 1, c.leaf)} },
			rcpt: "451 4.7.5 "},
		{name: "tlsa servfail", up: upstreamOpts{tls: true}, servfail: true,
			rcpt: "451 4.4.3 "},
		{name: "insecure mismatch", up: upstreamOpts{tls: true}, insecure: true,
			tlsa: func(h string, p int) []dns.RR { return []dns.RR{tlsa(t, h, p, 3, 1, 1, c.caCert)} },
			rcpt: "250 2.1.5", policy: "opportunistic"},
		{name: "secure, no tlsa", up: upstreamOpts{tls: true},
			rcpt: "250 2.1.5", policy: "opportunistic"},
		{name: "pkix only", up: upstreamOpts{tls: true},
			tlsa: func(h string, p int) []dns.RR { return []dns.RR{tlsa(t, h, p, 1, 1, 1, c.caCert)} },
			rcpt: "250 2.1.5", policy: "dane"},
		{name: "pkix only, no starttls", up: upstreamOpts{},
			tlsa: func(h string, p int) []dns.RR { return []dns.RR{tlsa(t, h, p, 1, 1, 1, c.caCert)} },
			rcpt: "451 4.7.5 "},
	} {
		t.Run(tc.name, func(t *testing.T) {
			up := startUpstream(t, tc.up)
			p := mustPort(t, up.addr)
			mx := tc.mx
			if mx == "" {
				mx = "mx.d.test"
			}
			ds := dnstest.Start(t, "d.test. 60 IN MX 10 "+mx+".", mx+". 60 IN A 127.0.0.1")
			if !tc.insecure {
				ds.Secure("test.")
			}
			if tc.tlsa != nil {
				ds.Add(tc.tlsa(mx, p)...)
			}
			if tc.servfail {
				ds.ServFail(fmt.Sprintf("_%d._tcp.%s", p, mx))
			}
			r := provisioned(t, &Relay{To: "mx", Resolver: ds.Addr, MXPort: p, Domains: []string{"d.test"}})
			cfg, logs := observed()
			cl, _ := dial(t, serve(t, cfg, r))
			cl.Cmd("MAIL FROM:<a@client.example>", "250 2.1.0")
			cl.Cmd("RCPT TO:<x@d.test>", tc.rcpt)
			if !strings.HasPrefix(tc.rcpt, "250") {
				cl.Cmd("QUIT", "221 ")
				noClearText(t, up)
				return
			}
			cl.Cmd("DATA", "354 ")
			cl.Send(stuff(message))
			cl.Expect("250 2.0.0")
			msgs := up.messages()
			if len(msgs) != 1 || !msgs[0].tls {
				t.Fatalf("upstream got %+v, want one message over TLS", msgs)
			}
			f := messageLog(t, logs, 1)
			if f["relay_tls_policy"] != tc.policy || f["relay_tls_verified"] != tc.verified {
				t.Errorf("log: relay_tls_policy %v relay_tls_verified %v, want %s %v", f["relay_tls_policy"], f["relay_tls_verified"], tc.policy, tc.verified)
			}
		})
	}
}

// TestDANENextMX: a DANE failure of the first mail server defers only
// that one: the next, whose certificate matches, gets the message.
func TestDANENextMX(t *testing.T) {
	c := certs(t)
	good := startUpstream(t, upstreamOpts{tls: true})
	p := mustPort(t, good.addr)
	bad := startUpstream(t, upstreamOpts{addr: fmt.Sprintf("127.0.0.2:%d", p)}) // no STARTTLS
	ds := dnstest.Start(t, "d.test. 60 IN MX 10 mx1.d.test.", "d.test. 60 IN MX 20 mx2.d.test.",
		"mx1.d.test. 60 IN A 127.0.0.2", "mx2.d.test. 60 IN A 127.0.0.1")
	ds.Secure("d.test")
	ds.Add(tlsa(t, "mx1.d.test", p, 3, 1, 1, c.leaf), tlsa(t, "mx2.d.test", p, 3, 1, 1, c.leaf))
	r := provisioned(t, &Relay{To: "mx", Resolver: ds.Addr, MXPort: p, Domains: []string{"d.test"}})
	cl, _ := dial(t, serve(t, session.Config{}, r))
	cl.Cmd("MAIL FROM:<a@client.example>", "250 2.1.0")
	cl.Cmd("RCPT TO:<x@d.test>", "250 2.1.5")
	cl.Cmd("DATA", "354 ")
	cl.Send(stuff(message))
	cl.Expect("250 2.0.0")
	noClearText(t, bad)
	if n := len(good.messages()); n != 1 {
		t.Fatalf("the second mail server got %d messages, want 1", n)
	}
}

// TestRequireTLSRelay: a REQUIRETLS message (RFC 8689) goes only to a
// DANE-verified mail server that offers REQUIRETLS, with REQUIRETLS on
// its MAIL; else its recipients get 550 5.7.30 (insecure DNS: the mail
// server is not even contacted).
func TestRequireTLSRelay(t *testing.T) {
	c := certs(t)
	withExt := startUpstream(t, upstreamOpts{tls: true, requireTLS: true})
	p := mustPort(t, withExt.addr)
	without := startUpstream(t, upstreamOpts{tls: true, addr: fmt.Sprintf("127.0.0.2:%d", p)})
	insecure := startUpstream(t, upstreamOpts{tls: true, requireTLS: true, addr: fmt.Sprintf("127.0.0.3:%d", p)})
	ds := dnstest.Start(t,
		"ok.test. 60 IN MX 10 mx.ok.test.", "mx.ok.test. 60 IN A 127.0.0.1",
		"noext.test. 60 IN MX 10 mx.noext.test.", "mx.noext.test. 60 IN A 127.0.0.2",
		"insecure.example. 60 IN MX 10 mx.insecure.example.", "mx.insecure.example. 60 IN A 127.0.0.3")
	ds.Secure("ok.test")
	ds.Secure("noext.test")
	for _, h := range []string{"mx.ok.test", "mx.noext.test", "mx.insecure.example"} {
		ds.Add(tlsa(t, h, p, 3, 1, 1, c.leaf))
	}
	r := provisioned(t, &Relay{To: "mx", Resolver: ds.Addr, MXPort: p, Domains: []string{"ok.test", "noext.test", "insecure.example"}})
	cl, _ := dial(t, serve(t, session.Config{}, mailParam{"a@client.example": {Key: "REQUIRETLS"}}, r))
	cl.Cmd("MAIL FROM:<a@client.example>", "250 2.1.0")
	cl.Cmd("RCPT TO:<x@noext.test>", "550 5.7.30 ")
	cl.Cmd("RSET", "250 ")
	cl.Cmd("MAIL FROM:<a@client.example>", "250 2.1.0")
	cl.Cmd("RCPT TO:<x@insecure.example>", "550 5.7.30 ")
	cl.Cmd("RSET", "250 ")
	cl.Cmd("MAIL FROM:<a@client.example>", "250 2.1.0")
	cl.Cmd("RCPT TO:<x@ok.test>", "250 2.1.5")
	cl.Cmd("DATA", "354 ")
	cl.Send(stuff(message))
	cl.Expect("250 2.0.0")
	msgs := withExt.messages()
	if len(msgs) != 1 || !msgs[0].tls || !msgs[0].mailOpts.RequireTLS {
		t.Fatalf("upstream got %+v, want one message over TLS with REQUIRETLS", msgs)
	}
	noClearText(t, without)
	if n := insecure.connections(); n != 0 {
		t.Errorf("the mail server without DANE got %d connections", n)
	}
}

// TestQueuedDANE: from the queue, each recipient's reply says what
// happened: a REQUIRETLS message is delivered to the DANE-verified mail
// server and bounced (5.7.30) for the insecure one; a message without
// REQUIRETLS is deferred (4.7.5) where the TLSA records do not match,
// unless its header has TLS-Required: No (RFC 8689 5), which makes TLS
// opportunistic. The log says the policy and the defer reason.
func TestQueuedDANE(t *testing.T) {
	c := certs(t)
	ok := startUpstream(t, upstreamOpts{tls: true, requireTLS: true})
	p := mustPort(t, ok.addr)
	plain := startUpstream(t, upstreamOpts{tls: true, requireTLS: true, addr: fmt.Sprintf("127.0.0.2:%d", p)})
	wrong := startUpstream(t, upstreamOpts{tls: true, requireTLS: true, addr: fmt.Sprintf("127.0.0.3:%d", p)})
	ds := dnstest.Start(t,
		"ok.test. 60 IN MX 10 mx.ok.test.", "mx.ok.test. 60 IN A 127.0.0.1",
		"plain.example. 60 IN MX 10 mx.plain.example.", "mx.plain.example. 60 IN A 127.0.0.2",
		"wrong.test. 60 IN MX 10 mx.wrong.test.", "mx.wrong.test. 60 IN A 127.0.0.3")
	ds.Secure("test")
	ds.Add(tlsa(t, "mx.ok.test", p, 3, 1, 1, c.leaf), tlsa(t, "mx.wrong.test", p, 3, 1, 1, c.caCert))
	r := provisioned(t, &Relay{To: "mx", Resolver: ds.Addr, MXPort: p, Domains: []string{"ok.test", "plain.example", "wrong.test"}})
	core, logs := observer.New(zap.DebugLevel)
	r.logger = zap.New(core)
	srv, addr, q := queueServer(t, r)
	cl := queueClient(t, addr, "a@client.example", nil)
	for _, to := range []string{"x@ok.test", "y@plain.example", "z@wrong.test"} {
		if got := rcptReply(t, cl, to, nil); got != "250" {
			t.Fatalf("RCPT TO:<%s>: %s", to, got)
		}
	}
	queueData(t, cl)
	m, _ := q.only(t)

	// Without REQUIRETLS: the mismatch defers.
	replies := srv.DeliverQueued(context.Background(), m)
	checkReplies(t, m, replies, map[string]string{
		"x@ok.test":       "250 ",
		"y@plain.example": "250 ",
		"z@wrong.test":    "451 4.7.5 DANE: ",
	})
	if replies[0].TLSPolicy != "dane" || replies[1].TLSPolicy != "opportunistic" {
		t.Errorf("TLSPolicy of the replies: %q, %q, want dane, opportunistic", replies[0].TLSPolicy, replies[1].TLSPolicy)
	}
	noClearText(t, wrong)
	if e := logs.FilterField(zap.String("relay_defer_reason", reasonDANECert)).All(); len(e) == 0 {
		t.Error("no log line with relay_defer_reason " + reasonDANECert)
	}
	policies := map[string]string{}
	for _, e := range logs.FilterMessage("queued message relayed").All() {
		f := e.ContextMap()
		policies[f["domain"].(string)], _ = f["relay_tls_policy"].(string)
	}
	if policies["ok.test"] != "dane" || policies["plain.example"] != "opportunistic" {
		t.Errorf("relay_tls_policy by domain: %v", policies)
	}

	// With REQUIRETLS.
	req := *m
	req.MailParams = append(session.Params{{Key: "REQUIRETLS"}}, m.MailParams...)
	checkReplies(t, &req, srv.DeliverQueued(context.Background(), &req), map[string]string{
		"x@ok.test":       "250 ",
		"y@plain.example": "550 5.7.30 ",
		"z@wrong.test":    "451 4.7.5 ",
	})
	if msgs := ok.messages(); len(msgs) != 2 || msgs[0].mailOpts.RequireTLS || !msgs[1].mailOpts.RequireTLS {
		t.Errorf("DANE-verified upstream got %+v, want REQUIRETLS on the second message only", msgs)
	}
	if n := len(plain.messages()); n != 1 {
		t.Errorf("insecure upstream got %d messages, want 1 (without REQUIRETLS)", n)
	}

	// TLS-Required: No waives DANE (not REQUIRETLS: it wins, RFC 8689 4.1).
	b := []byte("TLS-Required: No\r\n" + message)
	waived := *m
	waived.Message = session.NewMessage(bytes.NewReader(b), int64(len(b)))
	checkReplies(t, &waived, srv.DeliverQueued(context.Background(), &waived), map[string]string{
		"x@ok.test":       "250 ",
		"y@plain.example": "250 ",
		"z@wrong.test":    "250 ",
	})
	if msgs := wrong.messages(); len(msgs) != 1 || !msgs[0].tls {
		t.Errorf("upstream with mismatching TLSA got %+v, want one message over TLS", msgs)
	}
	waived.MailParams = req.MailParams
	waived.Message = session.NewMessage(bytes.NewReader(b), int64(len(b)))
	checkReplies(t, &waived, srv.DeliverQueued(context.Background(), &waived), map[string]string{
		"x@ok.test":       "250 ",
		"y@plain.example": "550 5.7.30 ",
		"z@wrong.test":    "451 4.7.5 ",
	})
}
