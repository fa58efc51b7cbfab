package queue

import (
	"context"
	"io"
	"strings"
	"sync"
	"testing"

	"go.uber.org/zap/zaptest"
)

// countingStore counts a Store's writes per entry.
type countingStore struct {
	Store
	mu                  sync.Mutex
	puts, updates, rmvs map[string]int
}

func (c *countingStore) count(m *map[string]int, id string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if *m == nil {
		*m = map[string]int{}
	}
	(*m)[id]++
}

func (c *countingStore) get(m map[string]int, id string) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return m[id]
}

func (c *countingStore) Put(ctx context.Context, e *Entry, msg io.Reader) error {
	err := c.Store.Put(ctx, e, msg)
	c.count(&c.puts, e.ID)
	return err
}

func (c *countingStore) Update(ctx context.Context, e *Entry) error {
	c.count(&c.updates, e.ID)
	return c.Store.Update(ctx, e)
}

func (c *countingStore) Remove(ctx context.Context, id string) error {
	c.count(&c.rmvs, id)
	return c.Store.Remove(ctx, id)
}

// TestPassWrites: a pass stores only what a crash must not lose. An
// entry whose recipients are all delivered with no DSN due is removed
// without a state write; one that calls for a DSN stores the outcome
// before queueing it, and is then removed without storing the recipients
// as reported; one deferred stores its outcome.
func TestPassWrites(t *testing.T) {
	dir := t.TempDir()
	ds, err := OpenDir(dir, zaptest.NewLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	defer ds.Close()
	cs := &countingStore{Store: ds}
	clock := newFakeClock()
	fd := newFakeDeliver(t, clock)
	fd.on("later@example.com", reply(451, "4.3.0", "later"))
	q, err := New(cs, Options{Deliver: fd.Deliver, Clock: clock, Hostname: "mx.example.org", Logger: zaptest.NewLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	if err := q.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	defer q.Stop(context.Background())
	enq := func(env Envelope) string {
		id, err := q.Enqueue(context.Background(), env, strings.NewReader(testMessage))
		if err != nil {
			t.Fatal(err)
		}
		return id
	}
	plain := enq(Envelope{From: "a@example.net", Recipients: rcpts("b@example.com", "c@example.com")})
	success := enq(Envelope{From: "a@example.net", Recipients: []Recipient{{Addr: "b@example.com", Notify: "SUCCESS"}}})
	later := enq(Envelope{From: "a@example.net", Recipients: rcpts("later@example.com")})
	waitFor(t, "the delivered entries to go", func() bool {
		_, e1 := q.Get(plain)
		_, e2 := q.Get(success)
		return e1 == ErrNotFound && e2 == ErrNotFound
	})
	waitFor(t, "the deferred entry's state", func() bool { return cs.get(cs.updates, later) == 1 })
	for _, c := range []struct {
		id                     string
		puts, updates, removes int
	}{
		{plain, 1, 0, 1},
		{success, 1, 1, 1}, // the outcome, before the DSN
		{later, 1, 1, 0},
	} {
		if p, u, r := cs.get(cs.puts, c.id), cs.get(cs.updates, c.id), cs.get(cs.rmvs, c.id); p != c.puts || u != c.updates || r != c.removes {
			t.Errorf("%s: %d puts, %d updates, %d removes; want %d, %d, %d", c.id, p, u, r, c.puts, c.updates, c.removes)
		}
	}
	// The DSN is delivered and goes too; the deferred entry has its
	// entry file and its later state.
	want := ".lock " + later + ".msg " + later + ".state"
	waitFor(t, "the DSN to go", func() bool { return strings.Join(entryNames(t, dir), " ") == want })
}
