package spf

import (
	"context"
	"net"
	"strings"
	"sync"
	"testing"

	"github.com/miekg/dns"
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
	rcode int      // non-zero: answered with this rcode for every type
	drop  bool     // never answered: the client times out
}

// dnsServer is an authoritative DNS server on loopback UDP.
type dnsServer struct {
	addr    string
	mu      sync.Mutex
	queries map[string]int // per name
}

// startDNS serves z until the test ends.
func startDNS(t testing.TB, z zone) *dnsServer {
	t.Helper()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ds := &dnsServer{addr: pc.LocalAddr().String(), queries: map[string]int{}}
	srv := &dns.Server{PacketConn: pc, Handler: dns.HandlerFunc(func(w dns.ResponseWriter, req *dns.Msg) {
		q := req.Question[0]
		name := strings.TrimSuffix(strings.ToLower(q.Name), ".")
		ds.mu.Lock()
		ds.queries[name]++
		ds.mu.Unlock()
		n := z[name]
		if n != nil && n.drop {
			return
		}
		m := new(dns.Msg)
		m.SetReply(req)
		m.Authoritative = true
		hdr := dns.RR_Header{Name: q.Name, Class: dns.ClassINET, Ttl: 60, Rrtype: q.Qtype}
		switch {
		case n == nil:
			m.Rcode = dns.RcodeNameError
		case n.rcode != 0:
			m.Rcode = n.rcode
		case q.Qtype == dns.TypeTXT:
			for _, txt := range n.txt {
				m.Answer = append(m.Answer, &dns.TXT{Hdr: hdr, Txt: txt})
			}
		case q.Qtype == dns.TypeA:
			for _, a := range n.a {
				m.Answer = append(m.Answer, &dns.A{Hdr: hdr, A: net.ParseIP(a)})
			}
		case q.Qtype == dns.TypeMX:
			for i, mx := range n.mx {
				m.Answer = append(m.Answer, &dns.MX{Hdr: hdr, Preference: uint16(10 * (i + 1)), Mx: dns.Fqdn(mx)})
			}
		}
		w.WriteMsg(m)
	})}
	started := make(chan struct{})
	srv.NotifyStartedFunc = func() { close(started) }
	go srv.ActivateAndServe()
	<-started
	t.Cleanup(func() { srv.Shutdown() })
	return ds
}

// resolver is a resolver that asks only ds.
func (ds *dnsServer) resolver() *net.Resolver {
	var d net.Dialer
	return &net.Resolver{
		PreferGo: true,
		Dial: func(ctx context.Context, network, _ string) (net.Conn, error) {
			return d.DialContext(ctx, "udp", ds.addr)
		},
	}
}

// count returns how often name was asked.
func (ds *dnsServer) count(name string) int {
	ds.mu.Lock()
	defer ds.mu.Unlock()
	return ds.queries[name]
}
