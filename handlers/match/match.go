// Package match is the sub-handler esmtp.handlers.match: it runs its own
// list of sub-handlers only for sessions, senders and recipients that match
// its conditions, so one message for two domains can go to two places.
//
// In the Caddyfile it is written with named matchers, in Caddy's style:
//
//	esmtp {
//		@local {
//			rcpt *@example.com example.org
//		}
//		maildir @local /var/mail/local
//	}
//
// A delivering sub-handler behind a recipient condition sees only the
// matching recipients in s.Transaction().Recipients, and is not asked at
// all about a message none of whose recipients match.
package match

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"

	"github.com/caddyserver/caddy/v2"

	"github.com/caddy-esmtp/caddy-esmtp/handlers/recipients"
	"github.com/caddy-esmtp/caddy-esmtp/internal/clientnet"
	"github.com/caddy-esmtp/caddy-esmtp/session"
)

func init() {
	caddy.RegisterModule(&Match{})
}

// Match runs HandlersRaw only where all its conditions hold. Conditions
// left empty always hold.
type Match struct {
	// Recipients lists recipient patterns, as for the recipients sub-handler:
	// "user@example.com", "*@example.com" or "example.com", "*.example.com".
	// The inner sub-handlers are asked about a RCPT only when it matches,
	// and see only the matching recipients from DATA on.
	Recipients []string `json:"rcpt,omitempty"`
	// Senders lists sender patterns (same forms); "<>" matches the null
	// sender.
	Senders []string `json:"sender,omitempty"`
	// RemoteIP lists client addresses or CIDR ranges.
	RemoteIP []string `json:"remote_ip,omitempty"`
	// Authenticated, when set, requires the client to have (true) or not
	// to have (false) authenticated.
	Authenticated *bool `json:"authenticated,omitempty"`
	// TLS, when set, requires the connection to be (true) or not to be
	// (false) TLS.
	TLS *bool `json:"tls,omitempty"`
	// HandlersRaw are the sub-handlers run where the conditions hold, in
	// order.
	HandlersRaw []json.RawMessage `json:"handlers,omitempty" caddy:"namespace=esmtp.handlers inline_key=handler"`

	rcpt       *recipients.List
	sender     *recipients.List
	nullSender bool
	nets       []netip.Prefix
	inner      []any
}

// CaddyModule returns the Caddy module information.
func (*Match) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "esmtp.handlers.match",
		New: func() caddy.Module { return new(Match) },
	}
}

// Provision parses the conditions and loads the inner sub-handlers.
func (m *Match) Provision(ctx caddy.Context) error {
	if len(m.HandlersRaw) == 0 {
		return errors.New("match: handlers: at least one sub-handler is required")
	}
	if err := m.parseConditions(); err != nil {
		return err
	}
	mods, err := ctx.LoadModule(m, "HandlersRaw")
	if err != nil {
		return fmt.Errorf("match: loading sub-handlers: %v", err)
	}
	m.inner = mods.([]any)
	return nil
}

// parseConditions checks the conditions and builds their lookups.
func (m *Match) parseConditions() error {
	var err error
	if len(m.Recipients) > 0 {
		if m.rcpt, err = recipients.BuildList("match: rcpt", m.Recipients, nil); err != nil {
			return err
		}
	}
	var senders []string
	for _, s := range m.Senders {
		if s == "<>" {
			m.nullSender = true
			continue
		}
		senders = append(senders, s)
	}
	if len(senders) > 0 {
		if m.sender, err = recipients.BuildList("match: sender", senders, nil); err != nil {
			return err
		}
	}
	for i, v := range m.RemoteIP {
		p, err := clientnet.ParsePrefix(v)
		if err != nil {
			return fmt.Errorf("match: remote_ip[%d]: %v", i, err)
		}
		m.nets = append(m.nets, p)
	}
	return nil
}

// sessionMatches checks the conditions known before MAIL.
func (m *Match) sessionMatches(s *session.Session) bool {
	if m.TLS != nil && *m.TLS != (s.TLS() != nil) {
		return false
	}
	if m.Authenticated != nil && *m.Authenticated != (s.AuthUser() != "") {
		return false
	}
	if len(m.nets) > 0 && !clientnet.Contains(m.nets, s.RemoteIP()) {
		return false
	}
	return true
}

func (m *Match) senderMatches(from session.Path) bool {
	if m.sender == nil && !m.nullSender {
		return true
	}
	if from.IsNull() {
		return m.nullSender
	}
	return m.sender != nil && m.sender.Match(from.Local, from.Domain)
}

func (m *Match) rcptMatches(to session.Path) bool {
	return m.rcpt == nil || m.rcpt.Match(to.Local, to.Domain)
}

// txnMatches checks every condition for the transaction in progress and
// returns the matching recipients.
func (m *Match) txnMatches(s *session.Session) ([]session.Recipient, bool) {
	txn := s.Transaction()
	if txn == nil || !m.sessionMatches(s) || !m.senderMatches(txn.From) {
		return nil, false
	}
	if m.rcpt == nil {
		return txn.Recipients, true
	}
	var rs []session.Recipient
	for _, r := range txn.Recipients {
		if m.rcptMatches(r.Path) {
			rs = append(rs, r)
		}
	}
	return rs, len(rs) > 0
}

// withRecipients runs f with the transaction showing only rs.
func withRecipients[T any](s *session.Session, rs []session.Recipient, f func() T) T {
	txn := s.Transaction()
	all := txn.Recipients
	txn.Recipients = rs
	defer func() {
		if t := s.Transaction(); t != nil {
			t.Recipients = all
		}
	}()
	return f()
}

// first asks the inner sub-handlers implementing H until one has an
// opinion.
func first[H any](m *Match, call func(H) (*session.Reply, error)) (*session.Reply, error) {
	for _, h := range m.inner {
		if x, ok := h.(H); ok {
			if r, err := call(x); r != nil || err != nil {
				return r, err
			}
		}
	}
	return nil, nil
}

// each calls every inner sub-handler implementing H; the first error wins.
func each[H any](m *Match, call func(H) error) error {
	for _, h := range m.inner {
		if x, ok := h.(H); ok {
			if err := call(x); err != nil {
				return err
			}
		}
	}
	return nil
}

type reply struct {
	r   *session.Reply
	err error
}

// Connect forwards when the session matches.
func (m *Match) Connect(ctx context.Context, s *session.Session) (*session.Reply, error) {
	if !m.sessionMatches(s) {
		return nil, nil
	}
	return first(m, func(h session.ConnectHook) (*session.Reply, error) { return h.Connect(ctx, s) })
}

// Helo forwards when the session matches.
func (m *Match) Helo(ctx context.Context, s *session.Session, name string) (*session.Reply, error) {
	if !m.sessionMatches(s) {
		return nil, nil
	}
	return first(m, func(h session.HeloHook) (*session.Reply, error) { return h.Helo(ctx, s, name) })
}

// Mail forwards when the session and the sender match.
func (m *Match) Mail(ctx context.Context, s *session.Session, from session.Path, params session.Params) (*session.Reply, error) {
	if !m.sessionMatches(s) || !m.senderMatches(from) {
		return nil, nil
	}
	return first(m, func(h session.MailHook) (*session.Reply, error) { return h.Mail(ctx, s, from, params) })
}

// Rcpt forwards when the session, the sender and this recipient match.
func (m *Match) Rcpt(ctx context.Context, s *session.Session, to session.Path, params session.Params) (*session.Reply, error) {
	txn := s.Transaction()
	if !m.sessionMatches(s) || txn == nil || !m.senderMatches(txn.From) || !m.rcptMatches(to) {
		return nil, nil
	}
	return first(m, func(h session.RcptHook) (*session.Reply, error) { return h.Rcpt(ctx, s, to, params) })
}

// Data forwards when some recipient matches, showing only those.
func (m *Match) Data(ctx context.Context, s *session.Session) (*session.Reply, error) {
	rs, ok := m.txnMatches(s)
	if !ok {
		return nil, nil
	}
	out := withRecipients(s, rs, func() reply {
		r, err := first(m, func(h session.DataHook) (*session.Reply, error) { return h.Data(ctx, s) })
		return reply{r, err}
	})
	return out.r, out.err
}

// Header forwards when some recipient matches.
func (m *Match) Header(ctx context.Context, s *session.Session, f session.HeaderField) error {
	rs, ok := m.txnMatches(s)
	if !ok {
		return nil
	}
	return withRecipients(s, rs, func() error {
		return each(m, func(h session.HeaderHook) error { return h.Header(ctx, s, f) })
	})
}

// EndOfHeaders forwards when some recipient matches.
func (m *Match) EndOfHeaders(ctx context.Context, s *session.Session, raw []byte) error {
	rs, ok := m.txnMatches(s)
	if !ok {
		return nil
	}
	return withRecipients(s, rs, func() error {
		return each(m, func(h session.EndOfHeadersHook) error { return h.EndOfHeaders(ctx, s, raw) })
	})
}

// Body forwards when some recipient matches.
func (m *Match) Body(ctx context.Context, s *session.Session, chunk []byte) error {
	rs, ok := m.txnMatches(s)
	if !ok {
		return nil
	}
	return withRecipients(s, rs, func() error {
		return each(m, func(h session.BodyHook) error { return h.Body(ctx, s, chunk) })
	})
}

// EndOfMessage forwards when some recipient matches: every inner
// sub-handler is asked in order until one rejects.
func (m *Match) EndOfMessage(ctx context.Context, s *session.Session) (*session.Reply, error) {
	rs, ok := m.txnMatches(s)
	if !ok {
		return nil, nil
	}
	out := withRecipients(s, rs, func() reply {
		r, err := first(m, func(h session.MessageHook) (*session.Reply, error) { return h.EndOfMessage(ctx, s) })
		return reply{r, err}
	})
	return out.r, out.err
}

// Abort is passed to every inner sub-handler, which clean up what they
// hold (a sub-handler that held nothing ignores it).
func (m *Match) Abort(s *session.Session, reason error) {
	for _, h := range m.inner {
		if x, ok := h.(session.AbortHook); ok {
			x.Abort(s, reason)
		}
	}
}

// Close is passed to every inner sub-handler.
func (m *Match) Close(s *session.Session) {
	for _, h := range m.inner {
		if x, ok := h.(session.CloseHook); ok {
			x.Close(s)
		}
	}
}

// Verb forwards when the session matches.
func (m *Match) Verb(ctx context.Context, s *session.Session, cmd, arg string) (*session.Reply, error) {
	if !m.sessionMatches(s) {
		return nil, nil
	}
	return first(m, func(h session.VerbHook) (*session.Reply, error) { return h.Verb(ctx, s, cmd, arg) })
}

// Extensions passes on the EHLO keywords of the inner sub-handlers (such
// as a relay's DSN) when the session matches.
func (m *Match) Extensions(s *session.Session) []string {
	if !m.sessionMatches(s) {
		return nil
	}
	var out []string
	for _, h := range m.inner {
		if x, ok := h.(session.ExtensionHook); ok {
			out = append(out, x.Extensions(s)...)
		}
	}
	return out
}

// Interface guards
var (
	_ caddy.Provisioner        = (*Match)(nil)
	_ session.ExtensionHook    = (*Match)(nil)
	_ session.ConnectHook      = (*Match)(nil)
	_ session.HeloHook         = (*Match)(nil)
	_ session.MailHook         = (*Match)(nil)
	_ session.RcptHook         = (*Match)(nil)
	_ session.DataHook         = (*Match)(nil)
	_ session.HeaderHook       = (*Match)(nil)
	_ session.EndOfHeadersHook = (*Match)(nil)
	_ session.BodyHook         = (*Match)(nil)
	_ session.MessageHook      = (*Match)(nil)
	_ session.AbortHook        = (*Match)(nil)
	_ session.CloseHook        = (*Match)(nil)
	_ session.VerbHook         = (*Match)(nil)
)
