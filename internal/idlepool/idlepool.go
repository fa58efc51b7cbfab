// Package idlepool keeps idle connections to one server for reuse, as
// relay (to its smart host) and lmtp (to the store) do: at most Max, each
// for at most TTL, the newest taken first; the ones that age out are quit
// in the background.
package idlepool

import (
	"sync"
	"time"
)

// Pool keeps idle connections of type C. Its zero value is not usable:
// make one with New.
type Pool[C any] struct {
	mu     sync.Mutex
	idle   []entry[C] // oldest first
	max    int
	ttl    time.Duration
	quit   func(C)
	closed bool
	timer  *time.Timer
}

// entry is one idle connection: the key it was put with (the name it
// greeted the server with) and since when it is idle.
type entry[C any] struct {
	c     C
	key   string
	since time.Time
}

// New returns a pool of at most max idle connections, each kept for at
// most ttl; quit ends a connection politely (QUIT), in the background.
func New[C any](max int, ttl time.Duration, quit func(C)) *Pool[C] {
	return &Pool[C]{max: max, ttl: ttl, quit: quit}
}

// Get returns an idle connection put with key that ready accepts (ready
// checks it, such as with RSET, and closes it when it does not answer),
// newest first. Connections put with another key, or idle for longer
// than the ttl, are quit. ok is false when there is none.
func (p *Pool[C]) Get(key string, ready func(C) bool) (c C, ok bool) {
	for {
		p.mu.Lock()
		n := len(p.idle)
		if n == 0 {
			p.mu.Unlock()
			return c, false
		}
		e := p.idle[n-1]
		p.idle[n-1] = entry[C]{}
		p.idle = p.idle[:n-1]
		p.mu.Unlock()
		if e.key != key || time.Since(e.since) > p.ttl {
			go p.quit(e.c)
			continue
		}
		if ready(e.c) {
			return e.c, true
		}
	}
}

// Put keeps c for reuse, or quits it when the pool is full or closed.
func (p *Pool[C]) Put(key string, c C) {
	p.mu.Lock()
	if p.closed || len(p.idle) >= p.max {
		p.mu.Unlock()
		go p.quit(c)
		return
	}
	p.idle = append(p.idle, entry[C]{c: c, key: key, since: time.Now()})
	if p.timer == nil {
		p.timer = time.AfterFunc(p.ttl, p.expire)
	}
	p.mu.Unlock()
}

// expire quits the connections idle for longer than the ttl.
func (p *Pool[C]) expire() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.timer = nil
	keep := p.idle[:0]
	for _, e := range p.idle {
		if time.Since(e.since) >= p.ttl {
			go p.quit(e.c)
		} else {
			keep = append(keep, e)
		}
	}
	clear(p.idle[len(keep):])
	p.idle = keep
	if len(p.idle) > 0 && !p.closed {
		p.timer = time.AfterFunc(p.ttl-time.Since(p.idle[0].since), p.expire)
	}
}

// Close quits the idle connections; connections put back later are quit
// too.
func (p *Pool[C]) Close() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.closed = true
	if p.timer != nil {
		p.timer.Stop()
		p.timer = nil
	}
	for _, e := range p.idle {
		go p.quit(e.c)
	}
	p.idle = nil
}

// Len returns the number of idle connections.
func (p *Pool[C]) Len() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.idle)
}

// Each calls f with each idle connection, oldest first, holding the
// pool's lock (for tests that break one).
func (p *Pool[C]) Each(f func(C)) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, e := range p.idle {
		f(e.c)
	}
}
