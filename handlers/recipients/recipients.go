// Package recipients is the sub-handler esmtp.handlers.recipients: it
// accepts RCPT TO only for the addresses, domains and wildcards it lists,
// so that the server takes mail for its own domains and is never an open
// relay.
//
// For each recipient:
//
//   - <Postmaster> (no domain) is always accepted (RFC 5321 4.5.1), and so
//     is postmaster@ any domain the list covers;
//   - an address that matches an entry passes: the sub-handler has no
//     opinion, so later sub-handlers, then the default 250, decide;
//   - an unknown user at a domain the list covers (a domain named by an
//     entry, or a subdomain of a *. entry) gets 550 5.1.1 No such user here;
//   - an address at any other domain gets 554 5.7.1 Relay access denied.
//
// The entries come from the configuration and from files, which are read at
// Provision: every Caddy reload re-reads them. See List for the entry forms
// and how they are compared.
package recipients

import (
	"context"
	"fmt"
	"slices"
	"strings"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"go.uber.org/zap"

	"github.com/caddy-esmtp/caddy-esmtp/session"
)

func init() {
	caddy.RegisterModule(&Recipients{})
}

var (
	// replyUnknownUser refuses an unlisted user at a local domain.
	replyUnknownUser = session.NewReply(550, "5.1.1", "No such user here")
	// replyRelayDenied refuses a recipient at a domain the list does not
	// cover.
	replyRelayDenied = session.NewReply(554, "5.7.1", "Relay access denied")
)

// Recipients accepts only listed recipients.
type Recipients struct {
	// Allow lists the accepted recipients: user@example.com (that
	// address), *@example.com or example.com (any user there),
	// *.example.com (any user at any subdomain), user@*.example.com.
	// Domains and local parts are compared case-insensitively.
	Allow []string `json:"allow,omitempty"`
	// Files are files of more entries, one per line, # comments. They are
	// read when the configuration is loaded, so each reload re-reads them.
	// A relative path is relative to Caddy's working directory. A file
	// that cannot be read or has a bad entry fails the configuration.
	Files []string `json:"files,omitempty"`

	list   *List
	logger *zap.Logger
}

// CaddyModule returns the Caddy module information.
func (*Recipients) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "esmtp.handlers.recipients",
		New: func() caddy.Module { return new(Recipients) },
	}
}

// Provision builds the list from Allow and reads Files.
func (r *Recipients) Provision(ctx caddy.Context) error {
	r.logger = ctx.Logger(r)
	list, err := BuildList("recipients", r.Allow, r.Files)
	if err != nil {
		return err
	}
	r.list = list
	if list.Len() == 0 {
		r.logger.Warn("the recipient list is empty: every recipient is refused", zap.Strings("files", r.Files))
	} else {
		r.logger.Info("recipient list loaded", zap.Int("entries", list.Len()), zap.Strings("files", r.Files))
	}
	return nil
}

// BuildList makes a List of the entries and the entries of the files; an
// error starts with module (the sub-handler's name) and names the field,
// allow or files. With neither entries nor files it fails: such a list
// would refuse everything, which is never what was meant.
func BuildList(module string, allow, files []string) (*List, error) {
	if len(allow) == 0 && len(files) == 0 {
		return nil, fmt.Errorf("%s: allow or files is required (an empty list would refuse every address)", module)
	}
	list := new(List)
	for i, e := range allow {
		if err := list.Add(e); err != nil {
			return nil, fmt.Errorf("%s: allow[%d]: %v", module, i, err)
		}
	}
	for i, f := range files {
		if f == "" {
			return nil, fmt.Errorf("%s: files[%d]: empty path", module, i)
		}
		if err := list.AddFile(f); err != nil {
			return nil, fmt.Errorf("%s: files[%d]: %v", module, i, err)
		}
	}
	return list, nil
}

// Rcpt passes a listed recipient (no opinion) and refuses the others: 550
// 5.1.1 at a local domain, 554 5.7.1 elsewhere.
func (r *Recipients) Rcpt(_ context.Context, s *session.Session, to session.Path, _ session.Params) (*session.Reply, error) {
	if to.Domain == "" || r.list.Match(to.Local, to.Domain) {
		return nil, nil // <Postmaster>, or listed
	}
	local := r.list.Covers(to.Domain)
	if local && NormalizeLocal(to.Local) == "postmaster" {
		return nil, nil // RFC 5321 4.5.1: postmaster@ every domain we serve
	}
	reply := replyRelayDenied
	if local {
		reply = replyUnknownUser
	}
	if ce := r.logger.Check(zap.DebugLevel, "recipient refused"); ce != nil {
		ce.Write(zap.String("session", s.ID()), zap.String("rcpt", session.Sanitize(to.Mailbox, 256)), zap.Int("code", reply.Code))
	}
	return reply, nil
}

// UnmarshalCaddyfile sets up the sub-handler from Caddyfile tokens. Syntax:
//
//	recipients [<entry...>] [{
//		allow <entry...>
//		file  <path>
//	}]
//
// allow and file may be repeated.
func (r *Recipients) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	allow, files, err := ParseCaddyfileList(d, "recipients", nil, nil)
	if err != nil {
		return err
	}
	r.Allow = append(r.Allow, allow...)
	r.Files = append(r.Files, files...)
	return nil
}

// ParseCaddyfileList reads the list syntax shared by recipients and
// senders: entries as arguments, and a block of allow <entry...> and
// file <path>. A block option named in extraNames is given to extra, which
// reads its arguments. Entries are checked here so that a bad one fails
// `caddy adapt`.
func ParseCaddyfileList(d *caddyfile.Dispenser, module string, extraNames []string, extra func(d *caddyfile.Dispenser) error) (allow, files []string, err error) {
	d.Next() // the sub-handler name
	checkAll := func(entries []string) error {
		for _, e := range entries {
			if _, _, _, err := ParseEntry(e); err != nil {
				return d.Errf("%s: %v", module, err)
			}
		}
		return nil
	}
	args := d.RemainingArgs()
	if err := checkAll(args); err != nil {
		return nil, nil, err
	}
	allow = append(allow, args...)
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		switch d.Val() {
		case "allow":
			args := d.RemainingArgs()
			if len(args) == 0 {
				return nil, nil, d.ArgErr()
			}
			if err := checkAll(args); err != nil {
				return nil, nil, err
			}
			allow = append(allow, args...)
		case "file":
			var path string
			if !d.Args(&path) || d.NextArg() {
				return nil, nil, d.ArgErr()
			}
			files = append(files, path)
		default:
			if slices.Contains(extraNames, d.Val()) {
				if err := extra(d); err != nil {
					return nil, nil, err
				}
				continue
			}
			known := strings.Join(append([]string{"allow", "file"}, extraNames...), ", ")
			return nil, nil, d.Errf("%s: unknown option %q (known: %s)", module, d.Val(), known)
		}
	}
	if len(allow) == 0 && len(files) == 0 {
		return nil, nil, d.Errf("%s: no entries: give addresses or domains, allow or file", module)
	}
	return allow, files, nil
}

// Interface guards
var (
	_ caddy.Provisioner     = (*Recipients)(nil)
	_ caddyfile.Unmarshaler = (*Recipients)(nil)
	_ session.RcptHook      = (*Recipients)(nil)
)
