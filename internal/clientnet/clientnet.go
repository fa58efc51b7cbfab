// Package clientnet is the one place SMTP client addresses are matched
// against IP ranges: it parses the ranges of options such as
// xclient_networks, relay_networks, remote_ip and exempt (CIDR ranges or
// single addresses, IPv4-mapped IPv6 as IPv4, masked), tells whether a
// client IP is in them, and groups client IPs into networks, as the
// greylist and rate_limit sub-handlers key their state: an IPv4 client by
// its /ipv4_prefix network, an IPv6 one by its /ipv6_prefix network. It
// also checks the options that configure this.
//
// Client IPs come from (*session.Session).RemoteIP, which unmaps
// IPv4-mapped addresses, so the ranges here are unmapped too.
package clientnet

import (
	"fmt"
	"net/netip"
	"strings"
)

// ParsePrefix parses one IP range: a CIDR range ("192.0.2.0/24",
// "2001:db8::/32") or a single address ("192.0.2.1", a /32 or /128). An
// IPv4-mapped IPv6 range of /96 or longer is taken as the IPv4 range it
// maps ("::ffff:192.0.2.0/120" is 192.0.2.0/24), and the range is masked
// ("192.0.2.1/24" is 192.0.2.0/24). The error names v.
func ParsePrefix(v string) (netip.Prefix, error) {
	var p netip.Prefix
	if strings.Contains(v, "/") {
		var err error
		if p, err = netip.ParsePrefix(v); err != nil {
			return netip.Prefix{}, fmt.Errorf("%q is not an IP address or CIDR range", v)
		}
	} else {
		a, err := netip.ParseAddr(v)
		if err != nil || a.Zone() != "" {
			return netip.Prefix{}, fmt.Errorf("%q is not an IP address or CIDR range", v)
		}
		p = netip.PrefixFrom(a, a.BitLen())
	}
	if p.Addr().Is4In6() && p.Bits() >= 96 {
		p = netip.PrefixFrom(p.Addr().Unmap(), p.Bits()-96)
	}
	return p.Masked(), nil
}

// ParsePrefixes parses a list of IP ranges with ParsePrefix. The error
// names the first value that is not one.
func ParsePrefixes(list []string) ([]netip.Prefix, error) {
	var out []netip.Prefix
	for _, v := range list {
		p, err := ParsePrefix(v)
		if err != nil {
			return nil, err
		}
		out = append(out, p)
	}
	return out, nil
}

// Contains reports whether the client IP ip (IPv4-mapped IPv6 taken as
// IPv4) is in one of prefixes. The zero Addr, the IP of a client on a unix
// socket, is in none.
func Contains(prefixes []netip.Prefix, ip netip.Addr) bool {
	if !ip.IsValid() {
		return false
	}
	ip = ip.Unmap()
	for _, p := range prefixes {
		if p.Contains(ip) {
			return true
		}
	}
	return false
}

// Options checks the ipv4_prefix, ipv6_prefix and exempt options of the
// sub-handler module: a prefix length of 0 takes its default (def4,
// def6), others must be 1 to 32 (1 to 128); it sets the lengths and
// returns the exempt networks, parsed by ParsePrefix. Errors start with
// "module: ".
func Options(module string, ipv4Prefix, ipv6Prefix *int, def4, def6 int, exempt []string) ([]netip.Prefix, error) {
	var err error
	if *ipv4Prefix, err = prefixLen(module, "ipv4_prefix", *ipv4Prefix, def4, 32); err != nil {
		return nil, err
	}
	if *ipv6Prefix, err = prefixLen(module, "ipv6_prefix", *ipv6Prefix, def6, 128); err != nil {
		return nil, err
	}
	var out []netip.Prefix
	for i, v := range exempt {
		p, err := ParsePrefix(v)
		if err != nil {
			return nil, fmt.Errorf("%s: exempt[%d]: %v", module, i, err)
		}
		out = append(out, p)
	}
	return out, nil
}

// prefixLen checks the prefix length option name of the sub-handler
// module: 0 takes def, anything else must be 1 to bits.
func prefixLen(module, name string, v, def, bits int) (int, error) {
	switch {
	case v == 0:
		return def, nil
	case v < 0 || v > bits:
		return 0, fmt.Errorf("%s: %s must be 1 to %d, got %d", module, name, bits, v)
	}
	return v, nil
}

// Network returns the network of the valid client IP ip, such as
// "192.0.2.0/24", as ipv4Prefix and ipv6Prefix say (IPv4-mapped IPv6 taken
// as IPv4). ok is false, and network "", when ip is in one of exempt.
func Network(ip netip.Addr, exempt []netip.Prefix, ipv4Prefix, ipv6Prefix int) (network string, ok bool) {
	ip = ip.Unmap()
	if Contains(exempt, ip) {
		return "", false
	}
	bits := ipv4Prefix
	if ip.Is6() {
		bits = ipv6Prefix
	}
	p, _ := ip.Prefix(bits)
	return p.String(), true
}
