// Package policy is the sub-handler esmtp.handlers.policy: a client of
// Postfix's policy delegation protocol (SMTPD_POLICY_README), so that
// the policy servers written for Postfix (postgrey, policyd-spf,
// policyd-rate-limit, ...) decide about our mail too.
//
//	policy 127.0.0.1:10023 {
//		at rcpt            # or mail, data, end_of_data (default: rcpt)
//		timeout 10s        # one request and its answer (default)
//		on_error tempfail  # or accept, reject (default: tempfail)
//		max_idle 8         # idle connections kept for reuse (default)
//		idle_timeout 60s   # an idle connection is not reused after this (default)
//		policy_context mx  # sent as policy_context (default: empty)
//	}
//
// At its stage, for each MAIL, each RCPT, each DATA or each message, it
// sends the request attributes Postfix sends (request,
// protocol_state, protocol_name, helo_name, queue_id, sender, recipient,
// recipient_count, client_address, client_name, reverse_client_name,
// instance, sasl_*, size, ccert_*, encryption_*, etrn_domain, stress,
// client_port, policy_context, server_address, server_port), empty when
// unknown, and acts on the access(5) action of the answer:
//
//   - OK (or an all-numerical result): at MAIL and RCPT, 250 at once, the
//     sub-handlers after it not asked about that command (Postfix's
//     "permit"); at DATA and end of data, no opinion.
//   - DUNNO: no opinion: the next sub-handler is asked.
//   - REJECT [text]: 554 5.7.1 (text may start with an enhanced status
//     code); DEFER [text]: 450 4.7.1; 4NN text, 5NN text: that code,
//     4.7.1 or 5.7.1 unless the text starts with one. 421 also closes the
//     connection.
//   - DEFER_IF_PERMIT [text]: 450 4.7.1 at once. In Postfix it defers
//     unless a later restriction rejects; here the sub-handlers before it
//     have already had their say and those after it are not asked, so put
//     policy after the sub-handlers that refuse at its stage: then the
//     only difference is that a sub-handler after it that would refuse
//     permanently is asked only when the client comes back.
//   - DEFER_IF_REJECT [text]: no opinion. Postfix turns a later REJECT
//     into a deferral; a sub-handler cannot change another's reply, so
//     the later sub-handlers' replies stand as they are.
//   - PREPEND name: value: the field is put on top of the message
//     (Transaction.PrependHeader; at MAIL and RCPT it is remembered for
//     the message), then no opinion. A text that is no header field is
//     logged at warn and ignored.
//   - WARN text, INFO text: logged (warn, info), then no opinion.
//   - HOLD [text]: the message is quarantined (Transaction.Quarantine,
//     "policy" or "policy: text"), then no opinion.
//   - DISCARD [text]: the message is discarded (Transaction.Discard):
//     the client gets 250, nothing is delivered; at MAIL and RCPT the
//     command gets 250 at once as for OK.
//   - FILTER, REDIRECT, BCC, and a restriction name: we cannot honour
//     them: logged at warn, then no opinion.
//
// Anything else is an error: no answer within timeout, a connection that
// fails or closes, an answer without exactly one action= line, a line that
// is not name=value, longer than 4096 bytes or with a control character,
// more than 64 lines, an unknown action. An error is handled by on_error:
// tempfail (default) answers 451 4.3.0 (never a silent pass), accept
// lets the command through as DUNNO would (fail open, logged at warn),
// reject answers 554 5.7.0.
//
// Connections are reused: a request takes an idle connection (or opens
// one), sends one request, reads one answer and puts the connection back,
// keeping at most max_idle idle connections per sub-handler, shared by
// all its sessions. A connection that failed in any way is closed. A
// request that finds its pooled connection closed by the server (no
// answer byte read) is sent once more on a new connection.
//
// The actions of a message are on its log line as policy_action, in the
// order of the requests (all the policy sub-handlers together), such as
// "DEFER_IF_PERMIT" or "DUNNO,PREPEND" ("error" for a failed request, and
// policy_error with the first failure); a refusal at MAIL, RCPT or DATA,
// which has no message line, is logged at info as "policy refused".
package policy

import (
	"context"
	"fmt"
	"net"
	"strconv"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"go.uber.org/zap"

	"github.com/caddy-esmtp/caddy-esmtp/session"
)

func init() {
	caddy.RegisterModule(&Policy{})
}

// Defaults.
const (
	// DefaultTimeout is the default of Policy.Timeout.
	DefaultTimeout = 10 * time.Second
	// DefaultMaxIdle is the default of Policy.MaxIdle.
	DefaultMaxIdle = 8
	// DefaultIdleTimeout is the default of Policy.IdleTimeout.
	DefaultIdleTimeout = 60 * time.Second
)

// On_error values.
const (
	onErrorTempfail = "tempfail"
	onErrorAccept   = "accept"
	onErrorReject   = "reject"
)

var (
	replyTempfail = session.NewReply(451, "4.3.0", "Policy service unavailable, try again later")
	replyReject   = session.NewReply(554, "5.7.0", "Policy service unavailable")
	replySenderOK = session.NewReply(250, "2.1.0", "Sender ok")
	replyRcptOK   = session.NewReply(250, "2.1.5", "Recipient ok")
)

// Policy asks a Postfix policy server.
type Policy struct {
	// Address is the policy server: "host:port" (or "inet:host:port")
	// for TCP, "unix:/path" for a unix socket. Required.
	Address string `json:"address,omitempty"`
	// At is the stage the server is asked at: "rcpt" (default; once per
	// RCPT TO, protocol_state RCPT), "mail" (MAIL), "data" (at the DATA
	// command, DATA) or "end_of_data" (once the message is in,
	// END-OF-MESSAGE, with its size).
	At string `json:"at,omitempty"`
	// Timeout bounds one request: connecting, sending and reading the
	// answer. Keep it below the esmtp handler's handler_timeout, which
	// also bounds it. Default: 10s.
	Timeout caddy.Duration `json:"timeout,omitempty"`
	// OnError is what an error (no answer, a failed connection, a
	// malformed answer) does: "tempfail" (default: 451 4.3.0), "accept"
	// (as DUNNO: fail open) or "reject" (554 5.7.0).
	OnError string `json:"on_error,omitempty"`
	// MaxIdle is the number of idle connections kept for reuse, shared
	// by all the sessions of this sub-handler. Default: 8; -1: none (a
	// new connection for each request).
	MaxIdle int `json:"max_idle,omitempty"`
	// IdleTimeout is how long an idle connection may wait to be reused;
	// an older one is closed instead. Default: 60s.
	IdleTimeout caddy.Duration `json:"idle_timeout,omitempty"`
	// PolicyContext is sent as the policy_context attribute, for a
	// server that serves several configurations (Postfix's
	// check_policy_service { ..., policy_context=... }). Default: empty.
	PolicyContext string `json:"policy_context,omitempty"`

	client *client
	logger *zap.Logger
}

// CaddyModule returns the Caddy module information.
func (*Policy) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "esmtp.handlers.policy",
		New: func() caddy.Module { return new(Policy) },
	}
}

// Provision checks the configuration and sets up the connection pool.
func (p *Policy) Provision(ctx caddy.Context) error {
	p.logger = ctx.Logger(p)
	network, address, err := parseAddress(p.Address)
	if err != nil {
		return fmt.Errorf("policy: address: %v", err)
	}
	switch p.At {
	case "":
		p.At = atRcpt
	case atMail, atRcpt, atData, atEndOfData:
	default:
		return fmt.Errorf("policy: at: %q is not mail, rcpt, data or end_of_data", p.At)
	}
	switch p.OnError {
	case "":
		p.OnError = onErrorTempfail
	case onErrorTempfail, onErrorAccept, onErrorReject:
	default:
		return fmt.Errorf("policy: on_error: %q is not tempfail, accept or reject", p.OnError)
	}
	switch {
	case p.Timeout < 0:
		return fmt.Errorf("policy: timeout must be positive, got %s", time.Duration(p.Timeout))
	case p.Timeout == 0:
		p.Timeout = caddy.Duration(DefaultTimeout)
	}
	switch {
	case p.IdleTimeout < 0:
		return fmt.Errorf("policy: idle_timeout must be positive, got %s", time.Duration(p.IdleTimeout))
	case p.IdleTimeout == 0:
		p.IdleTimeout = caddy.Duration(DefaultIdleTimeout)
	}
	maxIdle := p.MaxIdle
	switch {
	case maxIdle < -1:
		return fmt.Errorf("policy: max_idle must be -1 (none) or more, got %d", p.MaxIdle)
	case maxIdle == 0:
		maxIdle = DefaultMaxIdle
	case maxIdle == -1:
		maxIdle = 0
	}
	if strings.ContainsAny(p.PolicyContext, "\r\n\x00") {
		return fmt.Errorf("policy: policy_context must be one line")
	}
	p.client = &client{network: network, address: address, timeout: time.Duration(p.Timeout),
		idleTimeout: time.Duration(p.IdleTimeout), maxIdle: maxIdle}
	return nil
}

// Cleanup closes the idle connections. Sessions still running on this
// configuration after a reload may go on asking: their connections are
// closed once used.
func (p *Policy) Cleanup() error {
	if p.client != nil {
		p.client.close()
	}
	return nil
}

// parseAddress turns an address option into a network and an address.
func parseAddress(a string) (string, string, error) {
	switch {
	case a == "":
		return "", "", fmt.Errorf("required: host:port or unix:/path")
	case strings.HasPrefix(a, "unix:"):
		path := strings.TrimPrefix(a, "unix:")
		if path == "" {
			return "", "", fmt.Errorf("%q: no socket path", a)
		}
		return "unix", path, nil
	}
	hp := strings.TrimPrefix(a, "inet:")
	host, port, err := net.SplitHostPort(hp)
	if err != nil {
		return "", "", fmt.Errorf("%q is not host:port or unix:/path", a)
	}
	if n, err := strconv.Atoi(port); err != nil || n <= 0 || n > 65535 {
		return "", "", fmt.Errorf("%q: bad port %q", a, port)
	}
	if host == "" {
		return "", "", fmt.Errorf("%q: no host", a)
	}
	return "tcp", hp, nil
}

// Mail asks the server at MAIL FROM when At is "mail".
func (p *Policy) Mail(ctx context.Context, s *session.Session, _ session.Path, _ session.Params) (*session.Reply, error) {
	if p.At != atMail {
		return nil, nil
	}
	return p.check(ctx, s, nil), nil
}

// Rcpt asks the server at each RCPT TO when At is "rcpt".
func (p *Policy) Rcpt(ctx context.Context, s *session.Session, to session.Path, _ session.Params) (*session.Reply, error) {
	if p.At != atRcpt {
		return nil, nil
	}
	return p.check(ctx, s, &to), nil
}

// Data asks the server at DATA (or the first BDAT) when At is "data".
func (p *Policy) Data(ctx context.Context, s *session.Session) (*session.Reply, error) {
	if p.At != atData {
		return nil, nil
	}
	return p.check(ctx, s, nil), nil
}

// EndOfMessage asks the server once the message is in when At is
// "end_of_data".
func (p *Policy) EndOfMessage(ctx context.Context, s *session.Session) (*session.Reply, error) {
	if p.At != atEndOfData {
		return nil, nil
	}
	return p.check(ctx, s, nil), nil
}

// check sends the request and turns the answer into a reply.
func (p *Policy) check(ctx context.Context, s *session.Session, rcpt *session.Path) *session.Reply {
	a, err := p.client.ask(ctx, p.request(s, rcpt))
	if err != nil {
		return p.failed(s, rcpt, err)
	}
	if ce := p.logger.Check(zap.DebugLevel, "policy answer"); ce != nil {
		ce.Write(p.fields(s, rcpt, zap.String("action", a.Name), zap.String("text", session.Sanitize(a.Text, 256)))...)
	}
	record(s, a.Name)
	txn := s.Transaction()
	switch a.kind {
	case kindOK:
		return p.accepted()
	case kindReply:
		r := session.NewReply(a.Code, a.Enhanced, clip400(a.Text))
		r.Close = a.Code == 421
		if p.At != atEndOfData {
			p.logger.Info("policy refused", p.fields(s, rcpt, zap.String("action", a.Name), zap.String("reply", r.Error()))...)
		}
		return r
	case kindPrepend:
		name, value, ok := header(a.Text)
		if !ok {
			p.logger.Warn("policy server's PREPEND is no header field: ignored",
				p.fields(s, rcpt, zap.String("text", session.Sanitize(a.Text, 256)))...)
			return nil
		}
		if txn != nil {
			txn.PrependHeader(name, value)
		}
	case kindHold:
		if txn != nil {
			reason := "policy"
			if a.Text != "" {
				reason += ": " + a.Text
			}
			txn.Quarantine(reason)
		}
	case kindDiscard:
		if txn != nil {
			reason := "policy"
			if a.Text != "" {
				reason += ": " + session.Sanitize(a.Text, 256)
			}
			txn.Discard(reason)
		}
		return p.accepted()
	case kindDeferIfReject:
		// No opinion: the later sub-handlers' replies stand (see the
		// package documentation).
	case kindUnsupported:
		p.logger.Warn("policy server's action is not supported here: taken as DUNNO",
			p.fields(s, rcpt, zap.String("action", a.Name), zap.String("text", session.Sanitize(a.Text, 256)))...)
	case kindDunno:
		switch a.Name {
		case "WARN":
			p.logger.Warn("policy warning", p.fields(s, rcpt, zap.String("text", session.Sanitize(a.Text, 256)))...)
		case "INFO":
			p.logger.Info("policy info", p.fields(s, rcpt, zap.String("text", session.Sanitize(a.Text, 256)))...)
		}
	}
	return nil
}

// accepted is OK's reply: the command's success at MAIL and RCPT (the
// later sub-handlers are not asked), no opinion at the other stages.
func (p *Policy) accepted() *session.Reply {
	switch p.At {
	case atMail:
		return replySenderOK
	case atRcpt:
		return replyRcptOK
	}
	return nil
}

// failed applies on_error to an error.
func (p *Policy) failed(s *session.Session, rcpt *session.Path, err error) *session.Reply {
	if a := record(s, "error"); a != nil && !a.failed {
		a.failed = true
		s.Transaction().AddLogField(zap.String("policy_error", err.Error()))
	}
	fields := p.fields(s, rcpt, zap.String("on_error", p.OnError), zap.Error(err))
	switch p.OnError {
	case onErrorAccept:
		p.logger.Warn("policy service failed: accepting", fields...)
		return nil
	case onErrorReject:
		p.logger.Error("policy service failed: rejecting", fields...)
		return replyReject
	}
	p.logger.Error("policy service failed: deferring", fields...)
	return replyTempfail
}

// fields are a log line's fields about a request.
func (p *Policy) fields(s *session.Session, rcpt *session.Path, more ...zap.Field) []zap.Field {
	f := []zap.Field{zap.String("session", s.ID()), zap.String("server", p.Address), zap.String("at", p.At)}
	if txn := s.Transaction(); txn != nil {
		f = append(f, zap.String("queue_id", txn.ID))
	}
	if rcpt != nil {
		f = append(f, zap.String("rcpt", session.Sanitize(rcpt.Mailbox, 256)))
	}
	return append(f, more...)
}

// clip400 keeps a reply text within an SMTP reply line (512 bytes).
func clip400(s string) string {
	if len(s) > 400 {
		return s[:400]
	}
	return s
}

// actionsKey is the transaction value key of the message's actions.
type actionsKey struct{}

// actions are the actions of one message's requests, in order, for its
// log line (one policy_action field, however many requests).
type actions struct {
	names  []string
	failed bool // policy_error is on the line
}

func (a *actions) String() string { return strings.Join(a.names, ",") }

// record adds an action to the transaction's policy_action log field
// and returns the transaction's actions (nil without a transaction).
func record(s *session.Session, name string) *actions {
	txn := s.Transaction()
	if txn == nil {
		return nil
	}
	a, _ := txn.Value(actionsKey{}).(*actions)
	if a == nil {
		a = &actions{}
		txn.SetValue(actionsKey{}, a)
		txn.AddLogField(zap.Stringer("policy_action", a))
	}
	a.names = append(a.names, name)
	return a
}

// Interface guards
var (
	_ caddy.Provisioner     = (*Policy)(nil)
	_ caddy.CleanerUpper    = (*Policy)(nil)
	_ caddyfile.Unmarshaler = (*Policy)(nil)
	_ session.MailHook      = (*Policy)(nil)
	_ session.RcptHook      = (*Policy)(nil)
	_ session.DataHook      = (*Policy)(nil)
	_ session.MessageHook   = (*Policy)(nil)
)
