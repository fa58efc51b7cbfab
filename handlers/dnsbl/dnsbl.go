// Package dnsbl is the sub-handler esmtp.handlers.dnsbl: it looks the
// client's IP address up in DNS blocklists and refuses a listed client
// with 554 5.7.1 "Service unavailable; client [ip] blocked using <zone>".
//
//	dnsbl zen.spamhaus.org bl.spamcop.net {
//		resolver 127.0.0.1:53   # default: the esmtp handler's resolvers
//		timeout 5s
//		at rcpt                 # default: connect
//	}
//
// The address is looked up as its reversed octets (IPv4: 192.0.2.1 is
// 1.2.0.192.<zone>) or nibbles (IPv6, RFC 5782) under each zone, all zones
// at once. It is listed when a zone answers an A record in 127.0.0.0/8;
// 127.255.255.0/24 answers are the list's errors (Spamhaus's "query
// refused", sent to public resolvers) and are logged, not counted. When
// several zones list the client, the first in the configuration is named.
//
// At connect (the default) a listed client gets the 554 instead of the
// greeting and is disconnected. With `at rcpt` it gets the 554 for each
// RCPT TO, except to postmaster (<Postmaster>, or postmaster at any
// domain), so that a listed sender can still reach a human about it; the
// lookup is then made at the first RCPT.
//
// DNS errors and timeouts fail open: the client is not refused, and the
// failure is logged at warn level. Blocklists refuse queries through
// public resolvers: give a local caching resolver, in the esmtp handler's
// `resolvers` (shared, cached) or in this sub-handler's own `resolver`.
package dnsbl

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"sync"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"go.uber.org/zap"

	"github.com/caddy-esmtp/caddy-esmtp/internal/caddyopt"
	"github.com/caddy-esmtp/caddy-esmtp/session"
)

func init() {
	caddy.RegisterModule(&DNSBL{})
}

// DefaultTimeout is the default of DNSBL.Timeout.
const DefaultTimeout = 5 * time.Second

// DNSBL refuses clients listed in DNS blocklists.
type DNSBL struct {
	// Zones are the blocklists' DNS zones, such as zen.spamhaus.org.
	// At least one is required.
	Zones []string `json:"zones,omitempty"`
	// Resolver is the DNS server asked, as host:port or an IP address
	// (port 53), instead of the esmtp handler's resolvers (its
	// `resolvers` option, or the system's resolver without it).
	Resolver string `json:"resolver,omitempty"`
	// Timeout bounds the lookup in all zones; a zone that has not
	// answered by then does not list the client. Default: 5s.
	Timeout caddy.Duration `json:"timeout,omitempty"`
	// At is when a listed client is refused: "connect" (default: 554
	// instead of the greeting, then the connection closes) or "rcpt"
	// (554 to each RCPT TO except to postmaster).
	At string `json:"at,omitempty"`

	zones    []string
	resolver session.Resolver // nil: the session's (Session.Resolver)
	logger   *zap.Logger
}

// CaddyModule returns the Caddy module information.
func (*DNSBL) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "esmtp.handlers.dnsbl",
		New: func() caddy.Module { return new(DNSBL) },
	}
}

// Provision checks the zones, the resolver address and the options.
func (b *DNSBL) Provision(ctx caddy.Context) error {
	b.logger = ctx.Logger(b)
	if len(b.Zones) == 0 {
		return errors.New("dnsbl: zones is required")
	}
	b.zones = nil
	for i, z := range b.Zones {
		zone, err := checkZone(z)
		if err != nil {
			return fmt.Errorf("dnsbl: zones[%d]: %v", i, err)
		}
		b.zones = append(b.zones, zone)
	}
	switch b.At {
	case "", "connect", "rcpt":
	default:
		return fmt.Errorf("dnsbl: at: %q is not connect or rcpt", b.At)
	}
	switch {
	case b.Timeout < 0:
		return fmt.Errorf("dnsbl: timeout must be positive, got %s", time.Duration(b.Timeout))
	case b.Timeout == 0:
		b.Timeout = caddy.Duration(DefaultTimeout)
	}
	b.resolver = nil
	if b.Resolver != "" {
		addr, err := resolverAddr(b.Resolver)
		if err != nil {
			return fmt.Errorf("dnsbl: resolver: %v", err)
		}
		var d net.Dialer
		b.resolver = &net.Resolver{
			PreferGo: true,
			Dial: func(ctx context.Context, network, _ string) (net.Conn, error) {
				return d.DialContext(ctx, network, addr)
			},
		}
	}
	return nil
}

// checkZone returns a zone in the form it is queried in: lower case,
// without dots at the ends.
func checkZone(z string) (string, error) {
	zone := strings.ToLower(strings.Trim(strings.TrimSpace(z), "."))
	if zone == "" || strings.Contains(zone, "..") || len(zone) > 180 {
		return "", fmt.Errorf("%q is not a DNS zone", z)
	}
	for _, c := range zone {
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-' || c == '.' || c == '_') {
			return "", fmt.Errorf("%q is not a DNS zone", z)
		}
	}
	return zone, nil
}

// resolverAddr returns host:port for a resolver given as host:port or
// as an IP address alone.
func resolverAddr(s string) (string, error) {
	if ip, err := netip.ParseAddr(strings.Trim(s, "[]")); err == nil {
		return net.JoinHostPort(ip.String(), "53"), nil
	}
	host, port, err := net.SplitHostPort(s)
	if err != nil || host == "" || port == "" {
		return "", fmt.Errorf("%q is not host:port or an IP address", s)
	}
	return s, nil
}

// listing is the lookup result of one client, kept for the session.
type listing struct {
	zone string // the zone that lists the client; "" when none does
}

// listingKey is the session value key of a client's listing.
type listingKey struct{}

// Connect looks the client up and, unless `at rcpt`, refuses a listed one.
func (b *DNSBL) Connect(ctx context.Context, s *session.Session) (*session.Reply, error) {
	if b.At == "rcpt" {
		return nil, nil
	}
	ip, zone := b.listed(ctx, s)
	if zone == "" {
		return nil, nil
	}
	// The engine writes no enhanced code on a greeting: it is in the text.
	return &session.Reply{Code: 554, Lines: []string{"5.7.1 " + blockedText(ip, zone)}, Close: true}, nil
}

// Rcpt refuses each recipient but postmaster of a listed client, with
// `at rcpt`.
func (b *DNSBL) Rcpt(ctx context.Context, s *session.Session, to session.Path, _ session.Params) (*session.Reply, error) {
	if b.At != "rcpt" || to.Domain == "" || strings.EqualFold(to.Local, "postmaster") || strings.EqualFold(to.Local, `"postmaster"`) {
		return nil, nil
	}
	ip, zone := b.listed(ctx, s)
	if zone == "" {
		return nil, nil
	}
	return session.NewReply(554, "5.7.1", blockedText(ip, zone)), nil
}

func blockedText(ip netip.Addr, zone string) string {
	return "Service unavailable; client [" + ip.String() + "] blocked using " + zone
}

// listed returns the client's IP and the zone that lists it ("" for none),
// looking it up once per session (per client after XCLIENT).
func (b *DNSBL) listed(ctx context.Context, s *session.Session) (netip.Addr, string) {
	ip := s.RemoteIP()
	if !ip.IsValid() {
		return ip, ""
	}
	if l, ok := s.Value(listingKey{}).(listing); ok {
		return ip, l.zone
	}
	zone := b.lookup(ctx, s, ip)
	s.SetValue(listingKey{}, listing{zone: zone})
	return ip, zone
}

// lookup asks every zone about ip at once and returns the first zone in
// the configuration's order that lists it.
func (b *DNSBL) lookup(ctx context.Context, s *session.Session, ip netip.Addr) string {
	ctx, cancel := context.WithTimeout(ctx, time.Duration(b.Timeout))
	defer cancel()
	rev := reverse(ip)
	found := make([]bool, len(b.zones))
	var wg sync.WaitGroup
	for i, zone := range b.zones {
		wg.Add(1)
		go func() {
			defer wg.Done()
			found[i] = b.query(ctx, s, ip, zone, rev+"."+zone+".")
		}()
	}
	wg.Wait()
	for i, f := range found {
		if f {
			b.logger.Info("client listed",
				zap.String("session", s.ID()),
				zap.String("remote", s.RemoteAddr().String()),
				zap.String("zone", b.zones[i]))
			return b.zones[i]
		}
	}
	return ""
}

// query looks name up and reports whether its answer lists the client.
func (b *DNSBL) query(ctx context.Context, s *session.Session, ip netip.Addr, zone, name string) bool {
	addrs, err := lookup4(ctx, cmp.Or(b.resolver, s.Resolver()), name)
	if err != nil {
		var de *net.DNSError
		if errors.As(err, &de) && de.IsNotFound {
			return false // not listed
		}
		b.logger.Warn("dnsbl lookup failed: not refusing the client",
			zap.String("session", s.ID()), zap.String("ip", ip.String()),
			zap.String("zone", zone), zap.Error(err))
		return false
	}
	listed := false
	for _, a := range addrs {
		a = a.Unmap()
		switch {
		case refusedNet.Contains(a):
			b.logger.Warn("dnsbl refused the query (does it refuse your resolver?): not refusing the client",
				zap.String("session", s.ID()), zap.String("ip", ip.String()),
				zap.String("zone", zone), zap.String("answer", a.String()))
		case listedNet.Contains(a):
			listed = true
		default:
			b.logger.Warn("dnsbl answered outside 127.0.0.0/8: ignored",
				zap.String("session", s.ID()), zap.String("zone", zone), zap.String("answer", a.String()))
		}
	}
	return listed
}

// lookup4 returns the IPv4 addresses of name: with LookupNetIP when the
// resolver has it (*net.Resolver, dnscache), so that only A is asked.
func lookup4(ctx context.Context, r session.Resolver, name string) ([]netip.Addr, error) {
	if r, ok := r.(interface {
		LookupNetIP(ctx context.Context, network, host string) ([]netip.Addr, error)
	}); ok {
		return r.LookupNetIP(ctx, "ip4", name)
	}
	addrs, err := r.LookupIPAddr(ctx, name)
	var ips []netip.Addr
	for _, a := range addrs {
		if ip, ok := netip.AddrFromSlice(a.IP); ok && ip.Unmap().Is4() {
			ips = append(ips, ip.Unmap())
		}
	}
	if err == nil && len(ips) == 0 {
		err = &net.DNSError{Err: "no such host", Name: name, IsNotFound: true}
	}
	return ips, err
}

var (
	listedNet  = netip.MustParsePrefix("127.0.0.0/8")
	refusedNet = netip.MustParsePrefix("127.255.255.0/24")
)

// reverse returns the DNSBL form of ip: reversed octets for IPv4,
// reversed nibbles for IPv6 (RFC 5782 2.1, 2.4).
func reverse(ip netip.Addr) string {
	ip = ip.Unmap()
	var b strings.Builder
	if ip.Is4() {
		a := ip.As4()
		for i := 3; i >= 0; i-- {
			fmt.Fprintf(&b, "%d", a[i])
			if i > 0 {
				b.WriteByte('.')
			}
		}
		return b.String()
	}
	const hex = "0123456789abcdef"
	a := ip.As16()
	for i := 15; i >= 0; i-- {
		b.WriteByte(hex[a[i]&0xf])
		b.WriteByte('.')
		b.WriteByte(hex[a[i]>>4])
		if i > 0 {
			b.WriteByte('.')
		}
	}
	return b.String()
}

// UnmarshalCaddyfile sets up the sub-handler from Caddyfile tokens. Syntax:
//
//	dnsbl [<zone...>] [{
//		zone     <zone...>
//		resolver <host:port>
//		timeout  <duration>
//		at       connect|rcpt
//	}]
//
// zone may be repeated; every other option is given at most once.
func (b *DNSBL) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // the sub-handler name

	opts := caddyopt.New("dnsbl", "zone", "zones") // the options given, each at most once
	addZones := func(zones []string) error {
		for _, z := range zones {
			if _, err := checkZone(z); err != nil {
				return d.Errf("dnsbl: %v", err)
			}
		}
		b.Zones = append(b.Zones, zones...)
		return nil
	}
	if err := addZones(d.RemainingArgs()); err != nil {
		return err
	}
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		opt := d.Val()
		if err := opts.Once(d); err != nil {
			return err
		}
		switch opt {
		case "zone", "zones":
			args := d.RemainingArgs()
			if len(args) == 0 {
				return d.ArgErr()
			}
			if err := addZones(args); err != nil {
				return err
			}
		case "resolver":
			if !d.Args(&b.Resolver) || d.NextArg() {
				return d.ArgErr()
			}
			if _, err := resolverAddr(b.Resolver); err != nil {
				return d.Errf("dnsbl: resolver: %v", err)
			}
		case "timeout":
			var v string
			if !d.Args(&v) || d.NextArg() {
				return d.ArgErr()
			}
			dur, err := caddy.ParseDuration(v)
			if err != nil || dur <= 0 {
				return d.Errf("dnsbl: timeout must be a positive duration, got %q", v)
			}
			b.Timeout = caddy.Duration(dur)
		case "at":
			if !d.Args(&b.At) || d.NextArg() {
				return d.ArgErr()
			}
			if b.At != "connect" && b.At != "rcpt" {
				return d.Errf("dnsbl: at: %q is not connect or rcpt", b.At)
			}
		default:
			return d.Errf("dnsbl: unknown option %q (known: zone, resolver, timeout, at)", opt)
		}
	}
	if len(b.Zones) == 0 {
		return d.Err("dnsbl: no zones: give at least one blocklist zone")
	}
	return nil
}

// Interface guards
var (
	_ caddy.Provisioner     = (*DNSBL)(nil)
	_ caddyfile.Unmarshaler = (*DNSBL)(nil)
	_ session.ConnectHook   = (*DNSBL)(nil)
	_ session.RcptHook      = (*DNSBL)(nil)
)
