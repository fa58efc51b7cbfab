package esmtp

import (
	"crypto/tls"

	"github.com/mholt/caddy-l4/layer4"

	"github.com/caddy-esmtp/caddy-esmtp/session"
)

// Handle runs one SMTP session on the connection and returns when it is
// over. It reads and writes through cx (never cx.Conn), so bytes caddy-l4
// prefetched are not lost, and it takes the client address from
// cx.RemoteAddr(), which a proxy_protocol handler in front has set.
func (h *Handler) Handle(cx *layer4.Connection, _ layer4.Handler) error {
	return h.server.Serve(cx.Context, cx, session.ConnInfo{
		RemoteAddr: cx.RemoteAddr(),
		LocalAddr:  cx.LocalAddr(),
		TLS:        tlsState(cx),
	})
}

// tlsState returns the state of a TLS layer that caddy-l4's tls handler
// terminated before this handler (implicit TLS), or nil.
func tlsState(cx *layer4.Connection) *tls.ConnectionState {
	states, _ := cx.GetVar("tls_connection_states").([]*tls.ConnectionState)
	if len(states) == 0 {
		return nil
	}
	return states[len(states)-1]
}

// Interface guard
var _ layer4.NextHandler = (*Handler)(nil)
