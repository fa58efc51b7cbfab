// Package clientnet groups SMTP client addresses into networks, as the
// greylist and rate_limit sub-handlers key their state: an IPv4 client by
// its /ipv4_prefix network, an IPv6 one by its /ipv6_prefix network,
// IPv4-mapped IPv6 addresses as IPv4, with a list of exempt networks. It
// also checks the options that configure this.
package clientnet

import (
	"fmt"
	"net"
	"net/netip"
)

// Options checks the ipv4_prefix, ipv6_prefix and exempt options of the
// sub-handler module: a prefix length of 0 takes its default (def4,
// def6), others must be 1 to 32 (1 to 128); it sets the lengths and
// returns the exempt networks, parsed by ParseNetworks. Errors start with
// "module: ".
func Options(module string, ipv4Prefix, ipv6Prefix *int, def4, def6 int, exempt []string) ([]netip.Prefix, error) {
	var err error
	if *ipv4Prefix, err = prefixLen(module, "ipv4_prefix", *ipv4Prefix, def4, 32); err != nil {
		return nil, err
	}
	if *ipv6Prefix, err = prefixLen(module, "ipv6_prefix", *ipv6Prefix, def6, 128); err != nil {
		return nil, err
	}
	return ParseNetworks(module, exempt)
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

// ParseNetworks parses the exempt list of the sub-handler module: CIDR
// prefixes or single addresses, IPv4-mapped ones as IPv4, masked. Errors
// start with "module: exempt[i]: ".
func ParseNetworks(module string, in []string) ([]netip.Prefix, error) {
	var out []netip.Prefix
	for i, s := range in {
		p, err := netip.ParsePrefix(s)
		if err != nil {
			a, aerr := netip.ParseAddr(s)
			if aerr != nil {
				return nil, fmt.Errorf("%s: exempt[%d]: %q is not a CIDR network or an IP address", module, i, s)
			}
			p = netip.PrefixFrom(a.Unmap(), a.Unmap().BitLen())
		}
		if p.Addr().Is4In6() && p.Bits() >= 96 {
			p = netip.PrefixFrom(p.Addr().Unmap(), p.Bits()-96)
		}
		out = append(out, p.Masked())
	}
	return out, nil
}

// Network returns the network of the client address a, such as
// "192.0.2.0/24", with isIP true. For an address that is no IP it returns
// a.String() ("" for nil) with isIP false. ok is false, and network "",
// when the IP is in one of exempt.
func Network(a net.Addr, exempt []netip.Prefix, ipv4Prefix, ipv6Prefix int) (network string, isIP, ok bool) {
	ip := AddrIP(a)
	if !ip.IsValid() {
		if a == nil {
			return "", false, true
		}
		return a.String(), false, true
	}
	for _, p := range exempt {
		if p.Contains(ip) {
			return "", false, false
		}
	}
	bits := ipv4Prefix
	if ip.Is6() {
		bits = ipv6Prefix
	}
	p, _ := ip.Prefix(bits)
	return p.String(), true, true
}

// AddrIP is the IP of a client address (IPv4-mapped IPv6 as IPv4), or the
// zero Addr.
func AddrIP(a net.Addr) netip.Addr {
	switch t := a.(type) {
	case *net.TCPAddr:
		ip, _ := netip.AddrFromSlice(t.IP)
		return ip.Unmap()
	case nil:
		return netip.Addr{}
	}
	if ap, err := netip.ParseAddrPort(a.String()); err == nil {
		return ap.Addr().Unmap()
	}
	ip, _ := netip.ParseAddr(a.String())
	return ip.Unmap()
}
