// Package subhandler is a complete third-party sub-handler for caddy-esmtp:
// the Go analogue of subclassing the Perl Apache2::Protocol::ESMTP base
// class and overriding RCPT and DATA. It registers the Caddy module
// esmtp.handlers.example_policy, which
//
//   - rejects the recipients listed in `reject` with 550 5.1.1 (the seed's
//     "sub RCPT { ... return (550, ...) }"), and
//   - adds a header field to every message (seen by every later
//     sub-handler, such as maildir).
//
// Build it into Caddy with
//
//	xcaddy build --with github.com/caddy-esmtp/caddy-esmtp --with github.com/you/yourmodule
//
// and use it in the esmtp block before the delivering sub-handler:
//
//	esmtp {
//		example_policy {
//			reject nobody@example.test
//			header X-Policy "checked by example_policy"
//		}
//		maildir ./mail
//	}
package subhandler

import (
	"context"
	"strings"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"

	"github.com/caddy-esmtp/caddy-esmtp/session"
)

func init() {
	caddy.RegisterModule(&Policy{})
}

// Policy rejects some recipients and adds a header to every message.
type Policy struct {
	// Reject lists recipient addresses to refuse with 550 5.1.1
	// (compared case-insensitively).
	Reject []string `json:"reject,omitempty"`
	// HeaderName is the name of the header field added to each message.
	HeaderName string `json:"header_name,omitempty"`
	// HeaderValue is its value.
	HeaderValue string `json:"header_value,omitempty"`

	reject map[string]bool
}

// CaddyModule returns the Caddy module information.
func (*Policy) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "esmtp.handlers.example_policy",
		New: func() caddy.Module { return new(Policy) },
	}
}

// Provision builds the lookup set.
func (p *Policy) Provision(caddy.Context) error {
	p.reject = map[string]bool{}
	for _, a := range p.Reject {
		p.reject[strings.ToLower(a)] = true
	}
	return nil
}

// Rcpt answers 550 5.1.1 for a listed recipient and has no opinion
// otherwise (nil: the next sub-handler, then the default 250, decide).
func (p *Policy) Rcpt(_ context.Context, _ *session.Session, to session.Path, _ session.Params) (*session.Reply, error) {
	if p.reject[strings.ToLower(to.Mailbox)] {
		return session.NewReply(550, "5.1.1", "No such user here"), nil
	}
	return nil, nil
}

// Data adds the header field before the message data is read, so every
// sub-handler sees it right after the Received: field.
func (p *Policy) Data(_ context.Context, s *session.Session) (*session.Reply, error) {
	if p.HeaderName != "" {
		s.Transaction().AddHeader(p.HeaderName, p.HeaderValue)
	}
	return nil, nil
}

// UnmarshalCaddyfile sets up the sub-handler from Caddyfile tokens. Syntax:
//
//	example_policy {
//		reject <address...>
//		header <name> <value>
//	}
func (p *Policy) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // the sub-handler name
	if d.NextArg() {
		return d.ArgErr()
	}
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		switch d.Val() {
		case "reject":
			args := d.RemainingArgs()
			if len(args) == 0 {
				return d.ArgErr()
			}
			p.Reject = append(p.Reject, args...)
		case "header":
			if !d.Args(&p.HeaderName, &p.HeaderValue) || d.NextArg() {
				return d.ArgErr()
			}
		default:
			return d.Errf("example_policy: unknown option %q (known: reject, header)", d.Val())
		}
	}
	return nil
}

// Interface guards: the hooks this sub-handler implements.
var (
	_ caddy.Provisioner     = (*Policy)(nil)
	_ caddyfile.Unmarshaler = (*Policy)(nil)
	_ session.RcptHook      = (*Policy)(nil)
	_ session.DataHook      = (*Policy)(nil)
)
