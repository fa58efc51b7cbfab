// Package iprev is the sub-handler esmtp.handlers.iprev: it checks the
// client's forward-confirmed reverse DNS (RFC 8601 section 3, "iprev"),
// records the result in the message's Authentication-Results field and
// the per-message log line, and, when asked to, refuses clients that
// fail it as Postfix's reject_unknown_client_hostname does.
//
//	iprev                   # record only
//	iprev {
//		reject_fail         # 550 5.7.25 on fail/permerror, 450 4.7.25 on temperror
//		timeout 10s         # default 10s
//	}
//
// The client's IP address is looked up in reverse (PTR); then the
// addresses (A and AAAA) of each name found, at most 10, until one has
// the client's IP. The result is
//
//   - pass: a name's addresses include the IP;
//   - fail: there are PTR names, and none of them leads back to the IP;
//   - permerror: the IP has no PTR record (NXDOMAIN or NODATA);
//   - temperror: a DNS lookup failed or timed out, and no name passed.
//
// It is recorded as `iprev=<result> policy.iprev=<ip>` at each MAIL FROM
// (Authentication-Results belong to a message); the lookups are made once
// per session (once per client after XCLIENT), at the first MAIL, with
// the esmtp handler's resolvers. A log field "iprev" carries the result,
// and "iprev_name" the confirmed name on pass.
//
// With reject_fail, MAIL FROM is refused: fail and permerror with
// 550 5.7.25, temperror with 450 4.7.25 (RFC 7372 5.7.25: "Reverse DNS
// validation failed"), "Client host rejected: cannot find your hostname,
// [<ip>]". Many legitimate senders have a broken reverse DNS: refusing on
// it alone is for small sites; recording it lets later checks weigh it.
package iprev

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"go.uber.org/zap"

	"github.com/caddy-esmtp/caddy-esmtp/authresults"
	"github.com/caddy-esmtp/caddy-esmtp/internal/caddyopt"
	"github.com/caddy-esmtp/caddy-esmtp/session"
)

func init() {
	caddy.RegisterModule(&IPRev{})
}

// DefaultTimeout is the default of IPRev.Timeout.
const DefaultTimeout = 10 * time.Second

// maxNames bounds the PTR names whose addresses are looked up.
const maxNames = 10

// The results (RFC 8601 2.7.3).
const (
	Pass      = "pass"
	Fail      = "fail"
	TempError = "temperror"
	PermError = "permerror"
)

// IPRev checks the client's forward-confirmed reverse DNS.
type IPRev struct {
	// RejectFail refuses MAIL FROM when the check does not pass: 550
	// 5.7.25 for fail and permerror, 450 4.7.25 for temperror. Default:
	// the result is only recorded.
	RejectFail bool `json:"reject_fail,omitempty"`
	// Timeout bounds all the lookups of one client. Default: 10s.
	Timeout caddy.Duration `json:"timeout,omitempty"`

	logger *zap.Logger
}

// CaddyModule returns the Caddy module information.
func (*IPRev) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "esmtp.handlers.iprev",
		New: func() caddy.Module { return new(IPRev) },
	}
}

// Provision checks the options.
func (v *IPRev) Provision(ctx caddy.Context) error {
	v.logger = ctx.Logger(v)
	switch {
	case v.Timeout < 0:
		return fmt.Errorf("iprev: timeout must be positive, got %s", time.Duration(v.Timeout))
	case v.Timeout == 0:
		v.Timeout = caddy.Duration(DefaultTimeout)
	}
	return nil
}

// Result is the outcome of the check of one client.
type Result struct {
	// IP is the client's address.
	IP netip.Addr
	// Value is Pass, Fail, TempError or PermError.
	Value string
	// Name is the confirmed name (without the final dot) on Pass.
	Name string
}

// resultKey is the session value key of the client's Result.
type resultKey struct{}

// Of returns the iprev result of the session's client, when the check
// has run (at the first MAIL FROM).
func Of(s *session.Session) (Result, bool) {
	r, ok := s.Value(resultKey{}).(Result)
	return r, ok && r.IP == s.RemoteIP()
}

// Mail checks the client (once per client), records the result and, with
// reject_fail, refuses a client that did not pass.
func (v *IPRev) Mail(ctx context.Context, s *session.Session, _ session.Path, _ session.Params) (*session.Reply, error) {
	ip := s.RemoteIP()
	if !ip.IsValid() {
		return nil, nil // a unix socket: nothing to check
	}
	res, ok := Of(s)
	if !ok {
		res = v.check(ctx, s, ip)
		s.SetValue(resultKey{}, res)
	}
	authresults.Add(s, authresults.Result{Method: "iprev", Value: res.Value,
		Props: []authresults.Prop{{Type: "policy", Name: "iprev", Value: ip.String()}}})
	if txn := s.Transaction(); txn != nil {
		txn.AddLogField(zap.String("iprev", res.Value))
		if res.Name != "" {
			txn.AddLogField(zap.String("iprev_name", res.Name))
		}
	}
	if !v.RejectFail {
		return nil, nil
	}
	text := "Client host rejected: cannot find your hostname, [" + ip.String() + "]"
	switch res.Value {
	case Fail, PermError:
		return session.NewReply(550, "5.7.25", text), nil
	case TempError:
		return session.NewReply(450, "4.7.25", text), nil
	}
	return nil, nil
}

// check looks ip up in reverse, then its names forward.
func (v *IPRev) check(ctx context.Context, s *session.Session, ip netip.Addr) Result {
	ctx, cancel := context.WithTimeout(ctx, time.Duration(v.Timeout))
	defer cancel()
	r := s.Resolver()
	res := Result{IP: ip}
	names, err := r.LookupAddr(ctx, ip.String())
	switch {
	case isNotFound(err) || err == nil && len(names) == 0:
		res.Value = PermError
		return res
	case err != nil:
		v.logger.Debug("iprev: PTR lookup failed", zap.String("session", s.ID()), zap.String("ip", ip.String()), zap.Error(err))
		res.Value = TempError
		return res
	}
	temp := false
	for i, name := range names {
		if i == maxNames {
			break
		}
		addrs, err := r.LookupIPAddr(ctx, name)
		if err != nil {
			if !isNotFound(err) {
				v.logger.Debug("iprev: address lookup failed", zap.String("session", s.ID()), zap.String("name", name), zap.Error(err))
				temp = true
			}
			continue
		}
		for _, a := range addrs {
			if got, ok := netip.AddrFromSlice(a.IP); ok && got.Unmap() == ip.Unmap() {
				res.Value, res.Name = Pass, strings.TrimSuffix(name, ".")
				return res
			}
		}
	}
	if temp {
		res.Value = TempError
	} else {
		res.Value = Fail
	}
	return res
}

func isNotFound(err error) bool {
	var de *net.DNSError
	return errors.As(err, &de) && de.IsNotFound
}

// UnmarshalCaddyfile sets up the sub-handler from Caddyfile tokens. Syntax:
//
//	iprev [reject_fail] [{
//		reject_fail
//		timeout <duration>
//	}]
func (v *IPRev) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // the sub-handler name
	for _, a := range d.RemainingArgs() {
		if a != "reject_fail" {
			return d.Errf("iprev: unknown argument %q (known: reject_fail)", a)
		}
		v.RejectFail = true
	}
	opts := caddyopt.New("iprev")
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		opt := d.Val()
		if err := opts.Once(d); err != nil {
			return err
		}
		switch opt {
		case "reject_fail":
			if d.NextArg() {
				return d.ArgErr()
			}
			v.RejectFail = true
		case "timeout":
			var s string
			if !d.Args(&s) || d.NextArg() {
				return d.ArgErr()
			}
			dur, err := caddy.ParseDuration(s)
			if err != nil || dur <= 0 {
				return d.Errf("iprev: timeout must be a positive duration, got %q", s)
			}
			v.Timeout = caddy.Duration(dur)
		default:
			return d.Errf("iprev: unknown option %q (known: reject_fail, timeout)", opt)
		}
	}
	return nil
}

// Interface guards
var (
	_ caddy.Provisioner     = (*IPRev)(nil)
	_ caddyfile.Unmarshaler = (*IPRev)(nil)
	_ session.MailHook      = (*IPRev)(nil)
)
