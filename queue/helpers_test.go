package queue

import (
	"context"
	"fmt"
	"io"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/zap/zaptest"
)

// fakeClock is a Clock that moves only when told to.
type fakeClock struct {
	mu     sync.Mutex
	now    time.Time
	timers []*fakeTimer
}

type fakeTimer struct {
	at      time.Time
	f       func()
	stopped bool
}

func newFakeClock() *fakeClock {
	return &fakeClock{now: time.Date(2026, 3, 1, 10, 0, 0, 0, time.UTC)}
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) AfterFunc(d time.Duration, f func()) func() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	t := &fakeTimer{at: c.now.Add(d), f: f}
	if d <= 0 {
		go f()
		return func() bool { return false }
	}
	c.timers = append(c.timers, t)
	return func() bool {
		c.mu.Lock()
		defer c.mu.Unlock()
		was := !t.stopped
		t.stopped = true
		return was
	}
}

// Set moves the clock to t and fires the timers due by then.
func (c *fakeClock) Set(t time.Time) {
	c.mu.Lock()
	c.now = t
	var fire []func()
	keep := c.timers[:0]
	for _, tm := range c.timers {
		switch {
		case tm.stopped:
		case !tm.at.After(t):
			tm.stopped = true
			fire = append(fire, tm.f)
		default:
			keep = append(keep, tm)
		}
	}
	c.timers = keep
	c.mu.Unlock()
	for _, f := range fire {
		go f()
	}
}

// Advance moves the clock by d.
func (c *fakeClock) Advance(d time.Duration) { c.Set(c.Now().Add(d)) }

// call is one recipient's delivery attempt, as the fake Deliver saw it.
type call struct {
	id, rcpt string
	at       time.Time
	from     string
	msg      string
}

// fakeDeliver answers from a script: per recipient address, the codes of
// its successive attempts (the last one repeats); 250 when unscripted. It
// fails the test if two passes over one entry overlap.
type fakeDeliver struct {
	t      testing.TB
	clock  Clock
	mu     sync.Mutex
	script map[string][]Outcome
	calls  []call
	busy   map[string]bool
	block  chan struct{} // when set, Deliver waits on it or on ctx
}

func newFakeDeliver(t testing.TB, clock Clock) *fakeDeliver {
	return &fakeDeliver{t: t, clock: clock, script: map[string][]Outcome{}, busy: map[string]bool{}}
}

func (f *fakeDeliver) on(rcpt string, codes ...Outcome) { f.script[rcpt] = codes }

func reply(code int, enh, text string) Outcome {
	return Outcome{Code: code, Enhanced: enh, Text: text, RemoteMTA: "mx.example.com"}
}

func (f *fakeDeliver) Deliver(ctx context.Context, e *Entry, rcpts []Recipient, msg Message) []Outcome {
	f.mu.Lock()
	if f.busy[e.ID] {
		f.t.Errorf("two passes over %s at once", e.ID)
	}
	f.busy[e.ID] = true
	block := f.block
	f.mu.Unlock()
	defer func() {
		f.mu.Lock()
		delete(f.busy, e.ID)
		f.mu.Unlock()
	}()
	if block != nil {
		select {
		case <-block:
		case <-ctx.Done():
			out := make([]Outcome, len(rcpts))
			for i := range out {
				out[i] = reply(451, "4.4.2", "cancelled")
			}
			return out
		}
	}
	b, err := io.ReadAll(Reader(msg))
	if err != nil {
		f.t.Errorf("reading %s: %v", e.ID, err)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []Outcome
	for _, r := range rcpts {
		f.calls = append(f.calls, call{id: e.ID, rcpt: r.Addr, at: f.clock.Now(), from: e.From, msg: string(b)})
		s := f.script[r.Addr]
		o := reply(250, "2.0.0", "ok")
		if len(s) > 0 {
			o = s[0]
			if len(s) > 1 {
				f.script[r.Addr] = s[1:]
			}
		}
		out = append(out, o)
	}
	return out
}

// callsTo returns the attempts made to rcpt.
func (f *fakeDeliver) callsTo(rcpt string) []call {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []call
	for _, c := range f.calls {
		if c.rcpt == rcpt {
			out = append(out, c)
		}
	}
	return out
}

// harness is a queue over a DirStore in a temporary directory, with a
// fake clock and a fake Deliver.
type harness struct {
	t     *testing.T
	dir   string
	store *DirStore
	clock *fakeClock
	fd    *fakeDeliver
	q     *Queue
}

func newHarness(t *testing.T, opt Options) *harness {
	t.Helper()
	h := &harness{t: t, dir: t.TempDir(), clock: newFakeClock()}
	var err error
	h.store, err = OpenDir(h.dir, zaptest.NewLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	h.fd = newFakeDeliver(t, h.clock)
	opt.Deliver = h.fd.Deliver
	opt.Clock = h.clock
	opt.Logger = zaptest.NewLogger(t)
	if opt.Hostname == "" {
		opt.Hostname = "mx.example.org"
	}
	h.q, err = New(h.store, opt)
	if err != nil {
		t.Fatal(err)
	}
	if err := h.q.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		h.q.Stop(context.Background())
		h.store.Close()
	})
	return h
}

const testMessage = "From: alice@example.net\r\nTo: bob@example.com\r\nSubject: hello\r\n\r\nHi Bob.\r\n"

func (h *harness) enqueue(env Envelope) string {
	h.t.Helper()
	id, err := h.q.Enqueue(context.Background(), env, strings.NewReader(testMessage))
	if err != nil {
		h.t.Fatal(err)
	}
	h.settle()
	return id
}

func rcpts(addrs ...string) []Recipient {
	var out []Recipient
	for _, a := range addrs {
		out = append(out, Recipient{Addr: a})
	}
	return out
}

// idle reports whether no pass runs and none is due.
func (q *Queue) idle() bool {
	now := q.clock.Now()
	q.mu.Lock()
	defer q.mu.Unlock()
	for _, it := range q.items {
		if it.running || (!it.deleted && !it.due().After(now)) {
			return false
		}
	}
	return true
}

// settle waits until the queue is idle (no timing is asserted: the bound
// only turns a hang into a failure).
func (h *harness) settle() {
	h.t.Helper()
	waitFor(h.t, "the queue to settle", h.q.idle)
}

func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(time.Millisecond)
	}
}

// advanceTo sets the clock to t and lets the queue settle.
func (h *harness) advanceTo(t time.Time) {
	h.clock.Set(t)
	h.settle()
}

// entry returns entry id, failing the test when it is gone.
func (h *harness) entry(id string) *Entry {
	h.t.Helper()
	e, err := h.q.Get(id)
	if err != nil {
		h.t.Fatalf("entry %s: %v", id, err)
	}
	return e
}

// dsns returns the queued (or delivered) DSN messages, from the fake
// Deliver's calls to sender.
func (h *harness) dsnsTo(sender string) []call {
	var out []call
	for _, c := range h.fd.callsTo(sender) {
		if c.from == "" {
			out = append(out, c)
		}
	}
	return out
}

func (h *harness) gone(id string) bool {
	_, err := h.q.Get(id)
	_, serr := h.store.Get(context.Background(), id)
	return err == ErrNotFound && serr == ErrNotFound
}

func (c call) String() string {
	return fmt.Sprintf("%s->%s at %s", c.id, c.rcpt, c.at.Format(time.TimeOnly))
}
