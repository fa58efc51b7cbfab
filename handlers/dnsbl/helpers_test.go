package dnsbl

import (
	"bufio"
	"context"
	"net"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/miekg/dns"

	"github.com/caddy-esmtp/caddy-esmtp/session"
)

func provision(m caddy.Provisioner) error {
	ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
	defer cancel()
	return m.Provision(ctx)
}

// server runs the engine with the sub-handlers; each connection is a
// net.Pipe whose client address the test chooses.
type server struct {
	t   testing.TB
	srv *session.Server
	wg  sync.WaitGroup
}

func newServer(t testing.TB, handlers ...any) *server {
	t.Helper()
	cfg := session.Config{Hostname: "mx.example.test"}
	for i, h := range handlers {
		cfg.Handlers = append(cfg.Handlers, session.Handler{Name: "h" + string(rune('0'+i)), Handler: h})
	}
	srv, err := session.NewServer(cfg)
	if err != nil {
		t.Fatal(err)
	}
	s := &server{t: t, srv: srv}
	t.Cleanup(s.wg.Wait)
	return s
}

// client is a raw SMTP client.
type client struct {
	t testing.TB
	c net.Conn
	r *bufio.Reader
}

// connect opens a session from the client address remote ("ip:port") and
// returns the client and the last line of the greeting.
func (s *server) connect(remote string) (*client, string) {
	s.t.Helper()
	cc, sc := net.Pipe()
	ap := net.TCPAddrFromAddrPort(netip.MustParseAddrPort(remote))
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		defer sc.Close()
		s.srv.Serve(context.Background(), sc, session.ConnInfo{RemoteAddr: ap})
	}()
	s.t.Cleanup(func() { cc.Close() })
	cc.SetDeadline(time.Now().Add(60 * time.Second)) // a hang guard, not a timing assertion
	c := &client{t: s.t, c: cc, r: bufio.NewReader(cc)}
	return c, c.reply()
}

// dial connects from remote, expects the greeting and says EHLO.
func (s *server) dial(remote string) *client {
	s.t.Helper()
	return s.dialHelo(remote, "client.example")
}

// dialHelo connects from remote, expects the greeting and says EHLO helo.
func (s *server) dialHelo(remote, helo string) *client {
	s.t.Helper()
	c, g := s.connect(remote)
	if !strings.HasPrefix(g, "220 ") {
		s.t.Fatalf("greeting %q", g)
	}
	c.cmd("EHLO "+helo, "250 ")
	return c
}

// reply reads one reply and returns its last line.
func (c *client) reply() string {
	c.t.Helper()
	for {
		l, err := c.r.ReadString('\n')
		if err != nil {
			c.t.Fatalf("reading reply: %v", err)
		}
		if !strings.HasSuffix(l, "\r\n") || len(l) < 6 {
			c.t.Fatalf("malformed reply line %q", l)
		}
		if l[3] == ' ' {
			return strings.TrimSuffix(l, "\r\n")
		}
	}
}

// cmd sends a command and checks that its reply starts with prefix.
func (c *client) cmd(line, prefix string) string {
	c.t.Helper()
	if _, err := c.c.Write([]byte(line + "\r\n")); err != nil {
		c.t.Fatalf("write %q: %v", line, err)
	}
	l := c.reply()
	if !strings.HasPrefix(l, prefix) {
		c.t.Fatalf("%s: got %q, want %q...", line, l, prefix)
	}
	return l
}

// closed checks that the server closed the connection.
func (c *client) closed() {
	c.t.Helper()
	if l, err := c.r.ReadString('\n'); err == nil {
		c.t.Fatalf("got %q, want the connection closed", l)
	}
}

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
