package relay

import (
	"context"
	"slices"
	"strings"
	"time"

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
	replyUpstreamFail = session.NewReply(451, "4.4.2", "Upstream mail server failed during the message; try again later")

	// RFC 6531: an address or a header that needs SMTPUTF8 cannot go to an
	// upstream that does not offer it.
	replySenderUTF8 = session.NewReply(553, "5.6.7", "Sender address needs SMTPUTF8, which the upstream mail server does not support")
	replyRcptUTF8   = session.NewReply(553, "5.6.7", "Recipient address needs SMTPUTF8, which the upstream mail server does not support")
	replyHeaderUTF8 = session.NewReply(550, "5.6.9", "Message header needs SMTPUTF8, which the upstream mail server does not support")
)

// key is the key of the upstream transaction in the session's values, one
// per relay instance, so two relays in one list (behind two matchers)
// never share a transaction.
type key struct{ r *Relay }

// txnState is the upstream transaction opened at RCPT for one client
// transaction: MAIL and the recipients the upstream accepted, waiting for
// the message at Deliver. It is kept in the session's values, not the
// transaction's, so that one the engine never asks to deliver (a judge
// removed all its recipients) is still let go: at the next RCPT, or when
// the session ends.
type txnState struct {
	txn    *session.Transaction // the client transaction it belongs to
	domain string               // the recipient domain, as A-labels (to mx)
	up     *upstream            // nil until the first recipient is taken
	fail   *session.Reply       // the destination failed: the reply for every further recipient
	from   string               // the reverse-path the upstream got, as the client gave it
	params session.Params       // the MAIL parameters the upstream got them from
	sent   []session.Recipient  // the recipients the upstream accepted
}

// state returns the upstream transaction of the client transaction in
// progress, or nil. One left from an earlier transaction is let go.
func (r *Relay) state(s *session.Session) *txnState {
	st, _ := s.Value(key{r}).(*txnState)
	if st != nil && st.txn != s.Transaction() {
		s.SetValue(key{r}, nil)
		r.release(st)
		return nil
	}
	return st
}

// take detaches the upstream transaction of the transaction in progress
// from the session and returns it, or nil.
func (r *Relay) take(s *session.Session) *txnState {
	st := r.state(s)
	if st != nil {
		s.SetValue(key{r}, nil)
	}
	return st
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
	if s.Queueing() {
		return r.rcptQueued(s, to), nil
	}
	st := r.state(s)
	if st == nil {
		st = &txnState{txn: txn}
		s.SetValue(key{r}, st)
	}
	if r.mx {
		d, rep := domainOf(to)
		if rep != nil {
			if ce := r.logger.Check(zap.DebugLevel, "invalid recipient domain"); ce != nil {
				ce.Write(zap.String("session", s.ID()), zap.String("rcpt", session.Sanitize(to.Mailbox, 256)))
			}
			return rep, nil
		}
		if st.domain != d {
			if len(st.sent) > 0 {
				return replyOtherDomain, nil
			}
			r.release(st)
			*st = txnState{txn: txn, domain: d}
		}
	}
	if st.fail != nil {
		return st.fail, nil
	}
	if st.up == nil {
		up, fail := r.connectFor(ctx, s, st.domain)
		if fail == nil {
			fail = r.mail(ctx, s, up, txn.From, txn.MailParams, declaredSize(txn.MailParams), sessionFlags(txn))
		}
		if fail != nil {
			st.fail = fail
			return fail, nil
		}
		st.up, st.from, st.params = up, txn.From.Mailbox, slices.Clone(txn.MailParams)
	}
	rep, gone := r.rcpt(ctx, s, st.up, to, params, txn.UTF8)
	if gone {
		st.up, st.fail = nil, rep
	}
	if rep != nil {
		return rep, nil
	}
	st.sent = append(st.sent, session.Recipient{Path: to, Params: params})
	return replyRcptOK, nil
}

// domainOf is the A-label form of a recipient's domain (to mx), or the
// reply for one that has none.
func domainOf(to session.Path) (string, *session.Reply) {
	if to.Domain == "" {
		return "", replyNoDomain
	}
	d, err := aLabel(to.Domain)
	if err != nil {
		return "", replyBadDomain
	}
	return d, nil
}

// connectFor takes an idle connection to the smart host, or connects to it
// or to the mail servers of domain (to mx).
func (r *Relay) connectFor(ctx context.Context, s *session.Session, domain string) (*upstream, *session.Reply) {
	if r.pool != nil {
		t := r.commandTimeout(ctx)
		if up, ok := r.pool.Get(s.Hostname(), func(up *upstream) bool {
			up.c.CommandTimeout, up.uc.timeout = t, t
			if err := up.c.Reset(); err != nil { // RSET: does it still answer?
				up.close()
				return false
			}
			return true
		}); ok {
			return up, nil
		}
	}
	var up *upstream
	var serr *setupError
	if r.mx {
		up, serr = r.dialMX(ctx, s, domain)
	} else {
		up, serr = r.connect(ctx, r.smartHost, s.Hostname(), nil)
	}
	if serr != nil {
		level := zap.WarnLevel // ours to fix: the upstream, the network, DNS
		if serr.reply.Code >= 500 {
			level = zap.DebugLevel // the recipient's: no such domain, null MX
		}
		if ce := r.logger.Check(level, "no upstream"); ce != nil {
			var id string
			if txn := s.Transaction(); txn != nil {
				id = txn.ID
			}
			ce.Write(zap.String("session", s.ID()), zap.String("queue_id", id),
				zap.String("to", r.To), zap.String("domain", domain), zap.String("relay_tls_policy", serr.policy),
				zap.String("relay_defer_reason", serr.reason), zap.Error(serr))
		}
		if txn := s.Transaction(); txn != nil && serr.reason != "" {
			txn.AddLogField(zap.String("relay_defer_reason", serr.reason))
		}
		return nil, serr.reply
	}
	return up, nil
}

// mailFlags are what the relay must know of a transaction's MAIL
// parameters: SMTPUTF8, and BODY=8BITMIME; and (a queued message) whether
// its header waives the recipients' TLS policies (TLS-Required: No).
type mailFlags struct {
	utf8      bool
	eightBit  bool
	tlsWaived bool
}

// sessionFlags are the flags of the client transaction in progress.
func sessionFlags(txn *session.Transaction) mailFlags {
	return mailFlags{utf8: txn.UTF8, eightBit: txn.Body == "8BITMIME"}
}

// paramFlags are the flags of the MAIL parameters params (a queued
// message: its session's transaction is rebuilt from what the queue kept).
func paramFlags(params session.Params) mailFlags {
	_, utf8 := params.Get("SMTPUTF8")
	body, _ := params.Get("BODY")
	return mailFlags{utf8: utf8, eightBit: strings.EqualFold(body, "8BITMIME")}
}

// mail sends MAIL FROM on up for a transaction with flags f. On failure
// up is let go, and the reply is the client's.
func (r *Relay) mail(ctx context.Context, s *session.Session, up *upstream, from session.Path, params session.Params, size int64, f mailFlags) *session.Reply {
	r.bound(ctx, up)
	if f.eightBit && !up.hasExt("8BITMIME") {
		r.done(up)
		return replyNo8BITMIME
	}
	// SMTPUTF8 toward an upstream without it: the envelope goes as ASCII
	// when it can (domains as A-labels), and the header is checked before
	// the message goes (see checkHeader).
	utf8 := f.utf8 && up.hasExt("SMTPUTF8")
	mailbox := from.Mailbox
	if f.utf8 && !utf8 {
		var ok bool
		if mailbox, ok = asciiPath(from); !ok {
			r.done(up)
			return replySenderUTF8
		}
	}
	opts := mailOptions(params, size, utf8, s.AuthUser() != "")
	if requiresTLS(params) {
		// RFC 8689 4.2.1: only over verified TLS, to a server that
		// passes REQUIRETLS on (to mx, dialTargets chose such a one).
		if !up.tlsOK || !up.hasExt("REQUIRETLS") {
			r.done(up)
			return replyRequireTLS
		}
		opts.RequireTLS = true
	}
	if err := up.c.Mail(mailbox, opts); err != nil {
		rep, answered := replyFor(err)
		if answered {
			r.done(up)
		} else {
			r.logger.Warn("upstream failed at MAIL", zap.String("session", s.ID()), zap.String("upstream", up.addr), zap.Error(err))
			up.close()
		}
		return rep
	}
	return nil
}

// rcpt sends RCPT TO on up (in an SMTPUTF8 transaction when utf8) and
// returns the upstream's refusal, or nil. gone tells that the connection
// failed and was closed.
func (r *Relay) rcpt(ctx context.Context, s *session.Session, up *upstream, to session.Path, params session.Params, utf8 bool) (rep *session.Reply, gone bool) {
	mailbox := to.Mailbox
	if ascii(utf8, up) {
		var ok bool
		if mailbox, ok = asciiPath(to); !ok {
			return replyRcptUTF8, false
		}
	}
	r.bound(ctx, up)
	if err := up.c.Rcpt(mailbox, rcptOptions(params)); err != nil {
		rep, answered := replyFor(err)
		if !answered {
			r.logger.Warn("upstream failed at RCPT", zap.String("session", s.ID()), zap.String("upstream", up.addr), zap.Error(err))
			up.close()
		}
		return rep, !answered
	}
	return nil, false
}

// ascii reports whether a transaction goes to up as ASCII: it is an
// SMTPUTF8 transaction (utf8) and up does not offer SMTPUTF8, so the
// addresses go as A-labels and the header must be ASCII.
func ascii(utf8 bool, up *upstream) bool {
	return utf8 && !up.hasExt("SMTPUTF8")
}

// bound sets the upstream's timeouts for a hook call with ctx.
func (r *Relay) bound(ctx context.Context, up *upstream) {
	t := r.commandTimeout(ctx)
	up.c.CommandTimeout, up.uc.timeout = t, t
	up.c.SubmissionTimeout = within(ctx, time.Duration(r.DataTimeout))
}

// done is the end of an upstream transaction that left the connection
// usable: it goes back to the pool (RSET before its next use), or is quit.
func (r *Relay) done(up *upstream) {
	if r.pool != nil {
		r.pool.Put(up.hello, up)
		return
	}
	go up.quit()
}

// release lets go of an upstream transaction that will carry no message.
func (r *Relay) release(st *txnState) {
	if st != nil && st.up != nil {
		r.done(st.up)
		st.up = nil
	}
}

// Abort lets go of the upstream transaction of a client transaction that
// ends without a message (RSET, a refused message, a dropped client).
func (r *Relay) Abort(s *session.Session, _ error) {
	r.release(r.take(s))
}

// Close lets go of an upstream transaction still held when the session
// ends.
func (r *Relay) Close(s *session.Session) {
	if st, _ := s.Value(key{r}).(*txnState); st != nil {
		s.SetValue(key{r}, nil)
		r.release(st)
	}
}

// isSent reports whether the upstream accepted rc at RCPT.
func (st *txnState) isSent(rc session.Recipient) bool {
	if st == nil {
		return false
	}
	return slices.ContainsFunc(st.sent, func(s session.Recipient) bool { return sameRecipient(s, rc) })
}

func sameRecipient(a, b session.Recipient) bool {
	return a.Path.Mailbox == b.Path.Mailbox && slices.Equal(a.Params, b.Params)
}

// envelopeSent reports whether the upstream transaction st carries exactly
// the final envelope: the sender and MAIL parameters, and rcpts, in order.
func (st *txnState) envelopeSent(d *session.Delivery, rcpts []session.Recipient) bool {
	return st.from == d.From.Mailbox && slices.Equal(st.params, d.MailParams) &&
		slices.EqualFunc(st.sent, rcpts, sameRecipient)
}

// logUpstream adds to the per-message log line where the message went and
// how: relay (the upstream's address), relay_reply (its reply to the end
// of data), relay_tls, and relay_tls_verified (whether its certificate
// verified) when relay_tls. A message that took several upstream
// transactions (to mx, a judge added a recipient of another domain) lists
// their addresses and replies in order; relay_tls and relay_tls_verified
// then hold only when they hold for every one. relay_tls_policy lists the
// TLS policies that applied (dane, mta-sts-enforce, mta-sts-testing,
// opportunistic), each once.
func logUpstream(txn *session.Transaction, outs []outcome) {
	if len(outs) == 0 {
		return
	}
	addrs, replies := make([]string, len(outs)), make([]string, len(outs))
	secure, verified := true, true
	var policies []string
	for i, o := range outs {
		if o.policy != "" && !slices.Contains(policies, o.policy) {
			policies = append(policies, o.policy)
		}
		addrs[i], replies[i] = o.addr, o.reply
		secure = secure && o.tls
		verified = verified && o.verified
	}
	txn.AddLogField(zap.String("relay", strings.Join(addrs, ", ")))
	txn.AddLogField(zap.String("relay_reply", strings.Join(replies, "; ")))
	txn.AddLogField(zap.Bool("relay_tls", secure))
	if secure {
		txn.AddLogField(zap.Bool("relay_tls_verified", verified))
	}
	if len(policies) > 0 {
		txn.AddLogField(zap.String("relay_tls_policy", strings.Join(policies, ", ")))
	}
}
