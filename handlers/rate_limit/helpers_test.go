package ratelimit

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

// clock is a settable clock for the sub-handler.
type clock struct {
	mu  sync.Mutex
	now time.Time
}

func newClock() *clock { return &clock{now: time.Date(2025, 6, 1, 12, 0, 0, 0, time.UTC)} }

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *clock) advance(d time.Duration) {
	c.mu.Lock()
	c.now = c.now.Add(d)
	c.mu.Unlock()
}

// loginAs is a sub-handler that marks the session authenticated as the
// HELO name's first label when the name ends in ".auth".
type loginAs struct{}

func (loginAs) Helo(_ context.Context, s *session.Session, name string) (*session.Reply, error) {
	if user, ok := strings.CutSuffix(name, ".auth"); ok {
		s.SetAuthenticated(user)
	}
	return nil, nil
}
