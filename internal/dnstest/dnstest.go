// Package dnstest runs a small authoritative DNS server on loopback for
// tests: records in zone-file syntax (or TXT values with SetTXT), NXDOMAIN
// for unknown names, NODATA (with an SOA) for known names without the type
// asked, the AD bit for the zones made Secure, and names that answer
// SERVFAIL (ServFail, or any name under a "servfail." label), never answer,
// or are truncated over UDP.
package dnstest

import (
	"context"
	"net"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/miekg/dns"
)

// NegativeSOA is the SOA record in the authority section of NXDOMAIN and
// NODATA answers: negative answers may be kept 30s (RFC 2308).
const NegativeSOA = "test. 30 IN SOA ns.test. hostmaster.test. 1 3600 600 86400 30"

// Server is a DNS server on 127.0.0.1, UDP and TCP on the same port.
type Server struct {
	// Addr is the server's address, "127.0.0.1:port".
	Addr string

	mu       sync.Mutex
	records  []dns.RR
	special  map[string]string // name (lower case, final dot) -> "servfail", "drop", "truncate"
	exists   map[string]bool   // names without records that answer NODATA, not NXDOMAIN
	queries  map[query]int
	overTCP  int
	negative dns.RR
	secure   []string // zones (lower case, final dot) answered with the AD bit
}

type query struct {
	name  string
	qtype uint16
}

// Start serves records (zone-file lines such as "a.test. 60 IN A
// 192.0.2.1") until the test ends.
func Start(tb testing.TB, records ...string) *Server {
	tb.Helper()
	s := &Server{special: map[string]string{}, exists: map[string]bool{}, queries: map[query]int{}}
	s.Set(tb, records...)
	soa, err := dns.NewRR(NegativeSOA)
	if err != nil {
		tb.Fatal(err)
	}
	s.negative = soa
	pc, ln := listenBoth(tb)
	s.Addr = pc.LocalAddr().String()
	for _, srv := range []*dns.Server{
		{PacketConn: pc, Handler: dns.HandlerFunc(func(w dns.ResponseWriter, m *dns.Msg) { s.serve(w, m, false) })},
		{Listener: ln, Handler: dns.HandlerFunc(func(w dns.ResponseWriter, m *dns.Msg) { s.serve(w, m, true) })},
	} {
		started := make(chan struct{})
		srv.NotifyStartedFunc = func() { close(started) }
		go srv.ActivateAndServe()
		<-started
		tb.Cleanup(func() { srv.Shutdown() })
	}
	return s
}

// New starts a server with no records (see SetTXT) until the test ends.
func New(tb testing.TB) *Server { return Start(tb) }

// SetTXT makes name answer one TXT record per value, a value longer than
// 255 bytes split into strings as in a zone file, in addition to the
// records served so far.
func (s *Server) SetTXT(name string, values ...string) {
	fqdn := dns.Fqdn(name)
	s.mu.Lock()
	defer s.mu.Unlock()
	s.records = slices.DeleteFunc(s.records, func(rr dns.RR) bool {
		return rr.Header().Rrtype == dns.TypeTXT && strings.EqualFold(rr.Header().Name, fqdn)
	})
	for _, v := range values {
		var parts []string
		for len(v) > 255 {
			parts, v = append(parts, v[:255]), v[255:]
		}
		parts = append(parts, v)
		s.records = append(s.records, &dns.TXT{
			Hdr: dns.RR_Header{Name: fqdn, Rrtype: dns.TypeTXT, Class: dns.ClassINET, Ttl: 60},
			Txt: parts,
		})
	}
}

// Resolver returns a resolver that asks only this server.
func (s *Server) Resolver() *net.Resolver {
	var d net.Dialer
	return &net.Resolver{
		PreferGo: true,
		Dial: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return d.DialContext(ctx, "udp", s.Addr)
		},
	}
}

// Set replaces the records served.
func (s *Server) Set(tb testing.TB, records ...string) {
	tb.Helper()
	var rrs []dns.RR
	for _, r := range records {
		rr, err := dns.NewRR(r)
		if err != nil {
			tb.Fatalf("record %q: %v", r, err)
		}
		rrs = append(rrs, rr)
	}
	s.mu.Lock()
	s.records = rrs
	s.mu.Unlock()
}

// Add serves rrs too, in addition to the records served so far.
func (s *Server) Add(rrs ...dns.RR) {
	s.mu.Lock()
	s.records = append(s.records, rrs...)
	s.mu.Unlock()
}

// Exists makes name, without records of its own, answer NODATA (NOERROR
// and no answer) rather than NXDOMAIN.
func (s *Server) Exists(name string) {
	s.mu.Lock()
	s.exists[strings.ToLower(dns.Fqdn(name))] = true
	s.mu.Unlock()
}

// Secure makes the server answer with the AD bit set (RFC 4035 3.2.3, as a
// validating resolver does for records it checked with DNSSEC) for zone and
// every name under it: answers, NODATA and NXDOMAIN alike (a secure denial
// of existence). A SERVFAIL never has it.
func (s *Server) Secure(zone string) {
	s.mu.Lock()
	s.secure = append(s.secure, strings.ToLower(dns.Fqdn(zone)))
	s.mu.Unlock()
}

// ServFail makes the server answer SERVFAIL for name.
func (s *Server) ServFail(name string) { s.mark(name, "servfail") }

// Drop makes the server never answer about name.
func (s *Server) Drop(name string) { s.mark(name, "drop") }

// Truncate makes the server answer about name over UDP with the TC bit
// and no records, and fully over TCP.
func (s *Server) Truncate(name string) { s.mark(name, "truncate") }

func (s *Server) mark(name, what string) {
	s.mu.Lock()
	s.special[strings.ToLower(dns.Fqdn(name))] = what
	s.mu.Unlock()
}

// Queries returns how many queries for name and type the server received
// (over UDP and TCP).
func (s *Server) Queries(name string, qtype uint16) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.queries[query{strings.ToLower(dns.Fqdn(name)), qtype}]
}

// QueriesAll returns how many queries for name, of any type, the server
// received.
func (s *Server) QueriesAll(name string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	n, fqdn := 0, strings.ToLower(dns.Fqdn(name))
	for q, c := range s.queries {
		if q.name == fqdn {
			n += c
		}
	}
	return n
}

// TCPQueries returns how many queries came over TCP.
func (s *Server) TCPQueries() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.overTCP
}

func (s *Server) serve(w dns.ResponseWriter, req *dns.Msg, tcp bool) {
	if len(req.Question) != 1 {
		m := new(dns.Msg)
		m.SetRcode(req, dns.RcodeFormatError)
		w.WriteMsg(m)
		return
	}
	q := req.Question[0]
	name := strings.ToLower(q.Name)
	s.mu.Lock()
	s.queries[query{name, q.Qtype}]++
	if tcp {
		s.overTCP++
	}
	what := s.special[name]
	if strings.HasPrefix(name, "servfail.") || strings.Contains(name, ".servfail.") {
		what = "servfail"
	}
	var answer []dns.RR
	known := s.exists[name]
	for _, rr := range s.records {
		if strings.EqualFold(rr.Header().Name, q.Name) {
			known = true
			if rr.Header().Rrtype == q.Qtype || rr.Header().Rrtype == dns.TypeCNAME {
				answer = append(answer, rr)
			}
		}
	}
	negative := s.negative
	secure := slices.ContainsFunc(s.secure, func(z string) bool { return dns.IsSubDomain(z, name) })
	s.mu.Unlock()

	m := new(dns.Msg)
	m.SetReply(req)
	m.Authoritative = true
	switch {
	case what == "drop":
		return
	case what == "servfail":
		m.Rcode = dns.RcodeServerFailure
	case what == "truncate" && !tcp:
		m.Truncated = true
	case !known:
		m.Rcode = dns.RcodeNameError
		m.Ns = []dns.RR{negative}
	case len(answer) == 0:
		m.Ns = []dns.RR{negative}
	default:
		m.Answer = answer
	}
	m.AuthenticatedData = secure && m.Rcode != dns.RcodeServerFailure
	w.WriteMsg(m)
}

// listenBoth listens on one loopback port over UDP and TCP. The UDP port
// is chosen by the system, and the same TCP port may be taken by another
// test process meanwhile: then another port is tried.
func listenBoth(tb testing.TB) (net.PacketConn, net.Listener) {
	tb.Helper()
	var lastErr error
	for range 20 {
		pc, err := net.ListenPacket("udp", "127.0.0.1:0")
		if err != nil {
			tb.Fatal(err)
		}
		ln, err := net.Listen("tcp", pc.LocalAddr().String())
		if err == nil {
			return pc, ln
		}
		pc.Close()
		lastErr = err
	}
	tb.Fatalf("no loopback port free over both UDP and TCP: %v", lastErr)
	return nil, nil
}

// Silent returns the address of a UDP socket on 127.0.0.1 that reads
// nothing and answers nothing, until the test ends: a DNS server that has
// stopped responding.
func Silent(tb testing.TB) string {
	tb.Helper()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { pc.Close() })
	return pc.LocalAddr().String()
}
