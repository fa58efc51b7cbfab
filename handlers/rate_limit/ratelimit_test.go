package ratelimit

import (
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"

	"github.com/caddy-esmtp/caddy-esmtp/internal/smtptest"
)

// provisioned provisions rl with the clock c and fails the test on error.
func provisioned(t testing.TB, rl *RateLimit, c *smtptest.Clock) *RateLimit {
	t.Helper()
	rl.now = c.Now
	return smtptest.Provisioned(t, rl)
}

func limit(count int, window time.Duration) *Limit {
	return &Limit{Count: count, Window: caddy.Duration(window)}
}

// TestConnections: a client gets count connections at once, then 421
// 4.7.0 and close; tokens come back at count per window; other clients
// have their own buckets.
func TestConnections(t *testing.T) {
	clk := smtptest.NewClock()
	srv := smtptest.Serve(t, provisioned(t, &RateLimit{Connections: limit(2, time.Minute)}, clk))
	srv.Dial("192.0.2.1:1000")
	srv.Dial("192.0.2.1:1001")
	c := srv.PipeFrom("192.0.2.1:1002")
	g := c.ReadReply().Last()
	if g != "421 4.7.0 Too many connections from your address, try again later" {
		t.Fatalf("third connection got %q", g)
	}
	c.ExpectClosed()
	srv.Dial("192.0.2.2:1000") // another client

	clk.Advance(30 * time.Second) // 2 per minute: one token back
	srv.Dial("192.0.2.1:1003")
	if g := srv.PipeFrom("192.0.2.1:1004").ReadReply().Last(); !strings.HasPrefix(g, "421 4.7.0") {
		t.Fatalf("got %q, want 421 4.7.0", g)
	}
	clk.Advance(time.Hour) // the bucket holds at most count
	srv.Dial("192.0.2.1:1005")
	srv.Dial("192.0.2.1:1006")
	if g := srv.PipeFrom("192.0.2.1:1007").ReadReply().Last(); !strings.HasPrefix(g, "421 4.7.0") {
		t.Fatalf("got %q, want 421 4.7.0", g)
	}
}

// TestMessagesAndRecipients: MAIL over the limit gets 451 4.7.1 and so
// does RCPT; the session goes on.
func TestMessagesAndRecipients(t *testing.T) {
	clk := smtptest.NewClock()
	srv := smtptest.Serve(t, provisioned(t, &RateLimit{Messages: limit(2, time.Hour), Recipients: limit(3, time.Hour)}, clk))
	c := srv.Dial("192.0.2.1:1000")
	c.Cmd("MAIL FROM:<a@client.test>", "250 ")
	c.Cmd("RSET", "250 ")
	c.Cmd("MAIL FROM:<a@client.test>", "250 ")
	c.Cmd("RSET", "250 ")
	c.Cmd("MAIL FROM:<a@client.test>", "451 4.7.1 Too many messages, slow down and try again later")
	c.Cmd("NOOP", "250 ")

	// The limits count across sessions of the client.
	c = srv.Dial("192.0.2.1:1001")
	c.Cmd("MAIL FROM:<a@client.test>", "451 4.7.1")
	clk.Advance(30 * time.Minute) // one message back
	c.Cmd("MAIL FROM:<a@client.test>", "250 ")
	for i := 0; i < 3; i++ {
		c.Cmd("RCPT TO:<b@example.test>", "250 ")
	}
	c.Cmd("RCPT TO:<b@example.test>", "451 4.7.1 Too many recipients, slow down and try again later")
	c.Cmd("DATA", "354 ")
	c.Cmd("Subject: x\r\n\r\nhi\r\n.", "250 ")

	// Another client is not affected.
	c = srv.Dial("192.0.2.9:1000")
	c.Cmd("MAIL FROM:<a@client.test>", "250 ")
	c.Cmd("RCPT TO:<b@example.test>", "250 ")
}

// TestPerLogin: an authenticated client's messages are counted per login,
// not per address.
func TestPerLogin(t *testing.T) {
	clk := smtptest.NewClock()
	srv := smtptest.Serve(t, smtptest.LoginAs{}, provisioned(t, &RateLimit{Messages: limit(1, time.Hour)}, clk))
	alice := srv.DialHelo("192.0.2.1:1000", "alice.auth")
	alice.Cmd("MAIL FROM:<alice@example.test>", "250 ")
	alice.Cmd("RSET", "250 ")
	alice.Cmd("MAIL FROM:<alice@example.test>", "451 4.7.1")
	// The same address, unauthenticated or as another user: own buckets.
	srv.Dial("192.0.2.1:1001").Cmd("MAIL FROM:<x@client.test>", "250 ")
	srv.DialHelo("192.0.2.1:1002", "bob.auth").Cmd("MAIL FROM:<bob@example.test>", "250 ")
	// alice from another address: her bucket.
	srv.DialHelo("198.51.100.7:1000", "alice.auth").Cmd("MAIL FROM:<alice@example.test>", "451 4.7.1")
}

// TestPrefixes: IPv6 clients are counted per /64 by default, IPv4 per
// address; both are configurable.
func TestPrefixes(t *testing.T) {
	clk := smtptest.NewClock()
	srv := smtptest.Serve(t, provisioned(t, &RateLimit{Connections: limit(1, time.Hour)}, clk))
	srv.Dial("[2001:db8:1:2::1]:1000")
	if g := srv.PipeFrom("[2001:db8:1:2:ffff:ffff:ffff:ffff]:1000").ReadReply().Last(); !strings.HasPrefix(g, "421 4.7.0") {
		t.Fatalf("same /64: got %q, want 421", g)
	}
	srv.Dial("[2001:db8:1:3::1]:1000")
	srv.Dial("192.0.2.1:1000")
	srv.Dial("192.0.2.2:1000")
	if g := srv.PipeFrom("[::ffff:192.0.2.2]:1000").ReadReply().Last(); !strings.HasPrefix(g, "421 4.7.0") {
		t.Fatalf("IPv4-mapped address: got %q, want 421 (the same client as 192.0.2.2)", g)
	}

	srv = smtptest.Serve(t, provisioned(t, &RateLimit{Connections: limit(1, time.Hour), IPv4Prefix: 24, IPv6Prefix: 128}, clk))
	srv.Dial("[2001:db8:1:2::1]:1000")
	srv.Dial("[2001:db8:1:2::2]:1000")
	srv.Dial("192.0.2.1:1000")
	if g := srv.PipeFrom("192.0.2.200:1000").ReadReply().Last(); !strings.HasPrefix(g, "421 4.7.0") {
		t.Fatalf("same /24: got %q, want 421", g)
	}
}

// TestExempt: exempt networks are never limited.
func TestExempt(t *testing.T) {
	clk := smtptest.NewClock()
	srv := smtptest.Serve(t, smtptest.LoginAs{}, provisioned(t, &RateLimit{Connections: limit(1, time.Hour), Messages: limit(1, time.Hour),
		Exempt: []string{"10.0.0.0/8", "2001:db8::5"}}, clk))
	for i := 0; i < 3; i++ {
		c := srv.DialHelo("10.1.2.3:1000", "alice.auth")
		c.Cmd("MAIL FROM:<a@client.test>", "250 ")
		c.Cmd("RSET", "250 ")
		c.Cmd("MAIL FROM:<a@client.test>", "250 ")
		srv.Dial("[2001:db8::5]:1000")
	}
	srv.Dial("[2001:db8::6]:1000")
	if g := srv.PipeFrom("[2001:db8::7]:1000").ReadReply().Last(); !strings.HasPrefix(g, "421 4.7.0") {
		t.Fatalf("got %q, want 421: only 2001:db8::5 is exempt", g)
	}
}

// TestBoundedMemory: at most max_clients are tracked (the least recently
// seen is forgotten), and clients idle for the longest window are
// forgotten.
func TestBoundedMemory(t *testing.T) {
	clk := smtptest.NewClock()
	rl := provisioned(t, &RateLimit{Connections: limit(1, time.Minute), Messages: limit(10, time.Hour), MaxClients: 3}, clk)
	srv := smtptest.Serve(t, rl)
	srv.Dial("192.0.2.1:1000")
	if g := srv.PipeFrom("192.0.2.1:1001").ReadReply().Last(); !strings.HasPrefix(g, "421 4.7.0") {
		t.Fatalf("got %q, want 421", g)
	}
	srv.Dial("192.0.2.2:1000")
	srv.Dial("192.0.2.3:1000")
	srv.Dial("192.0.2.4:1000") // forgets 192.0.2.1
	if n := rl.tracked(); n != 3 {
		t.Fatalf("%d clients tracked, want max_clients 3", n)
	}
	srv.Dial("192.0.2.1:1002") // forgotten, so a fresh bucket

	clk.Advance(59 * time.Minute) // idle, but not for the longest window (1h)
	srv.Dial("192.0.2.9:1000")
	if n := rl.tracked(); n != 3 {
		t.Fatalf("%d clients tracked, want 3", n)
	}
	clk.Advance(time.Hour)
	srv.Dial("192.0.2.10:1000")
	if n := rl.tracked(); n != 1 {
		t.Fatalf("%d clients tracked after an idle hour, want 1", n)
	}
}

func TestProvisionErrors(t *testing.T) {
	for _, tc := range []struct {
		rl   *RateLimit
		want string
	}{
		{&RateLimit{}, "rate_limit: connections, messages or recipients is required"},
		{&RateLimit{Messages: limit(0, time.Hour)}, "rate_limit: messages: count must be positive"},
		{&RateLimit{Recipients: limit(5, 0)}, "rate_limit: recipients: window must be positive"},
		{&RateLimit{Connections: limit(5, time.Hour), MaxClients: -1}, "rate_limit: max_clients"},
		{&RateLimit{Connections: limit(5, time.Hour), IPv6Prefix: 129}, "rate_limit: ipv6_prefix must be 1 to 128"},
		{&RateLimit{Connections: limit(5, time.Hour), IPv4Prefix: 33}, "rate_limit: ipv4_prefix must be 1 to 32"},
		{&RateLimit{Connections: limit(5, time.Hour), Exempt: []string{"10.0.0.0/8", "nope"}}, `rate_limit: exempt[1]: "nope"`},
	} {
		if err := smtptest.Provision(tc.rl); err == nil || !strings.HasPrefix(err.Error(), tc.want) {
			t.Errorf("got error %v, want %q...", err, tc.want)
		}
	}
}

func TestCaddyfile(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"rate_limit {\n connections 20 1m\n messages 100 1h\n recipients 500 1d\n}",
			`{"connections":{"count":20,"window":60000000000},"messages":{"count":100,"window":3600000000000},"recipients":{"count":500,"window":86400000000000}}`},
		{"rate_limit {\n messages 5 30s\n max_clients 1000\n ipv4_prefix 24\n ipv6_prefix 56\n exempt 10.0.0.0/8 ::1\n exempt 192.0.2.1\n}",
			`{"messages":{"count":5,"window":30000000000},"max_clients":1000,"ipv4_prefix":24,"ipv6_prefix":56,"exempt":["10.0.0.0/8","::1","192.0.2.1"]}`},
	} {
		var rl RateLimit
		if err := rl.UnmarshalCaddyfile(caddyfile.NewTestDispenser(tc.in)); err != nil {
			t.Errorf("%q: %v", tc.in, err)
			continue
		}
		got, _ := json.Marshal(&rl)
		if string(got) != tc.want {
			t.Errorf("%q:\n got %s\nwant %s", tc.in, got, tc.want)
		}
	}
	for _, tc := range []struct{ in, want string }{
		{"rate_limit", "connections, messages or recipients is required"},
		{"rate_limit 5", "wrong argument count"},
		{"rate_limit {\n messages 5\n}", "messages takes <count> <window>"},
		{"rate_limit {\n messages 5 1h 2\n}", "messages takes <count> <window>"},
		{"rate_limit {\n messages x 1h\n}", `messages: count must be a positive number, got "x"`},
		{"rate_limit {\n messages 0 1h\n}", "count must be a positive number"},
		{"rate_limit {\n messages 5 soon\n}", `messages: window must be a positive duration, got "soon"`},
		{"rate_limit {\n messages 5 1h\n max_clients -3\n}", "max_clients must be a positive number"},
		{"rate_limit {\n messages 5 1h\n exempt\n}", "wrong argument count"},
		{"rate_limit {\n messages 5 1h\n exempt 10.0.0.0/33\n}", "exempt[0]"},
		{"rate_limit {\n bytes 5 1h\n}", `unknown option "bytes"`},
	} {
		var rl RateLimit
		err := rl.UnmarshalCaddyfile(caddyfile.NewTestDispenser(tc.in))
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%q: got error %v, want one containing %q", tc.in, err, tc.want)
		}
	}
}
