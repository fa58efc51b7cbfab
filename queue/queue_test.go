package queue

import (
	"context"
	"errors"
	"io"
	"mime"
	"mime/multipart"
	"net/mail"
	"strings"
	"testing"
	"time"

	"github.com/caddy-esmtp/caddy-esmtp/queue/dsn"
)

// parsedDSN is a DSN the queue sent, parsed.
type parsedDSN struct {
	subject string
	parts   []string // content types
	status  *dsn.Status
	orig    string
}

func parseDSN(t *testing.T, raw string) parsedDSN {
	t.Helper()
	m, err := mail.ReadMessage(strings.NewReader(raw))
	if err != nil {
		t.Fatal(err)
	}
	_, params, err := mime.ParseMediaType(m.Header.Get("Content-Type"))
	if err != nil {
		t.Fatal(err)
	}
	p := parsedDSN{subject: m.Header.Get("Subject")}
	mr := multipart.NewReader(m.Body, params["boundary"])
	for {
		part, err := mr.NextRawPart()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(part)
		ct, _, _ := mime.ParseMediaType(part.Header.Get("Content-Type"))
		p.parts = append(p.parts, ct)
		switch ct {
		case "message/delivery-status", "message/global-delivery-status":
			if p.status, err = dsn.ParseDeliveryStatus(b); err != nil {
				t.Fatal(err)
			}
		case "message/rfc822", "text/rfc822-headers", "message/global", "message/global-headers":
			p.orig = string(b)
		}
	}
	if p.status == nil {
		t.Fatalf("no delivery-status in %s", raw)
	}
	return p
}

func (p parsedDSN) field(t *testing.T, rcpt int, name string) string {
	t.Helper()
	if rcpt >= len(p.status.Recipients) {
		t.Fatalf("no recipient block %d", rcpt)
	}
	v, _ := p.status.Recipients[rcpt].Get(name)
	return v
}

func TestBackoffSchedule(t *testing.T) {
	q, err := New(nil, Options{Deliver: func(context.Context, *Entry, []Recipient, Message) []Outcome { return nil }})
	if err != nil {
		t.Fatal(err)
	}
	want := []time.Duration{5 * time.Minute, 10 * time.Minute, 20 * time.Minute, 40 * time.Minute, time.Hour, time.Hour, time.Hour}
	for i, w := range want {
		if got := q.opt.Backoff(i + 1); got != w {
			t.Errorf("Backoff(%d) = %v, want %v", i+1, got, w)
		}
	}
	if got := q.opt.Backoff(1000); got != time.Hour {
		t.Errorf("Backoff(1000) = %v", got)
	}
}

// TestRetryWithBackoff: a 4xx is retried at the documented times, then
// delivered; nothing is sent back, the entry goes.
func TestRetryWithBackoff(t *testing.T) {
	h := newHarness(t, Options{})
	t0 := h.clock.Now()
	temp := reply(451, "4.7.1", "greylisted")
	h.fd.on("bob@example.com", temp, temp, temp, reply(250, "2.0.0", "queued"))
	id := h.enqueue(Envelope{From: "alice@example.net", Recipients: rcpts("bob@example.com")})
	next := t0
	for n, wait := range []time.Duration{5 * time.Minute, 10 * time.Minute, 20 * time.Minute} {
		e := h.entry(id)
		next = next.Add(wait)
		if r := e.Recipients[0]; r.State != Deferred || r.Attempts != n+1 || r.Reply.Code != 451 || !e.NextAttempt.Equal(next) {
			t.Fatalf("after attempt %d: %+v next %v, want next %v", n+1, r, e.NextAttempt, next)
		}
		h.advanceTo(next.Add(-time.Second)) // not yet
		if got := len(h.fd.callsTo("bob@example.com")); got != n+1 {
			t.Fatalf("%d attempts before the retry is due", got)
		}
		h.advanceTo(next)
	}
	waitFor(t, "the entry to go", func() bool { return h.gone(id) })
	calls := h.fd.callsTo("bob@example.com")
	wantAt := []time.Duration{0, 5 * time.Minute, 15 * time.Minute, 35 * time.Minute}
	if len(calls) != len(wantAt) {
		t.Fatalf("calls %v", calls)
	}
	for i, c := range calls {
		if !c.at.Equal(t0.Add(wantAt[i])) {
			t.Errorf("attempt %d at %v, want %v", i+1, c.at, t0.Add(wantAt[i]))
		}
		if c.msg != testMessage {
			t.Errorf("attempt %d got message %q", i+1, c.msg)
		}
	}
	if d := h.dsnsTo("alice@example.net"); len(d) != 0 {
		t.Errorf("DSNs sent: %v", d)
	}
	s := h.q.Stats()
	if s.Delivered != 1 || s.Deferred != 3 || s.Retries != 3 || s.Failed != 0 || s.Length != 0 {
		t.Errorf("stats %+v", s)
	}
}

// TestPermanentFailureBounces: a 5xx fails that recipient at once; the
// other is delivered; the sender gets one DSN (from the null sender,
// through the same deliveries) with the upstream's reply and the
// original; the entry and then the DSN's entry go.
func TestPermanentFailureBounces(t *testing.T) {
	h := newHarness(t, Options{})
	h.fd.on("nobody@example.com", reply(550, "5.1.1", "User unknown"))
	h.fd.on("other@example.com", reply(550, "5.1.1", "No such user"))
	id := h.enqueue(Envelope{From: "alice@example.net", EnvID: "E+2B1", Client: Client{Helo: "client.example.net"},
		Recipients: []Recipient{{Addr: "nobody@example.com", ORCPT: "rfc822;nobody@example.com"}, {Addr: "bob@example.com"}, {Addr: "other@example.com"}}})
	waitFor(t, "the entry to go", func() bool { return h.gone(id) })
	d := h.dsnsTo("alice@example.net")
	if len(d) != 1 {
		t.Fatalf("DSNs: %v", d)
	}
	p := parseDSN(t, d[0].msg)
	if strings.Join(p.parts, " ") != "text/plain message/delivery-status message/rfc822" {
		t.Errorf("parts %v", p.parts)
	}
	if p.orig != testMessage {
		t.Errorf("returned original %q", p.orig)
	}
	if v, _ := p.status.Message.Get("Original-Envelope-Id"); v != "E+1" {
		t.Errorf("Original-Envelope-Id %q", v)
	}
	if v, _ := p.status.Message.Get("Received-From-MTA"); v != "dns; client.example.net" {
		t.Errorf("Received-From-MTA %q", v)
	}
	if len(p.status.Recipients) != 2 {
		t.Fatalf("recipients %v", p.status.Recipients)
	}
	for k, v := range map[string]string{"Final-Recipient": "rfc822; nobody@example.com", "Original-Recipient": "rfc822; nobody@example.com",
		"Action": "failed", "Status": "5.1.1", "Remote-MTA": "dns; mx.example.com", "Diagnostic-Code": "smtp; 550 5.1.1 User unknown"} {
		if got := p.field(t, 0, k); got != v {
			t.Errorf("%s = %q, want %q", k, got, v)
		}
	}
	if got := p.field(t, 1, "Final-Recipient"); got != "rfc822; other@example.com" {
		t.Errorf("second block %q", got)
	}
	waitFor(t, "the DSN's entry to go", func() bool { return len(h.q.List()) == 0 })
	if s := h.q.Stats(); s.Bounces != 1 || s.Failed != 2 || s.Delivered != 2 {
		t.Errorf("stats %+v", s)
	}
}

// TestMaxAge: a recipient still deferred at MaxAge fails (last attempt at
// MaxAge exactly), reported with 5.4.7 and the last reply.
func TestMaxAge(t *testing.T) {
	h := newHarness(t, Options{MaxAge: 2 * time.Hour})
	t0 := h.clock.Now()
	h.fd.on("slow@example.com", reply(421, "4.4.2", "try later"))
	id := h.enqueue(Envelope{From: "alice@example.net", Recipients: rcpts("slow@example.com")})
	for !h.gone(id) {
		e := h.entry(id)
		if e.NextAttempt.After(t0.Add(2 * time.Hour)) {
			t.Fatalf("next attempt %v after MaxAge", e.NextAttempt)
		}
		h.advanceTo(e.NextAttempt)
	}
	calls := h.fd.callsTo("slow@example.com")
	if last := calls[len(calls)-1].at; !last.Equal(t0.Add(2 * time.Hour)) {
		t.Errorf("last attempt at %v", last)
	}
	d := h.dsnsTo("alice@example.net")
	if len(d) != 1 {
		t.Fatalf("DSNs %v", d)
	}
	p := parseDSN(t, d[0].msg)
	if p.field(t, 0, "Action") != "failed" || p.field(t, 0, "Status") != "5.4.7" || p.field(t, 0, "Diagnostic-Code") != "smtp; 421 4.4.2 try later" {
		t.Errorf("block %v", p.status.Recipients[0])
	}
}

// TestDelayWarningOnce: one delayed DSN at DelayWarning, however many
// attempts follow, then the failure at MaxAge.
func TestDelayWarningOnce(t *testing.T) {
	h := newHarness(t, Options{MaxAge: 6 * time.Hour, DelayWarning: 30 * time.Minute})
	t0 := h.clock.Now()
	h.fd.on("slow@example.com", reply(451, "4.3.0", "busy"))
	id := h.enqueue(Envelope{From: "alice@example.net", Ret: "FULL", Recipients: rcpts("slow@example.com")})
	var delayedAt time.Time
	for !h.gone(id) {
		if delayedAt.IsZero() && len(h.dsnsTo("alice@example.net")) == 1 {
			delayedAt = h.clock.Now()
		}
		h.advanceTo(h.entry(id).NextAttempt)
	}
	if !delayedAt.Equal(t0.Add(30 * time.Minute)) {
		t.Errorf("delay warning at %v, want %v", delayedAt, t0.Add(30*time.Minute))
	}
	d := h.dsnsTo("alice@example.net")
	if len(d) != 2 {
		t.Fatalf("DSNs %v", d)
	}
	warn, fail := parseDSN(t, d[0].msg), parseDSN(t, d[1].msg)
	if warn.field(t, 0, "Action") != "delayed" || warn.field(t, 0, "Status") != "4.3.0" || warn.field(t, 0, "Will-Retry-Until") == "" {
		t.Errorf("warning %v", warn.status.Recipients[0])
	}
	// A delay warning returns the header only, even with RET=FULL.
	if warn.parts[2] != "text/rfc822-headers" || !strings.HasSuffix(warn.orig, "Subject: hello\r\n\r\n") {
		t.Errorf("warning returns %s %q", warn.parts[2], warn.orig)
	}
	if fail.field(t, 0, "Action") != "failed" || fail.parts[2] != "message/rfc822" {
		t.Errorf("failure %v %v", fail.parts, fail.status.Recipients[0])
	}
}

// TestNotify: NOTIFY and RET decide which DSNs are sent and what they carry.
func TestNotify(t *testing.T) {
	for _, c := range []struct {
		name    string
		rcpt    Recipient
		ret     string
		out     Outcome
		actions string // of the DSNs sent, in order, "" for none
		orig    string // the returned part's type
	}{
		{"never-fails", Recipient{Addr: "r@x", Notify: "NEVER"}, "", reply(550, "5.1.1", "no"), "", ""},
		{"failure-fails", Recipient{Addr: "r@x", Notify: "FAILURE"}, "", reply(550, "5.1.1", "no"), "failed", "message/rfc822"},
		{"failure-hdrs", Recipient{Addr: "r@x", Notify: "FAILURE"}, "HDRS", reply(550, "5.1.1", "no"), "failed", "text/rfc822-headers"},
		{"default-success", Recipient{Addr: "r@x"}, "", reply(250, "2.0.0", "ok"), "", ""},
		{"success", Recipient{Addr: "r@x", Notify: "SUCCESS"}, "FULL", reply(250, "2.0.0", "ok"), "delivered", "text/rfc822-headers"},
		{"success-relayed", Recipient{Addr: "r@x", Notify: "SUCCESS,FAILURE"}, "", Outcome{Code: 250, Text: "ok", Relayed: true}, "relayed", "text/rfc822-headers"},
		{"success-not-failure", Recipient{Addr: "r@x", Notify: "SUCCESS"}, "", reply(550, "5.1.1", "no"), "", ""},
		{"delay-only", Recipient{Addr: "r@x", Notify: "DELAY"}, "", reply(451, "4.3.0", "busy"), "delayed", "text/rfc822-headers"},
		{"failure-no-delay", Recipient{Addr: "r@x", Notify: "FAILURE"}, "", reply(451, "4.3.0", "busy"), "failed", "message/rfc822"},
	} {
		t.Run(c.name, func(t *testing.T) {
			h := newHarness(t, Options{MaxAge: time.Hour, DelayWarning: 10 * time.Minute})
			h.fd.on("r@x", c.out)
			id := h.enqueue(Envelope{From: "s@y", Ret: c.ret, Recipients: []Recipient{c.rcpt}})
			for !h.gone(id) {
				h.advanceTo(h.entry(id).NextAttempt)
			}
			var actions []string
			for _, d := range h.dsnsTo("s@y") {
				p := parseDSN(t, d.msg)
				actions = append(actions, p.field(t, 0, "Action"))
				if len(p.parts) != 3 || p.parts[2] != c.orig {
					t.Errorf("parts %v, want the original as %s", p.parts, c.orig)
				}
			}
			if got := strings.Join(actions, " "); got != c.actions {
				t.Errorf("DSN actions %q, want %q", got, c.actions)
			}
		})
	}
}

// TestNoBounceOfBounce: a failed message from the null sender gets no DSN.
func TestNoBounceOfBounce(t *testing.T) {
	h := newHarness(t, Options{})
	h.fd.on("r@x", reply(550, "5.1.1", "no"))
	id := h.enqueue(Envelope{From: "", Recipients: rcpts("r@x")})
	waitFor(t, "the entry to go", func() bool { return h.gone(id) })
	if n := len(h.fd.calls); n != 1 {
		t.Errorf("%d deliveries: %v", n, h.fd.calls)
	}
	if s := h.q.Stats(); s.Bounces != 0 || s.BouncesDropped != 1 {
		t.Errorf("stats %+v", s)
	}
}

// TestDelete: without a bounce the entry just goes; with one the sender
// gets a DSN for the recipients not delivered yet; a running pass is
// cancelled and waited for.
func TestDelete(t *testing.T) {
	for _, bounce := range []bool{false, true} {
		h := newHarness(t, Options{})
		h.fd.on("later@x", reply(451, "4.3.0", "busy"))
		id := h.enqueue(Envelope{From: "s@y", Recipients: rcpts("done@x", "later@x")})
		if err := h.q.Delete(context.Background(), id, bounce); err != nil {
			t.Fatal(err)
		}
		h.settle()
		if !h.gone(id) {
			t.Fatalf("bounce %v: entry still there", bounce)
		}
		d := h.dsnsTo("s@y")
		if !bounce {
			if len(d) != 0 {
				t.Errorf("DSN sent without bounce: %v", d)
			}
			continue
		}
		if len(d) != 1 {
			t.Fatalf("DSNs %v", d)
		}
		p := parseDSN(t, d[0].msg)
		if len(p.status.Recipients) != 1 || p.field(t, 0, "Final-Recipient") != "rfc822; later@x" || p.field(t, 0, "Action") != "failed" {
			t.Errorf("DSN %v", p.status.Recipients)
		}
		if err := h.q.Delete(context.Background(), id, false); !errors.Is(err, ErrNotFound) {
			t.Errorf("second delete: %v", err)
		}
	}

	h := newHarness(t, Options{})
	h.fd.block = make(chan struct{})
	id, err := h.q.Enqueue(context.Background(), Envelope{From: "s@y", Recipients: rcpts("r@x")}, strings.NewReader(testMessage))
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the pass to start", func() bool { return h.q.Stats().Running == 1 })
	if err := h.q.Delete(context.Background(), id, false); err != nil {
		t.Fatal(err)
	}
	h.settle()
	if !h.gone(id) || len(h.q.List()) != 0 {
		t.Errorf("after deleting a running entry: %v", h.q.List())
	}
}

// TestFlushAndRetry: both make a deferred entry's attempt due at once.
func TestFlushAndRetry(t *testing.T) {
	h := newHarness(t, Options{})
	temp := reply(451, "4.3.0", "busy")
	h.fd.on("a@x", temp, temp, reply(250, "2.0.0", "ok"))
	h.fd.on("b@x", temp, reply(250, "2.0.0", "ok"))
	a := h.enqueue(Envelope{From: "s@y", Recipients: rcpts("a@x")})
	b := h.enqueue(Envelope{From: "s@y", Recipients: rcpts("b@x")})
	h.q.Flush()
	h.settle()
	if len(h.fd.callsTo("a@x")) != 2 || !h.gone(b) {
		t.Fatalf("after Flush: a %v, b gone %v", h.fd.callsTo("a@x"), h.gone(b))
	}
	if err := h.q.Retry(a); err != nil {
		t.Fatal(err)
	}
	h.settle()
	if !h.gone(a) {
		t.Errorf("after Retry: %+v", h.entry(a))
	}
	if err := h.q.Retry("nope"); !errors.Is(err, ErrNotFound) {
		t.Errorf("Retry of an unknown id: %v", err)
	}
	if len(h.q.List()) != 0 {
		t.Errorf("left: %v", h.q.List())
	}
}

// TestRestartResumes: entries survive a Stop and a new Queue over the same
// directory, and are delivered when due; a delivered recipient is not
// tried again.
func TestRestartResumes(t *testing.T) {
	h := newHarness(t, Options{})
	h.fd.on("later@x", reply(451, "4.3.0", "busy"))
	id := h.enqueue(Envelope{From: "s@y", Recipients: rcpts("now@x", "later@x")})
	if err := h.q.Stop(context.Background()); err != nil {
		t.Fatal(err)
	}
	h.store.Close()

	store, err := OpenDir(h.dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	clock := newFakeClock()
	fd := newFakeDeliver(t, clock)
	q, err := New(store, Options{Deliver: fd.Deliver, Clock: clock})
	if err != nil {
		t.Fatal(err)
	}
	if err := q.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	defer q.Stop(context.Background())
	e, err := q.Get(id)
	if err != nil || e.Recipients[0].State != Delivered || e.Recipients[1].State != Deferred {
		t.Fatalf("after restart: %+v %v", e, err)
	}
	clock.Set(e.NextAttempt)
	waitFor(t, "the entry to go", func() bool { _, err := q.Get(id); return err != nil })
	if len(fd.calls) != 1 || fd.calls[0].rcpt != "later@x" {
		t.Errorf("deliveries after restart: %v", fd.calls)
	}
}

// TestStopCutsDeliveries: Stop bounded by a context cancels a pass that
// does not end by itself, and the attempt is made again after a restart.
func TestStopCutsDeliveries(t *testing.T) {
	h := newHarness(t, Options{})
	h.fd.block = make(chan struct{})
	id, err := h.q.Enqueue(context.Background(), Envelope{From: "s@y", Recipients: rcpts("r@x")}, strings.NewReader(testMessage))
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the pass to start", func() bool { return h.q.Stats().Running == 1 })
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := h.q.Stop(ctx); !errors.Is(err, context.Canceled) {
		t.Errorf("Stop: %v", err)
	}
	waitFor(t, "the pass to end", func() bool { return h.q.Stats().Running == 0 })
	e, err := h.store.Get(context.Background(), id)
	if err != nil || e.Recipients[0].State.Final() {
		t.Errorf("after a cut Stop: %+v %v", e, err)
	}
}

func TestWants(t *testing.T) {
	for _, c := range []struct {
		notify           string
		succ, fail, dely bool
	}{
		{"", false, true, true}, {"NEVER", false, false, false}, {"SUCCESS", true, false, false},
		{"failure,delay", false, true, true}, {"SUCCESS,FAILURE", true, true, false},
	} {
		r := Recipient{Notify: c.notify}
		if r.Wants(NotifySuccess) != c.succ || r.Wants(NotifyFailure) != c.fail || r.Wants(NotifyDelay) != c.dely {
			t.Errorf("NOTIFY=%q", c.notify)
		}
	}
}
