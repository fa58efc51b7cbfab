package session

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"

	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"
)

// testAuth is an AuthHook with clear-text passwords. It offers PLAIN and
// LOGIN over TLS, or always when insecure; err, when set, is returned by
// every check.
type testAuth struct {
	users    map[string]string
	insecure bool
	err      error

	mu    sync.Mutex
	calls []string // "mechanism identity username"
}

func (a *testAuth) AuthMechanisms(s *Session) []string {
	if s.TLS() == nil && !a.insecure {
		return nil
	}
	return []string{"PLAIN", "LOGIN", "CRAM-MD5"} // CRAM-MD5 is not implemented: never offered
}

func (a *testAuth) Authenticate(ctx context.Context, s *Session, mech, identity, user, pass string) (bool, error) {
	a.mu.Lock()
	a.calls = append(a.calls, mech+" "+identity+" "+user)
	a.mu.Unlock()
	if a.err != nil {
		return false, a.err
	}
	want, ok := a.users[user]
	return ok && want == pass && (identity == "" || identity == user), nil
}

func (a *testAuth) called() []string {
	a.mu.Lock()
	defer a.mu.Unlock()
	return append([]string(nil), a.calls...)
}

func b64(s string) string { return base64.StdEncoding.EncodeToString([]byte(s)) }

// plain is a SASL PLAIN response (RFC 4616), base64-encoded.
func plain(identity, user, pass string) string { return b64(identity + "\x00" + user + "\x00" + pass) }

// authUserSeen is a MailHook that records s.AuthUser() at MAIL.
type authUserSeen struct {
	mu   sync.Mutex
	seen []string
}

func (h *authUserSeen) Mail(ctx context.Context, s *Session, from Path, params Params) (*Reply, error) {
	h.mu.Lock()
	h.seen = append(h.seen, s.AuthUser())
	h.mu.Unlock()
	return nil, nil
}

func (h *authUserSeen) last() string {
	h.mu.Lock()
	defer h.mu.Unlock()
	if len(h.seen) == 0 {
		return "<no MAIL>"
	}
	return h.seen[len(h.seen)-1]
}

// startAuth runs a session without TLS with an AuthHook that allows AUTH
// without TLS, and greets with EHLO.
func startAuth(t *testing.T, cfg Config) (*testSession, *testAuth, *authUserSeen) {
	t.Helper()
	auth := &testAuth{users: map[string]string{"alice": "s3cret", "bob": "hunter2"}, insecure: true}
	seen := &authUserSeen{}
	cfg.Hostname = "mx.example.org"
	cfg.Handlers = append([]SubHandler{{Name: "auth", Handler: auth}, {Name: "seen", Handler: seen}}, cfg.Handlers...)
	ts := start(t, cfg)
	r := ts.cmd("EHLO client.example", 250, "")
	if !hasKeyword(r, "AUTH") || r.texts[len(r.texts)-1] != "AUTH PLAIN LOGIN" {
		t.Fatalf("EHLO reply %q, want AUTH PLAIN LOGIN (only what the engine implements)", r.raw)
	}
	return ts, auth, seen
}

func TestAuthMechanisms(t *testing.T) {
	for _, tc := range []struct {
		name  string
		steps []string // client line, then expected "code enh" (or "334 <challenge>") in turn
		user  string   // identity expected afterwards ("" for none)
	}{
		{"PLAIN initial response", []string{"AUTH PLAIN " + plain("", "alice", "s3cret"), "235 2.7.0"}, "alice"},
		{"PLAIN with identity", []string{"AUTH PLAIN " + plain("alice", "alice", "s3cret"), "235 2.7.0"}, "alice"},
		{"plain lower case", []string{"auth plain " + plain("", "alice", "s3cret"), "235 2.7.0"}, "alice"},
		{"PLAIN two steps", []string{"AUTH PLAIN", "334 ", plain("", "bob", "hunter2"), "235 2.7.0"}, "bob"},
		{"LOGIN two steps", []string{"AUTH LOGIN", "334 VXNlcm5hbWU6", b64("alice"), "334 UGFzc3dvcmQ6", b64("s3cret"), "235 2.7.0"}, "alice"},
		{"LOGIN initial response", []string{"AUTH LOGIN " + b64("bob"), "334 UGFzc3dvcmQ6", b64("hunter2"), "235 2.7.0"}, "bob"},
		{"PLAIN cancelled", []string{"AUTH PLAIN", "334 ", "*", "501 5.7.0"}, ""},
		{"LOGIN cancelled at username", []string{"AUTH LOGIN", "334 VXNlcm5hbWU6", "*", "501 5.7.0"}, ""},
		{"LOGIN cancelled at password", []string{"AUTH LOGIN", "334 VXNlcm5hbWU6", b64("alice"), "334 UGFzc3dvcmQ6", "*", "501 5.7.0"}, ""},
		{"PLAIN bad base64", []string{"AUTH PLAIN !!notbase64!!", "501 5.5.2"}, ""},
		{"PLAIN bad base64 two steps", []string{"AUTH PLAIN", "334 ", "%%%", "501 5.5.2"}, ""},
		{"PLAIN without NULs", []string{"AUTH PLAIN " + b64("alice s3cret"), "501 5.5.2"}, ""},
		{"LOGIN bad base64", []string{"AUTH LOGIN", "334 VXNlcm5hbWU6", "a", "501 5.5.2"}, ""},
		{"PLAIN wrong password", []string{"AUTH PLAIN " + plain("", "alice", "wrong"), "535 5.7.8"}, ""},
		{"PLAIN other identity", []string{"AUTH PLAIN " + plain("bob", "alice", "s3cret"), "535 5.7.8"}, ""},
		{"LOGIN unknown user", []string{"AUTH LOGIN " + b64("carol"), "334 UGFzc3dvcmQ6", b64("s3cret"), "535 5.7.8"}, ""},
		{"unknown mechanism", []string{"AUTH CRAM-MD5", "504 5.5.4"}, ""},
		{"no mechanism", []string{"AUTH", "504 5.5.4"}, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ts, _, seen := startAuth(t, Config{})
			for i := 0; i < len(tc.steps); i += 2 {
				ts.send(tc.steps[i])
				want := tc.steps[i+1]
				r := ts.readReply()
				if got := fmt.Sprintf("%d %s", r.code, r.enh); strings.HasPrefix(want, "334 ") {
					if r.code != 334 || len(r.texts) != 1 || r.texts[0] != want[4:] {
						t.Fatalf("after %q got %q, want %q", tc.steps[i], r.raw, want)
					}
				} else if got != want {
					t.Fatalf("after %q got %q, want %s", tc.steps[i], r.raw, want)
				}
			}
			ts.cmd("MAIL FROM:<a@client.example>", 250, "2.1.0")
			if got := seen.last(); got != tc.user {
				t.Fatalf("s.AuthUser() in a later MAIL hook = %q, want %q", got, tc.user)
			}
			// after success AUTH is no longer advertised
			ts.cmd("RSET", 250, "2.0.0")
			r := ts.cmd("EHLO client.example", 250, "")
			if hasKeyword(r, "AUTH") == (tc.user != "") {
				t.Fatalf("AUTH advertised=%v after authentication=%v: %q", hasKeyword(r, "AUTH"), tc.user != "", r.raw)
			}
		})
	}
}

func TestAuthState(t *testing.T) {
	ts, auth, _ := startAuth(t, Config{})
	ts.cmd("MAIL FROM:<a@client.example>", 250, "2.1.0")
	ts.cmd("AUTH PLAIN "+plain("", "alice", "s3cret"), 503, "5.5.1") // in a transaction
	ts.cmd("RSET", 250, "2.0.0")
	ts.cmd("AUTH PLAIN "+plain("", "alice", "s3cret"), 235, "2.7.0")
	ts.cmd("AUTH PLAIN "+plain("", "bob", "hunter2"), 503, "5.5.1") // a second AUTH
	ts.cmd("AUTH LOGIN", 503, "5.5.1")
	if calls := auth.called(); len(calls) != 1 || calls[0] != "PLAIN  alice" {
		t.Fatalf("Authenticate calls %q", calls)
	}

	// AUTH needs EHLO
	ts2, _, _ := startAuth(t, Config{})
	ts2.cmd("HELO client.example", 250, "")
	ts2.cmd("AUTH PLAIN "+plain("", "alice", "s3cret"), 503, "5.5.1")
	ts2.cmd("EHLO client.example", 250, "")
	ts2.cmd("AUTH PLAIN "+plain("", "alice", "s3cret"), 235, "2.7.0")

	// AUTH without any AuthHook
	ts3 := start(t, Config{})
	r := ts3.cmd("EHLO client.example", 250, "")
	if hasKeyword(r, "AUTH") {
		t.Fatalf("AUTH advertised without an AuthHook: %q", r.raw)
	}
	ts3.cmd("AUTH PLAIN "+plain("", "alice", "s3cret"), 502, "5.5.1")
}

// TestAuthFailuresCountAsErrors: each 535 counts toward MaxErrors.
func TestAuthFailuresCountAsErrors(t *testing.T) {
	ts, _, _ := startAuth(t, Config{MaxErrors: 2})
	ts.cmd("AUTH PLAIN "+plain("", "alice", "guess1"), 535, "5.7.8")
	ts.send("AUTH LOGIN")
	ts.expect(334, "")
	ts.send(b64("alice"))
	ts.expect(334, "")
	ts.cmd(b64("guess2"), 535, "5.7.8")
	ts.cmd("AUTH PLAIN "+plain("", "alice", "guess3"), 421, "4.7.0")
	ts.expectClosed()
}

// TestAuthNeedsTLS: an AuthHook that offers nothing before TLS makes AUTH
// answer 538 5.7.11 there, unadvertised; after STARTTLS it is offered.
func TestAuthNeedsTLS(t *testing.T) {
	serverTLS, roots := testCert(t, "mx.example.org")
	auth := &testAuth{users: map[string]string{"alice": "s3cret"}}
	seen := &authUserSeen{}
	ts := start(t, Config{Hostname: "mx.example.org", TLSConfig: serverTLS,
		Handlers: []SubHandler{{Name: "auth", Handler: auth}, {Name: "seen", Handler: seen}}})
	r := ts.cmd("EHLO client.example", 250, "")
	if hasKeyword(r, "AUTH") {
		t.Fatalf("AUTH advertised before TLS: %q", r.raw)
	}
	ts.cmd("AUTH PLAIN "+plain("", "alice", "s3cret"), 538, "5.7.11")
	ts.cmd("AUTH LOGIN", 538, "5.7.11")
	if calls := auth.called(); len(calls) != 0 {
		t.Fatalf("credentials checked before TLS: %q", calls)
	}
	tc := startTLS(t, ts.testClient, roots, "mx.example.org")
	r = tc.cmd("EHLO client.example", 250, "")
	if r.texts[len(r.texts)-1] != "AUTH PLAIN LOGIN" {
		t.Fatalf("EHLO inside TLS %q, want AUTH PLAIN LOGIN", r.raw)
	}
	tc.send("AUTH LOGIN")
	tc.expect(334, "")
	tc.send(b64("alice"))
	tc.expect(334, "")
	tc.cmd(b64("s3cret"), 235, "2.7.0")
	tc.cmd("MAIL FROM:<a@client.example>", 250, "2.1.0")
	if seen.last() != "alice" {
		t.Fatalf("AuthUser in MAIL hook = %q", seen.last())
	}
}

func TestAuthHookError(t *testing.T) {
	ts, auth, seen := startAuth(t, Config{})
	auth.mu.Lock()
	auth.err = errors.New("directory unreachable")
	auth.mu.Unlock()
	ts.cmd("AUTH PLAIN "+plain("", "alice", "s3cret"), 454, "4.7.0")
	ts.cmd("MAIL FROM:<a@client.example>", 250, "2.1.0")
	if seen.last() != "" {
		t.Fatalf("authenticated after a hook error: %q", seen.last())
	}
}

// TestAuthNotLogged: with the debug transcript on, neither the password
// nor any base64 form carrying it appears in a log message or field.
func TestAuthNotLogged(t *testing.T) {
	const pass = "Tr0ub4dor&3-horse"
	core, logs := observer.New(zap.DebugLevel)
	ts, auth, _ := startAuth(t, Config{Logger: zap.New(core), LogTranscript: true})
	auth.mu.Lock()
	auth.users["alice"] = pass
	auth.mu.Unlock()

	ts.cmd("AUTH PLAIN "+plain("", "alice", pass+"x"), 535, "5.7.8")
	ts.send("AUTH PLAIN")
	ts.expect(334, "")
	ts.cmd(plain("", "alice", pass+"y"), 535, "5.7.8")
	ts.send("AUTH LOGIN " + b64("alice"))
	ts.expect(334, "")
	ts.cmd(b64(pass+"z"), 535, "5.7.8")
	ts.send("AUTH LOGIN")
	ts.expect(334, "")
	ts.send(b64("alice"))
	ts.expect(334, "")
	ts.cmd("*", 501, "5.7.0")
	ts.send("AUTH PLAIN")
	ts.expect(334, "")
	ts.sendRaw(plain("", "alice", pass) + "\n") // a malformed line still is a secret
	ts.expect(501, "5.5.2")
	ts.send("AUTH LOGIN")
	ts.expect(334, "")
	ts.send(b64("alice"))
	ts.expect(334, "")
	ts.cmd(b64(pass), 235, "2.7.0")
	ts.cmd("QUIT", 221, "2.0.0")
	ts.wait()

	secrets := []string{pass, b64(pass), plain("", "alice", pass)}
	for _, sfx := range []string{"x", "y", "z"} {
		secrets = append(secrets, pass+sfx, b64(pass+sfx), plain("", "alice", pass+sfx))
	}
	transcript := 0
	for _, e := range logs.All() {
		text := e.Message
		for k, v := range e.ContextMap() {
			text += " " + k + "=" + fmt.Sprint(v)
		}
		if strings.HasPrefix(e.Message, "C: AUTH ") {
			transcript++
		}
		for _, s := range secrets {
			if strings.Contains(text, s) {
				t.Errorf("log entry %q contains the credential %q", text, s)
			}
		}
	}
	if transcript < 6 {
		t.Fatalf("the debug transcript has %d AUTH lines, want 6: is it on?\n%v", transcript, logs.All())
	}
}
