// Package placeholders gives sub-handlers the {esmtp.*} placeholders for
// their config strings, through Caddy's caddy.Replacer, so that a path, a
// URL, a header or a command argument can name the session and message:
//
//	{esmtp.remote_ip}     client IP (the real one behind proxy_protocol/XCLIENT)
//	{esmtp.remote}        client address with port
//	{esmtp.helo}          HELO/EHLO name
//	{esmtp.tls}           "true" or "false"
//	{esmtp.auth_user}     authenticated user, or empty
//	{esmtp.session_id}    session id (as in the logs)
//	{esmtp.queue_id}      queue id of the transaction
//	{esmtp.from}          envelope sender (empty for <>)
//	{esmtp.rcpt}          one recipient (see WithRecipient)
//	{esmtp.rcpt.local}    its local part
//	{esmtp.rcpt.domain}   its domain, lower-cased
//
// Caddy's global placeholders ({env.*}, {system.*}, {time.*}) work too.
package placeholders

import (
	"net"
	"strconv"
	"strings"

	"github.com/caddyserver/caddy/v2"

	"github.com/caddy-esmtp/caddy-esmtp/session"
)

// New returns a replacer with the session's and the current transaction's
// values set.
func New(s *session.Session) *caddy.Replacer {
	repl := caddy.NewReplacer()
	remote := ""
	if a := s.RemoteAddr(); a != nil {
		remote = a.String()
	}
	ip := remote
	if host, _, err := net.SplitHostPort(remote); err == nil {
		ip = host
	}
	repl.Set("esmtp.remote", remote)
	repl.Set("esmtp.remote_ip", ip)
	repl.Set("esmtp.helo", s.Helo())
	repl.Set("esmtp.tls", strconv.FormatBool(s.TLS() != nil))
	repl.Set("esmtp.auth_user", s.AuthUser())
	repl.Set("esmtp.session_id", s.ID())
	if txn := s.Transaction(); txn != nil {
		repl.Set("esmtp.queue_id", txn.ID)
		repl.Set("esmtp.from", txn.From.Mailbox)
		if len(txn.Recipients) == 1 {
			WithRecipient(repl, txn.Recipients[0].Path)
		}
	}
	return repl
}

// WithRecipient sets {esmtp.rcpt}, {esmtp.rcpt.local} and
// {esmtp.rcpt.domain} to one recipient's values.
func WithRecipient(repl *caddy.Replacer, to session.Path) {
	repl.Set("esmtp.rcpt", to.Mailbox)
	repl.Set("esmtp.rcpt.local", to.Local)
	repl.Set("esmtp.rcpt.domain", strings.ToLower(to.Domain))
}
