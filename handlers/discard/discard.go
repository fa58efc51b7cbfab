// Package discard is the sub-handler esmtp.handlers.discard: it accepts
// every message and drops it, for sinks and benchmarks. Each dropped
// message's log line says "discarded": true next to its queue id, so it is
// never a silent loss.
package discard

import (
	"context"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"go.uber.org/zap"

	"github.com/caddy-esmtp/caddy-esmtp/session"
)

func init() {
	caddy.RegisterModule(&Discard{})
}

// Discard is a delivery that accepts and drops messages, to an explicit
// end: a recipient it takes is never refused for want of a delivery. It
// has no options.
type Discard struct{}

// CaddyModule returns the Caddy module information.
func (*Discard) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "esmtp.handlers.discard",
		New: func() caddy.Module { return new(Discard) },
	}
}

// Deliver drops the message and marks it as discarded in its per-message
// log line ("discarded": true). Behind a matcher, it takes only the
// recipients the matcher takes: the others must have a delivery of their
// own.
func (d *Discard) Deliver(_ context.Context, s *session.Session, _ *session.Delivery) error {
	s.Transaction().AddLogField(zap.Bool("discarded", true))
	return nil
}

// ReadsMessage is false: the engine keeps no spool for a message that
// only discard delivers.
func (d *Discard) ReadsMessage() bool { return false }

// UnmarshalCaddyfile sets up the sub-handler from Caddyfile tokens. Syntax:
//
//	discard
func (d *Discard) UnmarshalCaddyfile(disp *caddyfile.Dispenser) error {
	disp.Next() // the sub-handler name
	if disp.NextArg() || disp.NextBlock(disp.Nesting()) {
		return disp.Err("discard takes no arguments or options")
	}
	return nil
}

// Interface guards
var (
	_ caddyfile.Unmarshaler = (*Discard)(nil)
	_ session.DeliverHook   = (*Discard)(nil)
	_ session.MessageReader = (*Discard)(nil)
)
