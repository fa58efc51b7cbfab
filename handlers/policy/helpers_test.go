package policy

import (
	"bufio"
	"context"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/caddy-esmtp/caddy-esmtp/internal/smtptest"
	"github.com/caddy-esmtp/caddy-esmtp/session"
)

// Special answers of the test server.
const (
	hang      = "\x00hang"       // read the request, never answer (until the test ends)
	hangUp    = "\x00hang up"    // read the request, close the connection
	closeIdle = "\x00close idle" // answer DUNNO, then close the connection
)

// policyServer is a small policy server for the tests: it reads
// requests ("name=value" lines, an empty line) and writes what answer
// gives for each, many requests per connection.
type policyServer struct {
	t        testing.TB
	ln       net.Listener
	addr     string // as the policy sub-handler's address
	answer   func(req map[string]string) string
	accepted atomic.Int32

	mu    sync.Mutex
	reqs  []map[string]string
	conns []net.Conn
	done  chan struct{}
}

// startServer serves answer on loopback TCP until the test ends.
func startServer(t testing.TB, answer func(req map[string]string) string) *policyServer {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	return serveOn(t, ln, ln.Addr().String(), answer)
}

// serveOn serves answer on ln.
func serveOn(t testing.TB, ln net.Listener, addr string, answer func(req map[string]string) string) *policyServer {
	ps := &policyServer{t: t, ln: ln, addr: addr, answer: answer, done: make(chan struct{})}
	go ps.loop()
	t.Cleanup(ps.stop)
	return ps
}

// answering is an answer function that always answers action=<action>.
func answering(action string) func(map[string]string) string {
	return func(map[string]string) string { return "action=" + action + "\n\n" }
}

func (ps *policyServer) loop() {
	for {
		c, err := ps.ln.Accept()
		if err != nil {
			return
		}
		ps.accepted.Add(1)
		ps.mu.Lock()
		ps.conns = append(ps.conns, c)
		ps.mu.Unlock()
		go ps.serve(c)
	}
}

func (ps *policyServer) serve(c net.Conn) {
	defer c.Close()
	r := bufio.NewReader(c)
	for {
		req := map[string]string{}
		for {
			l, err := r.ReadString('\n')
			if err != nil {
				return
			}
			l = strings.TrimSuffix(l, "\n")
			if l == "" {
				break
			}
			k, v, _ := strings.Cut(l, "=")
			req[k] = v
		}
		ps.mu.Lock()
		ps.reqs = append(ps.reqs, req)
		ps.mu.Unlock()
		switch a := ps.answer(req); a {
		case hang:
			<-ps.done
			return
		case hangUp:
			return
		case closeIdle:
			c.Write([]byte("action=DUNNO\n\n"))
			return
		default:
			if _, err := c.Write([]byte(a)); err != nil {
				return
			}
		}
	}
}

// stop closes the listener and every connection.
func (ps *policyServer) stop() {
	ps.mu.Lock()
	defer ps.mu.Unlock()
	select {
	case <-ps.done:
		return
	default:
	}
	close(ps.done)
	ps.ln.Close()
	for _, c := range ps.conns {
		c.Close()
	}
}

// requests returns the requests received so far.
func (ps *policyServer) requests() []map[string]string {
	ps.mu.Lock()
	defer ps.mu.Unlock()
	return append([]map[string]string(nil), ps.reqs...)
}

// provisioned provisions p for the server, failing the test on error.
func provisioned(t testing.TB, p *Policy) *Policy {
	t.Helper()
	smtptest.Provisioned(t, p)
	t.Cleanup(func() { p.Cleanup() })
	return p
}

// keep is a delivery that keeps the messages it gets.
type keep struct {
	mu  sync.Mutex
	got []string
}

func (k *keep) Deliver(_ context.Context, _ *session.Session, d *session.Delivery) error {
	b, err := d.Message.Bytes()
	k.mu.Lock()
	k.got = append(k.got, string(b))
	k.mu.Unlock()
	return err
}

func (k *keep) messages() []string {
	k.mu.Lock()
	defer k.mu.Unlock()
	return append([]string(nil), k.got...)
}

// refuseBad is a RCPT check placed after policy: it refuses recipients
// whose local part is "bad", to show whether the chain went on.
var refuseBad = smtptest.RcptFunc(func(to session.Path) *session.Reply {
	if strings.HasPrefix(to.Mailbox, "bad@") {
		return session.NewReply(550, "5.1.1", "later sub-handler refuses")
	}
	return nil
})

// client is the address every test session comes from.
const clientAddr = "192.0.2.10:4000"

// message is a small test message.
const message = "From: a@example.test\r\nSubject: hi\r\n\r\nbody\r\n"
