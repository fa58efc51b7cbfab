package relay

import (
	"context"
	"fmt"
	"path/filepath"
	"sync"

	"github.com/caddyserver/caddy/v2"
	"go.uber.org/zap"

	"github.com/caddy-esmtp/caddy-esmtp/internal/testhooks"
	"github.com/caddy-esmtp/caddy-esmtp/mtasts"
	"github.com/caddy-esmtp/caddy-esmtp/session"
)

// MTA-STS (RFC 8461) with to mx: see the package documentation.

// Log values of relay_tls_policy.
const (
	stsEnforce = "mta-sts-enforce"
	stsTesting = "mta-sts-testing"
)

// replySTSNoMX defers a domain whose MX hosts are none of those its
// enforced MTA-STS policy names (RFC 8461 4.1): temporary, as the policy
// or the MX records may be mid-change.
var replySTSNoMX = session.NewReply(451, "4.4.4", "No mail server of the recipient domain matches its MTA-STS policy; try again later")

// Defer reasons of MTA-STS enforce, as relay_defer_reason logs them.
const (
	reasonSTSNoMX  = "mta-sts: no mx host in the policy"
	reasonSTSNoTLS = "mta-sts: no starttls"
	reasonSTSCert  = "mta-sts: certificate not verified"
)

// stsCaches are the MTA-STS caches by file, shared by every relay and
// kept across config reloads (the file keeps them across restarts).
var stsCaches sync.Map // path -> *mtasts.Cache

// provisionMTASTS sets up the MTA-STS cache: on by default with to mx.
func (r *Relay) provisionMTASTS() error {
	if r.MTASTS != nil && *r.MTASTS && !r.mx {
		return fmt.Errorf("relay: mta_sts: only with to mx")
	}
	if !r.mx || r.MTASTS != nil && !*r.MTASTS {
		r.sts = nil
		return nil
	}
	path := r.MTASTSCache
	if path == "" {
		path = filepath.Join(caddy.AppDataDir(), "esmtp", "mta-sts.json")
	}
	if c, ok := stsCaches.Load(path); ok {
		r.sts = c.(*mtasts.Cache)
		return nil
	}
	f := &mtasts.Fetcher{}
	if testhooks.MTASTSFetcher != nil {
		f = testhooks.MTASTSFetcher()
	}
	c, err := mtasts.NewCache(f, path)
	if err != nil {
		r.logger.Warn("MTA-STS cache not loaded; starting empty", zap.String("file", path), zap.Error(err))
		if c, err = mtasts.NewCache(f, ""); err != nil {
			return fmt.Errorf("relay: mta_sts_cache: %v", err)
		}
	}
	actual, _ := stsCaches.LoadOrStore(path, c)
	r.sts = actual.(*mtasts.Cache)
	return nil
}

// stsHosts applies the MTA-STS policy of domain to its MX hosts: with
// enforce, only the hosts the policy names are kept (none: the domain is
// deferred with 4.4.4), and each must then take STARTTLS with a
// certificate that verifies for its name (see stsCheck); with testing,
// the hosts are kept and what enforce would refuse is logged. It returns
// the hosts and the value of relay_tls_policy ("" without a policy that
// applies).
func (r *Relay) stsHosts(ctx context.Context, resolver session.Resolver, domain string, hosts []string) ([]string, string, *setupError) {
	if r.sts == nil {
		return hosts, "", nil
	}
	p, err := r.sts.LookupWith(ctx, resolver, domain)
	if err != nil {
		r.logger.Debug("MTA-STS policy discovery failed", zap.String("domain", domain), zap.Bool("cached_policy_used", p != nil), zap.Error(err))
	}
	if p == nil || p.Mode == mtasts.ModeNone {
		return hosts, "", nil
	}
	var kept, outside []string
	for _, h := range hosts {
		if p.Match(h) {
			kept = append(kept, h)
		} else {
			outside = append(outside, h)
		}
	}
	if p.Mode == mtasts.ModeTesting {
		if len(outside) > 0 {
			r.logger.Info("MTA-STS testing: MX hosts outside the policy", zap.String("domain", domain), zap.Strings("mx", outside))
		}
		return hosts, stsTesting, nil
	}
	if len(outside) > 0 {
		r.logger.Info("MTA-STS enforce: MX hosts outside the policy not used", zap.String("domain", domain), zap.Strings("mx", outside))
	}
	if len(kept) == 0 {
		return nil, stsEnforce, failed(replySTSNoMX, "no MX host of %s matches its MTA-STS policy (enforce)", domain).because(reasonSTSNoMX).under(stsEnforce)
	}
	return kept, stsEnforce, nil
}

// stsCheck is the TLS requirement of an MTA-STS policy for the upstream t,
// once greeted: with enforce, TLS and a verified certificate (else 4.7.4 or
// 4.7.5, and the message is never sent in clear); with testing, a log line
// when enforce would have refused it.
func (r *Relay) stsCheck(t target, secure, verified bool) *setupError {
	if t.sts == "" || secure && verified {
		return nil
	}
	if t.sts == stsTesting {
		r.logger.Info("MTA-STS testing: TLS to the MX host would not satisfy the policy", zap.String("upstream", t.addr), zap.String("mx", t.name), zap.Bool("tls", secure))
		return nil
	}
	if !secure {
		return failed(replyNoTLS, "%s (%s): no STARTTLS (MTA-STS enforce)", t.addr, t.name).because(reasonSTSNoTLS)
	}
	return failed(replyTLSFailed, "%s: certificate does not verify for %s (MTA-STS enforce)", t.addr, t.name).because(reasonSTSCert)
}
