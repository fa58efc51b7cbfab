package greylist

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"

	"github.com/caddy-esmtp/caddy-esmtp/internal/smtptest"
)

// provisioned provisions g with the clock c and a state file in a fresh
// directory unless g names one, and cleans it up when the test ends.
func provisioned(t testing.TB, g *Greylist, c *smtptest.Clock) *Greylist {
	t.Helper()
	g.now = c.Now
	if g.StateFile == "" {
		g.StateFile = filepath.Join(t.TempDir(), "greylist.json")
	}
	smtptest.Provisioned(t, g)
	t.Cleanup(func() { g.Cleanup() })
	return g
}

const greylisted = "451 4.7.1 Greylisted, please try again later"

// TestGreylist runs the sub-handler in the engine: a new triplet gets 451
// 4.7.1 for each RCPT until delay has passed, then 250; the client network
// is the /24; sender and recipient count, case aside.
func TestGreylist(t *testing.T) {
	clk := smtptest.NewClock()
	srv := smtptest.Serve(t, provisioned(t, &Greylist{}, clk))
	c := srv.Dial("192.0.2.1:1000")
	c.Cmd("MAIL FROM:<a@client.test>", "250 ")
	c.Cmd("RCPT TO:<b@example.test>", greylisted)
	c.Cmd("RCPT TO:<c@example.test>", greylisted) // one reply per new triplet
	c.Cmd("DATA", "554 5.5.1 ")                   // no recipient accepted: no valid recipients
	clk.Advance(4 * time.Minute)
	c.Cmd("RCPT TO:<b@example.test>", greylisted) // too early: the first try counts
	clk.Advance(time.Minute)
	c.Cmd("RCPT TO:<b@example.test>", "250 ")
	c.Cmd("RCPT TO:<C@Example.TEST>", "250 ")
	c.Cmd("RCPT TO:<d@example.test>", greylisted)

	// Another address of the /24 is the same client.
	c = srv.Dial("192.0.2.200:1000")
	c.Cmd("MAIL FROM:<A@CLIENT.test>", "250 ")
	c.Cmd("RCPT TO:<b@example.test>", "250 ")
	c.Cmd("RSET", "250 ")
	c.Cmd("MAIL FROM:<other@client.test>", "250 ")
	c.Cmd("RCPT TO:<b@example.test>", greylisted) // another sender
	// Another network is another client; the null sender is a sender.
	c = srv.Dial("192.0.3.1:1000")
	c.Cmd("MAIL FROM:<a@client.test>", "250 ")
	c.Cmd("RCPT TO:<b@example.test>", greylisted)
	c.Cmd("RSET", "250 ")
	c.Cmd("MAIL FROM:<>", "250 ")
	c.Cmd("RCPT TO:<b@example.test>", greylisted)
	c.Cmd("RCPT TO:<Postmaster>", greylisted)
	clk.Advance(5 * time.Minute)
	c.Cmd("RCPT TO:<b@example.test>", "250 ")
	c.Cmd("RCPT TO:<postmaster>", "250 ")
}

// TestIPv6Network: IPv6 clients are one per /64, or as ipv6_prefix says.
func TestIPv6Network(t *testing.T) {
	clk := smtptest.NewClock()
	srv := smtptest.Serve(t, provisioned(t, &Greylist{}, clk))
	c := srv.Dial("[2001:db8:1:2::1]:1000")
	c.Cmd("MAIL FROM:<a@client.test>", "250 ")
	c.Cmd("RCPT TO:<b@example.test>", greylisted)
	clk.Advance(5 * time.Minute)
	c = srv.Dial("[2001:db8:1:2:aaaa::7]:1000")
	c.Cmd("MAIL FROM:<a@client.test>", "250 ")
	c.Cmd("RCPT TO:<b@example.test>", "250 ")
	c = srv.Dial("[2001:db8:1:3::1]:1000")
	c.Cmd("MAIL FROM:<a@client.test>", "250 ")
	c.Cmd("RCPT TO:<b@example.test>", greylisted)

	srv = smtptest.Serve(t, provisioned(t, &Greylist{IPv4Prefix: 32, IPv6Prefix: 128}, clk))
	for _, first := range []string{"[2001:db8:1:2::1]:1000", "192.0.2.1:1000"} {
		c = srv.Dial(first)
		c.Cmd("MAIL FROM:<a@client.test>", "250 ")
		c.Cmd("RCPT TO:<b@example.test>", greylisted)
	}
	clk.Advance(5 * time.Minute)
	for _, other := range []string{"[2001:db8:1:2::2]:1000", "192.0.2.2:1000"} {
		c = srv.Dial(other)
		c.Cmd("MAIL FROM:<a@client.test>", "250 ")
		c.Cmd("RCPT TO:<b@example.test>", greylisted)
	}
}

// TestExpireAndKeep: a retry after expire starts afresh; an accepted
// triplet is kept for keep after each use, then forgotten.
func TestExpireAndKeep(t *testing.T) {
	clk := smtptest.NewClock()
	g := provisioned(t, &Greylist{}, clk)
	srv := smtptest.Serve(t, g)
	c := srv.Dial("192.0.2.1:1000")
	c.Cmd("MAIL FROM:<a@client.test>", "250 ")
	c.Cmd("RCPT TO:<b@example.test>", greylisted)
	clk.Advance(25 * time.Hour) // past expire (24h): new again
	c.Cmd("RCPT TO:<b@example.test>", greylisted)
	clk.Advance(5 * time.Minute)
	c.Cmd("RCPT TO:<b@example.test>", "250 ")
	for range 3 {
		clk.Advance(35 * 24 * time.Hour) // within keep (36d) of the last use
		c.Cmd("RCPT TO:<b@example.test>", "250 ")
	}
	clk.Advance(37 * 24 * time.Hour)
	c.Cmd("RCPT TO:<b@example.test>", greylisted)
	if n := g.store.len(); n != 1 {
		t.Fatalf("%d triplets remembered, want 1", n)
	}
}

// TestBypass: authenticated clients and exempt networks are not
// greylisted.
func TestBypass(t *testing.T) {
	clk := smtptest.NewClock()
	srv := smtptest.Serve(t, smtptest.LoginAs{}, provisioned(t, &Greylist{Exempt: []string{"198.51.100.0/24", "2001:db8::1"}}, clk))
	for _, tc := range []struct{ remote, helo string }{
		{"192.0.2.1:1000", "alice.auth"},
		{"198.51.100.9:1000", "client.example"},
		{"[2001:db8::1]:1000", "client.example"},
	} {
		c := srv.DialHelo(tc.remote, tc.helo)
		c.Cmd("MAIL FROM:<a@client.test>", "250 ")
		c.Cmd("RCPT TO:<b@example.test>", "250 ")
	}
	c := srv.Dial("[2001:db8::2]:1000")
	c.Cmd("MAIL FROM:<a@client.test>", "250 ")
	c.Cmd("RCPT TO:<b@example.test>", greylisted)
}

// TestMaxEntries: past max_entries the oldest waiting triplet is
// forgotten first, accepted ones only when none waits.
func TestMaxEntries(t *testing.T) {
	clk := smtptest.NewClock()
	g := provisioned(t, &Greylist{MaxEntries: 3}, clk)
	srv := smtptest.Serve(t, g)
	c := srv.Dial("192.0.2.1:1000")
	c.Cmd("MAIL FROM:<a@client.test>", "250 ")
	c.Cmd("RCPT TO:<accepted@example.test>", greylisted)
	clk.Advance(5 * time.Minute)
	c.Cmd("RCPT TO:<accepted@example.test>", "250 ")
	for _, r := range []string{"w1", "w2", "w3", "w4"} {
		c.Cmd("RCPT TO:<"+r+"@example.test>", greylisted)
		clk.Advance(time.Second)
	}
	if n := g.store.len(); n != 3 {
		t.Fatalf("%d triplets remembered, want max_entries 3", n)
	}
	clk.Advance(5 * time.Minute)
	c.Cmd("RCPT TO:<accepted@example.test>", "250 ")
	c.Cmd("RCPT TO:<w1@example.test>", greylisted) // forgotten: new again, forgets w3
	c.Cmd("RCPT TO:<w4@example.test>", "250 ")     // now accepted
	c.Cmd("RCPT TO:<w3@example.test>", greylisted) // forgotten: new again, forgets w1
	c.Cmd("RCPT TO:<x1@example.test>", greylisted) // forgets w3, the only waiting one
	c.Cmd("RCPT TO:<x2@example.test>", greylisted) // forgets x1
	c.Cmd("RCPT TO:<accepted@example.test>", "250 ")
	c.Cmd("RCPT TO:<w4@example.test>", "250 ")
	clk.Advance(5 * time.Minute)
	c.Cmd("RCPT TO:<x2@example.test>", "250 ")
	c.Cmd("RCPT TO:<x1@example.test>", greylisted)
}

// TestStatePersists: the state file is written at Cleanup and read by the
// next Provision (a restart); while an old and a new configuration both
// run (a reload) they share the state, and the old one's Cleanup does not
// lose it.
func TestStatePersists(t *testing.T) {
	clk := smtptest.NewClock()
	path := filepath.Join(t.TempDir(), "sub", "greylist.json")
	old := provisioned(t, &Greylist{StateFile: path}, clk)
	c := smtptest.Serve(t, old).Dial("192.0.2.1:1000")
	c.Cmd("MAIL FROM:<a@client.test>", "250 ")
	c.Cmd("RCPT TO:<waiting@example.test>", greylisted)
	c.Cmd("RCPT TO:<accepted@example.test>", greylisted)
	clk.Advance(5 * time.Minute)
	c.Cmd("RCPT TO:<accepted@example.test>", "250 ")

	// A reload: the new configuration is provisioned before the old one
	// is cleaned up.
	reloaded := provisioned(t, &Greylist{StateFile: path}, clk)
	if reloaded.store != old.store {
		t.Fatal("the new configuration does not share the running state")
	}
	old.Cleanup()
	c = smtptest.Serve(t, reloaded).Dial("192.0.2.1:1001")
	c.Cmd("MAIL FROM:<a@client.test>", "250 ")
	c.Cmd("RCPT TO:<later@example.test>", greylisted)
	reloaded.Cleanup() // a stop: the last user saves and lets go
	if n, ok := stores.References(path); ok {
		t.Fatalf("the state is still open with %d references", n)
	}
	reloaded.store = nil // so the test's cleanup does nothing more

	var f fileFormat
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(b, &f); err != nil || f.Version != 1 || len(f.Entries) != 3 {
		t.Fatalf("state file: %v, %d entries: %s", err, len(f.Entries), b)
	}
	if fi, _ := os.Stat(path); fi.Mode().Perm() != 0o600 {
		t.Errorf("state file mode %v, want 0600 (it holds addresses)", fi.Mode().Perm())
	}

	// A restart reads the file.
	clk.Advance(5 * time.Minute)
	restarted := provisioned(t, &Greylist{StateFile: path}, clk)
	c = smtptest.Serve(t, restarted).Dial("192.0.2.1:1002")
	c.Cmd("MAIL FROM:<a@client.test>", "250 ")
	c.Cmd("RCPT TO:<accepted@example.test>", "250 ")
	c.Cmd("RCPT TO:<waiting@example.test>", "250 ")
	c.Cmd("RCPT TO:<later@example.test>", "250 ")
	c.Cmd("RCPT TO:<new@example.test>", greylisted)
}

// TestBadStateFile: a state file that cannot be parsed is set aside and
// the greylist starts empty.
func TestBadStateFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "greylist.json")
	os.WriteFile(path, []byte("{not json"), 0o600)
	g := provisioned(t, &Greylist{StateFile: path}, smtptest.NewClock())
	if n := g.store.len(); n != 0 {
		t.Fatalf("%d entries from a bad file", n)
	}
	if b, err := os.ReadFile(path + ".bad"); err != nil || string(b) != "{not json" {
		t.Fatalf("the bad file was not set aside: %v", err)
	}
}

func TestProvisionErrors(t *testing.T) {
	file := filepath.Join(t.TempDir(), "file")
	os.WriteFile(file, nil, 0o600)
	for _, tc := range []struct {
		g    *Greylist
		want string
	}{
		{&Greylist{Delay: caddy.Duration(time.Hour), Expire: caddy.Duration(time.Hour)}, "greylist: expire (1h0m0s) must be more than delay (1h0m0s)"},
		{&Greylist{Delay: caddy.Duration(48 * time.Hour)}, "greylist: expire (24h0m0s) must be more than delay"},
		{&Greylist{Keep: -1}, "greylist: keep must be positive"},
		{&Greylist{MaxEntries: -1}, "greylist: max_entries must be positive"},
		{&Greylist{IPv4Prefix: 40}, "greylist: ipv4_prefix must be 1 to 32"},
		{&Greylist{Exempt: []string{"x"}}, `greylist: exempt[0]: "x"`},
		{&Greylist{StateFile: filepath.Join(file, "greylist.json")}, "greylist: state_file: mkdir " + file},
	} {
		if tc.g.StateFile == "" {
			tc.g.StateFile = filepath.Join(t.TempDir(), "g.json")
		}
		if err := smtptest.Provision(tc.g); err == nil || !strings.HasPrefix(err.Error(), tc.want) {
			t.Errorf("got error %v, want %q...", err, tc.want)
			tc.g.Cleanup()
		}
	}
}

// TestDefaultStateFile: without state_file the state is in Caddy's data
// directory.
func TestDefaultStateFile(t *testing.T) {
	t.Setenv("XDG_DATA_HOME", t.TempDir())
	g := &Greylist{now: smtptest.NewClock().Now}
	if err := smtptest.Provision(g); err != nil {
		t.Fatal(err)
	}
	g.Cleanup()
	want := filepath.Join(caddy.AppDataDir(), "esmtp", "greylist.json")
	if g.path != want {
		t.Fatalf("state file %s, want %s", g.path, want)
	}
	if _, err := os.Stat(want); err != nil {
		t.Fatal(err)
	}
}

func TestCaddyfile(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"greylist", `{}`},
		{"greylist {\n delay 1m\n expire 12h\n keep 30d\n max_entries 5000\n state_file /var/lib/grey.json\n ipv4_prefix 32\n ipv6_prefix 48\n exempt 10.0.0.0/8\n exempt ::1 192.0.2.1\n}",
			`{"delay":60000000000,"expire":43200000000000,"keep":2592000000000000,"max_entries":5000,"state_file":"/var/lib/grey.json","ipv4_prefix":32,"ipv6_prefix":48,"exempt":["10.0.0.0/8","::1","192.0.2.1"]}`},
	} {
		var g Greylist
		if err := g.UnmarshalCaddyfile(caddyfile.NewTestDispenser(tc.in)); err != nil {
			t.Errorf("%q: %v", tc.in, err)
			continue
		}
		got, _ := json.Marshal(&g)
		if string(got) != tc.want {
			t.Errorf("%q:\n got %s\nwant %s", tc.in, got, tc.want)
		}
	}
	for _, tc := range []struct{ in, want string }{
		{"greylist 5m", "wrong argument count"},
		{"greylist {\n delay\n}", "wrong argument count"},
		{"greylist {\n delay soon\n}", `greylist: delay must be a positive duration, got "soon"`},
		{"greylist {\n keep 0s\n}", "keep must be a positive duration"},
		{"greylist {\n max_entries many\n}", "max_entries must be a positive number"},
		{"greylist {\n state_file a b\n}", "wrong argument count"},
		{"greylist {\n exempt 300.1.1.1\n}", "exempt[0]"},
		{"greylist {\n whitelist x\n}", `unknown option "whitelist"`},
	} {
		var g Greylist
		err := g.UnmarshalCaddyfile(caddyfile.NewTestDispenser(tc.in))
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%q: got error %v, want one containing %q", tc.in, err, tc.want)
		}
	}
}
