package queue

import (
	"context"
	"io"
	"strconv"
	"strings"
	"time"

	"github.com/caddy-esmtp/caddy-esmtp/queue/dsn"
	"go.uber.org/zap"
)

// notify queues the one DSN that e's recipients call for now, if any:
// those newly Failed (NOTIFY FAILURE), newly Delivered (NOTIFY SUCCESS)
// and, once, those deferred past DelayWarning (NOTIFY DELAY). The DSN is
// queued before the recipients are marked reported, so a crash between
// the two sends it twice, never zero times. A message from the null
// sender gets none (logged). On failure to queue it, the entry is tried
// again after RetryInterval. It reports whether it changed e's states:
// the caller stores them (or removes the entry).
func (q *Queue) notify(ctx context.Context, it *item, e *Entry, deleting bool) bool {
	now := q.clock.Now()
	changed := false
	var report []int
	for i := range e.Recipients {
		r := &e.Recipients[i]
		switch {
		case r.State.Final() && !r.Reported:
			if (r.State == Failed && r.Wants(NotifyFailure)) || (r.State == Delivered && r.Wants(NotifySuccess)) {
				report = append(report, i)
			} else {
				r.Reported = true
				changed = true
			}
		case r.State == Deferred && !r.DelayReported && q.opt.DelayWarning > 0 &&
			!now.Before(e.Arrival.Add(q.opt.DelayWarning)):
			if r.Wants(NotifyDelay) {
				report = append(report, i)
			} else {
				r.DelayReported = true
				changed = true
			}
		}
	}
	mark := func() {
		for _, i := range report {
			if r := &e.Recipients[i]; r.State.Final() {
				r.Reported = true
			} else {
				r.DelayReported = true
			}
		}
		changed = changed || len(report) > 0
	}
	switch {
	case len(report) == 0:
	case e.From == "":
		for _, i := range report {
			q.log.Info("no DSN for a message from the null sender", zap.String("queue_id", e.ID),
				zap.String("rcpt", e.Recipients[i].Addr), zap.String("state", string(e.Recipients[i].State)))
		}
		q.dropped.Add(1)
		mark()
	default:
		id, err := q.queueDSN(ctx, e, report, now)
		if err != nil {
			q.log.Error("queueing a DSN failed", zap.String("queue_id", e.ID), zap.Error(err))
			if !deleting {
				q.mu.Lock()
				it.notify = now.Add(q.opt.RetryInterval)
				q.mu.Unlock()
			}
			break
		}
		q.bounces.Add(1)
		q.log.Info("DSN queued", zap.String("queue_id", e.ID), zap.String("dsn_id", id),
			zap.String("to", e.From), zap.Int("recipients", len(report)))
		mark()
	}
	return changed
}

// queueDSN builds the report on the recipients report of e and queues it.
//
// What of the original it returns: RET=HDRS its header; RET=FULL the whole
// message in a report on a failure, the header otherwise; no RET the same
// as RET=FULL (RFC 3461 4.3 leaves it to the MTA; Postfix does so too).
func (q *Queue) queueDSN(ctx context.Context, e *Entry, report []int, now time.Time) (string, error) {
	r := &dsn.Report{ReportingMTA: q.opt.Hostname, ReceivedFromMTA: e.Client.Helo, EnvID: e.EnvID,
		Arrival: e.Arrival, Date: now, To: e.From, QueueID: e.ID, UTF8: e.SMTPUTF8,
		EightBit: strings.EqualFold(e.Body, "8BITMIME")}
	failed := false
	for _, i := range report {
		rc := e.Recipients[i]
		d := dsn.Recipient{Final: rc.Addr, Original: rc.ORCPT, LastAttempt: rc.LastAttempt}
		if o := rc.Reply; o != nil {
			d.Status, d.RemoteMTA = o.Status(), o.RemoteMTA
			d.Diagnostic = strings.TrimSpace(strconv.Itoa(o.Code) + " " + o.Text)
			if o.Enhanced != "" && !strings.HasPrefix(o.Text, o.Enhanced) {
				d.Diagnostic = strconv.Itoa(o.Code) + " " + o.Enhanced + " " + o.Text
			}
		}
		switch {
		case rc.State == Delivered && rc.Reply != nil && rc.Reply.Relayed:
			d.Action = dsn.Relayed
		case rc.State == Delivered:
			d.Action = dsn.Delivered
		case rc.State == Failed:
			d.Action = dsn.Failed
			failed = true
			switch rc.Reason {
			case ReasonExpired:
				d.Status = "5.4.7" // delivery time expired (RFC 3463)
			case ReasonDeleted:
				d.Status = "5.0.0"
				d.Diagnostic = ""
			}
		default:
			d.Action = dsn.Delayed
			d.WillRetryUntil = e.Arrival.Add(q.opt.MaxAge)
		}
		r.Recipients = append(r.Recipients, d)
	}
	switch {
	case strings.EqualFold(e.Ret, "HDRS") || !failed:
		r.Return = dsn.ReturnHeaders
	default:
		r.Return = dsn.ReturnFull
	}
	msg, err := q.store.Open(ctx, e.ID)
	if err != nil {
		q.log.Error("the original of a DSN is unreadable: DSN without it", zap.String("queue_id", e.ID), zap.Error(err))
		r.Return = dsn.ReturnNone
	}
	env := Envelope{
		From:       "",
		Recipients: []Recipient{{Addr: e.From}},
		SMTPUTF8:   e.SMTPUTF8,
		Arrival:    now,
		Client:     Client{Helo: q.opt.Hostname, Protocol: "local"},
		Labels:     map[string]string{"dsn_of": e.ID},
	}
	if r.EightBit && r.Return != dsn.ReturnNone {
		env.Body = "8BITMIME"
	}
	pr, pw := io.Pipe()
	go func() {
		var orig io.Reader
		if msg != nil {
			defer msg.Close()
			orig = Reader(msg)
		}
		pw.CloseWithError(dsn.Build(pw, r, orig))
	}()
	id, err := q.opt.Bounce(context.WithoutCancel(ctx), env, pr)
	pr.CloseWithError(io.ErrClosedPipe) // lets Build end if Bounce stopped reading
	return id, err
}
