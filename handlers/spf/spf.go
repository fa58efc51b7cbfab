// Package spf is the sub-handler esmtp.handlers.spf: at MAIL it checks
// with SPF (RFC 7208) whether the client's IP address may send mail for
// the MAIL FROM domain, and records the result for the transaction's
// Authentication-Results field (package authresults), where a DMARC check
// reads it.
//
//	spf {
//		helo              # also check the HELO identity
//		reject_fail       # 550 5.7.23 on fail (default: record only)
//		defer_temperror   # 451 4.4.3 on temperror (default: record only)
//		timeout 20s       # for one whole check (default)
//	}
//
// The identity checked is the MAIL FROM address, or postmaster@<HELO name>
// for the null sender (RFC 7208 2.4). The result is recorded as
// spf=<result> smtp.mailfrom=<address> (with smtp.helo=<name> too for the
// null sender), and logged with the message as the field "spf". With
// `helo`, the HELO identity is checked as well (once per HELO name and
// client address) and recorded as a second result, spf=<result>
// smtp.helo=<name>, logged as "spf_helo".
//
// By default nothing is refused: DMARC, or the reader of the field,
// decides. `reject_fail` refuses MAIL with 550 5.7.23 when the result is
// fail (with `helo`, a HELO identity that fails is refused the same way
// before MAIL FROM is looked up, as RFC 7208 2.3 allows); `defer_temperror`
// answers 451 4.4.3 when the result is temperror (RFC 7208 8.6).
// softfail, neutral, none and permerror are only recorded.
//
// Authenticated sessions (s.AuthUser() != "") are not checked and nothing
// is recorded: SPF authorizes the hosts that relay mail for a domain to
// other domains' servers (RFC 7208 1), not a user submitting through their
// own server, whose address is a client's anywhere; "none" would claim an
// evaluation that was not made. The log field says "skipped".
//
// The DNS lookups go through the handler's resolver (Session.Resolver);
// the limits of RFC 7208 4.6.4 are the library's (blitiri.com.ar/go/spf):
// at most 10 DNS-querying terms (include, a, mx, ptr, exists, redirect),
// at most 2 void lookups (the third is a permerror), at most 10 MX records
// per mx term and 10 names per ptr term. Timeout bounds the whole
// check; when it runs out the result is temperror.
package spf

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"time"

	"blitiri.com.ar/go/spf"
	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"go.uber.org/zap"
	"golang.org/x/net/idna"

	"github.com/caddy-esmtp/caddy-esmtp/authresults"
	"github.com/caddy-esmtp/caddy-esmtp/internal/caddyopt"
	"github.com/caddy-esmtp/caddy-esmtp/session"
)

func init() {
	caddy.RegisterModule(&SPF{})
}

// DefaultTimeout is the default of SPF.Timeout: RFC 7208 4.6.4 asks that
// a check be given at least 20 seconds.
const DefaultTimeout = 20 * time.Second

// SPF checks the sender's domain with SPF at MAIL and records the result.
type SPF struct {
	// Helo also checks the HELO identity and records its result as a
	// second spf result with the property smtp.helo (RFC 7208 2.3). For
	// the null sender the HELO identity is the one checked anyway.
	Helo bool `json:"helo,omitempty"`
	// RejectFail refuses MAIL with 550 5.7.23 when the result is fail
	// (and, with Helo, when the HELO identity's result is fail). Default:
	// the result is only recorded.
	RejectFail bool `json:"reject_fail,omitempty"`
	// DeferTemperror answers MAIL with 451 4.4.3 when the result is
	// temperror (a DNS failure or timeout), so the client tries again
	// later. Default: the result is only recorded.
	DeferTemperror bool `json:"defer_temperror,omitempty"`
	// Timeout bounds one check with all its DNS lookups; when it runs out
	// the result is temperror. Keep it below the handler's
	// handler_timeout. Default: 20s.
	Timeout caddy.Duration `json:"timeout,omitempty"`

	logger *zap.Logger
}

// CaddyModule returns the Caddy module information.
func (*SPF) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "esmtp.handlers.spf",
		New: func() caddy.Module { return new(SPF) },
	}
}

// Provision checks the timeout.
func (h *SPF) Provision(ctx caddy.Context) error {
	h.logger = ctx.Logger(h)
	switch {
	case h.Timeout < 0:
		return fmt.Errorf("spf: timeout must be positive, got %s", time.Duration(h.Timeout))
	case h.Timeout == 0:
		h.Timeout = caddy.Duration(DefaultTimeout)
	}
	return nil
}

// heloKey is the session value key of the HELO identity's result.
type heloKey struct{}

// heloResult is the HELO identity's result for a HELO name and client
// address, kept for the session's later transactions.
type heloResult struct {
	helo   string
	ip     netip.Addr
	result spf.Result
}

// Mail checks the MAIL FROM identity (and, with Helo, the HELO identity),
// records the results and refuses or defers as configured.
func (h *SPF) Mail(ctx context.Context, s *session.Session, from session.Path, _ session.Params) (*session.Reply, error) {
	txn := s.Transaction()
	if txn == nil {
		return nil, nil
	}
	if s.AuthUser() != "" {
		txn.AddLogField(zap.String("spf", "skipped"))
		return nil, nil
	}
	ip := s.RemoteIP().Unmap()
	if !ip.IsValid() {
		txn.AddLogField(zap.String("spf", "skipped"))
		return nil, nil
	}
	helo := s.Helo()

	// The HELO identity first: with reject_fail, a HELO that fails is
	// refused before MAIL FROM is looked up (RFC 7208 2.3).
	var heloRes spf.Result
	checkHelo := h.Helo && !from.IsNull()
	if checkHelo {
		heloRes = h.heloResult(ctx, s, ip, helo)
		txn.AddLogField(zap.String("spf_helo", string(heloRes)))
		if heloRes == spf.Fail && h.RejectFail {
			authresults.Add(s, authresults.Result{Method: "spf", Value: string(heloRes),
				Props: []authresults.Prop{{Type: "smtp", Name: "helo", Value: helo}}})
			return failReply(helo, ip), nil
		}
	}

	var (
		sender string // the identity as recorded: an address
		domain string // its domain, as looked up
		res    spf.Result
	)
	props := []authresults.Prop{}
	if from.IsNull() {
		sender, domain = "postmaster@"+helo, helo
		props = append(props, authresults.Prop{Type: "smtp", Name: "mailfrom", Value: sender},
			authresults.Prop{Type: "smtp", Name: "helo", Value: helo})
		res = h.check(ctx, s, ip, helo, "postmaster", helo)
	} else {
		sender, domain = from.Mailbox, from.Domain
		props = append(props, authresults.Prop{Type: "smtp", Name: "mailfrom", Value: sender})
		res = h.check(ctx, s, ip, helo, from.Local, from.Domain)
	}
	txn.AddLogField(zap.String("spf", string(res)))
	authresults.Add(s, authresults.Result{Method: "spf", Value: string(res), Props: props})
	if checkHelo {
		authresults.Add(s, authresults.Result{Method: "spf", Value: string(heloRes),
			Props: []authresults.Prop{{Type: "smtp", Name: "helo", Value: helo}}})
	}

	switch {
	case res == spf.Fail && h.RejectFail:
		return failReply(domain, ip), nil
	case res == spf.TempError && h.DeferTemperror:
		return session.NewReply(451, "4.4.3", "SPF: temporary DNS error checking "+domain+"; try again later"), nil
	}
	return nil, nil
}

// failReply is the 550 5.7.23 (RFC 7372) of a domain whose SPF record
// does not allow ip.
func failReply(domain string, ip netip.Addr) *session.Reply {
	return session.NewReply(550, "5.7.23", "SPF: "+domain+" does not designate "+ip.String()+" as permitted sender")
}

// heloResult returns the HELO identity's result, checked once per HELO
// name and client address of the session.
func (h *SPF) heloResult(ctx context.Context, s *session.Session, ip netip.Addr, helo string) spf.Result {
	if r, ok := s.Value(heloKey{}).(heloResult); ok && r.helo == helo && r.ip == ip {
		return r.result
	}
	res := h.check(ctx, s, ip, helo, "postmaster", helo)
	s.SetValue(heloKey{}, heloResult{helo: helo, ip: ip, result: res})
	return res
}

// check runs check_host() for ip and the identity local@domain, helo
// being the HELO name (for the macros). A domain that is not a
// multi-label domain name (an address literal) gives none (RFC 7208 4.3).
func (h *SPF) check(ctx context.Context, s *session.Session, ip netip.Addr, helo, local, domain string) spf.Result {
	ascii, ok := lookupDomain(domain)
	if !ok {
		return spf.None
	}
	// The library splits the sender at its first "@": a quoted local
	// part holding one would move the domain. The local part only feeds
	// the %{l} macro; postmaster stands in for such a one.
	if local == "" || strings.Contains(local, "@") {
		local = "postmaster"
	}
	ctx, cancel := context.WithTimeout(ctx, time.Duration(h.Timeout))
	defer cancel()
	res, err := spf.CheckHostWithSender(net.IP(ip.AsSlice()), helo, local+"@"+ascii,
		spf.WithContext(ctx), spf.WithResolver(s.Resolver()))
	if res == spf.TempError || res == spf.PermError {
		h.log(s).Info("spf check failed",
			zap.String("session", s.ID()), zap.String("domain", domain),
			zap.String("ip", ip.String()), zap.String("result", string(res)), zap.Error(err))
	}
	return res
}

// log is the module's logger, or the session's when not provisioned
// through Caddy.
func (h *SPF) log(s *session.Session) *zap.Logger {
	if h.logger != nil {
		return h.logger
	}
	return s.Logger()
}

// lookupDomain returns domain in the form it is looked up in (A-labels,
// lower case, no final dot), and whether it is a multi-label domain name
// that SPF can check (RFC 7208 4.3): no address literal, labels of 1 to
// 63 characters, at most 253 in all.
func lookupDomain(domain string) (string, bool) {
	d := strings.TrimSuffix(domain, ".")
	if d == "" || strings.HasPrefix(d, "[") {
		return "", false
	}
	a, err := idna.Lookup.ToASCII(d)
	if err != nil {
		// Lookup's rules refuse some names SPF records are published at
		// (underscores); an ASCII name is checked as it is.
		for i := 0; i < len(d); i++ {
			if d[i] >= 0x80 {
				return "", false
			}
		}
		a = d
	}
	a = strings.ToLower(a)
	if len(a) > 253 || !strings.Contains(a, ".") {
		return "", false
	}
	for _, l := range strings.Split(a, ".") {
		if l == "" || len(l) > 63 {
			return "", false
		}
		for i := 0; i < len(l); i++ {
			c := l[i]
			if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-' || c == '_') {
				return "", false
			}
		}
	}
	return a, true
}

// UnmarshalCaddyfile sets up the sub-handler from Caddyfile tokens. Syntax:
//
//	spf [{
//		helo
//		reject_fail
//		defer_temperror
//		timeout <duration>
//	}]
//
// Every option is given at most once.
func (h *SPF) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // the sub-handler name
	if d.NextArg() {
		return d.ArgErr()
	}
	opts := caddyopt.New("spf")
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		opt := d.Val()
		if err := opts.Once(d); err != nil {
			return err
		}
		flag := func(p *bool) error {
			if d.NextArg() {
				return d.ArgErr()
			}
			*p = true
			return nil
		}
		switch opt {
		case "helo":
			if err := flag(&h.Helo); err != nil {
				return err
			}
		case "reject_fail":
			if err := flag(&h.RejectFail); err != nil {
				return err
			}
		case "defer_temperror":
			if err := flag(&h.DeferTemperror); err != nil {
				return err
			}
		case "timeout":
			var v string
			if !d.Args(&v) || d.NextArg() {
				return d.ArgErr()
			}
			dur, err := caddy.ParseDuration(v)
			if err != nil || dur <= 0 {
				return d.Errf("spf: timeout must be a positive duration, got %q", v)
			}
			h.Timeout = caddy.Duration(dur)
		default:
			return d.Errf("spf: unknown option %q (known: helo, reject_fail, defer_temperror, timeout)", opt)
		}
	}
	return nil
}

// Interface guards
var (
	_ caddy.Provisioner     = (*SPF)(nil)
	_ caddyfile.Unmarshaler = (*SPF)(nil)
	_ session.MailHook      = (*SPF)(nil)
)
