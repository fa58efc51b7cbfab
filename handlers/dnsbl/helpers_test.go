package dnsbl

import (
	"net"
	"strings"
	"sync"
	"testing"

	"github.com/miekg/dns"
)

// dnsServer is a DNS server on loopback UDP for the tests' blocklists.
type dnsServer struct {
	addr    string
	mu      sync.Mutex
	queries map[string]int // per name
}

// answer is what the test server answers for a name: A records, or an
// rcode (dns.RcodeNameError when the name is not in the map), or nothing.
type answer struct {
	a     []string
	rcode int
	drop  bool
}

// startDNS serves answers (names without the final dot) until the test
// ends.
func startDNS(t testing.TB, answers map[string]answer) *dnsServer {
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
		ans, ok := answers[name]
		if !ok {
			ans.rcode = dns.RcodeNameError
		}
		if ans.drop {
			return
		}
		m := new(dns.Msg)
		m.SetRcode(req, ans.rcode)
		m.Authoritative = true
		if q.Qtype == dns.TypeA {
			for _, a := range ans.a {
				m.Answer = append(m.Answer, &dns.A{
					Hdr: dns.RR_Header{Name: q.Name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 60},
					A:   net.ParseIP(a),
				})
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

// count returns how often name was asked.
func (ds *dnsServer) count(name string) int {
	ds.mu.Lock()
	defer ds.mu.Unlock()
	return ds.queries[name]
}
