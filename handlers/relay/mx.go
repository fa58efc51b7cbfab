package relay

import (
	"cmp"
	"context"
	"errors"
	"net"
	"net/netip"
	"strings"

	"github.com/miekg/dns"
	"go.uber.org/zap"

	"github.com/caddy-esmtp/caddy-esmtp/dnscache"
	"github.com/caddy-esmtp/caddy-esmtp/session"
)

// Replies for failures of the MX lookup: temporary when DNS failed, and
// permanent when the domain has no mail server or refuses mail.
var (
	replyDNSTemp = session.NewReply(451, "4.4.3", "DNS lookup of the recipient domain failed; try again later")
	replyNoMX    = session.NewReply(550, "5.1.2", "Recipient domain has no mail server")
	replyNullMX  = session.NewReply(556, "5.1.10", "Recipient domain does not accept mail (null MX)")
)

// maxTargets bounds the addresses tried for one recipient domain.
const maxTargets = 10

// mxTargets returns the addresses to try for domain, best first: its MX
// hosts by preference, or the domain itself when it has no MX record
// (RFC 5321 5.1), or the address of a literal such as [192.0.2.1].
func (r *Relay) mxTargets(ctx context.Context, resolver session.Resolver, domain string) ([]target, *setupError) {
	if strings.HasPrefix(domain, "[") {
		lit := strings.TrimSuffix(strings.TrimPrefix(domain, "["), "]")
		if len(lit) > 5 && strings.EqualFold(lit[:5], "IPv6:") {
			lit = lit[5:]
		}
		ip, err := netip.ParseAddr(lit)
		if err != nil {
			return nil, failed(replyNoMX, "address literal %s: %v", domain, err)
		}
		return []target{{addr: netip.AddrPortFrom(ip, uint16(r.MXPort)).String(), name: ip.String()}}, nil
	}
	var hosts []string
	implicit := false
	mxs, err := resolver.LookupMX(ctx, domain)
	// DNSSEC (DANE): only a dnscache.Resolver says; the answer is cached.
	dr, _ := resolver.(*dnscache.Resolver)
	mxSecure := dr != nil && (err == nil || isNotFound(err)) && secureAnswer(ctx, dr, domain, dns.TypeMX)
	switch {
	case err == nil || len(mxs) > 0:
		if len(mxs) == 1 && (mxs[0].Host == "." || mxs[0].Host == "") {
			return nil, failed(replyNullMX, "%s has a null MX", domain)
		}
		for _, mx := range mxs {
			if h := strings.TrimSuffix(mx.Host, "."); h != "" {
				hosts = append(hosts, h)
			}
		}
	case isNotFound(err):
		hosts, implicit = []string{domain}, true
	default:
		return nil, failed(replyDNSTemp, "MX lookup of %s: %v", domain, err)
	}
	hosts, sts, serr := r.stsHosts(ctx, resolver, domain, hosts)
	if serr != nil {
		return nil, serr
	}
	var targets []target
	var lastErr error
	for _, h := range hosts {
		addrs, err := resolver.LookupIPAddr(ctx, h)
		if err != nil {
			lastErr = err
			continue
		}
		secure := mxSecure && hostSecure(ctx, dr, h)
		for _, a := range addrs {
			ip, ok := netip.AddrFromSlice(a.IP)
			if !ok {
				continue
			}
			targets = append(targets, target{addr: netip.AddrPortFrom(ip.Unmap(), uint16(r.MXPort)).String(), name: h, secure: secure, sts: sts})
		}
		if len(targets) >= maxTargets {
			return targets[:maxTargets], nil
		}
	}
	if len(targets) == 0 {
		if implicit && isNotFound(lastErr) {
			return nil, failed(replyNoMX, "%s has no MX and no address", domain)
		}
		return nil, failed(replyDNSTemp, "no address for the mail servers of %s: %v", domain, lastErr)
	}
	return targets, nil
}

func isNotFound(err error) bool {
	var de *net.DNSError
	return errors.As(err, &de) && de.IsNotFound
}

// dialMX connects to the first mail server of domain that answers, found
// with the relay's own resolver or else the session's.
func (r *Relay) dialMX(ctx context.Context, s *session.Session, domain string) (*upstream, *setupError) {
	targets, serr := r.mxTargets(ctx, r.resolverFor(s), domain)
	if serr != nil {
		return nil, serr
	}
	var req bool
	if txn := s.Transaction(); txn != nil {
		req = requiresTLS(txn.MailParams)
	}
	return r.dialTargets(ctx, s, domain, targets, req, false)
}

// resolverFor is the resolver for MX lookups: the relay's own, or else
// the session's.
func (r *Relay) resolverFor(s *session.Session) session.Resolver {
	return cmp.Or(r.resolver, s.Resolver())
}

// dialTargets connects to the first of the mail servers of domain (its
// targets, best first) that answers, each with its TLS policy (see
// dane.go). For a REQUIRETLS message (req), a mail server whose TLS is
// not verified (DANE), or that does not offer REQUIRETLS, is skipped with
// 550 5.7.30. waived (TLS-Required: No) makes every policy
// opportunistic. The failure returned is the last temporary one, else the
// last one.
func (r *Relay) dialTargets(ctx context.Context, s *session.Session, domain string, targets []target, req, waived bool) (*upstream, *setupError) {
	hello := s.Hostname()
	resolver := r.resolverFor(s)
	var last *setupError
	for _, t := range targets {
		pol, serr := r.policyFor(ctx, resolver, domain, t, waived)
		var up *upstream
		switch {
		case serr != nil:
		case req && !pol.verified:
			serr = failed(replyRequireTLS, "REQUIRETLS: %s (%s): TLS policy %s, not verified", t.addr, t.name, pol.kind).because(reasonNotVerified)
		default:
			up, serr = r.connect(ctx, t, hello, pol)
		}
		if serr == nil && req && !up.hasExt("REQUIRETLS") {
			up.quit()
			serr = failed(replyRequireTLS, "REQUIRETLS: %s (%s) does not offer REQUIRETLS", t.addr, t.name).because(reasonNoRequireTLSExt)
		}
		if serr != nil && pol != nil {
			serr.under(pol.kind)
		}
		if serr == nil {
			if ce := r.logger.Check(zap.DebugLevel, "upstream TLS policy"); ce != nil && pol != nil {
				ce.Write(zap.String("domain", domain), zap.String("upstream", t.addr), zap.String("relay_tls_policy", pol.kind), zap.String("why", pol.why))
			}
			return up, nil
		}
		r.logger.Debug("mail server failed, trying the next", zap.String("domain", domain), zap.String("upstream", t.addr),
			zap.String("relay_tls_policy", serr.policy), zap.String("relay_defer_reason", serr.reason), zap.Error(serr))
		if last == nil || serr.reply.Code < 500 || last.reply.Code >= 500 {
			last = serr
		}
		if ctx.Err() != nil {
			break
		}
	}
	if last == nil {
		last = failed(replyUnreachable, "no mail server to try for %s", domain)
	}
	return nil, last
}
