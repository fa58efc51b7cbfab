// Package dnstest runs a small authoritative DNS server on loopback UDP
// for tests that look names up (DKIM keys): TXT records from a map, NXDOMAIN
// for other names, SERVFAIL for names under "servfail.". Only tests use it.
package dnstest

import (
	"context"
	"net"
	"strings"
	"sync"
	"testing"

	"github.com/miekg/dns"
)

// Server is a test DNS server.
type Server struct {
	// Addr is the server's address, 127.0.0.1:port.
	Addr string

	mu  sync.Mutex
	txt map[string][]string // by lower-case name without the final dot
}

// New starts a server that stops when the test ends.
func New(tb testing.TB) *Server {
	tb.Helper()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	s := &Server{Addr: pc.LocalAddr().String(), txt: map[string][]string{}}
	srv := &dns.Server{PacketConn: pc, Handler: dns.HandlerFunc(s.serve)}
	go srv.ActivateAndServe()
	tb.Cleanup(func() { srv.Shutdown() })
	return s
}

// SetTXT makes name answer one TXT record per value (a value longer than
// 255 bytes is split into strings, as in a zone file).
func (s *Server) SetTXT(name string, values ...string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.txt[strings.ToLower(strings.TrimSuffix(name, "."))] = values
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

func (s *Server) serve(w dns.ResponseWriter, req *dns.Msg) {
	m := new(dns.Msg)
	m.SetReply(req)
	m.Authoritative = true
	if len(req.Question) != 1 {
		m.Rcode = dns.RcodeFormatError
		w.WriteMsg(m)
		return
	}
	q := req.Question[0]
	name := strings.ToLower(strings.TrimSuffix(q.Name, "."))
	s.mu.Lock()
	values, ok := s.txt[name]
	s.mu.Unlock()
	switch {
	case strings.HasPrefix(name, "servfail.") || strings.Contains(name, ".servfail."):
		m.Rcode = dns.RcodeServerFailure
	case !ok:
		m.Rcode = dns.RcodeNameError
	case q.Qtype == dns.TypeTXT:
		for _, v := range values {
			m.Answer = append(m.Answer, &dns.TXT{
				Hdr: dns.RR_Header{Name: q.Name, Rrtype: dns.TypeTXT, Class: dns.ClassINET, Ttl: 60},
				Txt: split(v),
			})
		}
	}
	w.WriteMsg(m)
}

// split cuts v into strings of at most 255 bytes.
func split(v string) []string {
	var out []string
	for len(v) > 255 {
		out = append(out, v[:255])
		v = v[255:]
	}
	return append(out, v)
}
