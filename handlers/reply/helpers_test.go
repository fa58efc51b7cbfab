package reply

import (
	"bufio"
	"context"
	"io"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"

	"github.com/caddy-esmtp/caddy-esmtp/session"
)

// provisioned provisions r through Caddy's API and fails the test on error.
func provisioned(t testing.TB, r *Reply) *Reply {
	t.Helper()
	if err := provision(r); err != nil {
		t.Fatalf("provision: %v", err)
	}
	return r
}

func provision(m caddy.Provisioner) error {
	ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
	defer cancel()
	return m.Provision(ctx)
}

// serve runs the engine with the sub-handlers on loopback TCP until the
// test ends and returns its address.
func serve(t testing.TB, handlers ...any) string {
	t.Helper()
	cfg := session.Config{Hostname: "mx.example.test"}
	for i, h := range handlers {
		cfg.Handlers = append(cfg.Handlers, session.Handler{Name: "h" + string(rune('0'+i)), Handler: h})
	}
	srv, err := session.NewServer(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	var conns []net.Conn
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer c.Close()
				srv.Serve(context.Background(), c, session.ConnInfo{})
			}()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	return ln.Addr().String()
}

// client is a raw SMTP client.
type client struct {
	t testing.TB
	c net.Conn
	r *bufio.Reader
}

// dial connects and reads the greeting, which it returns.
func dial(t testing.TB, addr string) (*client, string) {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(60 * time.Second)) // a hang guard, not a timing assertion
	cl := &client{t: t, c: c, r: bufio.NewReader(c)}
	return cl, cl.reply()
}

// reply reads one reply and returns its lines joined by newlines.
func (c *client) reply() string {
	c.t.Helper()
	var lines []string
	for {
		l, err := c.r.ReadString('\n')
		if err != nil {
			c.t.Fatalf("reading reply: %v", err)
		}
		if !strings.HasSuffix(l, "\r\n") || len(l) < 6 {
			c.t.Fatalf("malformed reply line %q", l)
		}
		lines = append(lines, strings.TrimSuffix(l, "\r\n"))
		if l[3] == ' ' {
			return strings.Join(lines, "\n")
		}
	}
}

func (c *client) expect(prefix string) string {
	c.t.Helper()
	l := c.reply()
	if !strings.HasPrefix(l, prefix) {
		c.t.Fatalf("got %q, want %q...", l, prefix)
	}
	return l
}

// send writes s as it is.
func (c *client) send(s string) {
	c.t.Helper()
	if _, err := c.c.Write([]byte(s)); err != nil {
		c.t.Fatalf("write: %v", err)
	}
}

// closed checks that the server closes the connection without more.
func (c *client) closed() {
	c.t.Helper()
	if l, err := c.r.ReadString('\n'); err != io.EOF {
		c.t.Fatalf("got %q, %v; want the connection closed", l, err)
	}
}

// cmd sends a command and checks that its reply starts with prefix.
func (c *client) cmd(line, prefix string) string {
	c.t.Helper()
	if _, err := c.c.Write([]byte(line + "\r\n")); err != nil {
		c.t.Fatalf("write: %v", err)
	}
	return c.expect(prefix)
}
