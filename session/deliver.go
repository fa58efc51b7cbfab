package session

import (
	"context"

	"go.uber.org/zap"
)

// End of data, once the message was read in full and nothing failed it:
// the judges (MessageHook), then the deliveries (PrepareHook, DeliverHook).
//
// What the client is told when deliveries disagree: every delivery must
// succeed for a 250. The prepares run first (each stores the message where
// nobody sees it yet), then the deliveries that cannot be taken back
// (relay, webhook, exec), each in configured order, then the commits.
// The first failure stops the rest and is the client's reply, as it is:
// the prepared deliveries are rolled back, so a Maildir never keeps a copy
// of a message the client was told to send again (4xx) or that it was
// told was refused (5xx). A delivery that cannot be taken back and that
// already succeeded keeps its copy: on a 4xx the client sends the message
// again and such a destination may get it twice (at least once, never
// lost); the queue removes that.

var (
	replyNoDelivery    = NewReply(550, "5.1.1", "Recipient address rejected: no delivery for this address")
	replyUndeliverable = NewReply(451, "4.3.0", "Temporary local problem: a recipient has no delivery; try again later")
)

// delivered reports whether some delivery would take the recipient to,
// given the matchers: RCPT refuses one that none would.
func (s *Session) delivered(to Path) bool {
	for _, hk := range s.srv.hooks.deliveries {
		if s.matches(hk.match, scopeRecipient, to) {
			return true
		}
	}
	return false
}

// judgeAndDeliver asks the judges, then runs the deliveries, and returns
// the reply for the end of data.
func (s *Session) judgeAndDeliver() *Reply {
	var accepted *Reply // the first judge's 2xx, if any gave one
	for _, hk := range s.srv.hooks.message {
		if s.txn.discard != "" {
			break
		}
		r := s.inView(hk.match, hk.slot, func() *Reply {
			return invoke(s, "end of message", hk, nil, func(ctx context.Context, h MessageHook) (*Reply, error) {
				return h.EndOfMessage(ctx, s)
			})
		})
		switch {
		case r == nil:
		case r.Code >= 400:
			return r
		case accepted == nil:
			accepted = r
		}
	}
	if s.txn.discard != "" {
		return NewReply(250, "2.0.0", s.txn.ID+" Message accepted for delivery")
	}
	if q := s.cfg.Queue; q != nil {
		return s.enqueue(q)
	}
	if r := s.runDeliveries(); r != nil {
		return r
	}
	if accepted != nil {
		return accepted
	}
	return NewReply(250, "2.0.0", s.txn.ID+" Message accepted for delivery")
}

// job is one delivery of a message.
type job struct {
	hk       hooked[any]
	d        Delivery
	prepared Prepared
}

// runDeliveries delivers the final message; nil when every delivery
// succeeded.
func (s *Session) runDeliveries() *Reply {
	txn := s.txn
	var msg *Message
	if txn.sp != nil {
		msg = txn.Message()
	}
	if len(txn.Recipients) == 0 {
		s.log.Error("a judge removed every recipient", zap.String("session", s.id), zap.String("queue_id", txn.ID))
		return replyUndeliverable
	}
	for _, r := range txn.Recipients {
		if !s.delivered(r.Path) { // added by a judge, and nobody takes it
			s.log.Error("recipient has no delivery", zap.String("session", s.id), zap.String("queue_id", txn.ID),
				zap.String("rcpt", logSafe(r.Path.Mailbox)))
			return replyUndeliverable
		}
	}
	jobs := s.jobs[:0] // the session's, reused by its next messages
	defer func() {
		clear(jobs)
		s.jobs = jobs[:0]
	}()
	for _, hk := range s.srv.hooks.deliveries {
		rs := s.recipientsFor(hk.match, hk.slot)
		if len(rs) == 0 {
			continue
		}
		jobs = append(jobs, job{hk: hk, d: Delivery{From: txn.From, MailParams: txn.MailParams,
			Recipients: rs, Message: msg}})
	}
	rollback := func() {
		for i := range jobs {
			if j := &jobs[i]; j.prepared != nil {
				s.safely("rollback", j.hk.name, j.prepared.Rollback)
				j.prepared = nil
			}
		}
	}
	for i := range jobs { // prepares first: they can still be taken back
		j := &jobs[i]
		p, ok := j.hk.h.(PrepareHook)
		if !ok {
			continue
		}
		if r := invoke(s, "prepare", j.hk, nil, func(ctx context.Context, _ any) (*Reply, error) {
			var err error
			j.prepared, err = p.Prepare(ctx, s, &j.d)
			return nil, err
		}); r != nil {
			rollback()
			return r
		}
		if j.prepared == nil {
			j.prepared = nothingPrepared{}
		}
	}
	for i := range jobs {
		j := &jobs[i]
		if _, ok := j.hk.h.(PrepareHook); ok {
			continue
		}
		d := j.hk.h.(DeliverHook)
		r := invoke(s, "deliver", j.hk, nil, func(ctx context.Context, _ any) (*Reply, error) {
			return nil, d.Deliver(ctx, s, &j.d)
		})
		if r == nil {
			r = j.d.failed() // a recipient it refused: the message's reply
		}
		if r != nil {
			rollback()
			return r
		}
	}
	for i := range jobs {
		j := &jobs[i]
		if j.prepared == nil {
			continue
		}
		p := j.prepared
		j.prepared = nil
		if r := invoke(s, "commit", j.hk, nil, func(context.Context, any) (*Reply, error) {
			return nil, p.Commit()
		}); r != nil {
			rollback()
			return r
		}
	}
	return nil
}

// nothingPrepared is what a Prepare that returned no Prepared commits.
type nothingPrepared struct{}

func (nothingPrepared) Commit() error { return nil }
func (nothingPrepared) Rollback()     {}
