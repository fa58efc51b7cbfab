// Package smtptest holds the plumbing the sub-handlers' tests share: it
// runs the engine (session.Server) over net.Pipe or loopback TCP, and
// drives it with a raw SMTP client that reads multi-line replies and
// checks them by prefix. It is a normal package so that tests of other
// packages can import it; only tests use it.
package smtptest

import (
	"bufio"
	"context"
	"io"
	"net"
	"net/netip"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"

	"github.com/caddy-esmtp/caddy-esmtp/session"
)

// Hostname is the server name Config gives the engine.
const Hostname = "mx.example.test"

// Helo is the name Server.Dial says in EHLO.
const Helo = "client.example"

// hangGuard bounds every client connection: a hang guard, not a timing
// assertion.
const hangGuard = 60 * time.Second

// Provision provisions m through Caddy's API, with a fresh Caddy context
// that is cancelled on return, and returns its error.
func Provision(m caddy.Provisioner) error {
	ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
	defer cancel()
	return m.Provision(ctx)
}

// Provisioned provisions m with Provision, fails the test on error and
// returns m.
func Provisioned[M caddy.Provisioner](tb testing.TB, m M) M {
	tb.Helper()
	if err := Provision(m); err != nil {
		tb.Fatalf("provision: %v", err)
	}
	return m
}

// Config returns an engine configuration with Hostname and the
// sub-handlers in order, named h0, h1, ...
func Config(handlers ...any) session.Config {
	cfg := session.Config{Hostname: Hostname}
	for i, h := range handlers {
		cfg.Handlers = append(cfg.Handlers, session.SubHandler{Name: "h" + string(rune('0'+i)), Handler: h})
	}
	return cfg
}

// Server runs the engine for a test. Each session runs on its own
// goroutine over a net.Pipe (Pipe, PipeFrom, Dial, DialHelo) or a
// loopback TCP connection (Addr, DialTCP). Close, which also runs when
// the test ends, closes the clients and waits for every session to end.
type Server struct {
	tb  testing.TB
	srv *session.Server
	wg  sync.WaitGroup

	listenOnce sync.Once
	closeOnce  sync.Once
	ln         net.Listener

	mu      sync.Mutex
	clients []net.Conn
}

// NewServer starts an engine with cfg, failing the test when the
// configuration is refused.
//
// When cfg has no delivery (DeliverHook or PrepareHook), a sink that takes
// every recipient and reads nothing is added last: the engine refuses
// recipients that no delivery takes, and policy tests are about the rest.
func NewServer(tb testing.TB, cfg session.Config) *Server {
	tb.Helper()
	if !hasDelivery(cfg) {
		cfg.Handlers = append(append([]session.SubHandler(nil), cfg.Handlers...), session.SubHandler{Name: "sink", Handler: Sink{}})
	}
	srv, err := session.NewServer(cfg)
	if err != nil {
		tb.Fatal(err)
	}
	s := &Server{tb: tb, srv: srv}
	tb.Cleanup(s.Close)
	return s
}

// Serve is NewServer with Config(handlers...).
func Serve(tb testing.TB, handlers ...any) *Server {
	tb.Helper()
	return NewServer(tb, Config(handlers...))
}

// serve runs one session on c until it ends, then closes c.
func (s *Server) serve(c net.Conn, info session.ConnInfo) {
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		defer c.Close()
		if err := s.srv.Serve(context.Background(), c, info); err != nil {
			s.tb.Logf("serve: %v", err)
		}
	}()
}

// track registers a client connection for Close and wraps it.
func (s *Server) track(c net.Conn) *Client {
	s.mu.Lock()
	s.clients = append(s.clients, c)
	s.mu.Unlock()
	c.SetDeadline(time.Now().Add(hangGuard))
	return &Client{tb: s.tb, Conn: c, r: bufio.NewReader(c)}
}

// Pipe opens a session over a net.Pipe with info and returns its client,
// which has read nothing yet (not even the greeting).
func (s *Server) Pipe(info session.ConnInfo) *Client {
	s.tb.Helper()
	cc, sc := net.Pipe()
	s.serve(sc, info)
	return s.track(cc)
}

// PipeFrom is Pipe from the client address remote ("ip:port").
func (s *Server) PipeFrom(remote string) *Client {
	s.tb.Helper()
	return s.Pipe(session.ConnInfo{RemoteAddr: net.TCPAddrFromAddrPort(netip.MustParseAddrPort(remote))})
}

// Dial is PipeFrom(remote).Hello(Helo): a session from remote that has
// been greeted with 220 and has said EHLO.
func (s *Server) Dial(remote string) *Client {
	s.tb.Helper()
	return s.PipeFrom(remote).Hello(Helo)
}

// DialHelo is Dial saying EHLO helo.
func (s *Server) DialHelo(remote, helo string) *Client {
	s.tb.Helper()
	return s.PipeFrom(remote).Hello(helo)
}

// Addr returns the loopback TCP address the server listens on, starting
// the listener on the first call. Its sessions have an empty ConnInfo.
func (s *Server) Addr() string {
	s.tb.Helper()
	s.listenOnce.Do(func() {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			s.tb.Fatal(err)
		}
		s.ln = ln
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			for {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				s.serve(c, session.ConnInfo{})
			}
		}()
	})
	if s.ln == nil {
		s.tb.FailNow()
	}
	return s.ln.Addr().String()
}

// DialTCP connects to Addr over TCP and returns the client, which has
// read nothing yet (not even the greeting).
func (s *Server) DialTCP() *Client {
	s.tb.Helper()
	c, err := net.Dial("tcp", s.Addr())
	if err != nil {
		s.tb.Fatal(err)
	}
	return s.track(c)
}

// Close stops the listener, if any, closes the clients' ends of the
// connections and waits until every session has ended (and so every
// hook has run). It may be called more than once.
func (s *Server) Close() {
	s.closeOnce.Do(func() {
		if s.ln != nil {
			s.ln.Close()
		}
	})
	s.mu.Lock()
	for _, c := range s.clients {
		c.Close()
	}
	s.mu.Unlock()
	s.wg.Wait()
}

// Client is a raw SMTP client: it writes bytes as given and reads
// replies line by line, failing the test on anything malformed.
type Client struct {
	tb testing.TB
	// Conn is the client's end of the connection.
	Conn net.Conn
	r    *bufio.Reader
}

// Reply is one SMTP reply as read.
type Reply struct {
	// Code is the reply code, such as 250.
	Code int
	// Enhanced is the enhanced status code of the last line, such as
	// "2.1.5", or "" when it has none.
	Enhanced string
	// Lines are the reply's lines without their CRLF, code included.
	Lines []string
}

var enhanced = regexp.MustCompile(`^[245]\.[0-9]{1,3}\.[0-9]{1,3}$`)

// Last returns the reply's last line, without its CRLF.
func (r Reply) Last() string { return r.Lines[len(r.Lines)-1] }

// String returns the reply's lines joined by newlines.
func (r Reply) String() string { return strings.Join(r.Lines, "\n") }

// ReadReply reads one reply, of one line or several.
func (c *Client) ReadReply() Reply {
	c.tb.Helper()
	var r Reply
	for {
		l, err := c.r.ReadString('\n')
		if err != nil {
			c.tb.Fatalf("reading reply: %v", err)
		}
		if !strings.HasSuffix(l, "\r\n") || len(l) < 6 {
			c.tb.Fatalf("malformed reply line %q", l)
		}
		r.Lines = append(r.Lines, strings.TrimSuffix(l, "\r\n"))
		if l[3] == ' ' {
			r.Code, _ = strconv.Atoi(l[:3])
			if f := strings.Fields(l[4:]); len(f) > 0 && enhanced.MatchString(f[0]) {
				r.Enhanced = f[0]
			}
			return r
		}
	}
}

// Expect reads one reply, checks that its last line starts with prefix
// and returns that line.
func (c *Client) Expect(prefix string) string {
	c.tb.Helper()
	l := c.ReadReply().Last()
	if !strings.HasPrefix(l, prefix) {
		c.tb.Fatalf("got %q, want %q...", l, prefix)
	}
	return l
}

// Send writes s as it is.
func (c *Client) Send(s string) {
	c.tb.Helper()
	if _, err := c.Conn.Write([]byte(s)); err != nil {
		c.tb.Fatalf("write: %v", err)
	}
}

// Cmd sends line and CRLF, checks that the last line of the reply starts
// with prefix and returns that line.
func (c *Client) Cmd(line, prefix string) string {
	c.tb.Helper()
	if _, err := c.Conn.Write([]byte(line + "\r\n")); err != nil {
		c.tb.Fatalf("write %q: %v", line, err)
	}
	l := c.ReadReply().Last()
	if !strings.HasPrefix(l, prefix) {
		c.tb.Fatalf("%s: got %q, want %q...", line, l, prefix)
	}
	return l
}

// Hello expects a 220 greeting, says EHLO helo expecting 250 and returns
// c.
func (c *Client) Hello(helo string) *Client {
	c.tb.Helper()
	c.Expect("220 ")
	c.Cmd("EHLO "+helo, "250 ")
	return c
}

// ExpectClosed checks that the server closes the connection without
// sending more.
func (c *Client) ExpectClosed() {
	c.tb.Helper()
	if l, err := c.r.ReadString('\n'); err != io.EOF {
		c.tb.Fatalf("got %q, %v; want the connection closed", l, err)
	}
}

// Clock is a settable clock for sub-handlers that take a now function.
// It is safe for concurrent use.
type Clock struct {
	mu  sync.Mutex
	now time.Time
}

// NewClock returns a Clock at 2025-06-01 12:00 UTC.
func NewClock() *Clock { return &Clock{now: time.Date(2025, 6, 1, 12, 0, 0, 0, time.UTC)} }

// Now returns the clock's time.
func (c *Clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

// Advance moves the clock on by d.
func (c *Clock) Advance(d time.Duration) {
	c.mu.Lock()
	c.now = c.now.Add(d)
	c.mu.Unlock()
}

// LoginAs is a sub-handler that marks the session authenticated as the
// HELO name's first label when the name ends in ".auth".
type LoginAs struct{}

// Helo authenticates the session when name ends in ".auth".
func (LoginAs) Helo(_ context.Context, s *session.Session, name string) (*session.Reply, error) {
	if user, ok := strings.CutSuffix(name, ".auth"); ok {
		s.SetAuthenticated(user)
	}
	return nil, nil
}

// MailFunc is a sub-handler that answers MAIL FROM with a function.
type MailFunc func(from session.Path) *session.Reply

// Mail answers with f(from).
func (f MailFunc) Mail(_ context.Context, _ *session.Session, from session.Path, _ session.Params) (*session.Reply, error) {
	return f(from), nil
}

// RcptFunc is a sub-handler that answers RCPT TO with a function.
type RcptFunc func(to session.Path) *session.Reply

// Rcpt answers with f(to).
func (f RcptFunc) Rcpt(_ context.Context, _ *session.Session, to session.Path, _ session.Params) (*session.Reply, error) {
	return f(to), nil
}

// Sink is a delivery that takes every recipient and reads nothing.
type Sink struct{}

// Deliver accepts.
func (Sink) Deliver(context.Context, *session.Session, *session.Delivery) error { return nil }

// ReadsMessage is false: a Sink needs no spool.
func (Sink) ReadsMessage() bool { return false }

// hasDelivery reports whether cfg has a delivering sub-handler.
func hasDelivery(cfg session.Config) bool {
	for _, h := range cfg.Handlers {
		_, d := h.Handler.(session.DeliverHook)
		_, p := h.Handler.(session.PrepareHook)
		if d || p {
			return true
		}
	}
	return false
}

// Judge is a judge (a MessageHook) that runs its function at end of
// message, before any delivery, and has no opinion: the tests' stand-in
// for a filter that edits.
type Judge func(s *session.Session)

// EndOfMessage runs j.
func (j Judge) EndOfMessage(_ context.Context, s *session.Session) (*session.Reply, error) {
	j(s)
	return nil, nil
}

// EditJudge puts "X-Judged: yes" on top of every message and changes its
// first Subject: to "changed": the edits delivery tests check for.
var EditJudge = Judge(func(s *session.Session) {
	s.Transaction().PrependHeader("X-Judged", "yes")
	s.Transaction().ChangeHeader("Subject", 1, "changed")
})

// Engine returns the engine the server runs: for what tests do beside
// the sessions, such as Server.DeliverQueued with a queue.
func (s *Server) Engine() *session.Server { return s.srv }
