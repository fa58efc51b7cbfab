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
// A sub-handler behind a recipient condition sees only the matching
// recipients in s.Transaction().Recipients, is not asked at all about a
// message none of whose recipients match, and delivers only to those.
package match

import (
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
// left empty always hold. It is not a sub-handler of its own: the esmtp
// handler puts its inner sub-handlers in its list in its place (Expand),
// each limited by the match's conditions (it is their session.Matcher).
type Match struct {
	// Recipients lists recipient patterns, as for the recipients sub-handler:
	// "user@example.com", "*@example.com" or "example.com", "*.example.com".
	// The inner sub-handlers are asked about a RCPT only when it matches,
	// and see only the matching recipients from DATA on.
	Recipients []string `json:"rcpt,omitempty"`
	// NotRecipients lists recipient patterns (same forms) a recipient
	// must not match: "the rest", such as the recipients of a relay
	// beside the local domains' Maildir.
	NotRecipients []string `json:"not_rcpt,omitempty"`
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
	notRcpt    *recipients.List
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
	if len(m.NotRecipients) > 0 {
		if m.notRcpt, err = recipients.BuildList("match: not_rcpt", m.NotRecipients, nil); err != nil {
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

// MatchSession checks the conditions known before MAIL: TLS, AUTH and the
// client's address.
func (m *Match) MatchSession(s *session.Session) bool {
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

// MatchSender checks the sender conditions.
func (m *Match) MatchSender(_ *session.Session, from session.Path) bool {
	if m.sender == nil && !m.nullSender {
		return true
	}
	if from.IsNull() {
		return m.nullSender
	}
	return m.sender != nil && m.sender.Match(from.Local, from.Domain)
}

// MatchRecipient checks the recipient conditions.
func (m *Match) MatchRecipient(_ *session.Session, to session.Path) bool {
	return (m.rcpt == nil || m.rcpt.Match(to.Local, to.Domain)) &&
		(m.notRcpt == nil || !m.notRcpt.Match(to.Local, to.Domain))
}

// SubHandlers returns the inner sub-handlers, each limited by this
// match's conditions (and by those of a match nested in it): the engine
// asks them in place of the match, with its own dispatch, timeouts and
// metrics, under their own names.
func (m *Match) SubHandlers() []session.SubHandler {
	var out []session.SubHandler
	for _, h := range m.inner {
		for _, sh := range Expand(h) {
			if sh.Match == nil {
				sh.Match = m
			} else {
				sh.Match = both{m, sh.Match}
			}
			out = append(out, sh)
		}
	}
	return out
}

// Expand returns the sub-handlers that the module h stands for in an
// ordered list: the inner ones of a match, limited by it, or h itself.
func Expand(h any) []session.SubHandler {
	if x, ok := h.(interface{ SubHandlers() []session.SubHandler }); ok {
		return x.SubHandlers()
	}
	name := ""
	if cm, ok := h.(caddy.Module); ok {
		name = cm.CaddyModule().ID.Name()
	}
	return []session.SubHandler{{Name: name, Handler: h}}
}

// both is two matchers that must both hold: a match nested in a match.
type both [2]session.Matcher

func (b both) MatchSession(s *session.Session) bool {
	return b[0].MatchSession(s) && b[1].MatchSession(s)
}

func (b both) MatchSender(s *session.Session, from session.Path) bool {
	return b[0].MatchSender(s, from) && b[1].MatchSender(s, from)
}

func (b both) MatchRecipient(s *session.Session, to session.Path) bool {
	return b[0].MatchRecipient(s, to) && b[1].MatchRecipient(s, to)
}

// Interface guards
var (
	_ caddy.Provisioner = (*Match)(nil)
	_ session.Matcher   = (*Match)(nil)
	_ session.Matcher   = both{}
)
