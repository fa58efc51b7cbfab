package session

import (
	"context"
	"crypto/tls"
	"io"
	"net"
	"net/netip"
	"strings"
	"time"

	"go.uber.org/zap"
)

// With a queue (Config.Queue), end of data hands the message to the queue
// instead of delivering it: after the judges, the final message (the
// spool with every edit applied) and its envelope are stored durably and
// only then does the client get 250. The queue then delivers it through
// Server.DeliverQueued, outside the session, as often as it must, each
// recipient with its own fate.

// Queue stores accepted messages durably for later delivery.
type Queue interface {
	// Enqueue stores m (its Message read in full) durably: it returns
	// nil only once the message and its envelope would survive a crash
	// (fsynced). An error answers the client 451 4.3.0.
	Enqueue(ctx context.Context, m *Queued) error
}

// Queued is a message as the queue keeps it: its envelope, who sent it
// and the final message.
type Queued struct {
	// ID is the queue id (the transaction's, in Received: and the 250).
	ID string
	// From and MailParams are the final reverse-path and MAIL parameters.
	From       Path
	MailParams Params
	// Recipients are the final recipients.
	Recipients []Recipient
	// Client is who sent the message.
	Client Client
	// Arrival is when the message was accepted (end of data).
	Arrival time.Time
	// Message is the final message, our Received: field first.
	Message *Message
}

// Client describes the client a message came from, kept with a queued
// message so that its deliveries, run outside the session, see the
// session as it was (Session.RemoteAddr, Helo, AuthUser, TLS) and its
// matchers decide as they did.
type Client struct {
	// Addr is the client's address, "ip:port" (empty: unknown).
	Addr string
	// Helo is the name it gave in HELO or EHLO.
	Helo string
	// Extended is true after EHLO.
	Extended bool
	// AuthUser is the user it authenticated as, or "".
	AuthUser string
	// TLSVersion and TLSCipherSuite describe its TLS (0: plain text).
	TLSVersion     uint16
	TLSCipherSuite uint16
}

// Queueing reports whether the server queues its messages (Config.Queue):
// its deliveries then run later, from the queue (Delivery.Queued), so a
// delivery must not start its work at RCPT (relay's upstream
// transaction) but do it all in Deliver.
func (s *Session) Queueing() bool { return s.cfg.Queue != nil }

// client describes the session's client for the queue.
func (s *Session) client() Client {
	c := Client{Helo: s.helo, Extended: s.extended, AuthUser: s.AuthUser()}
	if s.remote != nil {
		c.Addr = s.remote.String()
	}
	if s.tls != nil {
		c.TLSVersion, c.TLSCipherSuite = s.tls.Version, s.tls.CipherSuite
	}
	return c
}

var (
	replyQueueFailed = NewReply(451, "4.3.0", "Temporary local problem: the message could not be queued; try again later")
)

// enqueue hands the message at end of data to the queue and returns the
// client's reply.
func (s *Session) enqueue(q Queue) *Reply {
	txn := s.txn
	if len(txn.Recipients) == 0 {
		s.log.Error("a judge removed every recipient", zap.String("session", s.id), zap.String("queue_id", txn.ID))
		return replyUndeliverable
	}
	for _, r := range txn.Recipients {
		if !s.delivered(r.Path) {
			s.log.Error("recipient has no delivery", zap.String("session", s.id), zap.String("queue_id", txn.ID),
				zap.String("rcpt", logSafe(r.Path.Mailbox)))
			return replyUndeliverable
		}
	}
	if txn.sp == nil {
		// NewServer makes every Server with a queue spool its messages.
		s.log.Error("queue without a spool", zap.String("session", s.id), zap.String("queue_id", txn.ID))
		return replyQueueFailed
	}
	m := &Queued{ID: txn.ID, From: txn.From, MailParams: txn.MailParams,
		Recipients: append([]Recipient(nil), txn.Recipients...), Client: s.client(),
		Arrival: time.Now(), Message: txn.Message()}
	ctx, cancel := context.WithTimeout(s.ctx, s.cfg.HandlerTimeout)
	defer cancel()
	if err := q.Enqueue(ctx, m); err != nil {
		s.log.Error("queueing the message failed", zap.String("session", s.id), zap.String("queue_id", txn.ID), zap.Error(err))
		return replyQueueFailed
	}
	txn.AddLogField(zap.Bool("queued", true))
	return NewReply(250, "2.0.0", txn.ID+" Message queued")
}

// NewMessage returns a Message that reads size bytes from r: a queued
// message, for Server.DeliverQueued.
func NewMessage(r io.ReaderAt, size int64) *Message {
	return &Message{segs: []segment{{ra: r, n: size}}, size: size}
}

// DeliverQueued delivers a queued message: each delivery whose matcher
// takes some of its recipients gets them (a PrepareHook is prepared and
// committed at once), on a session that stands for the one the message
// arrived in (m.Client; no connection: Session.Transaction has the
// message's id, sender and recipients). Deliveries do not depend on each
// other: one failing does not undo another. It returns one reply per
// recipient of m, in order: 2xx delivered, 4xx to try again later, 5xx
// failed. A recipient that several deliveries take (a Maildir and a
// webhook) gets the worst of their replies (5xx over 4xx over 2xx), and
// when it is tried again, all of them run again: such a destination may
// get the message more than once (at least once). A recipient no
// delivery takes (the configuration changed since) gets 451 4.3.0, and is
// tried again.
func (srv *Server) DeliverQueued(ctx context.Context, m *Queued) []*Reply {
	s := srv.queuedSession(ctx, m)
	defer s.cancel()
	replies := make([]*Reply, len(m.Recipients))
	worse := func(i int, r *Reply) {
		if cur := replies[i]; cur == nil || cur.Code < 400 && r.Code >= 400 || cur.Code < 500 && r.Code >= 500 {
			replies[i] = r
		}
	}
	for _, hk := range srv.hooks.deliveries {
		var idx []int
		var rs []Recipient
		for i, r := range m.Recipients {
			if s.matches(hk.match, scopeRecipient, r.Path) {
				idx = append(idx, i)
				rs = append(rs, r)
			}
		}
		if len(rs) == 0 {
			continue
		}
		d := &Delivery{From: m.From, MailParams: m.MailParams, Recipients: rs, Message: m.Message, Queued: true}
		r := s.deliverOne(hk, d)
		for k, i := range idx {
			switch {
			case r != nil:
				worse(i, r)
			case k < len(d.replies) && d.replies[k] != nil && d.replies[k].valid():
				worse(i, d.replies[k])
			default:
				worse(i, replyDelivered)
			}
		}
	}
	for i, r := range replies {
		if r == nil {
			replies[i] = replyUndeliverable
		}
	}
	return replies
}

var replyDelivered = NewReply(250, "2.0.0", "Delivered")

// deliverOne runs one delivery of a queued message: Prepare then Commit,
// or Deliver; nil when it succeeded (per-recipient replies aside).
func (s *Session) deliverOne(hk hooked[any], d *Delivery) *Reply {
	if p, ok := hk.h.(PrepareHook); ok {
		var prepared Prepared
		if r := invoke(s, "prepare", hk, nil, func(ctx context.Context, _ any) (*Reply, error) {
			var err error
			prepared, err = p.Prepare(ctx, s, d)
			return nil, err
		}); r != nil {
			return r
		}
		if prepared == nil {
			return nil
		}
		return invoke(s, "commit", hk, nil, func(context.Context, any) (*Reply, error) {
			return nil, prepared.Commit()
		})
	}
	dh := hk.h.(DeliverHook)
	return invoke(s, "deliver", hk, nil, func(ctx context.Context, _ any) (*Reply, error) {
		return nil, dh.Deliver(ctx, s, d)
	})
}

// queuedSession is the session a queued message's deliveries run in.
func (srv *Server) queuedSession(ctx context.Context, m *Queued) *Session {
	s := &Session{srv: srv, cfg: &srv.cfg, id: m.ID, start: time.Now(), log: srv.cfg.Logger,
		helo: m.Client.Helo, extended: m.Client.Extended}
	s.ctx, s.cancel = context.WithCancel(ctx)
	if ap, err := netip.ParseAddrPort(m.Client.Addr); err == nil {
		s.remote = net.TCPAddrFromAddrPort(ap)
	}
	if m.Client.TLSVersion != 0 {
		s.tls = &tls.ConnectionState{Version: m.Client.TLSVersion, CipherSuite: m.Client.TLSCipherSuite, HandshakeComplete: true}
	}
	if m.Client.AuthUser != "" {
		s.SetValue(authKey{}, m.Client.AuthUser)
	}
	s.txn = &Transaction{ID: m.ID, From: m.From, MailParams: m.MailParams, Recipients: m.Recipients, Start: m.Arrival}
	_, s.txn.UTF8 = m.MailParams.Get("SMTPUTF8")
	if body, ok := m.MailParams.Get("BODY"); ok {
		s.txn.Body = strings.ToUpper(body)
	}
	return s
}
