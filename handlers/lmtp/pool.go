package lmtp

import (
	"sync"
	"time"
)

// pool keeps idle connections to the LMTP server for the next messages.
type pool struct {
	mu     sync.Mutex
	idle   []*conn // oldest first
	max    int
	ttl    time.Duration
	closed bool
	timer  *time.Timer
}

// get returns an idle connection greeted as lhlo that answers RSET, or
// nil.
func (p *pool) get(lhlo string, timeout time.Duration) *conn {
	for {
		p.mu.Lock()
		n := len(p.idle)
		if n == 0 {
			p.mu.Unlock()
			return nil
		}
		c := p.idle[n-1]
		p.idle = p.idle[:n-1]
		p.mu.Unlock()
		if c.lhlo != lhlo || time.Since(c.idle) > p.ttl {
			go c.quit()
			continue
		}
		c.timeout = timeout
		if r, err := c.cmd("RSET"); err != nil || r.code != 250 {
			c.close()
			continue
		}
		return c
	}
}

// put keeps c for reuse, or quits it when the pool is full or closed.
func (p *pool) put(c *conn) {
	p.mu.Lock()
	if p.closed || len(p.idle) >= p.max {
		p.mu.Unlock()
		go c.quit()
		return
	}
	c.idle = time.Now()
	p.idle = append(p.idle, c)
	if p.timer == nil {
		p.timer = time.AfterFunc(p.ttl, p.expire)
	}
	p.mu.Unlock()
}

// expire quits the connections idle for longer than the ttl.
func (p *pool) expire() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.timer = nil
	keep := p.idle[:0]
	for _, c := range p.idle {
		if time.Since(c.idle) >= p.ttl {
			go c.quit()
		} else {
			keep = append(keep, c)
		}
	}
	clear(p.idle[len(keep):])
	p.idle = keep
	if len(p.idle) > 0 && !p.closed {
		p.timer = time.AfterFunc(p.ttl-time.Since(p.idle[0].idle), p.expire)
	}
}

// close quits the idle connections; connections put back later are quit
// too.
func (p *pool) close() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.closed = true
	if p.timer != nil {
		p.timer.Stop()
		p.timer = nil
	}
	for _, c := range p.idle {
		go c.quit()
	}
	p.idle = nil
}

// idleCount returns the number of idle connections (for tests).
func (p *pool) idleCount() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.idle)
}
