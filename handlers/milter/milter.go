// Package milter is the sub-handler esmtp.handlers.milter: a client of the
// Sendmail milter protocol, version 6 (libmilter's, as Postfix speaks it),
// so that the mail filters written for Sendmail and Postfix (rspamd's
// proxy, OpenDKIM, clamav-milter, OpenDMARC, ...) judge and edit the
// messages of caddy-esmtp.
//
//	milter 127.0.0.1:11332
//	milter unix:/run/opendkim/opendkim.sock {
//		name            opendkim
//		timeout         30s
//		connect_timeout 30s
//		on_error        tempfail
//		daemon_name     submission
//	}
//
// One connection to the milter per SMTP session, opened at connect and
// kept until the session ends (QUIT to the milter; SMFIC_ABORT after a
// transaction that ends without a message: RSET, a refusal). The SMTP
// events reach it as Postfix sends them: connect, HELO, MAIL, each RCPT
// the earlier sub-handlers accepted, DATA, then at the end of data (as
// Postfix's cleanup does) the header fields, the end of the header, the
// body in chunks of at most 64 KiB and the end of message. What is sent
// then is the message as it is at that point (Transaction.Message): our
// Received: field first, with the edits of the judges and milters before
// this one, so each milter sees what the one before it changed. The
// milter's modify actions become the engine's edits (session/edits.go),
// its answers the replies to the client (see replyFor); the README's
// "Sub-handler milter" section has the whole table.
//
// Library: github.com/d--j/go-milter (BSD-2-Clause), a maintained fork of
// emersion/go-milter with a full version 6 client (negotiation of skipped
// and no-reply stages, SMFIR_SKIP, the macros a milter asks for by stage,
// progress, every modify action).
package milter

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/caddyserver/caddy/v2"
	gomilter "github.com/d--j/go-milter"
	"go.uber.org/zap"

	"github.com/caddy-esmtp/caddy-esmtp/session"
)

func init() {
	caddy.RegisterModule(&Milter{})
}

// Defaults, as Postfix's milter_command_timeout and
// milter_connect_timeout.
const (
	DefaultTimeout        = 30 * time.Second
	DefaultConnectTimeout = 30 * time.Second
	DefaultDaemonName     = "caddy-esmtp"
)

// What happens when a milter cannot be reached, times out, dies or
// answers garbage (on_error).
const (
	// OnErrorTempFail answers 451 4.7.1 (421 4.7.1 at connect, which
	// closes) to the event, and to every later one of the session.
	OnErrorTempFail = "tempfail"
	// OnErrorAccept fails open: the milter is dropped for the rest of the
	// session (logged at WARN) and the mail goes on without it.
	OnErrorAccept = "accept"
	// OnErrorReject answers 550 5.7.1 (554 5.7.1 at connect) to the
	// event, and to every later one of the session.
	OnErrorReject = "reject"
)

// Milter is one milter, asked at every SMTP event of each session.
type Milter struct {
	// Address is where the milter listens: "host:port" or
	// "inet:port@host" (Postfix's and Sendmail's form) for TCP,
	// "unix:/path" or "local:/path" (or just an absolute path) for a unix
	// socket. Required.
	Address string `json:"address,omitempty"`
	// Name names the milter in log lines and in the message's log field
	// milter_<name>. Default: the address.
	Name string `json:"name,omitempty"`
	// Timeout bounds each exchange with the milter: sending a command and
	// reading each packet of its answer (a milter that sends
	// SMFIR_PROGRESS gets more time). Default: 30s (Postfix's
	// milter_command_timeout). A whole hook call, such as all the
	// exchanges of the end of a message, is also bounded by the esmtp
	// handler's handler_timeout (2m).
	Timeout caddy.Duration `json:"timeout,omitempty"`
	// ConnectTimeout bounds connecting to the milter and the option
	// negotiation. Default: 30s (Postfix's milter_connect_timeout).
	ConnectTimeout caddy.Duration `json:"connect_timeout,omitempty"`
	// OnError is what a failure of the milter (unreachable, timed out,
	// dead, garbage answer) means: "tempfail" (default), "accept" (fail
	// open) or "reject".
	OnError string `json:"on_error,omitempty"`
	// DaemonName is the {daemon_name} macro, which milters use to tell
	// the MTA's services apart (OpenDKIM's MTA option signs the mail of
	// the ones it lists). Default: "caddy-esmtp".
	DaemonName string `json:"daemon_name,omitempty"`

	network, addr string
	logKey        string
	logger        *zap.Logger
	// conns are the milter connections by session. Not Session.Values:
	// the engine clears those at STARTTLS and XCLIENT, and the milter
	// connection lives on through STARTTLS (and must be closed at
	// XCLIENT, when the session starts again).
	conns sync.Map // *session.Session -> *conn
}

// CaddyModule returns the Caddy module information.
func (*Milter) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "esmtp.handlers.milter",
		New: func() caddy.Module { return new(Milter) },
	}
}

// Provision checks the options.
func (m *Milter) Provision(ctx caddy.Context) error {
	m.logger = ctx.Logger(m)
	network, addr, err := ParseAddress(m.Address)
	if err != nil {
		return fmt.Errorf("milter: address: %v", err)
	}
	m.network, m.addr = network, addr
	if m.Name == "" {
		m.Name = m.Address
	}
	if strings.ContainsFunc(m.Name, func(r rune) bool { return r <= ' ' || r >= 0x7f }) {
		return fmt.Errorf("milter: name: %q has spaces or control characters", m.Name)
	}
	m.logKey = "milter_" + m.Name
	if m.Timeout < 0 {
		return fmt.Errorf("milter: timeout must be positive, got %s", time.Duration(m.Timeout))
	}
	if m.Timeout == 0 {
		m.Timeout = caddy.Duration(DefaultTimeout)
	}
	if m.ConnectTimeout < 0 {
		return fmt.Errorf("milter: connect_timeout must be positive, got %s", time.Duration(m.ConnectTimeout))
	}
	if m.ConnectTimeout == 0 {
		m.ConnectTimeout = caddy.Duration(DefaultConnectTimeout)
	}
	switch m.OnError {
	case "":
		m.OnError = OnErrorTempFail
	case OnErrorTempFail, OnErrorAccept, OnErrorReject:
	default:
		return fmt.Errorf("milter: on_error: want tempfail, accept or reject, got %q", m.OnError)
	}
	if m.DaemonName == "" {
		m.DaemonName = DefaultDaemonName
	}
	return nil
}

// ParseAddress turns a milter address into a network ("tcp" or "unix")
// and an address for net.Dial.
func ParseAddress(a string) (network, addr string, err error) {
	a = strings.TrimSpace(a)
	switch {
	case a == "":
		return "", "", errors.New("required")
	case strings.HasPrefix(a, "unix:"), strings.HasPrefix(a, "local:"):
		_, p, _ := strings.Cut(a, ":")
		if p == "" {
			return "", "", fmt.Errorf("%q: no socket path", a)
		}
		return "unix", p, nil
	case strings.HasPrefix(a, "/"):
		return "unix", a, nil
	case strings.HasPrefix(a, "inet:"), strings.HasPrefix(a, "inet6:"):
		_, rest, _ := strings.Cut(a, ":")
		port, host, ok := strings.Cut(rest, "@")
		if !ok {
			host = "127.0.0.1"
		}
		if _, err := strconv.ParseUint(port, 10, 16); err != nil || port == "" {
			return "", "", fmt.Errorf("%q: want inet:port@host", a)
		}
		return "tcp", net.JoinHostPort(strings.Trim(host, "[]"), port), nil
	}
	a = strings.TrimPrefix(a, "tcp:")
	host, port, err := net.SplitHostPort(a)
	if err != nil || host == "" {
		return "", "", fmt.Errorf("%q: want host:port, inet:port@host or unix:/path", a)
	}
	if _, err := strconv.ParseUint(port, 10, 16); err != nil {
		return "", "", fmt.Errorf("%q: bad port", a)
	}
	return "tcp", a, nil
}

// conn is one session's connection to the milter and where it is in the
// protocol.
type conn struct {
	cs      *gomilter.ClientSession
	wc      *wireConn
	macros  macros
	done    bool           // no more of this milter in this session (accepted, failed open, closed)
	failed  *session.Reply // the on_error reply for the rest of the session
	helo    bool           // HELO was sent
	inTxn   bool           // MAIL was sent and neither end of message nor abort since
	rcpts   int            // RCPTs sent in this transaction
	data    bool           // DATA was sent
	msgDone bool           // no more of this milter for this message (accepted, discarded)
	discard bool           // the milter discarded the message
	notes   []string       // this message's actions, for its log line
}

// dialer opens the milter connection for go-milter, bounded by the
// connect timeout and the hook's context.
type dialer struct {
	ctx     context.Context
	timeout time.Duration
	each    time.Duration

	mu sync.Mutex // wc is set by Dial and read by open's cancellation
	wc *wireConn
}

// conn returns the connection Dial opened, or nil.
func (d *dialer) conn() *wireConn {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.wc
}

func (d *dialer) Dial(network, addr string) (net.Conn, error) {
	ctx, cancel := context.WithTimeout(d.ctx, d.timeout)
	defer cancel()
	c, err := (&net.Dialer{}).DialContext(ctx, network, addr)
	if err != nil {
		return nil, err
	}
	wc := &wireConn{Conn: c, timeout: d.each}
	d.mu.Lock()
	d.wc = wc
	d.mu.Unlock()
	return wc, nil
}

// open connects to the milter and negotiates, within the connect
// timeout and the hook's context.
func (m *Milter) open(ctx context.Context) (*conn, error) {
	ctx, cancel := context.WithTimeout(ctx, time.Duration(m.ConnectTimeout))
	defer cancel()
	d := &dialer{ctx: ctx, timeout: time.Duration(m.ConnectTimeout), each: time.Duration(m.Timeout)}
	opts := []gomilter.Option{
		gomilter.WithDialer(d),
		gomilter.WithReadTimeout(time.Duration(m.Timeout)),
		gomilter.WithWriteTimeout(time.Duration(m.Timeout)),
		gomilter.WithoutDefaultMacros(),
	}
	for st, names := range defaultMacros {
		opts = append(opts, gomilter.WithMacroRequest(st, names))
	}
	mc := macros{}
	stop := context.AfterFunc(ctx, func() {
		if wc := d.conn(); wc != nil {
			wc.Close()
		}
	})
	cs, err := gomilter.NewClient(m.network, m.addr, opts...).Session(mc)
	stop()
	wc := d.conn()
	if err == nil && ctx.Err() != nil {
		err = ctx.Err()
	}
	if err != nil {
		if wc != nil {
			wc.Close()
		}
		return nil, err
	}
	return &conn{cs: cs, wc: wc, macros: mc}, nil
}

// exchange runs one exchange with the milter, bounded by ctx too: when
// the hook's context ends (the client left, handler_timeout) the
// connection is closed, which ends the exchange with an error.
func (c *conn) exchange(ctx context.Context, f func() error) error {
	stop := context.AfterFunc(ctx, func() { c.wc.Close() })
	err := f()
	stop()
	if err == nil && ctx.Err() != nil {
		err = ctx.Err()
	}
	return err
}

// close ends the milter connection with QUIT.
func (c *conn) close() {
	if c.cs != nil {
		_ = c.wc.SetWriteDeadline(time.Now().Add(time.Second))
		_ = c.cs.Close()
		c.wc.Close()
	}
	c.done = true
}

// get returns the session's milter connection, or nil.
func (m *Milter) get(s *session.Session) *conn {
	if v, ok := m.conns.Load(s); ok {
		return v.(*conn)
	}
	return nil
}

// fail handles a failure of the milter at stage st: the connection is
// closed, and on_error decides the reply (for this event and, unless it
// is accept, every later one of the session).
func (m *Milter) fail(s *session.Session, c *conn, st stage, err error) *session.Reply {
	c.close()
	fields := []zap.Field{zap.String("session", s.ID()), zap.String("milter", m.Name),
		zap.String("stage", st.String()), zap.String("on_error", m.OnError), zap.Error(err)}
	if txn := s.Transaction(); txn != nil {
		fields = append(fields, zap.String("queue_id", txn.ID))
		txn.AddLogField(zap.String(m.logKey, "error ("+m.OnError+"): "+err.Error()))
	}
	switch m.OnError {
	case OnErrorAccept:
		m.logger.Warn("milter failed; going on without it for this session", fields...)
		return nil
	case OnErrorReject:
		m.logger.Error("milter failed; rejecting", fields...)
		c.failed = replyReject
		if st == stageConnect {
			return replyConnReject
		}
	default:
		m.logger.Error("milter failed; deferring", fields...)
		c.failed = replyTempFail
		if st == stageConnect {
			return replyConnTempFail
		}
	}
	return c.failed
}

// answer applies a verdict of the milter at stage st and returns the
// reply for the event.
func (m *Milter) answer(s *session.Session, c *conn, st stage, v verdict, what string) *session.Reply {
	if v.note != "" {
		note := v.note
		if what != "" {
			note = what + ": " + note
		}
		if st <= stageMail || s.Transaction() == nil {
			m.logger.Info("milter action", zap.String("session", s.ID()), zap.String("milter", m.Name),
				zap.String("stage", st.String()), zap.String("action", note))
		}
		if st >= stageMail {
			c.notes = append(c.notes, note)
		}
	}
	switch {
	case v.accept && st <= stageHelo:
		c.close()
	case v.accept:
		c.msgDone = true
		c.discard = c.discard || v.discard
	}
	return v.reply
}

// step runs one exchange whose answer is act, and returns the reply for
// the event and whether the milter is finished with the event (refused,
// accepted, failed).
func (m *Milter) step(ctx context.Context, s *session.Session, c *conn, st stage, what string, f func() (*gomilter.Action, error)) (*session.Reply, bool) {
	var act *gomilter.Action
	err := c.exchange(ctx, func() error {
		var err error
		act, err = f()
		return err
	})
	if err == nil {
		var v verdict
		v, err = replyFor(act, st)
		if err == nil {
			r := m.answer(s, c, st, v, what)
			return r, r != nil || c.done || c.msgDone
		}
	}
	return m.fail(s, c, st, err), true
}

// Connect opens the milter connection and sends the client's address.
func (m *Milter) Connect(ctx context.Context, s *session.Session) (*session.Reply, error) {
	if old := m.get(s); old != nil { // XCLIENT: the session starts again
		old.close()
		m.conns.Delete(s)
	}
	c, err := m.open(ctx)
	if err != nil {
		c = &conn{}
		m.conns.Store(s, c)
		return m.fail(s, c, stageConnect, err), nil
	}
	m.conns.Store(s, c)
	setConnect(c.macros, s, m.DaemonName)
	host, family, port, addr := connectInfo(s)
	r, _ := m.step(ctx, s, c, stageConnect, "", func() (*gomilter.Action, error) {
		return c.cs.Conn(host, family, port, addr)
	})
	return r, nil
}

// ready returns the session's milter connection when the milter is still
// to be asked, opening it if the connect event did not reach it (an
// earlier sub-handler answered connect); or the reply of a failed milter.
func (m *Milter) ready(ctx context.Context, s *session.Session) (*conn, *session.Reply) {
	c := m.get(s)
	if c == nil {
		if r, _ := m.Connect(ctx, s); r != nil {
			return nil, r
		}
		c = m.get(s)
	}
	if c.failed != nil {
		return nil, c.failed
	}
	if c.done {
		return nil, nil
	}
	return c, nil
}

// catchUp sends the events before st that did not reach the milter (an
// earlier sub-handler answered them, so the engine did not ask this one)
// and returns the reply when one of them ends the event.
func (m *Milter) catchUp(ctx context.Context, s *session.Session, c *conn, st stage) (*session.Reply, bool) {
	if st > stageMail && c.inTxn && c.msgDone {
		return nil, false // accepted or discarded for this message: nothing more to send
	}
	if st > stageHelo && !c.helo {
		if r, stop := m.sendHelo(ctx, s, c, s.Helo()); stop {
			return r, true
		}
	}
	txn := s.Transaction()
	if st > stageMail && !c.inTxn && txn != nil {
		if r, stop := m.sendMail(ctx, s, c, txn.From, txn.MailParams); stop {
			return r, true
		}
	}
	if st > stageRcpt && c.rcpts == 0 && txn != nil {
		for _, rc := range txn.Recipients {
			if r, stop := m.sendRcpt(ctx, s, c, rc.Path, rc.Params); stop {
				return r, true
			}
		}
	}
	if st > stageData && !c.data {
		if r, stop := m.sendData(ctx, s, c); stop {
			return r, true
		}
	}
	return nil, false
}

// Helo sends HELO/EHLO, with the TLS macros.
func (m *Milter) Helo(ctx context.Context, s *session.Session, name string) (*session.Reply, error) {
	c, r := m.ready(ctx, s)
	if c == nil {
		return r, nil
	}
	r, _ = m.sendHelo(ctx, s, c, name)
	return r, nil
}

func (m *Milter) sendHelo(ctx context.Context, s *session.Session, c *conn, name string) (*session.Reply, bool) {
	if c.inTxn {
		if r, stop := m.abort(ctx, s, c); stop {
			return r, true
		}
	}
	setHelo(c.macros, s)
	c.helo = true
	return m.step(ctx, s, c, stageHelo, "", func() (*gomilter.Action, error) { return c.cs.Helo(name) })
}

// Mail sends MAIL FROM, starting the milter's transaction.
func (m *Milter) Mail(ctx context.Context, s *session.Session, from session.Path, params session.Params) (*session.Reply, error) {
	c, r := m.ready(ctx, s)
	if c == nil {
		return r, nil
	}
	if r, stop := m.catchUp(ctx, s, c, stageMail); stop {
		return r, nil
	}
	r, _ = m.sendMail(ctx, s, c, from, params)
	return r, nil
}

func (m *Milter) sendMail(ctx context.Context, s *session.Session, c *conn, from session.Path, params session.Params) (*session.Reply, bool) {
	if c.inTxn { // a transaction the engine ended without telling (refused MAIL, ...)
		if r, stop := m.abort(ctx, s, c); stop {
			return r, true
		}
	}
	c.inTxn, c.rcpts, c.data, c.msgDone, c.discard, c.notes = true, 0, false, false, false, nil
	setMail(c.macros, s, from, params)
	return m.step(ctx, s, c, stageMail, "", func() (*gomilter.Action, error) {
		return c.cs.Mail(from.Mailbox, esmtpArgs(params))
	})
}

// esmtpArgs gives the parameters as Postfix does: one C string each (the
// library writes one string; NULs between them make it several).
func esmtpArgs(ps session.Params) string {
	args := make([]string, 0, len(ps))
	for _, p := range ps {
		a := p.Key
		if p.Value != "" {
			a += "=" + p.Value
		}
		args = append(args, strings.ReplaceAll(a, "\x00", ""))
	}
	return strings.Join(args, "\x00")
}

// Rcpt sends one RCPT TO; a refusal refuses this recipient only.
func (m *Milter) Rcpt(ctx context.Context, s *session.Session, to session.Path, params session.Params) (*session.Reply, error) {
	c, r := m.ready(ctx, s)
	if c == nil {
		return r, nil
	}
	if r, stop := m.catchUp(ctx, s, c, stageRcpt); stop || c.msgDone {
		return r, nil
	}
	r, _ = m.sendRcpt(ctx, s, c, to, params)
	return r, nil
}

func (m *Milter) sendRcpt(ctx context.Context, s *session.Session, c *conn, to session.Path, params session.Params) (*session.Reply, bool) {
	setRcpt(c.macros, to)
	c.rcpts++
	return m.step(ctx, s, c, stageRcpt, "rcpt "+to.String(), func() (*gomilter.Action, error) {
		return c.cs.Rcpt(to.Mailbox, esmtpArgs(params))
	})
}

// Data sends DATA.
func (m *Milter) Data(ctx context.Context, s *session.Session) (*session.Reply, error) {
	c, r := m.ready(ctx, s)
	if c == nil {
		return r, nil
	}
	if r, stop := m.catchUp(ctx, s, c, stageData); stop || c.msgDone {
		return r, nil
	}
	r, _ = m.sendData(ctx, s, c)
	return r, nil
}

func (m *Milter) sendData(ctx context.Context, s *session.Session, c *conn) (*session.Reply, bool) {
	c.data = true
	return m.step(ctx, s, c, stageData, "", func() (*gomilter.Action, error) { return c.cs.DataStart() })
}

// ReadsMessage is true: the engine spools each message, which the milter
// gets at its end.
func (*Milter) ReadsMessage() bool { return true }

// EndOfMessage sends the message as it is now (header fields, end of
// header, body, end of message) and applies the milter's answer: its
// modify actions as edits, then its verdict.
func (m *Milter) EndOfMessage(ctx context.Context, s *session.Session) (*session.Reply, error) {
	c, r := m.ready(ctx, s)
	if c == nil {
		return r, nil
	}
	txn := s.Transaction()
	defer func() {
		if len(c.notes) > 0 {
			txn.AddLogField(zap.Strings(m.logKey, c.notes))
			c.notes = nil
		}
	}()
	if r, stop := m.catchUp(ctx, s, c, stageEOM); stop && r != nil {
		return r, nil
	}
	if c.failed != nil || c.done {
		return c.failed, nil
	}
	if !c.msgDone {
		if r := m.sendMessage(ctx, s, c, txn); r != nil || c.failed != nil || c.done {
			return r, nil
		}
	}
	if c.discard {
		txn.Discard("milter " + m.Name)
	}
	return nil, nil
}

// sendMessage sends the message and applies the answer.
func (m *Milter) sendMessage(ctx context.Context, s *session.Session, c *conn, txn *session.Transaction) *session.Reply {
	msg := txn.Message()
	if msg == nil {
		return m.fail(s, c, stageEOM, errors.New("the message is not spooled"))
	}
	sink := &bodySink{}
	defer sink.Close()
	c.wc.sink = sink
	defer func() { c.wc.sink = nil }()
	var mods []gomilter.ModifyAction
	var act *gomilter.Action
	ended := false
	err := c.exchange(ctx, func() error {
		var err error
		act, mods, ended, err = m.sendContent(c, msg.Reader())
		return err
	})
	// After the end of message the library is back before MAIL; after an
	// answer that ended the message early it is not (ABORT resets it).
	c.inTxn = !ended
	if err != nil {
		return m.fail(s, c, stageEOM, err)
	}
	v, err := replyFor(act, stageEOM)
	if err != nil {
		return m.fail(s, c, stageEOM, err)
	}
	if v.reply != nil || v.discard {
		return m.answer(s, c, stageEOM, v, "")
	}
	edits, err := checkEdits(mods, actionsOf(c.cs))
	if err == nil && sink.used && !c.cs.ActionOption(gomilter.OptChangeBody) {
		err = fmt.Errorf("%w: body replacement not negotiated", errGarbage)
	}
	if err != nil {
		return m.fail(s, c, stageEOM, err)
	}
	if sink.used {
		body, err := sink.Reader()
		if err == nil {
			err = txn.ReplaceBody(body)
		}
		if err != nil {
			// Our failure, not the milter's: the message is deferred.
			return m.fail(s, c, stageEOM, fmt.Errorf("replacing the body: %w", err))
		}
		c.notes = append(c.notes, "replace_body "+strconv.FormatInt(sink.n, 10)+" bytes")
	}
	c.notes = append(c.notes, applyEdits(txn, edits, "milter "+m.Name)...)
	return m.answer(s, c, stageEOM, v, "")
}

// actionsOf returns the negotiated actions.
func actionsOf(cs *gomilter.ClientSession) gomilter.OptAction {
	var a gomilter.OptAction
	for _, f := range []gomilter.OptAction{gomilter.OptAddHeader, gomilter.OptChangeHeader, gomilter.OptChangeFrom,
		gomilter.OptAddRcpt, gomilter.OptAddRcptWithArgs, gomilter.OptRemoveRcpt, gomilter.OptQuarantine, gomilter.OptChangeBody} {
		if cs.ActionOption(f) {
			a |= f
		}
	}
	return a
}

// maxHeaderValue keeps one header field within a 64 KiB packet, the
// largest every milter takes.
const maxHeaderValue = 60 << 10

// sendContent sends the header fields, the end of header, the body and
// the end of message, and returns the final answer and the modify
// actions. A non-continue answer before the end ends it.
func (m *Milter) sendContent(c *conn, r io.Reader) (*gomilter.Action, []gomilter.ModifyAction, bool, error) {
	h := newHeaderReader(r)
	leadSpace := c.cs.ProtocolOption(gomilter.OptHeaderLeadingSpace)
	for {
		name, value, ok, err := h.next()
		if err != nil {
			return nil, nil, false, fmt.Errorf("reading the message: %w", err)
		}
		if !ok {
			break
		}
		if !leadSpace {
			value = strings.TrimLeft(value, " \t")
		}
		if len(value) > maxHeaderValue {
			value = value[:maxHeaderValue]
		}
		act, err := c.cs.HeaderField(name, value, nil)
		if err != nil {
			return nil, nil, false, err
		}
		if act.Type != gomilter.ActionContinue {
			return act, nil, false, nil
		}
	}
	act, err := c.cs.HeaderEnd()
	if err != nil {
		return nil, nil, false, err
	}
	if act.Type != gomilter.ActionContinue {
		return act, nil, false, nil
	}
	mods, act, err := c.cs.BodyReadFrom(h.body())
	if err != nil {
		return nil, nil, false, err
	}
	return act, mods, true, nil
}

// abort sends SMFIC_ABORT: the milter's transaction is over.
func (m *Milter) abort(ctx context.Context, s *session.Session, c *conn) (*session.Reply, bool) {
	c.inTxn, c.rcpts, c.data, c.msgDone, c.discard = false, 0, false, false, false
	if err := c.exchange(ctx, func() error { return c.cs.Abort(nil) }); err != nil {
		return m.fail(s, c, stageMail, err), true
	}
	return nil, false
}

// Abort tells the milter that the transaction ended without a message
// (RSET, a refusal, a new HELO).
func (m *Milter) Abort(s *session.Session, reason error) {
	c := m.get(s)
	if c == nil || c.done || c.failed != nil || !c.inTxn {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Duration(m.Timeout))
	defer cancel()
	m.abort(ctx, s, c)
}

// Close ends the milter connection with QUIT when the session ends.
func (m *Milter) Close(s *session.Session) {
	if v, ok := m.conns.LoadAndDelete(s); ok {
		v.(*conn).close()
	}
}

// Interface guards.
var (
	_ caddy.Provisioner     = (*Milter)(nil)
	_ session.ConnectHook   = (*Milter)(nil)
	_ session.HeloHook      = (*Milter)(nil)
	_ session.MailHook      = (*Milter)(nil)
	_ session.RcptHook      = (*Milter)(nil)
	_ session.DataHook      = (*Milter)(nil)
	_ session.MessageHook   = (*Milter)(nil)
	_ session.MessageReader = (*Milter)(nil)
	_ session.AbortHook     = (*Milter)(nil)
	_ session.CloseHook     = (*Milter)(nil)
)
