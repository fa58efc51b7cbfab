// Package discard is the sub-handler esmtp.handlers.discard: it accepts
// every message and drops it, for sinks and benchmarks. Each dropped
// message is logged at info level with its queue id, so it is never a
// silent loss.
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
type Discard struct {
	logger *zap.Logger
}

// CaddyModule returns the Caddy module information.
func (*Discard) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "esmtp.handlers.discard",
		New: func() caddy.Module { return new(Discard) },
	}
}

// Provision sets up the logger.
func (d *Discard) Provision(ctx caddy.Context) error {
	d.logger = ctx.Logger(d)
	return nil
}

// EndOfMessage logs that the message is dropped and has no opinion, so the
// default 250 is sent (after any later sub-handler agrees).
func (d *Discard) EndOfMessage(_ context.Context, s *session.Session) (*session.Reply, error) {
	if ce := d.logger.Check(zap.InfoLevel, "message discarded"); ce != nil {
		txn := s.Transaction()
		ce.Write(zap.String("queue_id", txn.ID), zap.Int64("size", txn.Size))
	}
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
	_ caddy.Provisioner     = (*Discard)(nil)
	_ caddyfile.Unmarshaler = (*Discard)(nil)
	_ session.MessageHook   = (*Discard)(nil)
)
