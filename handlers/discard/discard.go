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

// Discard accepts and drops messages. It has no options.
type Discard struct{}

// CaddyModule returns the Caddy module information.
func (*Discard) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "esmtp.handlers.discard",
		New: func() caddy.Module { return new(Discard) },
	}
}

// EndOfMessage marks the message as discarded in its per-message log line
// ("discarded": true) and has no opinion, so the default 250 is sent (after
// any later sub-handler agrees).
func (d *Discard) EndOfMessage(_ context.Context, s *session.Session) (*session.Reply, error) {
	s.Transaction().AddLogField(zap.Bool("discarded", true))
	return nil, nil
}

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
	_ session.MessageHook   = (*Discard)(nil)
)
