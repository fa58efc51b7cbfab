// Package lmtp is the sub-handler esmtp.handlers.lmtp: a delivery
// (session.DeliverHook) that hands each message to a local mail store over
// LMTP (RFC 2033), such as Dovecot's LMTP server, and keeps the store's
// answer for each recipient.
//
// At end of data, once every judge accepted the message, Deliver opens (or
// takes from its pool) a connection to the LMTP server, says LHLO, then
// MAIL FROM with the final sender, one RCPT TO per recipient of the
// delivery, and DATA with the final message (session.Delivery.Message:
// our Received: field first, every edit applied), streamed from the
// engine's spool, dot-stuffed with CRLF line ends, never held whole in
// memory. After the final dot an LMTP server answers once per recipient it
// accepted at RCPT, in order: each of those replies, like each refused
// RCPT, becomes that recipient's outcome (session.Delivery.SetReply), with
// the server's code, enhanced code and text, and the name the server gave
// in its LHLO reply as the reply's RemoteMTA (a DSN's Remote-MTA).
//
// Deliver returns nil when the exchange took place, whatever the
// recipients' fates: from the queue (session.Server.DeliverQueued), each
// recipient keeps its own outcome, delivered ones are done and the others
// bounce or are tried again; in a session, where the client gets one
// reply for the whole message, the first failure is that reply, and the
// recipients the store took keep their copy (the client sends the
// message again to all of them: delivery is at least once). It returns an
// error, 451 4.4.1 or 451 4.4.2, when the server cannot be reached or the
// connection fails or times out before the recipients have their
// outcomes; recipients answered before the connection failed keep theirs,
// the others get 451 4.4.2.
//
// # Extensions
//
// MAIL FROM carries BODY=8BITMIME when the message was sent with it,
// SMTPUTF8 when it was sent with it and the server offers it, and
// SIZE=<size of the final message> when the server offers SIZE. A message
// that needs an extension the server lacks is refused, permanently, since
// sending it again changes nothing until the store is reconfigured:
//
//   - BODY=8BITMIME to a server without 8BITMIME: 554 5.6.3 (conversion
//     required but not supported: the lmtp sub-handler does not convert);
//   - SMTPUTF8 to a server without it (Dovecot 2.3): a sender address
//     that is not ASCII fails the message with 553 5.6.7; a recipient
//     address that is not ASCII fails that recipient with 553 5.6.7, and
//     the message goes to the others without the SMTPUTF8 parameter (RFC
//     6531 3.7.4: its addresses are ASCII; a UTF-8 header is stored as
//     it is).
package lmtp

import (
	"errors"
	"fmt"
	"net"
	"strconv"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"go.uber.org/zap"

	"github.com/caddy-esmtp/caddy-esmtp/internal/idlepool"
	"github.com/caddy-esmtp/caddy-esmtp/session"
)

func init() {
	caddy.RegisterModule(&LMTP{})
}

// LMTP delivers messages to an LMTP server.
//
// It speaks LMTP with a small client of its own (this package), not
// go-smtp's: LMTP's one reply per recipient after DATA must be matched
// to the recipient's index, replies must keep their enhanced codes and
// text, every wait must end with the delivery's context, and the message
// is streamed through a writer that makes line ends canonical before
// dot-stuffing; the client is about 350 lines.
type LMTP struct {
	// Address is the LMTP server: "unix:/path/to/socket" (a unix
	// socket, such as Dovecot's /run/dovecot/lmtp), or "host:port" or
	// "host" (TCP, port 24 by default; an IPv6 address in brackets).
	// Caddy's global placeholders (such as {env.LMTP_ADDRESS}) are
	// replaced when the config loads. Required.
	Address string `json:"address,omitempty"`
	// Timeout bounds connecting, the server's greeting, each command's
	// reply (LHLO, MAIL, RCPT, DATA, RSET) and each write of message
	// data. Default: 1m.
	Timeout caddy.Duration `json:"timeout,omitempty"`
	// DataTimeout bounds the wait for each of the replies after the final
	// dot, while the server stores the message for each recipient (as
	// Postfix's lmtp_data_done_timeout, 600s). Default: 10m. Every wait
	// is bounded by the esmtp handler's handler_timeout too (default
	// 2m): raise that for a store that may take longer.
	DataTimeout caddy.Duration `json:"data_timeout,omitempty"`
	// LHLOName is the name given in LHLO. Default: the esmtp handler's
	// hostname.
	LHLOName string `json:"lhlo_name,omitempty"`
	// MaxIdle is how many idle connections are kept for the next
	// messages (RSET before each reuse), as Postfix caches LMTP
	// connections. Default: 2; -1 keeps none.
	MaxIdle int `json:"max_idle,omitempty"`
	// IdleTimeout is how long an idle connection is kept. Default: 30s.
	IdleTimeout caddy.Duration `json:"idle_timeout,omitempty"`
	// VerifyRecipients checks each recipient with the LMTP server at RCPT
	// (MAIL FROM, RCPT TO, then RSET on a connection of the pool): the
	// server's refusal (Dovecot's 550 5.1.1 for an unknown user) is the
	// client's reply, so unknown users are refused during the SMTP
	// session instead of bounced later. A server that cannot be reached
	// or does not answer gives 451 4.4.1 (try again).
	VerifyRecipients bool `json:"verify_recipients,omitempty"`

	network string                // "unix" or "tcp"
	addr    string                // the socket's path, or host:port
	pool    *idlepool.Pool[*conn] // idle connections (nil: none kept)
	logger  *zap.Logger
}

// CaddyModule returns the Caddy module information.
func (*LMTP) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "esmtp.handlers.lmtp",
		New: func() caddy.Module { return new(LMTP) },
	}
}

// Defaults.
const (
	defaultPort        = "24"
	defaultTimeout     = time.Minute
	defaultDataTimeout = 10 * time.Minute
	defaultMaxIdle     = 2
	defaultIdleTimeout = 30 * time.Second
)

// Provision checks the configuration; every error names its field.
func (l *LMTP) Provision(ctx caddy.Context) error {
	l.logger = ctx.Logger(l)
	if l.Address == "" {
		return errors.New("lmtp: address is required (unix:/path or host[:port])")
	}
	var err error
	if l.network, l.addr, err = parseAddress(caddy.NewReplacer().ReplaceKnown(l.Address, "")); err != nil {
		return fmt.Errorf("lmtp: address: %v", err)
	}
	if l.LHLOName != "" && !validName(l.LHLOName) {
		return fmt.Errorf("lmtp: lhlo_name: %q is not a domain name or address literal", l.LHLOName)
	}
	for _, d := range []struct {
		v    *caddy.Duration
		def  time.Duration
		name string
	}{
		{&l.Timeout, defaultTimeout, "timeout"},
		{&l.DataTimeout, defaultDataTimeout, "data_timeout"},
		{&l.IdleTimeout, defaultIdleTimeout, "idle_timeout"},
	} {
		if *d.v == 0 {
			*d.v = caddy.Duration(d.def)
		}
		if *d.v < 0 {
			return fmt.Errorf("lmtp: %s: must be positive, got %s", d.name, time.Duration(*d.v))
		}
	}
	switch {
	case l.MaxIdle == 0:
		l.MaxIdle = defaultMaxIdle
	case l.MaxIdle < -1:
		return fmt.Errorf("lmtp: max_idle: must be -1 (none kept) or more, got %d", l.MaxIdle)
	}
	if l.MaxIdle > 0 {
		l.pool = idlepool.New(l.MaxIdle, time.Duration(l.IdleTimeout), (*conn).quit)
	}
	return nil
}

// parseAddress reads an Address: the network and the address to dial.
func parseAddress(a string) (network, addr string, err error) {
	if path, ok := strings.CutPrefix(a, "unix:"); ok {
		if path == "" || strings.ContainsAny(path, "\x00") {
			return "", "", fmt.Errorf("%q: no socket path after the unix: prefix", a)
		}
		return "unix", path, nil
	}
	if strings.Contains(a, "://") || strings.Contains(a, "/") {
		return "", "", fmt.Errorf("%q: write unix:/path for a unix socket, or host[:port]", a)
	}
	host, port, err := net.SplitHostPort(a)
	if err != nil {
		host, port = a, defaultPort
		if h, ok := strings.CutPrefix(a, "["); ok {
			host, ok = strings.CutSuffix(h, "]")
			if !ok || net.ParseIP(host) == nil {
				return "", "", fmt.Errorf("%q: not host[:port]", a)
			}
		}
		if strings.Contains(host, ":") && net.ParseIP(host) == nil || strings.ContainsAny(host, "[]") {
			return "", "", fmt.Errorf("%q: not host[:port] (write an IPv6 address in brackets)", a)
		}
	}
	if host == "" {
		return "", "", fmt.Errorf("%q: no host", a)
	}
	if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 {
		return "", "", fmt.Errorf("%q: bad port", a)
	}
	return "tcp", net.JoinHostPort(host, port), nil
}

// validName reports whether s may follow LHLO: a domain name or an
// address literal ("[192.0.2.1]").
func validName(s string) bool {
	if strings.HasPrefix(s, "[") && strings.HasSuffix(s, "]") {
		return len(s) > 2 && strings.Trim(s[1:len(s)-1], "0123456789abcdefABCDEFIPv.:") == ""
	}
	if len(s) > 255 || strings.HasPrefix(s, ".") || strings.HasSuffix(s, ".") || strings.Contains(s, "..") {
		return false
	}
	return s != "" && strings.Trim(s, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-.") == ""
}

// Cleanup quits the idle connections. Deliveries still running on this
// configuration finish on their own connections, which are then quit.
func (l *LMTP) Cleanup() error {
	if l.pool != nil {
		l.pool.Close()
	}
	return nil
}

// Interface guards
var (
	_ caddy.Provisioner     = (*LMTP)(nil)
	_ caddy.CleanerUpper    = (*LMTP)(nil)
	_ caddyfile.Unmarshaler = (*LMTP)(nil)
	_ session.DeliverHook   = (*LMTP)(nil)
)
