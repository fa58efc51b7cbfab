package dnscache

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/caddy-esmtp/caddy-esmtp/internal/dnstest"
)

// clock is a settable clock for expiry.
type clock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *clock) Advance(d time.Duration) {
	c.mu.Lock()
	c.now = c.now.Add(d)
	c.mu.Unlock()
}

func newResolver(t *testing.T, opts Options, servers ...string) (*Resolver, *clock) {
	t.Helper()
	c := &clock{now: time.Date(2025, 6, 1, 12, 0, 0, 0, time.UTC)}
	if opts.Now == nil {
		opts.Now = c.Now
	}
	r, err := New(servers, opts)
	if err != nil {
		t.Fatal(err)
	}
	return r, c
}

var records = []string{
	"a.test. 300 IN A 192.0.2.1",
	"a.test. 300 IN A 192.0.2.2",
	"a.test. 300 IN AAAA 2001:db8::1",
	"v4.test. 300 IN A 192.0.2.9",
	"a.test. 60 IN TXT \"v=spf1 \" \"-all\"",
	"a.test. 300 IN MX 20 mx2.a.test.",
	"a.test. 300 IN MX 10 mx1.a.test.",
	"null.test. 300 IN MX 0 .",
	"1.2.0.192.in-addr.arpa. 300 IN PTR mail.a.test.",
	"long.test. 86400 IN A 192.0.2.7",
}

func dnsErr(t *testing.T, err error) *net.DNSError {
	t.Helper()
	var de *net.DNSError
	if !errors.As(err, &de) {
		t.Fatalf("error %v (%T) is not a *net.DNSError", err, err)
	}
	return de
}

// TestLookups checks each lookup method's answer and form.
func TestLookups(t *testing.T) {
	srv := dnstest.Start(t, records...)
	r, _ := newResolver(t, Options{}, srv.Addr)
	ctx := context.Background()

	txt, err := r.LookupTXT(ctx, "a.test")
	if err != nil || !slices.Equal(txt, []string{"v=spf1 -all"}) {
		t.Errorf("LookupTXT = %q, %v", txt, err)
	}
	mxs, err := r.LookupMX(ctx, "A.Test.")
	if err != nil || len(mxs) != 2 || mxs[0].Host != "mx1.a.test." || mxs[0].Pref != 10 || mxs[1].Host != "mx2.a.test." {
		t.Errorf("LookupMX = %v, %v", mxs, err)
	}
	mxs, err = r.LookupMX(ctx, "null.test")
	if err != nil || len(mxs) != 1 || mxs[0].Host != "." {
		t.Errorf("LookupMX(null MX) = %v, %v", mxs, err)
	}
	addrs, err := r.LookupIPAddr(ctx, "a.test")
	var got []string
	for _, a := range addrs {
		got = append(got, a.IP.String())
	}
	slices.Sort(got)
	if err != nil || !slices.Equal(got, []string{"192.0.2.1", "192.0.2.2", "2001:db8::1"}) {
		t.Errorf("LookupIPAddr = %v, %v", got, err)
	}
	// A name with A records only: its AAAA NODATA is no error.
	addrs, err = r.LookupIPAddr(ctx, "v4.test")
	if err != nil || len(addrs) != 1 || addrs[0].IP.String() != "192.0.2.9" {
		t.Errorf("LookupIPAddr(v4) = %v, %v", addrs, err)
	}
	ips, err := r.LookupNetIP(ctx, "ip6", "a.test")
	if err != nil || !slices.Equal(ips, []netip.Addr{netip.MustParseAddr("2001:db8::1")}) {
		t.Errorf("LookupNetIP(ip6) = %v, %v", ips, err)
	}
	names, err := r.LookupAddr(ctx, "192.0.2.1")
	if err != nil || !slices.Equal(names, []string{"mail.a.test."}) {
		t.Errorf("LookupAddr = %v, %v", names, err)
	}
	if _, err := r.LookupAddr(ctx, "not an address"); err == nil {
		t.Error("LookupAddr(garbage): no error")
	}
}

// TestNotFound checks that NXDOMAIN and NODATA are IsNotFound, not
// temporary, for every method.
func TestNotFound(t *testing.T) {
	srv := dnstest.Start(t, records...)
	r, _ := newResolver(t, Options{}, srv.Addr)
	ctx := context.Background()
	for name, f := range map[string]func() error{
		"TXT NXDOMAIN":  func() error { _, err := r.LookupTXT(ctx, "nowhere.test"); return err },
		"TXT NODATA":    func() error { _, err := r.LookupTXT(ctx, "v4.test"); return err },
		"MX NODATA":     func() error { _, err := r.LookupMX(ctx, "v4.test"); return err },
		"MX NXDOMAIN":   func() error { _, err := r.LookupMX(ctx, "nowhere.test"); return err },
		"IP NXDOMAIN":   func() error { _, err := r.LookupIPAddr(ctx, "nowhere.test"); return err },
		"IP NODATA":     func() error { _, err := r.LookupIPAddr(ctx, "null.test"); return err },
		"PTR NXDOMAIN":  func() error { _, err := r.LookupAddr(ctx, "192.0.2.99"); return err },
		"IP4 NODATA v6": func() error { _, err := r.LookupNetIP(ctx, "ip6", "v4.test"); return err },
	} {
		de := dnsErr(t, f())
		if !de.IsNotFound || de.IsTemporary || de.IsTimeout {
			t.Errorf("%s: %+v, want IsNotFound only", name, de)
		}
	}
}

// TestAuthenticated checks that the AD bit of the server's answer is the
// answer's Authenticated: for a secure zone's records and its secure
// denials, not for other zones.
func TestAuthenticated(t *testing.T) {
	srv := dnstest.Start(t, append(records, "b.example. 300 IN A 192.0.2.3")...)
	srv.Secure("test")
	r, _ := newResolver(t, Options{}, srv.Addr)
	ctx := context.Background()
	for _, c := range []struct {
		name  string
		qtype uint16
		want  bool
	}{
		{"a.test", dns.TypeMX, true},
		{"v4.test", dns.TypeMX, true},     // NODATA
		{"nowhere.test", dns.TypeA, true}, // NXDOMAIN
		{"b.example", dns.TypeA, false},
	} {
		ans, err := r.Lookup(ctx, c.name, c.qtype)
		if err != nil {
			t.Fatalf("%s: %v", c.name, err)
		}
		if ans.Authenticated != c.want {
			t.Errorf("%s %s: Authenticated %v, want %v", c.name, dns.TypeToString[c.qtype], ans.Authenticated, c.want)
		}
	}
}

// TestTemporary checks SERVFAIL and a server that never answers: temporary
// errors (a timeout for the second), never cached.
func TestTemporary(t *testing.T) {
	srv := dnstest.Start(t, records...)
	srv.ServFail("broken.test")
	r, _ := newResolver(t, Options{}, srv.Addr)
	for range 2 {
		_, err := r.LookupTXT(context.Background(), "broken.test")
		de := dnsErr(t, err)
		if !de.IsTemporary || de.IsNotFound {
			t.Errorf("SERVFAIL: %+v, want IsTemporary", de)
		}
	}
	if n := srv.Queries("broken.test", dns.TypeTXT); n != 2 {
		t.Errorf("SERVFAIL asked %d times, want 2 (not cached)", n)
	}

	r, _ = newResolver(t, Options{Timeout: 100 * time.Millisecond}, dnstest.Silent(t))
	_, err := r.LookupTXT(context.Background(), "a.test")
	de := dnsErr(t, err)
	if !de.IsTimeout || !de.IsTemporary || de.IsNotFound {
		t.Errorf("silent server: %+v, want IsTimeout and IsTemporary", de)
	}

	// The caller's context ends the lookup too.
	r, _ = newResolver(t, Options{}, dnstest.Silent(t))
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	_, err = r.LookupTXT(ctx, "a.test")
	if de := dnsErr(t, err); !de.IsTemporary {
		t.Errorf("cancelled: %+v, want IsTemporary", de)
	}
}

// TestFailover asks a silent server, then one answering SERVFAIL, then
// one that knows: the answer comes from the third.
func TestFailover(t *testing.T) {
	bad := dnstest.Start(t, records...)
	bad.ServFail("a.test")
	good := dnstest.Start(t, records...)
	r, _ := newResolver(t, Options{Timeout: 100 * time.Millisecond}, dnstest.Silent(t), bad.Addr, good.Addr)
	ans, err := r.Lookup(context.Background(), "a.test", dns.TypeA)
	if err != nil || len(ans.Records) != 2 || ans.Server != good.Addr {
		t.Fatalf("Lookup = %+v, %v; want 2 records from %s", ans, err, good.Addr)
	}
	if bad.Queries("a.test", dns.TypeA) != 1 || good.Queries("a.test", dns.TypeA) != 1 {
		t.Errorf("queries: bad %d, good %d; want 1 each", bad.Queries("a.test", dns.TypeA), good.Queries("a.test", dns.TypeA))
	}
	// NXDOMAIN is an answer: the next server is not asked.
	if _, err := r.LookupTXT(context.Background(), "nowhere.test"); !dnsErr(t, err).IsNotFound {
		t.Errorf("NXDOMAIN: %v", err)
	}
	if n := good.Queries("nowhere.test", dns.TypeTXT); n != 0 {
		t.Errorf("after NXDOMAIN from bad, good asked %d times", n)
	}
}

// TestTruncated retries over TCP when the UDP answer is truncated.
func TestTruncated(t *testing.T) {
	srv := dnstest.Start(t, records...)
	srv.Truncate("a.test")
	r, _ := newResolver(t, Options{}, srv.Addr)
	txt, err := r.LookupTXT(context.Background(), "a.test")
	if err != nil || len(txt) != 1 {
		t.Fatalf("LookupTXT = %q, %v", txt, err)
	}
	if srv.TCPQueries() != 1 {
		t.Errorf("%d queries over TCP, want 1", srv.TCPQueries())
	}
}

// TestCache checks that answers are kept for their TTL, capped by MaxTTL,
// negative answers for the SOA minimum, and then asked again.
func TestCache(t *testing.T) {
	srv := dnstest.Start(t, records...)
	r, clk := newResolver(t, Options{MaxTTL: 10 * time.Minute}, srv.Addr)
	ctx := context.Background()
	lookup := func() {
		t.Helper()
		if _, err := r.LookupTXT(ctx, "a.test"); err != nil {
			t.Fatal(err)
		}
		if _, err := r.LookupTXT(ctx, "nowhere.test"); !dnsErr(t, err).IsNotFound {
			t.Fatal(err)
		}
		if _, err := r.LookupIPAddr(ctx, "long.test"); err != nil {
			t.Fatal(err)
		}
	}
	count := func(txt, neg, long int) {
		t.Helper()
		if g := srv.Queries("a.test", dns.TypeTXT); g != txt {
			t.Errorf("a.test TXT asked %d times, want %d", g, txt)
		}
		if g := srv.Queries("nowhere.test", dns.TypeTXT); g != neg {
			t.Errorf("nowhere.test TXT asked %d times, want %d", g, neg)
		}
		if g := srv.Queries("long.test", dns.TypeA); g != long {
			t.Errorf("long.test A asked %d times, want %d", g, long)
		}
	}
	lookup()
	lookup()
	count(1, 1, 1)
	clk.Advance(29 * time.Second) // all still fresh
	lookup()
	count(1, 1, 1)
	clk.Advance(2 * time.Second) // 31s: the SOA minimum (30s) is over
	lookup()
	count(1, 2, 1)
	clk.Advance(30 * time.Second) // 61s: the TXT's TTL (60s) is over
	lookup()
	count(2, 3, 1)
	clk.Advance(10 * time.Minute) // past MaxTTL, under long.test's 1 day TTL
	lookup()
	count(3, 4, 2)
}

// TestEviction bounds the cache: the least recently used answer goes.
func TestEviction(t *testing.T) {
	srv := dnstest.Start(t, records...)
	r, _ := newResolver(t, Options{MaxEntries: 2}, srv.Addr)
	ctx := context.Background()
	ask := func(name string) {
		t.Helper()
		if _, err := r.Lookup(ctx, name, dns.TypeA); err != nil {
			t.Fatal(err)
		}
	}
	ask("a.test")
	ask("v4.test")
	ask("a.test") // a.test is now the most recently used
	ask("long.test")
	if r.Len() != 2 {
		t.Errorf("Len = %d, want 2", r.Len())
	}
	ask("a.test")    // kept
	ask("v4.test")   // evicted: asked again
	ask("long.test") // evicted by v4.test: asked again
	for name, want := range map[string]int{"a.test": 1, "v4.test": 2, "long.test": 2} {
		if g := srv.Queries(name, dns.TypeA); g != want {
			t.Errorf("%s asked %d times, want %d", name, g, want)
		}
	}
}

// TestConcurrent shares one query among concurrent askers.
func TestConcurrent(t *testing.T) {
	srv := dnstest.Start(t, records...)
	r, _ := newResolver(t, Options{}, srv.Addr)
	var wg sync.WaitGroup
	for range 20 {
		wg.Go(func() {
			if _, err := r.LookupMX(context.Background(), "a.test"); err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	if n := srv.Queries("a.test", dns.TypeMX); n != 1 {
		t.Errorf("asked %d times, want 1", n)
	}
}

// TestParseServer checks the server address forms.
func TestParseServer(t *testing.T) {
	for in, want := range map[string]string{
		"127.0.0.1":      "127.0.0.1:53",
		"127.0.0.1:5353": "127.0.0.1:5353",
		"::1":            "[::1]:53",
		"[::1]":          "[::1]:53",
		"[::1]:5353":     "[::1]:5353",
		"dns.example":    "dns.example:53",
		"dns.example:54": "dns.example:54",
	} {
		if got, err := ParseServer(in); err != nil || got != want {
			t.Errorf("ParseServer(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	for _, in := range []string{"", "1.2.3.4:0", "1.2.3.4:http", "1.2.3.4:99999", ":53", "a b", "1.2.3.4:53:53", "[::1", "::1]"} {
		if got, err := ParseServer(in); err == nil {
			t.Errorf("ParseServer(%q) = %q, want an error", in, got)
		}
	}
	if _, err := New([]string{"127.0.0.1", "bad:port:x"}, Options{}); err == nil || !strings.Contains(err.Error(), "[1]") {
		t.Errorf("New with a bad second server: %v, want an error naming [1]", err)
	}
}
