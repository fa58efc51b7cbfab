package relay

import (
	"cmp"
	"context"
	"fmt"
	"net"
	"slices"
	"strings"
	"sync"

	"go.uber.org/zap"

	"github.com/caddy-esmtp/caddy-esmtp/session"
)

// With a queue (session.Session.Queueing), the relay does all its work
// when the queue delivers: at RCPT it only applies its policy (who may
// relay, a recipient domain that cannot be one), and contacts no
// upstream; Deliver, called from the queue (session.Delivery.Queued),
// runs the whole upstream transaction and gives each recipient its own
// outcome (session.Delivery.SetReply): the upstream's reply to its RCPT
// when it refused it, else its reply to the end of data. The queue then
// keeps each recipient's fate: 2xx delivered, 4xx tried again later, 5xx
// failed (a bounce).

// maxParallel bounds the upstream transactions (and MX lookups) of one
// queued delivery that run at once.
const maxParallel = 4

var (
	replyReadFailed = session.NewReply(451, "4.3.0", "Temporary local problem reading the message; try again later")
	replyDelivered  = session.NewReply(250, "2.0.0", "Delivered")
)

// rcptQueued is the reply at RCPT for a recipient the relay may forward
// for when the server queues: no upstream is contacted (the queue
// delivers later), so only what needs none is refused: with to mx, a
// recipient without a valid domain.
func (r *Relay) rcptQueued(s *session.Session, to session.Path) *session.Reply {
	if r.mx {
		if _, rep := domainOf(to); rep != nil {
			if ce := r.logger.Check(zap.DebugLevel, "invalid recipient domain"); ce != nil {
				ce.Write(zap.String("session", s.ID()), zap.String("rcpt", session.Sanitize(to.Mailbox, 256)))
			}
			return rep
		}
	}
	return replyRcptOK
}

// queuedDest is one upstream transaction of a queued delivery: the smart
// host, or (to mx) the recipient domains that share one set of mail
// servers.
type queuedDest struct {
	domains []string // recipient domains as A-labels; none for the smart host
	targets []target // the mail servers to try, best first (to mx)
	idx     []int    // its recipients: indexes into Delivery.Recipients
}

// deliverQueued delivers a queued message (d.Queued): one upstream
// transaction to the smart host, or (to mx) one per set of mail servers
// (recipient domains with the same MX targets share it), several at once.
// Each recipient gets its outcome with d.SetReply: relay access denied or
// an invalid domain (the policy as at RCPT), a failed MX lookup or no
// reachable mail server (4xx, or 5xx for a domain without mail servers
// or with a null MX), the upstream's refusal of MAIL or of its RCPT, and
// else the upstream's reply to the end of data. A lost connection or an
// upstream's 421 is 451 4.4.2 for the recipients it leaves without a
// result. The error it returns (it applies to every recipient) is only
// for a message it cannot read.
func (r *Relay) deliverQueued(ctx context.Context, s *session.Session, d *session.Delivery) error {
	if d.Message == nil {
		return errNoMessage
	}
	f := paramFlags(d.MailParams)
	// TLS-Required: No counts only without REQUIRETLS (RFC 8689 4.1).
	f.tlsWaived = r.mx && !requiresTLS(d.MailParams) && tlsNotRequired(d.Message)
	headerOK := true
	if f.utf8 {
		var err error
		if headerOK, err = headerASCII(d.Message); err != nil {
			return fmt.Errorf("relay: reading the message: %w", err)
		}
	}
	// Each recipient's reply is written by one goroutine only (the one of
	// its destination) and handed to the delivery once all are done.
	replies := make([]*session.Reply, len(d.Recipients))
	dests := r.queuedDestinations(ctx, s, d, replies)
	parallel(len(dests), func(k int) { r.relayQueued(ctx, s, d, dests[k], f, headerOK, replies) })
	for i, rep := range replies {
		if rep != nil {
			d.SetReply(i, rep)
		}
	}
	return nil
}

// parallel calls f(0) to f(n-1), at most maxParallel at once, and returns
// when all have returned.
func parallel(n int, f func(k int)) {
	if n == 1 {
		f(0)
		return
	}
	var wg sync.WaitGroup
	sem := make(chan struct{}, maxParallel)
	for k := range n {
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			f(k)
		})
	}
	wg.Wait()
}

// queuedDestinations splits the recipients of a queued delivery into
// upstream transactions, in the order of their first recipients. A
// recipient the relay may not forward for, or (to mx) whose domain is not
// valid or has no usable mail servers, gets its reply in replies instead.
func (r *Relay) queuedDestinations(ctx context.Context, s *session.Session, d *session.Delivery, replies []*session.Reply) []*queuedDest {
	type domain struct {
		name    string
		idx     []int
		targets []target
		fail    *setupError
	}
	var doms []*domain
	for i, rc := range d.Recipients {
		if !r.permitted(s, rc.Path) {
			if ce := r.logger.Check(zap.DebugLevel, "relay access denied for a queued recipient"); ce != nil {
				ce.Write(zap.String("queue_id", queueID(s)), zap.String("rcpt", session.Sanitize(rc.Path.Mailbox, 256)))
			}
			replies[i] = replyRelayDenied
			continue
		}
		var name string
		if r.mx {
			var rep *session.Reply
			if name, rep = domainOf(rc.Path); rep != nil {
				replies[i] = rep
				continue
			}
		}
		k := slices.IndexFunc(doms, func(d *domain) bool { return d.name == name })
		if k < 0 {
			doms = append(doms, &domain{name: name})
			k = len(doms) - 1
		}
		doms[k].idx = append(doms[k].idx, i)
	}
	if !r.mx {
		if len(doms) == 0 {
			return nil
		}
		return []*queuedDest{{idx: doms[0].idx}}
	}
	resolver := r.resolverFor(s)
	parallel(len(doms), func(k int) {
		doms[k].targets, doms[k].fail = r.mxTargets(ctx, resolver, doms[k].name)
	})
	var dests []*queuedDest
	for _, dm := range doms {
		if dm.fail != nil {
			r.logNoUpstream(s, dm.name, dm.fail)
			for _, i := range dm.idx {
				replies[i] = dm.fail.queueReply()
			}
			continue
		}
		k := slices.IndexFunc(dests, func(q *queuedDest) bool { return slices.Equal(q.targets, dm.targets) })
		if k < 0 {
			dests = append(dests, &queuedDest{targets: dm.targets})
			k = len(dests) - 1
		}
		dests[k].domains = append(dests[k].domains, dm.name)
		dests[k].idx = append(dests[k].idx, dm.idx...)
	}
	return dests
}

// relayQueued runs one upstream transaction of a queued delivery and
// writes the outcome of each of dest's recipients in replies (see
// deliverQueued).
func (r *Relay) relayQueued(ctx context.Context, s *session.Session, d *session.Delivery, dest *queuedDest,
	f mailFlags, headerOK bool, replies []*session.Reply) {
	set := func(idx []int, rep *session.Reply) {
		for _, i := range idx {
			replies[i] = rep
		}
	}
	domains := strings.Join(dest.domains, ",")
	var up *upstream
	if r.mx {
		var serr *setupError
		if up, serr = r.dialTargets(ctx, s, domains, dest.targets, requiresTLS(d.MailParams), f.tlsWaived); serr != nil {
			r.logNoUpstream(s, domains, serr)
			set(dest.idx, serr.queueReply())
			return
		}
	} else {
		var rep *session.Reply
		if up, rep = r.connectFor(ctx, s, ""); rep != nil {
			set(dest.idx, rep)
			return
		}
	}
	// up may be reused once let go: what the log says of it is kept.
	out := outcome{addr: up.addr, tls: up.tls, verified: up.verified, policy: up.policy}
	host, _, _ := net.SplitHostPort(up.addr)
	if k := slices.IndexFunc(dest.targets, func(t target) bool { return t.addr == up.addr }); k >= 0 {
		host = dest.targets[k].name
	}
	// remote marks a reply as the upstream's (the DSN's Remote-MTA), with
	// the TLS policy that applied (the queue keeps it).
	remote := func(rep *session.Reply) *session.Reply {
		if rep == nil {
			return nil
		}
		c := *rep
		c.RemoteMTA, c.TLSPolicy = strings.TrimSuffix(host, "."), out.policy
		return &c
	}
	var final *session.Reply // the reply to the end of data, or the failure that ended the transaction
	var accepted []int       // the recipients the upstream accepted
	defer func() { r.logQueued(s, out, domains, dest, replies, final, len(accepted)) }()
	if !headerOK && ascii(f.utf8, up) {
		r.done(up)
		final = replyHeaderUTF8
		set(dest.idx, final)
		return
	}
	if final = remote(r.mail(ctx, s, up, d.From, d.MailParams, d.Message.Size(), f)); final != nil {
		set(dest.idx, final)
		return
	}
	for k, i := range dest.idx {
		rc := d.Recipients[i]
		rep, gone := r.rcpt(ctx, s, up, rc.Path, rc.Params, f.utf8)
		rep = remote(rep)
		if rep == nil {
			accepted = append(accepted, i)
			continue
		}
		replies[i] = rep
		if gone {
			// 421 or a lost connection: no result for the others.
			final = rep
			set(accepted, rep)
			set(dest.idx[k+1:], rep)
			return
		}
		if ce := r.logger.Check(zap.DebugLevel, "queued recipient refused upstream"); ce != nil {
			ce.Write(zap.String("queue_id", queueID(s)), zap.String("relay_upstream", up.addr),
				zap.String("rcpt", session.Sanitize(rc.Path.Mailbox, 256)), zap.String("reply", rep.Error()))
		}
	}
	if len(accepted) == 0 {
		r.done(up)
		return
	}
	final = remote(r.sendData(ctx, s, up, d.Message))
	set(accepted, final)
}

// sendData sends DATA and the message on up, whose transaction has its
// envelope, and returns the outcome for its recipients: the upstream's
// reply to the end of data (2xx delivered), or the failure. up is let go.
func (r *Relay) sendData(ctx context.Context, s *session.Session, up *upstream, m *session.Message) *session.Reply {
	r.bound(ctx, up)
	w, err := up.c.Data()
	if err != nil {
		rep, answered := replyFor(err)
		if answered {
			r.done(up)
		} else {
			r.logger.Warn("upstream failed at DATA", zap.String("queue_id", queueID(s)), zap.String("relay_upstream", up.addr), zap.Error(err))
			up.close()
		}
		return rep
	}
	cw := canonWriter{w: w}
	rerr, werr := copyMessage(&cw, m)
	if werr == nil && rerr == nil {
		werr = cw.Flush()
	}
	if rerr != nil || werr != nil {
		// Cut without the final dot: the upstream discards the message.
		up.close()
		if rerr != nil {
			r.logger.Error("reading the queued message failed", zap.String("queue_id", queueID(s)), zap.Error(rerr))
			return replyReadFailed
		}
		r.logger.Warn("upstream failed during data", zap.String("queue_id", queueID(s)), zap.String("relay_upstream", up.addr), zap.Error(werr))
		return replyUpstreamFail
	}
	resp, err := w.CloseWithResponse()
	if err != nil {
		rep, answered := replyFor(err)
		if answered {
			r.done(up)
			return rep
		}
		r.logger.Warn("upstream failed at end of data", zap.String("queue_id", queueID(s)),
			zap.String("relay_upstream", up.addr), zap.Error(err))
		up.close()
		if rep == replyConnLost {
			rep = replyUpstreamFail
		}
		return rep
	}
	r.done(up)
	return deliveredReply(resp.StatusText)
}

// deliveredReply is the outcome of a recipient whose message the upstream
// accepted: 250, with the upstream's enhanced code and text (its queue
// id, often).
func deliveredReply(text string) *session.Reply {
	lines := strings.Split(text, "\n")
	code, _, _ := strings.Cut(lines[0], " ")
	if !isEnhanced(code, 2) {
		code = ""
	}
	rep := &session.Reply{Code: 250, Enhanced: cmp.Or(code, "2.0.0")}
	for i, l := range lines {
		if i == 8 {
			break
		}
		if code != "" {
			l = strings.TrimPrefix(l, code)
		}
		if l = session.Sanitize(strings.TrimSpace(l), 400); l != "" {
			rep.Lines = append(rep.Lines, l)
		}
	}
	if len(rep.Lines) == 0 {
		rep.Lines = replyDelivered.Lines
	}
	return rep
}

// isEnhanced reports whether e is an enhanced status code (RFC 3463) of
// the class: class.subject.detail, one to three digits each.
func isEnhanced(e string, class int) bool {
	parts := strings.Split(e, ".")
	if len(parts) != 3 || parts[0] != fmt.Sprint(class) {
		return false
	}
	for _, p := range parts[1:] {
		if len(p) == 0 || len(p) > 3 || strings.Trim(p, "0123456789") != "" {
			return false
		}
	}
	return true
}

// queueID is the queue id of the message the session stands for.
func queueID(s *session.Session) string {
	if txn := s.Transaction(); txn != nil {
		return txn.ID
	}
	return ""
}

// logNoUpstream logs a destination of a queued delivery without an
// upstream: a warning when it is ours to fix (DNS, the network), at debug
// level when it is the recipient's (no such domain, null MX).
func (r *Relay) logNoUpstream(s *session.Session, domain string, serr *setupError) {
	level := zap.WarnLevel
	if serr.reply.Code >= 500 {
		level = zap.DebugLevel
	}
	if ce := r.logger.Check(level, "no upstream for queued message"); ce != nil {
		fields := []zap.Field{zap.String("queue_id", queueID(s)), zap.String("to", r.To), zap.String("domain", domain),
			zap.String("reply", serr.reply.Error()), zap.Error(serr)}
		if serr.policy != "" {
			fields = append(fields, zap.String("relay_tls_policy", serr.policy))
		}
		if serr.reason != "" {
			fields = append(fields, zap.String("relay_defer_reason", serr.reason))
		}
		ce.Write(fields...)
	}
}

// logQueued logs one upstream transaction of a queued delivery: where it
// went (relay_upstream, the address; relay_mx, the mail server's name),
// over what, how many recipients the upstream accepted at RCPT and how
// many it then took, and its final reply (relay_reply): what the queue
// reports as the remote MTA and its diagnostic.
func (r *Relay) logQueued(s *session.Session, up outcome, domains string, dest *queuedDest,
	replies []*session.Reply, final *session.Reply, accepted int) {
	delivered := 0
	for _, i := range dest.idx {
		if replies[i] != nil && replies[i].Code < 300 {
			delivered++
		}
	}
	fields := []zap.Field{zap.String("queue_id", queueID(s)), zap.String("relay_upstream", up.addr)}
	if r.mx {
		k := slices.IndexFunc(dest.targets, func(t target) bool { return t.addr == up.addr })
		if k >= 0 {
			fields = append(fields, zap.String("relay_mx", dest.targets[k].name))
		}
		fields = append(fields, zap.String("domain", domains))
	}
	fields = append(fields, zap.Bool("relay_tls", up.tls))
	if up.tls {
		fields = append(fields, zap.Bool("relay_tls_verified", up.verified))
	}
	if up.policy != "" {
		fields = append(fields, zap.String("relay_tls_policy", up.policy))
	}
	fields = append(fields, zap.Int("rcpts", len(dest.idx)), zap.Int("accepted", accepted), zap.Int("delivered", delivered))
	if final != nil {
		fields = append(fields, zap.String("relay_reply", final.Error()))
	}
	r.logger.Info("queued message relayed", fields...)
}
