package session

import (
	"bytes"
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
)

// memQueue keeps what the engine queues, in memory.
type memQueue struct {
	mu   sync.Mutex
	got  []*Queued
	msgs [][]byte
	fail error
}

func (q *memQueue) Enqueue(_ context.Context, m *Queued) error {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.fail != nil {
		return q.fail
	}
	b, err := m.Message.Bytes()
	if err != nil {
		return err
	}
	q.got = append(q.got, m)
	q.msgs = append(q.msgs, b)
	return nil
}

// perRecipient refuses the recipients named in refuse with their reply,
// through Delivery.SetReply.
type perRecipient struct {
	capture
	refuse map[string]*Reply
}

func (p *perRecipient) Deliver(ctx context.Context, s *Session, d *Delivery) error {
	for i, r := range d.Recipients {
		if rep := p.refuse[r.Path.Mailbox]; rep != nil {
			d.SetReply(i, rep)
		}
	}
	return p.capture.Deliver(ctx, s, d)
}

// TestQueueTakesTheMessage: with a queue, end of data stores the final
// message (judges' edits applied) with its envelope and client, answers
// 250 without running any delivery; DeliverQueued then runs them outside
// the session, each recipient with its own reply; a queue that fails
// answers 451 and a discarded message is not queued.
func TestQueueTakesTheMessage(t *testing.T) {
	q := &memQueue{}
	a := &perRecipient{refuse: map[string]*Reply{"bad@a.test": NewReply(550, "5.1.1", "no such user")}}
	b := &capture{}
	edit := judge(func(s *Session) *Reply {
		s.Transaction().PrependHeader("X-Judged", "yes")
		if strings.Contains(s.Transaction().From.Mailbox, "discard") {
			s.Transaction().Discard("test")
		}
		return nil
	})
	srv, err := newServer(Config{Queue: q, Handlers: []SubHandler{
		{Name: "judge", Handler: edit},
		{Name: "a", Handler: a, Match: domainMatcher("a.test")},
		{Name: "b", Handler: b, Match: domainMatcher("b.test")},
	}})
	if err != nil {
		t.Fatal(err)
	}
	ts := startOn(t, srv, ConnInfo{})
	ts.ehlo()
	ts.cmd("MAIL FROM:<s@x.test>", 250, "2.1.0")
	ts.cmd("RCPT TO:<one@a.test>", 250, "2.1.5")
	ts.cmd("RCPT TO:<bad@a.test>", 250, "2.1.5")
	ts.cmd("RCPT TO:<two@b.test>", 250, "2.1.5")
	ts.cmd("RCPT TO:<three@c.test>", 550, "5.1.1")
	ts.cmd("DATA", 354, "")
	ts.sendRaw(stuff("Subject: x\r\n\r\nbody\r\n"))
	r := ts.expect(250, "2.0.0")
	if !strings.HasSuffix(r.texts[0], "Message queued") {
		t.Errorf("250 text %q", r.texts[0])
	}
	ts.cmd("MAIL FROM:<discard@x.test>", 250, "2.1.0")
	ts.cmd("RCPT TO:<one@a.test>", 250, "2.1.5")
	ts.cmd("DATA", 354, "")
	ts.sendRaw(stuff("Subject: y\r\n\r\nbody\r\n"))
	ts.expect(250, "2.0.0")
	q.fail = errors.New("disk full")
	ts.cmd("MAIL FROM:<s@x.test>", 250, "2.1.0")
	ts.cmd("RCPT TO:<one@a.test>", 250, "2.1.5")
	ts.cmd("DATA", 354, "")
	ts.sendRaw(stuff("Subject: z\r\n\r\nbody\r\n"))
	ts.expect(451, "4.3.0")
	ts.cmd("QUIT", 221, "2.0.0")
	ts.wait()

	if len(q.got) != 1 {
		t.Fatalf("%d messages queued, want 1", len(q.got))
	}
	if len(a.got)+len(b.got) != 0 {
		t.Fatal("a delivery ran in the session")
	}
	m, msg := q.got[0], q.msgs[0]
	if !bytes.HasPrefix(msg, []byte("X-Judged: yes\r\nReceived: ")) || m.ID == "" || m.Client.Helo == "" || m.From.Mailbox != "s@x.test" || len(m.Recipients) != 3 {
		t.Fatalf("queued %+v:\n%s", m, msg)
	}

	// Later, from the queue: a fresh Message over the stored bytes.
	m.Message = NewMessage(bytes.NewReader(msg), int64(len(msg)))
	m.Recipients = append(m.Recipients, Recipient{Path: Path{Mailbox: "gone@c.test"}})
	replies := srv.DeliverQueued(context.Background(), m)
	want := []string{"250", "550 5.1.1", "250", "451 4.3.0"}
	for i, r := range replies {
		if got := r.Error(); !strings.HasPrefix(got, want[i]) {
			t.Errorf("recipient %d: %q, want %s", i, got, want[i])
		}
	}
	da, ma := a.last(t)
	if !da.Queued || len(da.Recipients) != 2 || ma != string(msg) {
		t.Errorf("a got %+v:\n%s", da, ma)
	}
	if db, mb := b.last(t); len(db.Recipients) != 1 || mb != string(msg) {
		t.Errorf("b got %+v", db)
	}
}

// TestQueuedRecipientOfTwoDeliveries: a recipient two deliveries take
// gets the worse of their replies, and both run.
func TestQueuedRecipientOfTwoDeliveries(t *testing.T) {
	ok, tempfail := &capture{}, &capture{fail: NewReply(451, "4.4.1", "upstream down")}
	srv, err := newServer(Config{Queue: &memQueue{}, Handlers: []SubHandler{
		{Name: "ok", Handler: ok},
		{Name: "tempfail", Handler: tempfail},
	}})
	if err != nil {
		t.Fatal(err)
	}
	msg := []byte("Subject: x\r\n\r\nbody\r\n")
	m := &Queued{ID: "Q1", From: Path{Mailbox: "s@x.test"}, Recipients: []Recipient{{Path: Path{Mailbox: "r@y.test"}}},
		Message: NewMessage(bytes.NewReader(msg), int64(len(msg)))}
	replies := srv.DeliverQueued(context.Background(), m)
	if len(replies) != 1 || replies[0].Code != 451 {
		t.Fatalf("replies %v, want the 451", replies)
	}
	if _, got := ok.last(t); got != string(msg) {
		t.Errorf("the first delivery got %q", got)
	}
}
