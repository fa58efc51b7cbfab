package dnsbl

import (
	"encoding/json"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/miekg/dns"

	"github.com/caddy-esmtp/caddy-esmtp/dnscache"
	"github.com/caddy-esmtp/caddy-esmtp/internal/dnstest"
	"github.com/caddy-esmtp/caddy-esmtp/internal/smtptest"
)

// provisioned provisions b and fails the test on error.
func provisioned(t testing.TB, b *DNSBL) *DNSBL {
	t.Helper()
	if err := smtptest.Provision(b); err != nil {
		t.Fatalf("provision: %v", err)
	}
	return b
}

// testZones answers for two blocklists, bl.test and second.test.
var testZones = map[string]answer{
	"2.0.0.127.bl.test":     {a: []string{"127.0.0.2"}},                    // the usual test entry
	"1.2.0.192.second.test": {a: []string{"127.0.0.4"}},                    // listed by the second zone only
	"3.2.0.192.bl.test":     {a: []string{"127.0.0.10", "127.0.0.4"}},      // listed by both
	"3.2.0.192.second.test": {a: []string{"127.0.0.3"}},                    // ... and by the second
	"5.2.0.192.bl.test":     {a: []string{"127.255.255.254"}},              // "query refused"
	"6.2.0.192.bl.test":     {a: []string{"10.0.0.1"}},                     // not a listing
	"7.2.0.192.bl.test":     {rcode: dns.RcodeServerFailure},               // a DNS error
	"8.2.0.192.bl.test":     {drop: true},                                  // no answer at all
	"9.2.0.192.bl.test":     {a: []string{"127.255.255.254", "127.0.0.2"}}, // a refusal beside a listing
	ipv6Name + ".bl.test":   {a: []string{"127.0.0.2"}},                    // 2001:db8::1
	"1.2.0.192.bl.test":     {rcode: dns.RcodeSuccess},                     // NODATA: not listed
}

const ipv6Name = "1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2" // 2001:db8::1

func TestReverse(t *testing.T) {
	for _, tc := range []struct{ ip, want string }{
		{"192.0.2.1", "1.2.0.192"},
		{"::ffff:192.0.2.99", "99.2.0.192"},
		{"2001:db8::1", ipv6Name},
		// RFC 5782 2.4's example
		{"2001:db8:1:2:3:4:567:89ab", "b.a.9.8.7.6.5.0.4.0.0.0.3.0.0.0.2.0.0.0.1.0.0.0.8.b.d.0.1.0.0.2"},
	} {
		if got := reverse(netip.MustParseAddr(tc.ip)); got != tc.want {
			t.Errorf("reverse(%s) = %s, want %s", tc.ip, got, tc.want)
		}
	}
}

// TestAtConnect: a listed client gets 554 5.7.1 naming the first zone that
// lists it instead of the greeting, and is disconnected; unlisted clients,
// refusals, odd answers, DNS errors and timeouts let the client in.
func TestAtConnect(t *testing.T) {
	ds := startDNS(t, testZones)
	srv := smtptest.Serve(t, provisioned(t, &DNSBL{Zones: []string{"BL.test.", "second.test"}, Resolver: ds.addr, Timeout: caddy.Duration(300 * time.Millisecond)}))
	for _, tc := range []struct{ ip, want string }{
		{"127.0.0.2", "554 5.7.1 Service unavailable; client [127.0.0.2] blocked using bl.test"},
		{"192.0.2.1", "554 5.7.1 Service unavailable; client [192.0.2.1] blocked using second.test"},
		{"192.0.2.3", "554 5.7.1 Service unavailable; client [192.0.2.3] blocked using bl.test"},
		{"2001:db8::1", "554 5.7.1 Service unavailable; client [2001:db8::1] blocked using bl.test"},
		{"192.0.2.9", "554 5.7.1 Service unavailable; client [192.0.2.9] blocked using bl.test"},
		{"192.0.2.4", "220 "},   // listed by no zone
		{"192.0.2.5", "220 "},   // 127.255.255.254: the list refused the query
		{"192.0.2.6", "220 "},   // an answer outside 127/8
		{"192.0.2.7", "220 "},   // SERVFAIL: fail open
		{"192.0.2.8", "220 "},   // no answer: the timeout fails open
		{"2001:db8::2", "220 "}, // NXDOMAIN
	} {
		remote := netip.AddrPortFrom(netip.MustParseAddr(tc.ip), 4000).String()
		c := srv.PipeFrom(remote)
		g := c.ReadReply().Last()
		if !strings.HasPrefix(g, tc.want) {
			t.Errorf("%s: greeting %q, want %q", tc.ip, g, tc.want)
			continue
		}
		if tc.want == "220 " {
			c.Cmd("EHLO client.example", "250 ")
			c.Cmd("QUIT", "221 ")
		} else {
			c.ExpectClosed()
		}
	}
	if n := ds.count("4.2.0.192.bl.test"); n != 1 {
		t.Errorf("4.2.0.192.bl.test asked %d times, want 1", n)
	}
}

// TestAtRcpt: with at rcpt a listed client is greeted, then every RCPT
// but postmaster gets 554 5.7.1; the lookup is made once per session.
func TestAtRcpt(t *testing.T) {
	ds := startDNS(t, testZones)
	srv := smtptest.Serve(t, provisioned(t, &DNSBL{Zones: []string{"bl.test", "second.test"}, Resolver: ds.addr, At: "rcpt"}))
	c := srv.Dial("127.0.0.2:4000")
	c.Cmd("MAIL FROM:<a@client.test>", "250 ")
	c.Cmd("RCPT TO:<b@example.test>", "554 5.7.1 Service unavailable; client [127.0.0.2] blocked using bl.test")
	c.Cmd("RCPT TO:<Postmaster>", "250 ")
	c.Cmd("RCPT TO:<PostMaster@example.test>", "250 ")
	c.Cmd("RCPT TO:<c@example.test>", "554 5.7.1")
	c.Cmd("DATA", "354 ")
	c.Cmd("Subject: listed?\r\n\r\nplease unlist me\r\n.", "250 ")
	if n := ds.count("2.0.0.127.bl.test"); n != 1 {
		t.Errorf("asked %d times in one session, want 1", n)
	}
	c = srv.Dial("192.0.2.4:4000")
	c.Cmd("MAIL FROM:<a@client.test>", "250 ")
	c.Cmd("RCPT TO:<b@example.test>", "250 ")
	// A client that never gets to RCPT costs no lookup.
	srv.Dial("192.0.2.200:4000").Cmd("QUIT", "221 ")
	if n := ds.count("200.2.0.192.bl.test"); n != 0 {
		t.Errorf("asked %d times before any RCPT, want 0", n)
	}
}

func TestProvisionErrors(t *testing.T) {
	for _, tc := range []struct {
		b    *DNSBL
		want string
	}{
		{&DNSBL{}, "dnsbl: zones is required"},
		{&DNSBL{Zones: []string{"ok.test", "bad zone"}}, `dnsbl: zones[1]: "bad zone" is not a DNS zone`},
		{&DNSBL{Zones: []string{"."}}, `dnsbl: zones[0]`},
		{&DNSBL{Zones: []string{"a..b"}}, `dnsbl: zones[0]`},
		{&DNSBL{Zones: []string{"ok.test"}, At: "data"}, `dnsbl: at: "data" is not connect or rcpt`},
		{&DNSBL{Zones: []string{"ok.test"}, Timeout: -1}, "dnsbl: timeout must be positive"},
		{&DNSBL{Zones: []string{"ok.test"}, Resolver: "localhost"}, `dnsbl: resolver: "localhost" is not host:port or an IP address`},
	} {
		if err := smtptest.Provision(tc.b); err == nil || !strings.HasPrefix(err.Error(), tc.want) {
			t.Errorf("got error %v, want %q...", err, tc.want)
		}
	}
	for _, r := range []string{"192.0.2.53", "[2001:db8::53]", "2001:db8::53", "dns.example:5353", "[::1]:53"} {
		if err := smtptest.Provision(&DNSBL{Zones: []string{"ok.test"}, Resolver: r}); err != nil {
			t.Errorf("resolver %q: %v", r, err)
		}
	}
}

func TestCaddyfile(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"dnsbl zen.spamhaus.org", `{"zones":["zen.spamhaus.org"]}`},
		{"dnsbl a.test {\n zone b.test c.test\n resolver 127.0.0.1:5353\n timeout 2s\n at rcpt\n}",
			`{"zones":["a.test","b.test","c.test"],"resolver":"127.0.0.1:5353","timeout":2000000000,"at":"rcpt"}`},
		{"dnsbl {\n zone a.test\n at connect\n}", `{"zones":["a.test"],"at":"connect"}`},
	} {
		var b DNSBL
		if err := b.UnmarshalCaddyfile(caddyfile.NewTestDispenser(tc.in)); err != nil {
			t.Errorf("%q: %v", tc.in, err)
			continue
		}
		got, _ := json.Marshal(&b)
		if string(got) != tc.want {
			t.Errorf("%q:\n got %s\nwant %s", tc.in, got, tc.want)
		}
	}
	for _, tc := range []struct{ in, want string }{
		{"dnsbl", "dnsbl: no zones"},
		{"dnsbl {\n zone\n}", "wrong argument count"},
		{"dnsbl bad_zone!", "is not a DNS zone"},
		{"dnsbl a.test {\n resolver\n}", "wrong argument count"},
		{"dnsbl a.test {\n resolver nowhere\n}", "dnsbl: resolver:"},
		{"dnsbl a.test {\n timeout never\n}", `dnsbl: timeout must be a positive duration, got "never"`},
		{"dnsbl a.test {\n at helo\n}", `dnsbl: at: "helo" is not connect or rcpt`},
		{"dnsbl a.test {\n score 5\n}", `unknown option "score"`},
	} {
		var b DNSBL
		err := b.UnmarshalCaddyfile(caddyfile.NewTestDispenser(tc.in))
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%q: got error %v, want one containing %q", tc.in, err, tc.want)
		}
	}
}

// TestHandlerResolver: without its own resolver, dnsbl asks the esmtp
// handler's (Config.Resolver, here a dnscache on the test server); with
// one, that one.
func TestHandlerResolver(t *testing.T) {
	listing := dnstest.Start(t, "2.0.0.127.bl.test. 60 IN A 127.0.0.2")
	empty := dnstest.Start(t)
	cache, err := dnscache.New([]string{listing.Addr}, dnscache.Options{})
	if err != nil {
		t.Fatal(err)
	}
	cfg := smtptest.Config(provisioned(t, &DNSBL{Zones: []string{"bl.test"}}))
	cfg.Resolver = cache
	smtptest.NewServer(t, cfg).PipeFrom("127.0.0.2:1234").
		Expect("554 5.7.1 Service unavailable; client [127.0.0.2] blocked using bl.test")
	smtptest.NewServer(t, cfg).PipeFrom("127.0.0.2:1234").
		Expect("554 5.7.1 Service unavailable; client [127.0.0.2] blocked using bl.test")
	if n := listing.Queries("2.0.0.127.bl.test", dns.TypeA); n != 1 {
		t.Errorf("asked %d times, want 1 (then from the handler's cache)", n)
	}
	if n := listing.Queries("2.0.0.127.bl.test", dns.TypeAAAA); n != 0 {
		t.Errorf("AAAA asked %d times, want 0", n)
	}

	cfg = smtptest.Config(provisioned(t, &DNSBL{Zones: []string{"bl.test"}, Resolver: empty.Addr}))
	cfg.Resolver = cache
	smtptest.NewServer(t, cfg).PipeFrom("127.0.0.2:1234").Expect("220 ")
	if n := empty.Queries("2.0.0.127.bl.test", dns.TypeA); n != 1 {
		t.Errorf("own resolver asked %d times, want 1", n)
	}
}
