package relay

import (
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
	"sync"

	"go.uber.org/zap"

	"github.com/caddy-esmtp/caddy-esmtp/session"
)

// destination is one upstream transaction of a delivery: the smart host,
// or (to mx) one recipient domain, and its recipients.
type destination struct {
	domain string // A-labels; "" for the smart host
	rcpts  []session.Recipient
}

// outcome is how one upstream transaction ended, for the log line.
type outcome struct {
	addr     string
	tls      bool
	verified bool
	policy   string // the TLS policy (to mx): dane, mta-sts-enforce, mta-sts-testing, opportunistic
	reply    string
}

var errNoMessage = errors.New("relay: no message to send (the engine spooled none)")

// Deliver sends the final message upstream: d.From, d.Recipients and
// d.Message, with every judge's edits. When the upstream transaction opened
// at RCPT carries exactly that envelope, only DATA is sent; otherwise (a
// judge changed the sender or the recipients) it is reset and MAIL and
// RCPT are sent again for the final envelope, and a recipient the upstream
// now refuses fails the message with its reply. The upstream's reply to
// the end of data is the result: nil for 2xx, else its reply.
//
// From the queue (d.Queued), Deliver runs the whole upstream transaction
// (see deliverQueued): each recipient gets its own outcome
// (Delivery.SetReply), and it returns nil.
func (r *Relay) Deliver(ctx context.Context, s *session.Session, d *session.Delivery) error {
	if d.Queued {
		return r.deliverQueued(ctx, s, d)
	}
	txn := s.Transaction()
	st := r.take(s)
	defer func() { r.release(st) }() // an upstream transaction left unused
	if d.Message == nil {
		return errNoMessage
	}
	dests, rep := r.destinations(s, st, d.Recipients)
	if rep != nil {
		return rep
	}
	headerOK := true
	if txn.UTF8 {
		var err error
		if headerOK, err = headerASCII(d.Message); err != nil {
			return fmt.Errorf("relay: reading the message: %w", err)
		}
	}
	var outs []outcome
	defer func() { logUpstream(txn, outs) }()
	for _, dest := range dests {
		var held *txnState
		if st != nil && st.domain == dest.domain {
			held, st = st, nil
		}
		out, err := r.deliverTo(ctx, s, d, dest, held, headerOK)
		if out != nil {
			outs = append(outs, *out)
		}
		if err != nil {
			return err
		}
	}
	return nil
}

// destinations splits the recipients into upstream transactions: one to
// the smart host, or one per recipient domain (to mx), in the order of
// their first recipients. A recipient the upstream did not accept at RCPT
// (a judge added it) is relayed under the same rule as at RCPT (see
// permitted), or the message fails with 554 5.7.1.
func (r *Relay) destinations(s *session.Session, st *txnState, rcpts []session.Recipient) ([]destination, *session.Reply) {
	var dests []destination
	for _, rc := range rcpts {
		if !st.isSent(rc) && !r.permitted(s, rc.Path) {
			if ce := r.logger.Check(zap.DebugLevel, "relay access denied for an added recipient"); ce != nil {
				ce.Write(zap.String("session", s.ID()), zap.String("rcpt", session.Sanitize(rc.Path.Mailbox, 256)))
			}
			return nil, replyRelayDenied
		}
		var domain string
		if r.mx {
			var rep *session.Reply
			if domain, rep = domainOf(rc.Path); rep != nil {
				return nil, rep
			}
		}
		i := slices.IndexFunc(dests, func(d destination) bool { return d.domain == domain })
		if i < 0 {
			dests = append(dests, destination{domain: domain})
			i = len(dests) - 1
		}
		dests[i].rcpts = append(dests[i].rcpts, rc)
	}
	return dests, nil
}

// deliverTo runs one upstream transaction of d: on held's connection (the
// transaction opened at RCPT for this destination) when there is one, else
// on a new one. headerOK tells whether the message header is ASCII.
func (r *Relay) deliverTo(ctx context.Context, s *session.Session, d *session.Delivery, dest destination,
	held *txnState, headerOK bool) (*outcome, error) {
	txn := s.Transaction()
	var up *upstream
	ready := false // up has the final envelope
	if held != nil && held.up != nil {
		up, held.up = held.up, nil
		if ready = held.envelopeSent(d, dest.rcpts); !ready {
			r.bound(ctx, up)
			if err := up.c.Reset(); err != nil {
				up.close()
				up = nil
			}
		}
	}
	for retry := ready; ; retry = false {
		if up == nil {
			var rep *session.Reply
			if up, rep = r.connectFor(ctx, s, dest.domain); rep != nil {
				return nil, rep
			}
		}
		if !headerOK && ascii(txn.UTF8, up) {
			r.done(up)
			return nil, replyHeaderUTF8
		}
		if !ready {
			if rep := r.envelope(ctx, s, up, d, dest.rcpts); rep != nil {
				return nil, rep
			}
			ready = true
		}
		r.bound(ctx, up)
		w, err := up.c.Data()
		if err != nil {
			rep, answered := replyFor(err)
			if !answered && retry {
				// The connection held since RCPT did not survive the
				// wait for the message (the upstream's idle timeout):
				// the envelope again, on a new connection.
				if ce := r.logger.Check(zap.DebugLevel, "upstream connection lost while waiting for the message; reconnecting"); ce != nil {
					ce.Write(zap.String("session", s.ID()), zap.String("upstream", up.addr), zap.Error(err))
				}
				up.close()
				up, ready = nil, false
				continue
			}
			if answered {
				r.done(up)
			} else {
				r.logger.Warn("upstream failed at DATA", zap.String("session", s.ID()), zap.String("upstream", up.addr), zap.Error(err))
				up.close()
			}
			return nil, rep
		}
		out := &outcome{addr: up.addr, tls: up.tls, verified: up.verified, policy: up.policy}
		cw := canonWriter{w: w}
		rerr, werr := copyMessage(&cw, d.Message)
		if werr == nil && rerr == nil {
			werr = cw.Flush()
		}
		if rerr != nil || werr != nil {
			// Cut without the final dot: the upstream discards the
			// message.
			up.close()
			if rerr != nil {
				out.reply = "message not read"
				return out, fmt.Errorf("relay: reading the message: %w", rerr)
			}
			r.logger.Warn("upstream failed during data", zap.String("session", s.ID()), zap.String("upstream", up.addr), zap.Error(werr))
			out.reply = replyUpstreamFail.Error()
			return out, replyUpstreamFail
		}
		resp, err := w.CloseWithResponse()
		if err != nil {
			rep, answered := replyFor(err)
			out.reply = rep.Error()
			if answered {
				r.done(up)
				return out, rep
			}
			r.logger.Warn("upstream failed at end of data", zap.String("session", s.ID()), zap.String("queue_id", txn.ID),
				zap.String("upstream", up.addr), zap.Error(err))
			up.close()
			if rep == replyConnLost {
				rep = replyUpstreamFail
			}
			return out, rep
		}
		out.reply = session.Sanitize(strings.ReplaceAll(resp.StatusText, "\n", " "), 200)
		r.done(up)
		return out, nil
	}
}

// envelope sends MAIL and RCPT for the final envelope (after RSET, or on a
// new connection). A refusal fails the message with the upstream's reply,
// and up is let go.
func (r *Relay) envelope(ctx context.Context, s *session.Session, up *upstream, d *session.Delivery, rcpts []session.Recipient) *session.Reply {
	txn := s.Transaction()
	if rep := r.mail(ctx, s, up, d.From, d.MailParams, d.Message.Size(), sessionFlags(txn)); rep != nil {
		return rep
	}
	for _, rc := range rcpts {
		rep, gone := r.rcpt(ctx, s, up, rc.Path, rc.Params, txn.UTF8)
		if rep == nil {
			continue
		}
		if !gone {
			r.done(up)
		}
		if ce := r.logger.Check(zap.DebugLevel, "recipient refused upstream at delivery"); ce != nil {
			ce.Write(zap.String("session", s.ID()), zap.String("upstream", up.addr),
				zap.String("rcpt", session.Sanitize(rc.Path.Mailbox, 256)), zap.String("reply", rep.Error()))
		}
		return rep
	}
	return nil
}

var copyBuffers = sync.Pool{New: func() any { return new([32 << 10]byte) }}

// copyMessage writes m to cw; rerr is an error reading m, werr one writing
// upstream.
func copyMessage(cw *canonWriter, m *session.Message) (rerr, werr error) {
	buf := copyBuffers.Get().(*[32 << 10]byte)
	defer copyBuffers.Put(buf)
	rd := m.Reader()
	for {
		n, err := rd.Read(buf[:])
		if n > 0 {
			if werr := cw.Write(buf[:n]); werr != nil {
				return nil, werr
			}
		}
		if err == io.EOF {
			return nil, nil
		}
		if err != nil {
			return err, nil
		}
	}
}

// headerASCII reports whether the header of m, up to the blank line that
// ends it (all of m when it has none), is US-ASCII, as it must be for an
// upstream without SMTPUTF8 (RFC 6531, RFC 6532).
func headerASCII(m *session.Message) (bool, error) {
	buf := copyBuffers.Get().(*[32 << 10]byte)
	defer copyBuffers.Put(buf)
	rd := m.Reader()
	start := true  // at the start of a line
	blank := false // the line so far is a lone CR
	for {
		n, err := rd.Read(buf[:])
		for _, c := range buf[:n] {
			switch {
			case c >= 0x80:
				return false, nil
			case c == '\n':
				if start || blank {
					return true, nil
				}
				start = true
			case c == '\r' && start:
				start, blank = false, true
			default:
				start, blank = false, false
			}
		}
		if err == io.EOF {
			return true, nil
		}
		if err != nil {
			return false, err
		}
	}
}
