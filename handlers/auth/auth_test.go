package auth

import (
	"bufio"
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/base64"
	"fmt"
	"net"
	"runtime/debug"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp/caddyauth"
	"golang.org/x/crypto/argon2"
	"golang.org/x/crypto/bcrypt"

	"github.com/caddy-esmtp/caddy-esmtp/session"
)

// bcryptHash is a bcrypt hash as `caddy hash-password --algorithm bcrypt`
// makes, but at the lowest cost (Caddy's default, 14, takes seconds under
// the race detector); TestCaddyHashPassword uses Caddy's own.
func bcryptHash(t *testing.T, pass string) string {
	t.Helper()
	h, err := bcrypt.GenerateFromPassword([]byte(pass), bcrypt.MinCost)
	if err != nil {
		t.Fatal(err)
	}
	return string(h)
}

// argon2idHash hashes as `caddy hash-password --algorithm argon2id` does,
// with its default parameters. (caddyauth.Argon2idHash keeps them in
// unexported fields, so its zero value cannot hash.)
func argon2idHash(t *testing.T, pass string) string {
	t.Helper()
	salt := make([]byte, 16)
	rand.Read(salt)
	const time, memory, threads, keyLen = 1, 46 * 1024, 1, 32
	key := argon2.IDKey([]byte(pass), salt, time, memory, threads, keyLen)
	h := fmt.Sprintf("$argon2id$v=%d$m=%d,t=%d,p=%d$%s$%s", argon2.Version, memory, time, threads,
		base64.RawStdEncoding.EncodeToString(salt), base64.RawStdEncoding.EncodeToString(key))
	if ok, err := (caddyauth.Argon2idHash{}).Compare([]byte(h), []byte(pass)); !ok || err != nil {
		t.Fatalf("Caddy does not accept the argon2id hash %s: %v", h, err)
	}
	return h
}

func provisioned(t *testing.T, a *Auth) *Auth {
	t.Helper()
	if err := a.Provision(caddy.Context{}); err != nil {
		t.Fatalf("Provision: %v", err)
	}
	return a
}

func TestProvisionErrors(t *testing.T) {
	good := bcryptHash(t, "pw")
	for _, tc := range []struct {
		accounts []Account
		want     string
	}{
		{nil, "accounts: at least one account"},
		{[]Account{{Username: "", Password: good}}, "accounts[0].username is empty"},
		{[]Account{{Username: "alice", Password: good}, {Username: "alice", Password: good}}, `accounts[1].username "alice" appears twice`},
		{[]Account{{Username: "alice", Password: "secret"}}, `accounts[0].password for "alice" is not a bcrypt or argon2id hash`},
		{[]Account{{Username: "alice", Password: good}, {Username: "bob", Password: ""}}, `accounts[1].password for "bob"`},
		{[]Account{{Username: "alice", Password: "$2a$10$tooshort"}}, `accounts[0].password for "alice"`},
		{[]Account{{Username: "alice", Password: "$argon2id$v=19$m=garbage"}}, `accounts[0].password for "alice"`},
		{[]Account{{Username: "alice", Password: "{SHA}W6ph5Mm5Pz8GgiULbPgzG37mj9g="}}, `accounts[0].password for "alice"`},
	} {
		err := (&Auth{Accounts: tc.accounts}).Provision(caddy.Context{})
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("accounts %v: Provision error %v, want one containing %q", tc.accounts, err, tc.want)
		}
	}
}

func TestAuthenticate(t *testing.T) {
	a := provisioned(t, &Auth{Accounts: []Account{
		{Username: "alice", Password: bcryptHash(t, "alice pw")},
		{Username: "bob", Password: argon2idHash(t, "bob pw")},
	}})
	ctx := context.Background()
	for _, tc := range []struct {
		identity, user, pass string
		want                 bool
	}{
		{"", "alice", "alice pw", true},
		{"alice", "alice", "alice pw", true},
		{"", "bob", "bob pw", true},
		{"bob", "bob", "bob pw", true},
		{"", "alice", "alice pw ", false},
		{"", "alice", "", false},
		{"", "alice", "bob pw", false},
		{"", "bob", "alice pw", false},
		{"", "Alice", "alice pw", false}, // usernames are compared exactly
		{"", "carol", "alice pw", false}, // unknown, with the password of the account used as fake hash
		{"", "carol", "bob pw", false},
		{"", "", "", false},
		{"bob", "alice", "alice pw", false}, // no proxy authorization
		{"alice", "bob", "bob pw", false},
	} {
		got, err := a.Authenticate(ctx, nil, "PLAIN", tc.identity, tc.user, tc.pass)
		if err != nil || got != tc.want {
			t.Errorf("Authenticate(%q, %q, %q) = %v, %v; want %v", tc.identity, tc.user, tc.pass, got, err, tc.want)
		}
	}
}

// TestCaddyHashPassword verifies a hash made by Caddy's own code at its
// default cost (14), as `caddy hash-password` prints it. At that cost
// bcrypt takes tens of seconds under the race detector, so it runs only
// without it (CI runs both); the other tests use the lowest cost.
func TestCaddyHashPassword(t *testing.T) {
	if raceEnabled() {
		t.Skip("bcrypt at Caddy's default cost is too slow under -race; runs without it")
	}
	t.Parallel()
	h, err := caddyauth.BcryptHash{}.Hash([]byte("caddy pw"))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(string(h), "$2a$14$") {
		t.Fatalf("caddy's bcrypt hash %s", h)
	}
	a := provisioned(t, &Auth{Accounts: []Account{{Username: "carl", Password: string(h)}}})
	if ok, err := a.Authenticate(context.Background(), nil, "LOGIN", "", "carl", "caddy pw"); !ok || err != nil {
		t.Errorf("Authenticate with Caddy's bcrypt hash: %v, %v", ok, err)
	}
	// Caddy's own anti-timing hash, made by `caddy hash-password`
	a = provisioned(t, &Auth{Accounts: []Account{{Username: "carl", Password: string(caddyauth.BcryptHash{}.FakeHash())}}})
	if ok, err := a.Authenticate(context.Background(), nil, "LOGIN", "", "carl", "antitiming"); !ok || err != nil {
		t.Errorf("Authenticate with a hash from caddy hash-password: %v, %v", ok, err)
	}
}

// raceEnabled reports whether the test binary was built with -race.
func raceEnabled() bool {
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return false
	}
	for _, s := range bi.Settings {
		if s.Key == "-race" {
			return s.Value == "true"
		}
	}
	return false
}

func TestUnmarshalCaddyfile(t *testing.T) {
	h1, h2 := bcryptHash(t, "one"), argon2idHash(t, "two")
	a := new(Auth)
	d := caddyfile.NewTestDispenser("auth {\n\tallow_insecure_auth\n\talice " + h1 + "\n\tbob " + h2 + "\n}")
	if err := a.UnmarshalCaddyfile(d); err != nil {
		t.Fatal(err)
	}
	if !a.AllowInsecureAuth || len(a.Accounts) != 2 || a.Accounts[0] != (Account{"alice", h1}) || a.Accounts[1] != (Account{"bob", h2}) {
		t.Fatalf("parsed %+v", a)
	}
	provisioned(t, a)

	a = new(Auth)
	if err := a.UnmarshalCaddyfile(caddyfile.NewTestDispenser("auth {\n\talice " + h1 + "\n}")); err != nil {
		t.Fatal(err)
	}
	if a.AllowInsecureAuth || len(a.Accounts) != 1 {
		t.Fatalf("parsed %+v", a)
	}

	for _, tc := range []struct{ in, want string }{
		{"auth", "at least one <username> <hashed_password>"},
		{"auth {\n}", "at least one <username> <hashed_password>"},
		{"auth {\n\tallow_insecure_auth\n}", "at least one <username> <hashed_password>"},
		{"auth extra {\n\talice " + h1 + "\n}", "wrong argument count"},
		{"auth {\n\talice\n}", `expected <username> <hashed_password>, got "alice"`},
		{"auth {\n\talice " + h1 + " extra\n}", `expected <username> <hashed_password>, got "alice"`},
		{"auth {\n\tallow_insecure_auth yes\n\talice " + h1 + "\n}", "wrong argument count"},
	} {
		err := new(Auth).UnmarshalCaddyfile(caddyfile.NewTestDispenser(tc.in))
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%q: error %v, want one containing %q", tc.in, err, tc.want)
		}
	}
}

// TestLoadedByCaddy loads the module from JSON as Caddy does.
func TestLoadedByCaddy(t *testing.T) {
	ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
	defer cancel()
	m, err := ctx.LoadModuleByID("esmtp.handlers.auth",
		[]byte(fmt.Sprintf(`{"accounts": [{"username": "alice", "password": %q}]}`, bcryptHash(t, "pw"))))
	if err != nil {
		t.Fatal(err)
	}
	if ok, err := m.(*Auth).Authenticate(context.Background(), nil, "LOGIN", "", "alice", "pw"); !ok || err != nil {
		t.Fatalf("Authenticate: %v, %v", ok, err)
	}
	if _, err := ctx.LoadModuleByID("esmtp.handlers.auth", []byte(`{"accounts": [{"username": "alice", "password": "pw"}]}`)); err == nil ||
		!strings.Contains(err.Error(), "accounts[0].password") {
		t.Fatalf("a clear-text password was accepted: %v", err)
	}
}

// client is a minimal SMTP client for the engine tests below.
type client struct {
	t *testing.T
	c net.Conn
	r *bufio.Reader
}

func (c *client) cmd(line string) string {
	c.t.Helper()
	if line != "" {
		fmt.Fprintf(c.c, "%s\r\n", line)
	}
	var reply []string
	for {
		l, err := c.r.ReadString('\n')
		if err != nil {
			c.t.Fatalf("after %q: %v", line, err)
		}
		reply = append(reply, strings.TrimRight(l, "\r\n"))
		if len(l) < 4 || l[3] != '-' {
			return strings.Join(reply, "\n")
		}
	}
}

// serve runs a session of the engine with a as its only sub-handler over
// net.Pipe; state is the connection's TLS state (implicit TLS) or nil.
func serve(t *testing.T, a *Auth, state *tls.ConnectionState) *client {
	t.Helper()
	srv, err := session.NewServer(session.Config{Hostname: "mx.example.test",
		Handlers: []session.SubHandler{{Name: "auth", Handler: a}}})
	if err != nil {
		t.Fatal(err)
	}
	sc, cc := net.Pipe()
	done := make(chan struct{})
	go func() {
		defer close(done)
		srv.Serve(context.Background(), sc, session.ConnInfo{TLS: state})
		sc.Close()
	}()
	t.Cleanup(func() { cc.Close(); <-done })
	cc.SetDeadline(time.Now().Add(time.Minute))
	c := &client{t: t, c: cc, r: bufio.NewReader(cc)}
	if g := c.cmd(""); !strings.HasPrefix(g, "220 ") {
		t.Fatalf("greeting %q", g)
	}
	return c
}

func b64(s string) string { return base64.StdEncoding.EncodeToString([]byte(s)) }

// TestWithEngine: AUTH is offered only over TLS unless allow_insecure_auth,
// and the hashes verify through the engine's SASL exchange.
func TestWithEngine(t *testing.T) {
	accounts := []Account{{Username: "alice", Password: bcryptHash(t, "alice pw")}, {Username: "bob", Password: argon2idHash(t, "bob pw")}}
	tlsState := &tls.ConnectionState{Version: tls.VersionTLS13}

	// plain TCP, no allow_insecure_auth: nothing offered, 538
	strict := provisioned(t, &Auth{Accounts: accounts})
	c := serve(t, strict, nil)
	if r := c.cmd("EHLO client.test"); strings.Contains(r, "AUTH") {
		t.Fatalf("AUTH offered without TLS: %q", r)
	}
	if r := c.cmd("AUTH PLAIN " + b64("\x00alice\x00alice pw")); !strings.HasPrefix(r, "538 5.7.11 ") {
		t.Fatalf("AUTH without TLS: %q", r)
	}

	// TLS: offered, both hashes verify
	for _, login := range []struct{ user, pass string }{{"alice", "alice pw"}, {"bob", "bob pw"}} {
		c = serve(t, strict, tlsState)
		if r := c.cmd("EHLO client.test"); !strings.Contains(r, "\n250 AUTH PLAIN LOGIN") {
			t.Fatalf("EHLO over TLS: %q", r)
		}
		if r := c.cmd("AUTH PLAIN " + b64("\x00"+login.user+"\x00wrong")); !strings.HasPrefix(r, "535 5.7.8 ") {
			t.Fatalf("wrong password: %q", r)
		}
		if r := c.cmd("AUTH LOGIN " + b64(login.user)); !strings.HasPrefix(r, "334 ") {
			t.Fatalf("AUTH LOGIN: %q", r)
		}
		if r := c.cmd(b64(login.pass)); !strings.HasPrefix(r, "235 2.7.0 ") {
			t.Fatalf("%s over TLS: %q", login.user, r)
		}
	}

	// allow_insecure_auth: offered and accepted without TLS
	c = serve(t, provisioned(t, &Auth{Accounts: accounts, AllowInsecureAuth: true}), nil)
	if r := c.cmd("EHLO client.test"); !strings.Contains(r, "\n250 AUTH PLAIN LOGIN") {
		t.Fatalf("EHLO with allow_insecure_auth: %q", r)
	}
	if r := c.cmd("AUTH PLAIN " + b64("\x00alice\x00alice pw")); !strings.HasPrefix(r, "235 2.7.0 ") {
		t.Fatalf("AUTH with allow_insecure_auth: %q", r)
	}
}
