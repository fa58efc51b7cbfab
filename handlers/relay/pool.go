package relay

import (
	"sync"
	"time"
)

// pool keeps idle connections to the smart host for the next messages.
type pool struct {
	mu     sync.Mutex
	idle   []*upstream // oldest first
	max    int
	ttl    time.Duration
	closed bool
	timer  *time.Timer
}

// get returns an idle connection that answers RSET, or nil.
func (p *pool) get(hello string, timeout time.Duration) *upstream {
	for {
		p.mu.Lock()
		n := len(p.idle)
		if n == 0 {
			p.mu.Unlock()
			return nil
		}
		up := p.idle[n-1]
		p.idle = p.idle[:n-1]
		p.mu.Unlock()
		if up.hello != hello || time.Since(up.idle) > p.ttl {
			go up.quit()
			continue
		}
		up.c.CommandTimeout, up.uc.timeout = timeout, timeout
		if err := up.c.Reset(); err != nil {
			up.close()
			continue
		}
		return up
	}
}

// put keeps up for reuse, or quits it when the pool is full or closed.
func (p *pool) put(up *upstream) {
	p.mu.Lock()
	if p.closed || len(p.idle) >= p.max {
		p.mu.Unlock()
		go up.quit()
		return
	}
	up.idle = time.Now()
	p.idle = append(p.idle, up)
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
	for _, up := range p.idle {
		if time.Since(up.idle) >= p.ttl {
			go up.quit()
		} else {
			keep = append(keep, up)
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
	for _, up := range p.idle {
		go up.quit()
	}
	p.idle = nil
}

// idleCount returns the number of idle connections (for tests).
func (p *pool) idleCount() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.idle)
}
