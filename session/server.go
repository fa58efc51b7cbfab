package session

import (
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/caddy-esmtp/caddy-esmtp/internal/clientnet"
	"go.uber.org/zap"
)

// Server runs SMTP sessions with one configuration. It is safe for
// concurrent use; each connection is served by Serve in its own goroutine.
type Server struct {
	cfg          Config
	hooks        *chain
	ehloKeywords []string
	heloReply    *Reply // "250 <hostname>", the HELO reply without a hook's text
	quitReply    *Reply // "221 2.0.0 <hostname> closing connection"

	mu        sync.Mutex
	sessions  map[*Session]struct{}
	own       connCounts    // sessions on connections without a TCP port (tests, pipes)
	chunks    sync.Pool     // body chunk buffers of cap ChunkSize
	done      chan struct{} // made by Shutdown, closed when the last session has ended
	cutTimer  *time.Timer   // ends what is left at the end of the grace period
	draining  atomic.Bool
	spoolUsed atomic.Int64 // bytes of SpoolMemory the spools hold
	graceEnd  atomic.Int64 // unix nanoseconds: sessions are cut after this once draining
}

// ConnInfo describes the connection a session runs on.
type ConnInfo struct {
	// RemoteAddr is the client's address (the real one when a PROXY
	// protocol handler ran before).
	RemoteAddr net.Addr
	// LocalAddr is the server's address.
	LocalAddr net.Addr
	// TLS is the state of a connection that is already TLS (implicit TLS,
	// RFC 8314), or nil.
	TLS *tls.ConnectionState
}

// NewServer checks cfg, fills in defaults and returns a Server. The error
// names the invalid field.
func NewServer(cfg Config) (*Server, error) {
	c, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	hooks := compile(c.Handlers)
	if c.Queue != nil {
		hooks.spools = true // the queue keeps the final message
	}
	return &Server{
		cfg:          c,
		hooks:        hooks,
		ehloKeywords: ehloKeywords(&c),
		heloReply:    &Reply{Code: 250, Lines: []string{c.Hostname}, plain: true},
		quitReply:    &Reply{Code: 221, Enhanced: "2.0.0", Lines: []string{c.Hostname + " closing connection"}},
		sessions:     map[*Session]struct{}{},
	}, nil
}

// Config returns the server's configuration with defaults filled in.
func (srv *Server) Config() Config { return srv.cfg }

// Serve runs one SMTP session on conn until it ends and returns nil for an
// ordinary end (QUIT, client gone, timeout) or the I/O error that ended it.
// Serve does not close conn. ctx is the parent of the session context that
// every hook gets.
//
// A panic in the engine (a bug) ends only this session: it is logged with
// its stack and returned as an error, and Caddy goes on serving.
func (srv *Server) Serve(ctx context.Context, conn net.Conn, info ConnInfo) (err error) {
	s := newSession(srv, conn, info)
	s.ctx, s.cancel = context.WithCancel(ctx)
	defer s.cancel()
	defer func() {
		if p := recover(); p != nil {
			srv.cfg.Logger.Error("session panicked; closing its connection", zap.String("session", s.id),
				zap.String("remote", addrString(s.remote)), zap.Any("panic", p), zap.Stack("stack"))
			err = fmt.Errorf("session %s panicked: %v", s.id, p)
		}
	}()
	defer s.release()
	if r := srv.track(s); r != nil {
		s.reply(r)
		s.flush()
		return nil
	}
	defer srv.untrack(s)
	srv.cfg.Observer.SessionStarted()
	defer srv.cfg.Observer.SessionEnded()
	if s.tls != nil {
		srv.cfg.Observer.TLS(true)
	}
	return s.run()
}

// track registers a new session, or returns the 421 it gets instead:
// shutting down, or over MaxConnections or MaxConnectionsPerIP. The limits
// count every session on the same local port, whichever Server runs it, so
// sessions that still drain on a replaced configuration count against the
// new one's limits. Clients in XClientNetworks (proxies speaking for many
// clients) are not limited per IP.
func (srv *Server) track(s *Session) *Reply {
	srv.mu.Lock()
	defer srv.mu.Unlock()
	if srv.draining.Load() {
		return replyShuttingDown
	}
	s.ip = remoteIP(s.remote)
	s.counts = srv.countsFor(s.local)
	s.perIP = s.ip.IsValid() && !clientnet.Contains(srv.cfg.XClientNetworks, s.ip)
	if r := s.counts.add(s.ip, s.perIP, srv.cfg.MaxConnections, srv.cfg.MaxConnectionsPerIP); r != nil {
		return r
	}
	srv.sessions[s] = struct{}{}
	return nil
}

// remoteIP is the client's IP, or the zero Addr when it has none.
func remoteIP(a net.Addr) netip.Addr {
	if t, ok := a.(*net.TCPAddr); ok {
		ip, _ := netip.AddrFromSlice(t.IP)
		return ip.Unmap()
	}
	if ap, err := netip.ParseAddrPort(addrString(a)); err == nil {
		return ap.Addr().Unmap()
	}
	return netip.Addr{}
}

func (srv *Server) untrack(s *Session) {
	s.counts.remove(s.ip, s.perIP)
	srv.mu.Lock()
	defer srv.mu.Unlock()
	delete(srv.sessions, s)
	if len(srv.sessions) == 0 && srv.done != nil {
		close(srv.done) // no session is added once draining, so this runs once
		if srv.cutTimer != nil {
			srv.cutTimer.Stop()
		}
	}
}

// countsFor returns the session counts of the local port of a connection:
// shared by every Server of the process for a TCP port, the Server's own
// otherwise.
func (srv *Server) countsFor(local net.Addr) *connCounts {
	port := 0
	if t, ok := local.(*net.TCPAddr); ok {
		port = t.Port
	} else if ap, err := netip.ParseAddrPort(addrString(local)); err == nil {
		port = int(ap.Port())
	}
	if port == 0 {
		return &srv.own
	}
	portCountsMu.Lock()
	defer portCountsMu.Unlock()
	c := portCounts[port]
	if c == nil {
		c = &connCounts{}
		portCounts[port] = c
	}
	return c
}

// connCounts counts the sessions on one local port.
type connCounts struct {
	mu    sync.Mutex
	total int
	perIP map[netip.Addr]int // sessions per client IP, proxies in XClientNetworks left out
}

var (
	portCountsMu sync.Mutex
	portCounts   = map[int]*connCounts{}
)

// add counts one more session from ip (per IP too when limitIP), or
// returns the 421 it gets when that would pass max or maxPerIP; a limit
// <= 0 is none.
func (c *connCounts) add(ip netip.Addr, limitIP bool, max, maxPerIP int) *Reply {
	c.mu.Lock()
	defer c.mu.Unlock()
	if max > 0 && c.total >= max {
		return replyTooManyConnections
	}
	if limitIP {
		if maxPerIP > 0 && c.perIP[ip] >= maxPerIP {
			return replyTooManyFromIP
		}
		if c.perIP == nil {
			c.perIP = map[netip.Addr]int{}
		}
		c.perIP[ip]++
	}
	c.total++
	return nil
}

// remove counts one session less.
func (c *connCounts) remove(ip netip.Addr, limitIP bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.total--
	if limitIP {
		if c.perIP[ip]--; c.perIP[ip] <= 0 {
			delete(c.perIP, ip)
		}
	}
}

// Shutdown starts a graceful stop and returns at once: new connections get
// 421 4.3.2, idle sessions are closed with 421 4.3.2, and sessions in a
// transaction may finish it within Config.GracePeriod, then are closed.
// It returns a channel closed when the last session has ended.
func (srv *Server) Shutdown() <-chan struct{} {
	srv.mu.Lock()
	defer srv.mu.Unlock()
	if srv.done == nil {
		srv.done = make(chan struct{})
		srv.graceEnd.Store(time.Now().Add(srv.cfg.GracePeriod).UnixNano())
		srv.draining.Store(true)
		for s := range srv.sessions {
			s.interrupt()
		}
		if len(srv.sessions) == 0 {
			close(srv.done)
		} else {
			srv.cutTimer = time.AfterFunc(srv.cfg.GracePeriod+lastWordTime, srv.cutSessions)
		}
	}
	return srv.done
}

// lastWordTime is what a session has after the grace period to send its
// 421 4.3.2, before it is cut.
const lastWordTime = time.Second

// cutSessions ends the sessions still running when the grace period (and
// lastWordTime) is over, wherever they are blocked: their context is cancelled (so a
// sub-handler call that heeds it returns) and their connection's deadlines
// are set in the past (so a read or a write to a client that does not
// read fails at once). A sub-handler call that ignores its context is the
// one thing that can hold a session longer; its connection is ended as
// soon as the call returns.
func (srv *Server) cutSessions() {
	srv.mu.Lock()
	defer srv.mu.Unlock()
	for s := range srv.sessions {
		s.cut()
	}
}

func (srv *Server) getChunk() []byte {
	if b, ok := srv.chunks.Get().(*[]byte); ok {
		return (*b)[:0]
	}
	return make([]byte, 0, srv.cfg.ChunkSize)
}

func (srv *Server) putChunk(b []byte) {
	b = b[:0]
	srv.chunks.Put(&b)
}

// Sessions returns the number of sessions running now.
func (srv *Server) Sessions() int {
	srv.mu.Lock()
	defer srv.mu.Unlock()
	return len(srv.sessions)
}
