package policy

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"syscall"
	"time"
)

// client talks to one policy server: one request at a time per
// connection, with a small pool of idle connections shared by all the
// sessions of one sub-handler. A connection that failed in any way is
// closed, never pooled again.
type client struct {
	network, address string
	timeout          time.Duration // one exchange, dial included
	idleTimeout      time.Duration // an idle connection older than this is closed, not used
	maxIdle          int
	dialer           net.Dialer

	mu     sync.Mutex
	idle   []*conn // most recently used last
	closed bool
}

// conn is one connection to the policy server.
type conn struct {
	net.Conn
	r    *bufio.Reader
	used time.Time // when it was put back in the pool
	bad  bool      // not to be used again
}

// errTimeout is what an exchange that ran out of time reports.
var errTimeout = errors.New("policy server did not answer in time")

// ask sends one request and returns the answer's action. An answer that
// is malformed (see ParseAnswer) or whose action is unknown is an error,
// and its connection is closed. A request that failed on a pooled connection before any
// answer byte came back (the server had closed it while it was idle) is
// sent again once on a new connection, as Postfix does.
func (c *client) ask(ctx context.Context, req []byte) (Action, error) {
	deadline := time.Now().Add(c.timeout)
	if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
		deadline = d
	}
	for attempt := 0; ; attempt++ {
		pc, reused, err := c.get(ctx, deadline)
		if err != nil {
			return Action{}, err
		}
		lines, answered, err := c.exchange(ctx, pc, req, deadline)
		var a Action
		if err == nil {
			var action string
			if action, err = ParseAnswer(lines); err == nil {
				a, err = parseAction(action)
			}
			if err != nil {
				err = fmt.Errorf("policy server %s: %w", c.address, err)
			}
		}
		if err == nil {
			c.put(pc)
			return a, nil
		}
		pc.Close()
		if reused && !answered && attempt == 0 && ctx.Err() == nil && stale(err) {
			continue
		}
		return Action{}, err
	}
}

// stale reports whether err is what a connection the server closed gives.
func stale(err error) bool {
	return errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) ||
		errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE) || errors.Is(err, net.ErrClosed)
}

// get returns an idle connection, or a new one; reused tells which.
func (c *client) get(ctx context.Context, deadline time.Time) (*conn, bool, error) {
	now := time.Now()
	c.mu.Lock()
	for len(c.idle) > 0 {
		pc := c.idle[len(c.idle)-1]
		c.idle[len(c.idle)-1] = nil
		c.idle = c.idle[:len(c.idle)-1]
		if now.Sub(pc.used) > c.idleTimeout {
			pc.Close()
			continue
		}
		c.mu.Unlock()
		return pc, true, nil
	}
	c.mu.Unlock()
	dctx, cancel := context.WithDeadline(ctx, deadline)
	defer cancel()
	nc, err := c.dialer.DialContext(dctx, c.network, c.address)
	if err != nil {
		if dctx.Err() != nil && ctx.Err() == nil {
			return nil, false, fmt.Errorf("connecting to %s: %w", c.address, errTimeout)
		}
		return nil, false, fmt.Errorf("connecting to %s: %w", c.address, err)
	}
	return &conn{Conn: nc, r: bufio.NewReaderSize(nc, maxAnswerLine)}, false, nil
}

// put returns a connection to the pool, or closes it when the pool is
// full or closed.
func (c *client) put(pc *conn) {
	pc.used = time.Now()
	c.mu.Lock()
	if c.closed || pc.bad || len(c.idle) >= c.maxIdle {
		c.mu.Unlock()
		pc.Close()
		return
	}
	c.idle = append(c.idle, pc)
	c.mu.Unlock()
}

// close closes the idle connections; connections in use are closed when
// they come back.
func (c *client) close() {
	c.mu.Lock()
	idle := c.idle
	c.idle, c.closed = nil, true
	c.mu.Unlock()
	for _, pc := range idle {
		pc.Close()
	}
}

// idleCount is the number of pooled connections (for tests).
func (c *client) idleCount() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.idle)
}

// exchange writes req and reads one answer, within deadline and while
// ctx lasts. answered is true once a byte of the answer was read.
func (c *client) exchange(ctx context.Context, pc *conn, req []byte, deadline time.Time) (lines []string, answered bool, err error) {
	if err := pc.SetDeadline(deadline); err != nil {
		return nil, false, err
	}
	stop := context.AfterFunc(ctx, func() { pc.SetDeadline(time.Unix(1, 0)) })
	defer stop()
	defer func() {
		if err == nil {
			return
		}
		if ctx.Err() != nil {
			err = fmt.Errorf("policy request to %s: %w", c.address, ctx.Err())
			return
		}
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			err = fmt.Errorf("policy request to %s: %w", c.address, errTimeout)
			return
		}
		err = fmt.Errorf("policy request to %s: %w", c.address, err)
	}()
	if _, err := pc.Write(req); err != nil {
		return nil, false, err
	}
	for {
		line, err := pc.r.ReadSlice('\n')
		if len(line) > 0 {
			answered = true
		}
		switch {
		case errors.Is(err, bufio.ErrBufferFull):
			return nil, answered, fmt.Errorf("%w: a line longer than %d bytes", errMalformed, maxAnswerLine)
		case err == io.EOF && answered:
			return nil, answered, fmt.Errorf("%w: connection closed in the middle of the answer", errMalformed)
		case err != nil:
			return nil, answered, err
		}
		l := string(line[:len(line)-1])
		if l == "" || l == "\r" {
			break
		}
		if len(lines) == maxAnswerLines {
			return nil, answered, fmt.Errorf("%w: more than %d lines", errMalformed, maxAnswerLines)
		}
		lines = append(lines, l)
	}
	if pc.r.Buffered() > 0 {
		// More than one answer: the next request would read this one's
		// rest. Use the answer, but not the connection again.
		pc.bad = true
	}
	return lines, answered, nil
}
