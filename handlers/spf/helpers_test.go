package spf

import (
	"net"
	"testing"

	"github.com/miekg/dns"

	"github.com/caddy-esmtp/caddy-esmtp/internal/dnstest"
)

// zone is what the test DNS server answers: records by owner name
// (lower case, no final dot). A name in the zone without records of the
// asked type answers NOERROR and no data; a name not in it NXDOMAIN.
type zone map[string]*node

// node is one owner name's records, or an rcode, or no answer at all.
type node struct {
	txt   [][]string // one []string per TXT record (its character-strings)
	a     []string
	mx    []string // exchange names
	rcode int      // dns.RcodeServerFailure: SERVFAIL for every type
	drop  bool     // never answered: the client times out
}

// dnsServer is the project's test DNS server serving a zone.
type dnsServer struct{ *dnstest.Server }

// startDNS serves z until the test ends.
func startDNS(t testing.TB, z zone) *dnsServer {
	t.Helper()
	ds := &dnsServer{dnstest.Start(t)}
	for name, n := range z {
		fqdn := dns.Fqdn(name)
		hdr := func(rrtype uint16) dns.RR_Header {
			return dns.RR_Header{Name: fqdn, Class: dns.ClassINET, Ttl: 60, Rrtype: rrtype}
		}
		ds.Exists(name)
		switch {
		case n.drop:
			ds.Drop(name)
		case n.rcode == dns.RcodeServerFailure:
			ds.ServFail(name)
		case n.rcode != 0:
			t.Fatalf("zone: %s: rcode %d is not served", name, n.rcode)
		}
		for _, txt := range n.txt {
			ds.Add(&dns.TXT{Hdr: hdr(dns.TypeTXT), Txt: txt})
		}
		for _, a := range n.a {
			ds.Add(&dns.A{Hdr: hdr(dns.TypeA), A: net.ParseIP(a)})
		}
		for i, mx := range n.mx {
			ds.Add(&dns.MX{Hdr: hdr(dns.TypeMX), Preference: uint16(10 * (i + 1)), Mx: dns.Fqdn(mx)})
		}
	}
	return ds
}

// resolver is a resolver that asks only ds.
func (ds *dnsServer) resolver() *net.Resolver { return ds.Resolver() }

// count returns how often name was asked, whatever the type.
func (ds *dnsServer) count(name string) int { return ds.QueriesAll(name) }
