package esmtp

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/caddyserver/caddy/v2"
	"go.uber.org/zap"

	"github.com/caddy-esmtp/caddy-esmtp/queue"
	"github.com/caddy-esmtp/caddy-esmtp/session"
)

// QueueConfig is the esmtp handler's `queue`: a directory in which every
// accepted message is stored (fsynced) before the client gets 250, and
// from which workers deliver it afterwards, retrying and bouncing
// (package queue).
type QueueConfig struct {
	// Dir is the queue directory (made if missing). Required. One
	// process at a time uses a directory (it is locked); esmtp handlers
	// of one Caddy that name the same directory share its queue, which
	// survives config reloads: its messages are delivered with the
	// configuration in force.
	Dir string `json:"dir,omitempty"`
	// RetryInterval is the wait after a message's first failed attempt;
	// each further attempt doubles it up to MaxRetryInterval. Default 5m.
	RetryInterval caddy.Duration `json:"retry_interval,omitempty"`
	// MaxRetryInterval caps the wait between attempts. Default 1h.
	MaxRetryInterval caddy.Duration `json:"max_retry_interval,omitempty"`
	// MaxAge is how long a message is retried before its recipients
	// still deferred fail and bounce. Default 5 days.
	MaxAge caddy.Duration `json:"max_age,omitempty"`
	// DelayWarning, when set, is the age at which the sender of a message
	// still deferred gets one "delayed" DSN (RFC 3464 Action: delayed).
	DelayWarning caddy.Duration `json:"delay_warning,omitempty"`
	// Workers bounds the deliveries that run at once. Default 16.
	Workers int `json:"workers,omitempty"`
}

// queues are the open queues of this process, by directory: shared by the
// handlers that name the same directory, and kept across config reloads
// (the next configuration's handler takes it before the old one lets it
// go).
var queues = caddy.NewUsagePool()

// runningQueue is one open queue directory with its workers, and the
// servers whose deliveries it runs: the newest still provisioned one.
type runningQueue struct {
	dir   string
	store *queue.DirStore
	q     *queue.Queue
	log   *zap.Logger

	mu      sync.Mutex
	servers []*session.Server // the newest last
}

// Destruct stops the workers (bounded; an attempt cut short is made
// again at the next start) and unlocks the directory: the last handler
// using it went away.
func (rq *runningQueue) Destruct() error {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	err := rq.q.Stop(ctx)
	return errors.Join(err, rq.store.Close())
}

// server returns the server whose deliveries run now.
func (rq *runningQueue) server() *session.Server {
	rq.mu.Lock()
	defer rq.mu.Unlock()
	if len(rq.servers) == 0 {
		return nil
	}
	return rq.servers[len(rq.servers)-1]
}

func (rq *runningQueue) attach(s *session.Server) {
	rq.mu.Lock()
	defer rq.mu.Unlock()
	rq.servers = append(rq.servers, s)
}

func (rq *runningQueue) detach(s *session.Server) {
	rq.mu.Lock()
	defer rq.mu.Unlock()
	rq.servers = slices.DeleteFunc(rq.servers, func(x *session.Server) bool { return x == s })
}

// openQueue returns the running queue of the configured directory,
// opening and starting it if this process has none yet.
func (h *Handler) openQueue(hostname string) (*runningQueue, error) {
	c := h.Queue
	if c.Dir == "" {
		return nil, errors.New("esmtp: queue: dir is required")
	}
	dir, err := filepath.Abs(c.Dir)
	if err != nil {
		return nil, fmt.Errorf("esmtp: queue: dir: %v", err)
	}
	for name, d := range map[string]caddy.Duration{"retry_interval": c.RetryInterval, "max_retry_interval": c.MaxRetryInterval,
		"max_age": c.MaxAge, "delay_warning": c.DelayWarning} {
		if d < 0 {
			return nil, fmt.Errorf("esmtp: queue: %s must not be negative", name)
		}
	}
	if c.Workers < 0 {
		return nil, errors.New("esmtp: queue: workers must not be negative")
	}
	log := h.logger.Named("queue")
	v, _, err := queues.LoadOrNew(dir, func() (caddy.Destructor, error) {
		store, err := queue.OpenDir(dir, log)
		if err != nil {
			return nil, fmt.Errorf("esmtp: queue: dir %s: %v", dir, err)
		}
		rq := &runningQueue{dir: dir, store: store, log: log}
		q, err := queue.New(store, queue.Options{
			RetryInterval:    time.Duration(c.RetryInterval),
			MaxRetryInterval: time.Duration(c.MaxRetryInterval),
			MaxAge:           time.Duration(c.MaxAge),
			DelayWarning:     time.Duration(c.DelayWarning),
			Workers:          c.Workers,
			Deliver:          rq.deliver,
			Hostname:         hostname,
			Logger:           log,
		})
		if err != nil {
			store.Close()
			return nil, fmt.Errorf("esmtp: queue: %v", err)
		}
		rq.q = q
		return rq, nil
	})
	if err != nil {
		return nil, err
	}
	return v.(*runningQueue), nil
}

// start starts the queue's workers once a server can deliver (the first
// handler's Provision; later calls do nothing).
func (rq *runningQueue) start() error {
	return rq.q.Start(context.Background())
}

// Enqueue is session.Queue: the message into the directory, durably.
func (rq *runningQueue) Enqueue(ctx context.Context, m *session.Queued) error {
	_, err := rq.q.Enqueue(ctx, envelopeOf(m), m.Message.Reader())
	return err
}

// deliver is the queue's DeliverFunc: the current server's deliveries for
// the recipients due.
func (rq *runningQueue) deliver(ctx context.Context, e *queue.Entry, rcpts []queue.Recipient, msg queue.Message) []queue.Outcome {
	outs := make([]queue.Outcome, len(rcpts))
	srv := rq.server()
	if srv == nil {
		for i := range outs {
			outs[i] = queue.Outcome{Code: 451, Enhanced: "4.3.0", Text: "No configuration to deliver with"}
		}
		return outs
	}
	m, err := queuedOf(e, rcpts, msg)
	if err != nil {
		rq.log.Error("queued message unreadable", zap.String("queue_id", e.ID), zap.Error(err))
		for i := range outs {
			outs[i] = queue.Outcome{Code: 554, Enhanced: "5.3.0", Text: "Queued envelope unreadable: " + err.Error()}
		}
		return outs
	}
	for i, r := range srv.DeliverQueued(ctx, m) {
		outs[i] = queue.Outcome{Code: r.Code, Enhanced: r.Enhanced, Text: strings.Join(r.Lines, " "), RemoteMTA: r.RemoteMTA, TLSPolicy: r.TLSPolicy}
	}
	return outs
}

// Labels of a queued envelope the glue keeps for the deliveries.
const (
	labelMailParams = "mail_params" // MAIL's parameters as the engine kept them
	labelTLS        = "tls"         // "<version> <cipher suite>", numbers
	labelExtended   = "ehlo"        // "1" after EHLO
)

// envelopeOf is the queue's envelope of a message the engine queues.
func envelopeOf(m *session.Queued) queue.Envelope {
	env := queue.Envelope{ID: m.ID, From: m.From.Mailbox, Arrival: m.Arrival,
		Client: queue.Client{Addr: m.Client.Addr, Helo: m.Client.Helo, AuthUser: m.Client.AuthUser, Protocol: "SMTP"},
		Labels: map[string]string{}}
	if m.Client.Extended {
		env.Client.Protocol = "ESMTP"
		env.Labels[labelExtended] = "1"
	}
	if m.Client.TLSVersion != 0 {
		env.Client.TLS = tlsName(m.Client.TLSVersion)
		env.Labels[labelTLS] = fmt.Sprintf("%d %d", m.Client.TLSVersion, m.Client.TLSCipherSuite)
	}
	if len(m.MailParams) > 0 {
		env.Labels[labelMailParams] = formatParams(m.MailParams)
	}
	for _, p := range m.MailParams {
		switch p.Key {
		case "RET":
			env.Ret = p.Value
		case "ENVID":
			env.EnvID = p.Value
		case "BODY":
			env.Body = p.Value
		case "SMTPUTF8":
			env.SMTPUTF8 = true
		case "REQUIRETLS":
			env.RequireTLS = true
		}
	}
	for _, r := range m.Recipients {
		qr := queue.Recipient{Addr: r.Path.Mailbox, Route: formatParams(r.Params)}
		qr.Notify, _ = r.Params.Get("NOTIFY")
		qr.ORCPT, _ = r.Params.Get("ORCPT")
		env.Recipients = append(env.Recipients, qr)
	}
	return env
}

// queuedOf is the engine's form of a queued entry, for the recipients
// due.
func queuedOf(e *queue.Entry, rcpts []queue.Recipient, msg queue.Message) (*session.Queued, error) {
	from, err := parsePath(e.From)
	if err != nil {
		return nil, fmt.Errorf("sender: %v", err)
	}
	m := &session.Queued{ID: e.ID, From: from, Arrival: e.Arrival,
		Client:  session.Client{Addr: e.Client.Addr, Helo: e.Client.Helo, AuthUser: e.Client.AuthUser, Extended: e.Labels[labelExtended] == "1"},
		Message: session.NewMessage(msg, msg.Size())}
	if s := e.Labels[labelMailParams]; s != "" {
		if m.MailParams, err = session.ParseParams(s); err != nil {
			return nil, fmt.Errorf("MAIL parameters: %v", err)
		}
	} else if e.SMTPUTF8 || e.Body != "" || e.Ret != "" || e.EnvID != "" {
		// An envelope the glue did not write (a DSN the queue made).
		if e.Body != "" {
			m.MailParams = append(m.MailParams, session.Param{Key: "BODY", Value: e.Body, HasValue: true})
		}
		if e.SMTPUTF8 {
			m.MailParams = append(m.MailParams, session.Param{Key: "SMTPUTF8"})
		}
	}
	if v, c, ok := strings.Cut(e.Labels[labelTLS], " "); ok {
		tv, _ := strconv.ParseUint(v, 10, 16)
		tc, _ := strconv.ParseUint(c, 10, 16)
		m.Client.TLSVersion, m.Client.TLSCipherSuite = uint16(tv), uint16(tc)
	}
	for _, r := range rcpts {
		to, err := parsePath(r.Addr)
		if err != nil || to.IsNull() {
			return nil, fmt.Errorf("recipient %q: %v", r.Addr, err)
		}
		rc := session.Recipient{Path: to}
		if r.Route != "" {
			if rc.Params, err = session.ParseParams(r.Route); err != nil {
				return nil, fmt.Errorf("RCPT parameters of %q: %v", r.Addr, err)
			}
		}
		m.Recipients = append(m.Recipients, rc)
	}
	return m, nil
}

// parsePath parses a mailbox as kept in the queue ("" is the null path).
func parsePath(mailbox string) (session.Path, error) {
	p, _, err := session.ParsePathArg("<"+mailbox+">", true, true)
	return p, err
}

// formatParams writes parameters back as MAIL and RCPT carry them.
func formatParams(ps session.Params) string {
	var b strings.Builder
	for i, p := range ps {
		if i > 0 {
			b.WriteByte(' ')
		}
		b.WriteString(p.Key)
		if p.HasValue {
			b.WriteByte('=')
			b.WriteString(p.Value)
		}
	}
	return b.String()
}

// tlsName names a TLS version as the queue listing shows it.
func tlsName(v uint16) string {
	switch v {
	case 0x0301:
		return "TLSv1.0"
	case 0x0302:
		return "TLSv1.1"
	case 0x0303:
		return "TLSv1.2"
	case 0x0304:
		return "TLSv1.3"
	}
	return fmt.Sprintf("0x%04x", v)
}
