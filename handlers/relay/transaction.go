package relay

import (
	"context"
	"strings"
	"time"

	"github.com/emersion/go-smtp"
	"go.uber.org/zap"

	"github.com/caddy-esmtp/caddy-esmtp/session"
)

var (
	replyRelayDenied  = session.NewReply(554, "5.7.1", "Relay access denied")
	replyRcptOK       = session.NewReply(250, "2.1.5", "Recipient OK")
	replyOtherDomain  = session.NewReply(452, "4.5.3", "Too many recipient domains in one transaction; send this recipient in another")
	replyNoDomain     = session.NewReply(550, "5.1.2", "No domain to relay to")
	replyBadDomain    = session.NewReply(550, "5.1.2", "Recipient domain is not a valid domain name")
	replyNo8BITMIME   = session.NewReply(550, "5.6.3", "Upstream mail server does not support 8BITMIME")
	replyNoData       = session.NewReply(451, "4.3.0", "Relay: no upstream transaction; try again later")
	replyUpstreamFail = session.NewReply(451, "4.4.2", "Upstream mail server failed during the message; try again later")

	// RFC 6531: an address or a header that needs SMTPUTF8 cannot go to an
	// upstream that does not offer it.
	replySenderUTF8 = session.NewReply(553, "5.6.7", "Sender address needs SMTPUTF8, which the upstream mail server does not support")
	replyRcptUTF8   = session.NewReply(553, "5.6.7", "Recipient address needs SMTPUTF8, which the upstream mail server does not support")
	replyHeaderUTF8 = session.NewReply(550, "5.6.9", "Message header needs SMTPUTF8, which the upstream mail server does not support")
)

// key is the per-transaction state's key, one per relay instance, so two
// relays in one list (behind two matchers) never share a transaction.
type key struct{ r *Relay }

// txnState is the upstream side of one client transaction.
type txnState struct {
	domain string         // the recipient domain, as A-labels (to mx)
	up     *upstream      // nil until the first recipient is taken
	fail   *session.Reply // the destination failed: the reply for every further recipient
	rcpts  int            // recipients the upstream accepted
	data   *smtp.DataCommand
	w      canonWriter
	// ascii: an SMTPUTF8 transaction goes to an upstream without
	// SMTPUTF8, as ASCII (A-labels), so the header must be ASCII too.
	ascii bool
}

func (r *Relay) state(s *session.Session) *txnState {
	if txn := s.Transaction(); txn != nil {
		st, _ := txn.Value(key{r}).(*txnState)
		return st
	}
	return nil
}

// Rcpt takes a recipient the relay may forward for: it opens the upstream
// transaction at the first one, passes RCPT upstream and returns the
// upstream's reply.
func (r *Relay) Rcpt(ctx context.Context, s *session.Session, to session.Path, params session.Params) (*session.Reply, error) {
	txn := s.Transaction()
	if !r.permitted(s, to) {
		if ce := r.logger.Check(zap.DebugLevel, "relay access denied"); ce != nil {
			ce.Write(zap.String("session", s.ID()), zap.String("rcpt", session.Sanitize(to.Mailbox, 256)))
		}
		return replyRelayDenied, nil
	}
	st := r.state(s)
	if st == nil {
		st = &txnState{}
		txn.SetValue(key{r}, st)
	}
	if r.mx {
		if to.Domain == "" {
			return replyNoDomain, nil
		}
		d, err := aLabel(to.Domain)
		if err != nil {
			if ce := r.logger.Check(zap.DebugLevel, "invalid recipient domain"); ce != nil {
				ce.Write(zap.String("session", s.ID()), zap.Error(err))
			}
			return replyBadDomain, nil
		}
		if st.domain != d {
			if st.rcpts > 0 {
				return replyOtherDomain, nil
			}
			r.release(st)
			*st = txnState{domain: d}
		}
	}
	if st.fail != nil {
		return st.fail, nil
	}
	if st.up == nil {
		up, fail := r.open(ctx, s)
		if fail != nil {
			st.fail = fail
			return fail, nil
		}
		st.up = up
		st.ascii = txn.UTF8 && !up.hasExt("SMTPUTF8")
	}
	rcpt := to.Mailbox
	if st.ascii {
		var ok bool
		if rcpt, ok = asciiPath(to); !ok {
			return replyRcptUTF8, nil
		}
	}
	r.bound(ctx, st.up)
	if err := st.up.c.Rcpt(rcpt, rcptOptions(params)); err != nil {
		rep, answered := replyFor(err)
		if !answered {
			r.logger.Warn("upstream failed at RCPT", zap.String("session", s.ID()), zap.String("upstream", st.up.addr), zap.Error(err))
			st.up.close()
			st.up, st.fail = nil, rep
		}
		return rep, nil
	}
	st.rcpts++
	return replyRcptOK, nil
}

// open connects (or takes an idle connection) and sends MAIL FROM.
func (r *Relay) open(ctx context.Context, s *session.Session) (*upstream, *session.Reply) {
	txn := s.Transaction()
	st := r.state(s)
	var up *upstream
	if r.pool != nil {
		up = r.pool.get(s.Hostname(), r.commandTimeout(ctx))
	}
	if up == nil {
		var serr *setupError
		if r.mx {
			up, serr = r.dialMX(ctx, st.domain, s.Hostname())
		} else {
			up, serr = r.connect(ctx, r.smartHost, s.Hostname())
		}
		if serr != nil {
			level := zap.WarnLevel // ours to fix: the upstream, the network, DNS
			if serr.reply.Code >= 500 {
				level = zap.DebugLevel // the recipient's: no such domain, null MX
			}
			if ce := r.logger.Check(level, "no upstream"); ce != nil {
				ce.Write(zap.String("session", s.ID()), zap.String("queue_id", txn.ID),
					zap.String("to", r.To), zap.String("domain", st.domain), zap.Error(serr))
			}
			return nil, serr.reply
		}
	}
	r.bound(ctx, up)
	if txn.Body == "8BITMIME" && !up.hasExt("8BITMIME") {
		r.done(up)
		return nil, replyNo8BITMIME
	}
	// SMTPUTF8 toward an upstream without it: the envelope goes as ASCII
	// when it can (domains as A-labels), and the header is checked as it
	// streams (Header).
	utf8 := txn.UTF8 && up.hasExt("SMTPUTF8")
	from := txn.From.Mailbox
	if txn.UTF8 && !utf8 {
		var ok bool
		if from, ok = asciiPath(txn.From); !ok {
			r.done(up)
			return nil, replySenderUTF8
		}
	}
	if err := up.c.Mail(from, mailOptions(txn, utf8, s.AuthUser() != "")); err != nil {
		rep, answered := replyFor(err)
		if answered {
			r.done(up)
		} else {
			r.logger.Warn("upstream failed at MAIL", zap.String("session", s.ID()), zap.String("upstream", up.addr), zap.Error(err))
			up.close()
		}
		return nil, rep
	}
	return up, nil
}

// bound sets the upstream's timeouts for a hook call with ctx.
func (r *Relay) bound(ctx context.Context, up *upstream) {
	t := r.commandTimeout(ctx)
	up.c.CommandTimeout, up.uc.timeout = t, t
	up.c.SubmissionTimeout = within(ctx, time.Duration(r.DataTimeout))
}

// done is the end of an upstream transaction that left the connection
// usable: it goes back to the pool, or is quit.
func (r *Relay) done(up *upstream) {
	if r.pool != nil {
		r.pool.put(up)
		return
	}
	go up.quit()
}

// release lets go of the upstream side of a transaction that ends without
// a message: reset (at next use) when between commands, cut when in the
// middle of DATA.
func (r *Relay) release(st *txnState) {
	if st.up == nil {
		return
	}
	if st.data != nil {
		st.up.close()
	} else {
		r.done(st.up)
	}
	st.up, st.data = nil, nil
}

// Data opens the upstream's DATA, so that an upstream refusal is the
// client's answer to DATA.
func (r *Relay) Data(ctx context.Context, s *session.Session) (*session.Reply, error) {
	st := r.state(s)
	if st == nil || st.rcpts == 0 {
		return nil, nil
	}
	return r.startData(ctx, s, st), nil
}

// startData sends DATA upstream, once.
func (r *Relay) startData(ctx context.Context, s *session.Session, st *txnState) *session.Reply {
	if st.data != nil {
		return nil
	}
	if st.up == nil {
		if st.fail != nil {
			return st.fail
		}
		return replyNoData
	}
	r.bound(ctx, st.up)
	d, err := st.up.c.Data()
	if err != nil {
		rep, answered := replyFor(err)
		if !answered {
			r.logger.Warn("upstream failed at DATA", zap.String("session", s.ID()), zap.String("upstream", st.up.addr), zap.Error(err))
			st.up.close()
			st.up = nil
		}
		st.fail = rep
		return rep
	}
	st.data = d
	st.w = canonWriter{w: d}
	return nil
}

// write streams message bytes to the upstream.
func (r *Relay) write(ctx context.Context, s *session.Session, p []byte) error {
	st := r.state(s)
	if st == nil || st.rcpts == 0 {
		return nil
	}
	if rep := r.startData(ctx, s, st); rep != nil {
		return rep
	}
	r.bound(ctx, st.up)
	if err := st.w.Write(p); err != nil {
		r.logger.Warn("upstream failed during data", zap.String("session", s.ID()), zap.String("upstream", st.up.addr), zap.Error(err))
		return replyUpstreamFail
	}
	return nil
}

// Header streams a header field (the engine's Received: field first). A
// field that is not ASCII fails the message when the upstream does not take
// SMTPUTF8 (RFC 6531, RFC 6532).
func (r *Relay) Header(ctx context.Context, s *session.Session, h session.HeaderField) error {
	if st := r.state(s); st != nil && st.ascii && st.rcpts > 0 && !isASCII(h.Raw) {
		return replyHeaderUTF8
	}
	return r.write(ctx, s, h.Raw)
}

// EndOfHeaders streams the blank line that ends the header section.
func (r *Relay) EndOfHeaders(ctx context.Context, s *session.Session, raw []byte) error {
	return r.write(ctx, s, raw)
}

// Body streams a body chunk.
func (r *Relay) Body(ctx context.Context, s *session.Session, chunk []byte) error {
	return r.write(ctx, s, chunk)
}

// EndOfMessage ends the data upstream and returns the upstream's verdict:
// nil when it accepted the message, so later sub-handlers run, else its
// reply.
func (r *Relay) EndOfMessage(ctx context.Context, s *session.Session) (*session.Reply, error) {
	st := r.state(s)
	if st == nil {
		return nil, nil
	}
	txn := s.Transaction()
	txn.SetValue(key{r}, nil)
	if st.rcpts == 0 {
		r.release(st)
		return nil, nil
	}
	if rep := r.startData(ctx, s, st); rep != nil {
		r.release(st)
		return rep, nil
	}
	up := st.up
	r.bound(ctx, up)
	err := st.w.Flush()
	var resp *smtp.DataResponse
	if err == nil {
		resp, err = st.data.CloseWithResponse()
	}
	st.data = nil
	logUpstream(txn, up)
	if err != nil {
		rep, answered := replyFor(err)
		txn.AddLogField(zap.String("relay_reply", rep.Error()))
		if !answered {
			r.logger.Warn("upstream failed at end of data", zap.String("session", s.ID()), zap.String("queue_id", txn.ID),
				zap.String("upstream", up.addr), zap.Error(err))
			up.close()
			if rep == replyConnLost {
				rep = replyUpstreamFail
			}
			return rep, nil
		}
		r.done(up)
		return rep, nil
	}
	txn.AddLogField(zap.String("relay_reply", session.Sanitize(strings.ReplaceAll(resp.StatusText, "\n", " "), 200)))
	r.done(up)
	return nil, nil
}

// logUpstream adds to the per-message log line where the message went and
// how: relay (the upstream's address), relay_tls, and relay_tls_verified
// (whether its certificate verified) when relay_tls.
func logUpstream(txn *session.Transaction, up *upstream) {
	txn.AddLogField(zap.String("relay", up.addr))
	txn.AddLogField(zap.Bool("relay_tls", up.tls))
	if up.tls {
		txn.AddLogField(zap.Bool("relay_tls_verified", up.verified))
	}
}

// Abort lets go of the upstream transaction: it is reset, or cut if its
// data had started.
func (r *Relay) Abort(s *session.Session, _ error) {
	if st := r.state(s); st != nil {
		s.Transaction().SetValue(key{r}, nil)
		r.release(st)
	}
}
