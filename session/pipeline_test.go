package session

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
)

// capture is a delivery that keeps what it was given.
type capture struct {
	mu    sync.Mutex
	got   []Delivery
	msgs  []string
	used  []int64 // the server's spool memory in use during each delivery
	fail  *Reply
	order *[]string
	name  string
}

func (c *capture) Deliver(_ context.Context, s *Session, d *Delivery) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.order != nil {
		*c.order = append(*c.order, "deliver "+c.name)
	}
	if c.fail != nil {
		return c.fail
	}
	b, err := d.Message.Bytes()
	if err != nil {
		return err
	}
	// A delivery may read the message more than once, and WriteTo gives
	// what Reader gives.
	if again, _ := d.Message.Bytes(); string(again) != string(b) || int64(len(b)) != d.Message.Size() {
		return fmt.Errorf("second read differs or size %d != %d", d.Message.Size(), len(b))
	}
	var w strings.Builder
	if n, err := d.Message.WriteTo(&w); err != nil || n != int64(len(b)) || w.String() != string(b) {
		return fmt.Errorf("WriteTo gave %d bytes (%v), differing from Reader's %d", n, err, len(b))
	}
	c.got = append(c.got, *d)
	c.msgs = append(c.msgs, string(b))
	c.used = append(c.used, s.srv.spoolUsed.Load())
	return nil
}

func (c *capture) last(t *testing.T) (Delivery, string) {
	t.Helper()
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.got) == 0 {
		t.Fatal("nothing delivered")
	}
	return c.got[len(c.got)-1], c.msgs[len(c.msgs)-1]
}

// judge runs f at end of message.
type judge func(s *Session) *Reply

func (j judge) EndOfMessage(_ context.Context, s *Session) (*Reply, error) { return j(s), nil }

// receivedOf returns the Received: field at the top of a delivered message.
func receivedOf(t *testing.T, msg string) (string, string) {
	t.Helper()
	i := strings.Index(msg, "\r\n")
	for i >= 0 && i+2 < len(msg) && (msg[i+2] == ' ' || msg[i+2] == '\t') {
		j := strings.Index(msg[i+2:], "\r\n")
		i += 2 + j
	}
	if !strings.HasPrefix(msg, "Received: ") || i < 0 {
		t.Fatalf("message does not start with our Received: field: %q", msg)
	}
	return msg[:i+2], msg[i+2:]
}

// TestHeaderEditsReachDeliveries: every header edit of the milter action
// set, and a replaced body, reach the delivered message; the rest is byte
// for byte what the client sent.
func TestHeaderEditsReachDeliveries(t *testing.T) {
	orig := "Subject: hello\r\nX-Drop: one\r\nFrom: a@b.test\r\nX-Drop: two\r\n\r\nthe body\r\n.leading dot\r\n"
	for _, tc := range []struct {
		name string
		edit func(txn *Transaction)
		want string // with RCV standing for our Received: field
	}{
		{"none", func(*Transaction) {}, "RCV" + orig},
		{"prepend", func(t *Transaction) { t.PrependHeader("Authentication-Results", "mx; spf=pass") },
			"Authentication-Results: mx; spf=pass\r\nRCV" + orig},
		{"append", func(t *Transaction) { t.AppendHeader("X-Last", "1") },
			"RCVSubject: hello\r\nX-Drop: one\r\nFrom: a@b.test\r\nX-Drop: two\r\nX-Last: 1\r\n\r\nthe body\r\n.leading dot\r\n"},
		{"insert", func(t *Transaction) { t.InsertHeader(2, "X-Mid", "m") },
			"RCVSubject: hello\r\nX-Mid: m\r\nX-Drop: one\r\nFrom: a@b.test\r\nX-Drop: two\r\n\r\nthe body\r\n.leading dot\r\n"},
		{"change", func(t *Transaction) { t.ChangeHeader("subject", 1, "changed") },
			"RCVSubject: changed\r\nX-Drop: one\r\nFrom: a@b.test\r\nX-Drop: two\r\n\r\nthe body\r\n.leading dot\r\n"},
		{"delete second", func(t *Transaction) { t.DeleteHeader("X-Drop", 2) },
			"RCVSubject: hello\r\nX-Drop: one\r\nFrom: a@b.test\r\n\r\nthe body\r\n.leading dot\r\n"},
		{"delete both, in turn", func(t *Transaction) { t.DeleteHeader("X-Drop", 1); t.DeleteHeader("X-Drop", 1) },
			"RCVSubject: hello\r\nFrom: a@b.test\r\n\r\nthe body\r\n.leading dot\r\n"},
		{"change missing adds", func(t *Transaction) { t.ChangeHeader("X-New", 1, "v") },
			"RCV" + strings.Replace(orig, "\r\n\r\n", "\r\nX-New: v\r\n\r\n", 1)},
		{"no injection", func(t *Transaction) { t.PrependHeader("X-A", "x\r\nBcc: evil@x.test\n\tfolded") },
			"X-A: x Bcc: evil@x.test\r\n\tfolded\r\nRCV" + orig},
		{"prepend made when read", func(t *Transaction) {
			n := 0
			t.PrependHeaderFunc("X-Count", func() string { n++; return fmt.Sprint("seen ", n) })
			t.PrependHeaderFunc("X-None", func() string { return "" })
		}, "X-Count: seen 1\r\nRCV" + orig},
		{"delete where", func(t *Transaction) {
			t.DeleteHeaderWhere("x-drop", func(v string) bool { return v == "two" })
			t.PrependHeader("X-Drop", "two") // added after: not deleted
		}, "X-Drop: two\r\nRCVSubject: hello\r\nX-Drop: one\r\nFrom: a@b.test\r\n\r\nthe body\r\n.leading dot\r\n"},
		{"replace body", func(t *Transaction) { t.ReplaceBody(strings.NewReader("new body\r\n")) },
			"RCVSubject: hello\r\nX-Drop: one\r\nFrom: a@b.test\r\nX-Drop: two\r\n\r\nnew body\r\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := &capture{}
			ts := start(t, Config{Handlers: []SubHandler{
				{Name: "judge", Handler: judge(func(s *Session) *Reply { tc.edit(s.Transaction()); return nil })},
				{Name: "capture", Handler: c},
			}})
			ts.ehlo()
			ts.mailTo("b@example.test")
			ts.cmd("DATA", 354, "")
			ts.sendRaw(stuff(orig))
			ts.expect(250, "2.0.0")
			_, msg := c.last(t)
			i := strings.Index(msg, "Received: ")
			if i < 0 {
				t.Fatalf("no Received: in %q", msg)
			}
			rcv, _ := receivedOf(t, msg[i:])
			if got := strings.Replace(msg, rcv, "RCV", 1); got != tc.want {
				t.Fatalf("delivered\n%q\nwant\n%q", got, tc.want)
			}
		})
	}
}

// TestEnvelopeEditsReachDeliveries: a judge changes the sender, adds a
// recipient and removes one; the delivery gets the final envelope. A
// recipient a judge adds that no delivery takes fails the message.
func TestEnvelopeEditsReachDeliveries(t *testing.T) {
	c := &capture{}
	j := judge(func(s *Session) *Reply {
		txn := s.Transaction()
		from, _, _ := ParsePathArg("<bounces@example.test>", true, false)
		txn.SetSender(from, nil)
		to, _, _ := ParsePathArg("<added@example.test>", false, false)
		txn.AddRecipient(to, nil)
		if !txn.RemoveRecipient("drop@EXAMPLE.test") {
			t.Error("RemoveRecipient found nothing")
		}
		return nil
	})
	ts := start(t, Config{Handlers: []SubHandler{{Name: "judge", Handler: j}, {Name: "capture", Handler: c}}})
	ts.ehlo()
	ts.mailTo("keep@example.test", "drop@example.test")
	ts.cmd("DATA", 354, "")
	ts.sendRaw(stuff("Subject: x\r\n\r\nbody\r\n"))
	ts.expect(250, "2.0.0")
	d, _ := c.last(t)
	var rs []string
	for _, r := range d.Recipients {
		rs = append(rs, r.Path.Mailbox)
	}
	if d.From.Mailbox != "bounces@example.test" || strings.Join(rs, ",") != "keep@example.test,added@example.test" {
		t.Fatalf("delivered from %q to %v", d.From.Mailbox, rs)
	}

	// Deliveries only for example.test: a judge adding another domain
	// fails the message rather than drop that recipient.
	only := domainMatcher("example.test")
	j2 := judge(func(s *Session) *Reply {
		to, _, _ := ParsePathArg("<x@elsewhere.test>", false, false)
		s.Transaction().AddRecipient(to, nil)
		return nil
	})
	c2 := &capture{}
	ts = start(t, Config{Handlers: []SubHandler{{Name: "judge", Handler: j2}, {Name: "capture", Handler: c2, Match: only}}})
	ts.ehlo()
	ts.mailTo("keep@example.test")
	ts.cmd("RCPT TO:<y@elsewhere.test>", 550, "5.1.1") // nobody delivers there
	ts.cmd("DATA", 354, "")
	ts.sendRaw(stuff("Subject: x\r\n\r\nbody\r\n"))
	ts.expect(451, "4.3.0")
	if len(c2.got) != 0 {
		t.Fatal("delivered although a recipient had no delivery")
	}
}

// domainMatcher takes the recipients of one domain.
type domainMatcher string

func (domainMatcher) MatchSession(*Session) bool      { return true }
func (domainMatcher) MatchSender(*Session, Path) bool { return true }
func (d domainMatcher) MatchRecipient(_ *Session, to Path) bool {
	return strings.EqualFold(to.Domain, string(d))
}

// TestDeliveriesGetTheirRecipients: each delivery gets the recipients its
// matcher takes, judges behind a matcher see only theirs, and a recipient
// no delivery takes is refused at RCPT.
func TestDeliveriesGetTheirRecipients(t *testing.T) {
	a, b := &capture{}, &capture{}
	var seen []string
	j := judge(func(s *Session) *Reply {
		for _, r := range s.Transaction().Recipients {
			seen = append(seen, r.Path.Mailbox)
		}
		return nil
	})
	ts := start(t, Config{Handlers: []SubHandler{
		{Name: "judge", Handler: j, Match: domainMatcher("b.test")},
		{Name: "a", Handler: a, Match: domainMatcher("a.test")},
		{Name: "b", Handler: b, Match: domainMatcher("b.test")},
	}})
	ts.ehlo()
	ts.cmd("MAIL FROM:<s@x.test>", 250, "2.1.0")
	ts.cmd("RCPT TO:<one@a.test>", 250, "2.1.5")
	ts.cmd("RCPT TO:<two@b.test>", 250, "2.1.5")
	ts.cmd("RCPT TO:<three@c.test>", 550, "5.1.1")
	ts.cmd("RCPT TO:<four@a.test>", 250, "2.1.5")
	ts.cmd("DATA", 354, "")
	ts.sendRaw(stuff("Subject: x\r\n\r\nbody\r\n"))
	ts.expect(250, "2.0.0")
	da, ma := a.last(t)
	db, mb := b.last(t)
	if len(da.Recipients) != 2 || da.Recipients[0].Path.Mailbox != "one@a.test" || da.Recipients[1].Path.Mailbox != "four@a.test" {
		t.Errorf("a got %v", da.Recipients)
	}
	if len(db.Recipients) != 1 || db.Recipients[0].Path.Mailbox != "two@b.test" {
		t.Errorf("b got %v", db.Recipients)
	}
	if ma != mb {
		t.Error("the two deliveries got different messages")
	}
	if strings.Join(seen, ",") != "two@b.test" {
		t.Errorf("the judge behind b.test saw %v", seen)
	}
}

// preparer is a two-step delivery that logs what happens to it.
type preparer struct {
	order *[]string
	fail  *Reply
}

type prepared struct{ order *[]string }

func (p prepared) Commit() error { *p.order = append(*p.order, "commit"); return nil }
func (p prepared) Rollback()     { *p.order = append(*p.order, "rollback") }

func (p preparer) Prepare(_ context.Context, _ *Session, d *Delivery) (Prepared, error) {
	*p.order = append(*p.order, "prepare")
	if p.fail != nil {
		return nil, p.fail
	}
	return prepared{p.order}, nil
}

// TestPreparedDeliveriesCommitLast: a prepared delivery is committed only
// after every other delivery succeeded, and rolled back when one fails;
// the client gets the failure's reply as it is.
func TestPreparedDeliveriesCommitLast(t *testing.T) {
	for _, tc := range []struct {
		name      string
		fail      *Reply
		prepFail  *Reply
		code      int
		enh, want string
	}{
		{"all succeed", nil, nil, 250, "2.0.0", "prepare,deliver b,commit"},
		{"delivery 4xx", NewReply(451, "4.4.1", "upstream down"), nil, 451, "4.4.1", "prepare,deliver b,rollback"},
		{"delivery 5xx", NewReply(554, "5.6.0", "refused"), nil, 554, "5.6.0", "prepare,deliver b,rollback"},
		{"prepare fails", nil, NewReply(452, "4.3.1", "disk full"), 452, "4.3.1", "prepare"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var order []string
			ts := start(t, Config{Handlers: []SubHandler{
				{Name: "b", Handler: &capture{fail: tc.fail, order: &order, name: "b"}},
				{Name: "a", Handler: preparer{order: &order, fail: tc.prepFail}},
			}})
			ts.ehlo()
			ts.mailTo("x@example.test")
			ts.cmd("DATA", 354, "")
			ts.sendRaw(stuff("Subject: x\r\n\r\nbody\r\n"))
			ts.expect(tc.code, tc.enh)
			ts.cmd("QUIT", 221, "2.0.0")
			ts.wait()
			if got := strings.Join(order, ","); got != tc.want {
				t.Fatalf("order %s, want %s", got, tc.want)
			}
		})
	}
}

// TestSpoolMemoryAndFiles: a small message stays in memory within the
// budget; one over the budget, or over 1 MiB, goes to a file; either way
// the delivery gets it byte for byte and the budget is given back.
func TestSpoolMemoryAndFiles(t *testing.T) {
	for _, tc := range []struct {
		name   string
		budget int64
		size   int
		inMem  bool
	}{
		{"small in memory", 0, 10 << 10, true},
		{"over the budget", 32 << 10, 100 << 10, false},
		{"over 1 MiB", 0, 3 << 20, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := &capture{}
			ts := start(t, Config{SpoolMemory: tc.budget, SpoolDir: t.TempDir(), Handlers: []SubHandler{{Name: "c", Handler: c}}})
			ts.ehlo()
			ts.mailTo("x@example.test")
			ts.cmd("DATA", 354, "")
			var body strings.Builder
			for body.Len() < tc.size {
				fmt.Fprintf(&body, "line %d of a message that is long enough to spill\r\n", body.Len())
			}
			sent := "Subject: big\r\n\r\n" + body.String()
			ts.sendRaw(stuff(sent))
			ts.expect(250, "2.0.0")
			_, msg := c.last(t)
			_, rest := receivedOf(t, msg)
			if rest != sent {
				t.Fatalf("delivered %d bytes, sent %d; differ", len(rest), len(sent))
			}
			if used := c.used[0]; (used > 0) != tc.inMem {
				t.Fatalf("spool memory in use during delivery: %d; want in memory %v", used, tc.inMem)
			}
			ts.cmd("QUIT", 221, "2.0.0")
			ts.wait()
			if n := ts.srv.spoolUsed.Load(); n != 0 {
				t.Fatalf("%d bytes of the spool budget not given back", n)
			}
		})
	}
}

// TestNoSpoolWithoutReaders: when no sub-handler reads messages (only a
// discard-like delivery), nothing is spooled.
func TestNoSpoolWithoutReaders(t *testing.T) {
	var msg *Message
	var spooled bool
	j := judge(func(s *Session) *Reply { msg = s.Transaction().Message(); spooled = s.txn.sp != nil; return nil })
	ts := start(t, Config{Handlers: []SubHandler{{Name: "judge", Handler: j}, {Name: "sink", Handler: sink{}}}})
	ts.ehlo()
	ts.mailTo("x@example.test")
	ts.cmd("DATA", 354, "")
	ts.sendRaw(stuff("Subject: x\r\n\r\nbody\r\n"))
	ts.expect(250, "2.0.0")
	if msg != nil || spooled {
		t.Fatal("a message nobody reads was spooled")
	}
}

// TestMessageReadAfterTheTransaction: a reader a delivery kept (an HTTP
// client may read a request body after its attempt ended) gets an error
// once the transaction is over, not freed memory.
func TestMessageReadAfterTheTransaction(t *testing.T) {
	var kept []*Message
	d := deliverFunc(func(_ context.Context, _ *Session, dl *Delivery) error {
		kept = append(kept, dl.Message)
		return nil
	})
	ts := start(t, Config{Handlers: []SubHandler{{Name: "keeper", Handler: d}}})
	ts.ehlo()
	ts.mailTo("x@example.test")
	ts.cmd("DATA", 354, "")
	ts.sendRaw(stuff("Subject: x\r\n\r\nbody\r\n"))
	ts.expect(250, "2.0.0")
	ts.cmd("NOOP", 250, "2.0.0") // the transaction is over
	if _, err := kept[0].Bytes(); err == nil {
		t.Fatal("a message was readable after its transaction ended")
	}
}

// deliverFunc is a DeliverHook from a function.
type deliverFunc func(context.Context, *Session, *Delivery) error

func (f deliverFunc) Deliver(ctx context.Context, s *Session, d *Delivery) error { return f(ctx, s, d) }

// listMatcher is a Matcher that is not comparable (it holds a slice), as a
// third party may write one.
type listMatcher struct{ domains []string }

func (listMatcher) MatchSession(*Session) bool      { return true }
func (listMatcher) MatchSender(*Session, Path) bool { return true }
func (l listMatcher) MatchRecipient(_ *Session, to Path) bool {
	return slices.Contains(l.domains, to.Domain)
}

// TestMatcherNotComparable: the engine keeps each matcher's recipients by
// the sub-handler's place, never with the matcher as a map key, so a
// Matcher that is not comparable works.
func TestMatcherNotComparable(t *testing.T) {
	c := &capture{}
	ts := start(t, Config{Handlers: []SubHandler{{Name: "c", Handler: c, Match: listMatcher{[]string{"a.test"}}}}})
	ts.ehlo()
	ts.cmd("MAIL FROM:<s@x.test>", 250, "2.1.0")
	ts.cmd("RCPT TO:<one@a.test>", 250, "2.1.5")
	ts.cmd("RCPT TO:<two@b.test>", 550, "5.1.1")
	ts.cmd("DATA", 354, "")
	ts.sendRaw(stuff("Subject: x\r\n\r\nbody\r\n"))
	ts.expect(250, "2.0.0")
	if d, _ := c.last(t); len(d.Recipients) != 1 {
		t.Fatalf("delivered to %v", d.Recipients)
	}
}

// TestDiscardAndQuarantine: a discarded message gets 250, reaches no
// delivery and no later judge; a quarantined one is delivered with the
// mark on top, once however many judges quarantine it.
func TestDiscardAndQuarantine(t *testing.T) {
	for _, tc := range []struct {
		name      string
		first     func(*Transaction)
		delivered bool
		top       string
	}{
		{"discard", func(t *Transaction) { t.Discard("milter spamtrap") }, false, ""},
		{"quarantine", func(t *Transaction) { t.Quarantine("milter: review") }, true, "X-Esmtp-Quarantine: milter: review\r\nReceived: "},
		{"later judge quarantines", func(*Transaction) {}, true, "X-Esmtp-Quarantine: second reason, not kept\r\nReceived: "},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := &capture{}
			laterAsked := false
			ts := start(t, Config{Handlers: []SubHandler{
				{Name: "first", Handler: judge(func(s *Session) *Reply { tc.first(s.Transaction()); return nil })},
				{Name: "later", Handler: judge(func(s *Session) *Reply {
					laterAsked = true
					s.Transaction().Quarantine("second reason, not kept")
					return nil
				})},
				{Name: "deliver", Handler: c},
			}})
			ts.ehlo()
			ts.mailTo("x@example.test")
			ts.cmd("DATA", 354, "")
			ts.sendRaw(stuff("Subject: x\r\n\r\nbody\r\n"))
			ts.expect(250, "2.0.0")
			ts.cmd("QUIT", 221, "2.0.0")
			ts.wait()
			c.mu.Lock()
			n := len(c.got)
			c.mu.Unlock()
			if got := n > 0; got != tc.delivered {
				t.Fatalf("delivered %v, want %v", got, tc.delivered)
			}
			if laterAsked != tc.delivered {
				t.Fatalf("later judge asked %v, want %v", laterAsked, tc.delivered)
			}
			if !tc.delivered {
				return
			}
			_, msg := c.last(t)
			if !strings.HasPrefix(msg, tc.top) || strings.Count(msg, QuarantineField) > 1 {
				t.Fatalf("delivered message starts %q, want %q and one mark at most", msg[:min(len(msg), 80)], tc.top)
			}
		})
	}
}
