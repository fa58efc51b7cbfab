package session

import (
	"context"
	"net"
	"strings"
	"sync"
	"testing"
	"time"
)

// mailParamsSeen is a MailHook that records the MAIL parameters it got.
type mailParamsSeen struct {
	mu     sync.Mutex
	params []Params
}

func (m *mailParamsSeen) Mail(_ context.Context, s *Session, _ Path, ps Params) (*Reply, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.params = append(m.params, append(Params(nil), s.Transaction().MailParams...))
	return nil, nil
}

func (m *mailParamsSeen) last(t *testing.T, key string) string {
	t.Helper()
	m.mu.Lock()
	defer m.mu.Unlock()
	if len(m.params) == 0 {
		t.Fatal("no MAIL seen")
	}
	v, ok := m.params[len(m.params)-1].Get(key)
	if !ok {
		t.Fatalf("MAIL parameters %v have no %s", m.params[len(m.params)-1], key)
	}
	return v
}

// TestMailAuthParam: MAIL FROM's AUTH= (RFC 4954 section 5) is accepted
// where AUTH is advertised, checked as xtext, and kept in MailParams: as
// sent after a login, as <> before one.
func TestMailAuthParam(t *testing.T) {
	t.Run("not advertised", func(t *testing.T) {
		ts := start(t, Config{})
		ts.ehlo()
		ts.cmd("MAIL FROM:<a@b.test> AUTH=<>", 555, "5.5.4")
	})
	t.Run("before login", func(t *testing.T) {
		seen := &mailParamsSeen{}
		ts, _, _ := startAuth(t, Config{Handlers: []SubHandler{{Name: "params", Handler: seen}}})
		ts.cmd("MAIL FROM:<a@b.test> AUTH=alice+40example.test", 250, "2.1.0")
		if v := seen.last(t, "AUTH"); v != "<>" {
			t.Fatalf("AUTH= from an unauthenticated client kept as %q, want <> (RFC 4954 5)", v)
		}
	})
	t.Run("after login", func(t *testing.T) {
		seen := &mailParamsSeen{}
		ts, _, _ := startAuth(t, Config{Handlers: []SubHandler{{Name: "params", Handler: seen}}})
		ts.cmd("AUTH PLAIN "+plain("", "alice", "s3cret"), 235, "2.7.0")
		ts.cmd("MAIL FROM:<a@b.test> AUTH=alice+40example.test", 250, "2.1.0")
		if v := seen.last(t, "AUTH"); v != "alice+40example.test" {
			t.Fatalf("AUTH= kept as %q", v)
		}
		ts.cmd("RSET", 250, "2.0.0")
		ts.cmd("MAIL FROM:<a@b.test> AUTH=<>", 250, "2.1.0")
		if v := seen.last(t, "AUTH"); v != "<>" {
			t.Fatalf("AUTH=<> kept as %q", v)
		}
		ts.cmd("RSET", 250, "2.0.0")
		for _, bad := range []string{
			"AUTH=", "AUTH", "AUTH=a=b", "AUTH=a+4", "AUTH=a+zz", "AUTH=<> AUTH=<>",
			"AUTH=b\xc3\xbccher@x.test", // UTF-8 without SMTPUTF8
			"AUTH=" + strings.Repeat("a", 800),
		} {
			ts.cmd("MAIL FROM:<a@b.test> "+bad, 501, "5.5.4")
		}
		ts.cmd("MAIL FROM:<a@b.test> SMTPUTF8 AUTH=b\xc3\xbccher@x.test", 250, "2.1.0")
	})
}

// refuseUnknown is a RcptHook refusing every recipient whose local part
// is "unknown".
type refuseUnknown struct{}

func (refuseUnknown) Rcpt(_ context.Context, _ *Session, to Path, _ Params) (*Reply, error) {
	if strings.HasPrefix(to.Mailbox, "unknown@") {
		return NewReply(550, "5.1.1", "User unknown"), nil
	}
	return nil, nil
}

// TestMaxErrorsCountsProtocolErrorsOnly: refused recipients never count
// toward MaxErrors, and what counts is forgotten after a delivered message,
// so a long-lived connection from a real MTA is not cut.
func TestMaxErrorsCountsProtocolErrorsOnly(t *testing.T) {
	ts := start(t, Config{MaxErrors: 2, Handlers: []SubHandler{{Name: "refuse", Handler: refuseUnknown{}}}})
	ts.ehlo()
	for i := 0; i < 6; i++ {
		ts.cmd("MAIL FROM:<a@b.test>", 250, "2.1.0")
		ts.cmd("RCPT TO:<unknown@example.test>", 550, "5.1.1")
		ts.cmd("RCPT TO:<unknown@example.test>", 550, "5.1.1")
		ts.cmd("RCPT TO:<unknown@example.test>", 550, "5.1.1")
		ts.cmd("RCPT TO:<known@example.test>", 250, "2.1.5")
		ts.cmd("DATA", 354, "")
		ts.sendRaw(stuff("Subject: x\r\n\r\nbody\r\n"))
		ts.expect(250, "2.0.0")
		// Two protocol errors per message: under the limit each time,
		// because the delivered message before reset the count.
		ts.cmd("BOGUS", 500, "5.5.2")
		ts.cmd("RCPT TO:<x@example.test>", 503, "5.5.1")
	}
	ts.cmd("NOOP", 250, "2.0.0")
	ts.cmd("BOGUS", 421, "4.7.0") // the third without a delivery in between
	ts.expectClosed()
}

// TestDripFedDataIsCut: a client that sends message data slower than
// MinDataRate runs out of its data-phase budget and gets 421 4.4.2; nothing
// is delivered. Once with DATA, once with BDAT (whose command lines count
// too); a client that pauses but is fast on average is not cut.
func TestDripFedDataIsCut(t *testing.T) {
	cfg := func(rec *recorder) Config {
		return Config{DataTimeout: 400 * time.Millisecond, CommandTimeout: 5 * time.Second,
			MinDataRate: 1000, Handlers: []SubHandler{{Name: "rec", Handler: rec}}}
	}
	drip := func(ts *testSession, s string) {
		for i := 0; i < len(s); i++ {
			ts.conn.SetWriteDeadline(time.Now().Add(hangGuard))
			if _, err := ts.conn.Write([]byte{s[i]}); err != nil {
				return // the server closed the connection
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	body := "Subject: slow\r\n\r\n" + strings.Repeat("x", 40) + "\r\n"
	t.Run("DATA", func(t *testing.T) {
		rec := &recorder{}
		ts := start(t, cfg(rec))
		ts.ehlo()
		ts.mailTo("b@example.test")
		ts.cmd("DATA", 354, "")
		go drip(ts, stuff(body))
		r := ts.expect(421, "4.4.2")
		if !strings.Contains(r.texts[0], "too slowly") {
			t.Errorf("reply %q", r.raw)
		}
		ts.expectClosed()
		if rec.count("eom") != 0 || rec.count("abort") != 1 {
			t.Fatalf("events %v", rec.kinds())
		}
	})
	t.Run("BDAT", func(t *testing.T) {
		rec := &recorder{}
		ts := start(t, cfg(rec))
		ts.ehlo()
		ts.mailTo("b@example.test")
		// Each chunk arrives at once; the drip is in the BDAT command
		// lines, each of which is under CommandTimeout.
		var r smtpReply
		for i := 0; i < 20; i++ {
			drip(ts, "BDAT 1\r\nx")
			if r = ts.readReply(); r.code != 250 {
				break
			}
		}
		if r.code != 421 || r.enh != "4.4.2" {
			t.Fatalf("got %q, want 421 4.4.2 once the data phase ran out of time", r.raw)
		}
		ts.expectClosed()
		if rec.count("eom") != 0 {
			t.Fatalf("events %v", rec.kinds())
		}
	})
	t.Run("bursts", func(t *testing.T) {
		rec := &recorder{}
		ts := start(t, cfg(rec))
		ts.ehlo()
		ts.mailTo("b@example.test")
		ts.cmd("DATA", 354, "")
		// 2,000 bytes earn 2s (capped at DataTimeout); each pause spends
		// 300ms of it: a total of 1.5s, more than DataTimeout, at a
		// rate over MinDataRate.
		for i := 0; i < 5; i++ {
			ts.sendRaw(strings.Repeat("y", 998) + "\r\n" + strings.Repeat("z", 998) + "\r\n")
			time.Sleep(300 * time.Millisecond)
		}
		ts.sendRaw(".\r\n")
		ts.expect(250, "2.0.0")
	})
}

// TestMalformedBdatCloses: a BDAT line that is refused for its form (bare
// LF, NUL, stray CR) closes the session: the chunk after it is never read
// as commands.
func TestMalformedBdatCloses(t *testing.T) {
	for name, line := range map[string]string{
		"bare LF":  "BDAT 12 LAST\n",
		"NUL":      "BDAT 12\x00 LAST\r\n",
		"stray CR": "BDAT 12\r LAST\r\n",
		"tab":      "BDAT\t12 LAST\r\n",
	} {
		t.Run(name, func(t *testing.T) {
			rec := &recorder{}
			ts := start(t, Config{Handlers: []SubHandler{{Name: "rec", Handler: rec}}})
			ts.ehlo()
			ts.mailTo("b@example.test")
			ts.sendRaw(line + "RSET\r\nNOOP\r\n")
			ts.expect(501, "5.5.4")
			ts.expectClosed()
			if n := rec.count("verb"); n != 0 {
				t.Fatalf("chunk data ran as %d commands: %v", n, rec.kinds())
			}
		})
	}
}

// panicky panics in the call named by at.
type panicky struct{ at string }

func (p panicky) maybe(call string) {
	if p.at == call {
		panic("boom in " + call)
	}
}

func (p panicky) AuthMechanisms(*Session) []string {
	p.maybe("mechanisms")
	return []string{"PLAIN"}
}

func (p panicky) Authenticate(context.Context, *Session, string, string, string, string) (bool, error) {
	p.maybe("authenticate")
	return true, nil
}

func (p panicky) Extensions(*Session) []string {
	p.maybe("extensions")
	return []string{"XPANICKY"}
}

// TestPanicsInEveryCallFailClosed: a sub-handler that panics in a call
// that is not an event hook (AUTH mechanisms and check, EHLO keywords)
// fails that call closed, and the session goes on.
func TestPanicsInEveryCallFailClosed(t *testing.T) {
	t.Run("mechanisms", func(t *testing.T) {
		ts := start(t, Config{Handlers: []SubHandler{{Name: "p", Handler: panicky{at: "mechanisms"}}}})
		r := ts.cmd("EHLO client.example", 250, "")
		if hasKeyword(r, "AUTH") || !hasKeyword(r, "XPANICKY") {
			t.Fatalf("EHLO %q: want no AUTH and the other keywords", r.raw)
		}
		ts.cmd("AUTH PLAIN "+plain("", "a", "b"), 538, "5.7.11") // no mechanism offered (plain text)
		ts.cmd("NOOP", 250, "2.0.0")
	})
	t.Run("authenticate", func(t *testing.T) {
		ts := start(t, Config{Handlers: []SubHandler{{Name: "p", Handler: panicky{at: "authenticate"}}}})
		ts.ehlo()
		ts.cmd("AUTH PLAIN "+plain("", "a", "b"), 454, "4.7.0")
		ts.cmd("NOOP", 250, "2.0.0")
	})
	t.Run("extensions", func(t *testing.T) {
		ts := start(t, Config{Handlers: []SubHandler{{Name: "p", Handler: panicky{at: "extensions"}}}})
		r := ts.cmd("EHLO client.example", 250, "")
		if hasKeyword(r, "XPANICKY") || !hasKeyword(r, "AUTH") {
			t.Fatalf("EHLO %q: want the keyword left out, AUTH kept", r.raw)
		}
		ts.cmd("MAIL FROM:<a@b.test> RET=FULL", 555, "5.5.4") // DSN asks Extensions too
		ts.cmd("NOOP", 250, "2.0.0")
	})
}

// panickyObserver panics at the first message: a stand-in for a bug in
// the engine itself.
type panickyObserver struct {
	nopObserver
	once sync.Once
}

func (o *panickyObserver) Message(int, int64, int) {
	o.once.Do(func() { panic("engine bug") })
}

// TestEnginePanicEndsOnlyItsSession: Serve recovers from a panic inside
// the engine, returns it as an error, and the server serves the next
// session.
func TestEnginePanicEndsOnlyItsSession(t *testing.T) {
	srv, err := newServer(Config{Observer: &panickyObserver{}})
	if err != nil {
		t.Fatal(err)
	}
	ts := startOn(t, srv, ConnInfo{})
	ts.ehlo()
	ts.mailTo("b@example.test")
	ts.cmd("DATA", 354, "")
	ts.sendRaw(stuff("Subject: x\r\n\r\nbody\r\n"))
	ts.expectClosed()
	if err := ts.wait(); err == nil || !strings.Contains(err.Error(), "panicked") {
		t.Fatalf("Serve returned %v, want the panic as an error", err)
	}
	next := startOn(t, srv, ConnInfo{})
	next.ehlo()
	next.mailTo("b@example.test")
	next.cmd("DATA", 354, "")
	next.sendRaw(stuff("Subject: x\r\n\r\nbody\r\n"))
	next.expect(250, "2.0.0")
	if srv.Sessions() != 1 {
		t.Fatalf("%d sessions tracked, want 1 (the panicked one untracked)", srv.Sessions())
	}
}

// TestDrainBoundsBlockedSessions: after Shutdown, a session blocked in a
// sub-handler call or in a write to a client that does not read ends by
// the end of the grace period (and the moment for its 421), not at
// HandlerTimeout or CommandTimeout.
func TestDrainBoundsBlockedSessions(t *testing.T) {
	t.Run("in a hook", func(t *testing.T) {
		cancelled := make(chan struct{})
		hook := eomFunc(func(ctx context.Context, s *Session) (*Reply, error) {
			<-ctx.Done()
			close(cancelled)
			return nil, ctx.Err()
		})
		srv, _ := newServer(Config{GracePeriod: 200 * time.Millisecond, HandlerTimeout: time.Hour,
			Handlers: []SubHandler{{Name: "slow", Handler: hook}}})
		ts := startOn(t, srv, ConnInfo{})
		ts.ehlo()
		ts.mailTo("b@example.test")
		ts.cmd("DATA", 354, "")
		ts.sendRaw(stuff("Subject: x\r\n\r\nbody\r\n"))
		time.Sleep(50 * time.Millisecond) // the hook is running
		done := srv.Shutdown()
		select {
		case <-cancelled:
		case <-time.After(hangGuard):
			t.Fatal("the hook's context was never cancelled")
		}
		select {
		case <-done:
		case <-time.After(hangGuard):
			t.Fatal("the drain never ended")
		}
	})
	t.Run("in a write", func(t *testing.T) {
		srv, _ := newServer(Config{GracePeriod: 200 * time.Millisecond, CommandTimeout: time.Hour})
		sc, cc := net.Pipe() // nobody reads cc: the greeting write blocks
		defer cc.Close()
		served := make(chan struct{})
		go func() {
			srv.Serve(context.Background(), sc, ConnInfo{})
			close(served)
		}()
		for srv.Sessions() == 0 {
			time.Sleep(5 * time.Millisecond)
		}
		done := srv.Shutdown()
		select {
		case <-done:
		case <-time.After(hangGuard):
			t.Fatal("a session blocked in a write outlived the grace period")
		}
		<-served
	})
}

// TestDrainingSessionsCountAgainstTheNewConfiguration: the connection
// limits count every session on the port, so sessions still draining on a
// replaced Server (a reload) count against the new Server's limits.
func TestDrainingSessionsCountAgainstTheNewConfiguration(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	old, _ := newServer(Config{MaxConnectionsPerIP: 2})
	replacement, _ := newServer(Config{MaxConnectionsPerIP: 2})
	current := old
	var mu sync.Mutex
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			srv := current
			mu.Unlock()
			go func() {
				defer c.Close()
				srv.Serve(context.Background(), c, ConnInfo{})
			}()
		}
	}()
	dial := func() *testClient {
		c, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return newTestClient(t, c)
	}
	var busy []*testClient
	for i := 0; i < 2; i++ {
		c := dial()
		c.expect(220, "")
		c.cmd("EHLO client.example", 250, "")
		c.cmd("MAIL FROM:<a@b.test>", 250, "2.1.0") // a transaction: it will drain, not close
		busy = append(busy, c)
	}
	mu.Lock()
	current = replacement
	mu.Unlock()
	old.Shutdown()
	third := dial()
	third.expect(421, "4.7.0")
	for _, c := range busy {
		c.cmd("QUIT", 221, "2.0.0")
	}
	for old.Sessions() > 0 {
		time.Sleep(5 * time.Millisecond)
	}
	fourth := dial()
	fourth.expect(220, "")
}
