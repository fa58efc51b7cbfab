// Package senders is the sub-handler esmtp.handlers.senders: it accepts
// MAIL FROM only for the addresses, domains and wildcards it lists, and
// refuses the others with 550 5.7.1 Sender not allowed. The null sender
// <>, which bounces and other notifications use (RFC 5321 4.5.5), is
// accepted unless reject_null_sender is set.
//
// The entries, their forms and how they are compared are those of the
// recipients sub-handler (see recipients.List); files are read at
// Provision, so every Caddy reload re-reads them.
//
// The reverse-path is what the client claims. On a submission port put
// senders after auth (and require_tls); on a port that receives mail from
// the Internet it filters, it does not authenticate.
package senders

import (
	"context"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"go.uber.org/zap"

	"github.com/caddy-esmtp/caddy-esmtp/handlers/recipients"
	"github.com/caddy-esmtp/caddy-esmtp/session"
)

func init() {
	caddy.RegisterModule(&Senders{})
}

// replyNotAllowed refuses an unlisted sender.
var replyNotAllowed = session.NewReply(550, "5.7.1", "Sender not allowed")

// Senders accepts only listed senders.
type Senders struct {
	// Allow lists the accepted senders: user@example.com (that address),
	// *@example.com or example.com (any user there), *.example.com (any
	// user at any subdomain), user@*.example.com. Domains and local parts
	// are compared case-insensitively.
	Allow []string `json:"allow,omitempty"`
	// Files are files of more entries, one per line, # comments. They are
	// read when the configuration is loaded, so each reload re-reads them.
	// A relative path is relative to Caddy's working directory. A file
	// that cannot be read or has a bad entry fails the configuration.
	Files []string `json:"files,omitempty"`
	// RejectNullSender refuses the null sender <> too. Off by default:
	// <> is the sender of bounces and other delivery and disposition
	// notifications (RFC 5321 4.5.5), which a receiving server should
	// not refuse.
	RejectNullSender bool `json:"reject_null_sender,omitempty"`

	list   *recipients.List
	logger *zap.Logger
}

// CaddyModule returns the Caddy module information.
func (*Senders) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "esmtp.handlers.senders",
		New: func() caddy.Module { return new(Senders) },
	}
}

// Provision builds the list from Allow and reads Files.
func (s *Senders) Provision(ctx caddy.Context) error {
	s.logger = ctx.Logger(s)
	list, err := recipients.BuildList("senders", s.Allow, s.Files)
	if err != nil {
		return err
	}
	s.list = list
	if list.Len() == 0 {
		s.logger.Warn("the sender list is empty: every sender but <> is refused", zap.Strings("files", s.Files))
	} else {
		s.logger.Info("sender list loaded", zap.Int("entries", list.Len()), zap.Strings("files", s.Files))
	}
	return nil
}

// Mail passes a listed sender (no opinion: later sub-handlers, then the
// default 250, decide) and refuses the others with 550 5.7.1.
func (s *Senders) Mail(_ context.Context, sess *session.Session, from session.Path, _ session.Params) (*session.Reply, error) {
	if from.IsNull() {
		if s.RejectNullSender {
			s.refused(sess, from)
			return replyNotAllowed, nil
		}
		return nil, nil
	}
	if s.list.Match(from.Local, from.Domain) {
		return nil, nil
	}
	s.refused(sess, from)
	return replyNotAllowed, nil
}

// refused logs a refusal at debug level.
func (s *Senders) refused(sess *session.Session, from session.Path) {
	if ce := s.logger.Check(zap.DebugLevel, "sender refused"); ce != nil {
		ce.Write(zap.String("session", sess.ID()), zap.String("from", session.Sanitize(from.String(), 258)))
	}
}

// UnmarshalCaddyfile sets up the sub-handler from Caddyfile tokens. Syntax:
//
//	senders [<entry...>] [{
//		allow <entry...>
//		file  <path>
//		reject_null_sender
//	}]
//
// allow and file may be repeated.
func (s *Senders) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	allow, files, err := recipients.ParseCaddyfileList(d, "senders", []string{"reject_null_sender"},
		func(d *caddyfile.Dispenser) error {
			if d.NextArg() {
				return d.ArgErr()
			}
			if s.RejectNullSender {
				return d.Err("senders: reject_null_sender: given twice")
			}
			s.RejectNullSender = true
			return nil
		})
	if err != nil {
		return err
	}
	s.Allow = append(s.Allow, allow...)
	s.Files = append(s.Files, files...)
	return nil
}

// Interface guards
var (
	_ caddy.Provisioner     = (*Senders)(nil)
	_ caddyfile.Unmarshaler = (*Senders)(nil)
	_ session.MailHook      = (*Senders)(nil)
)
