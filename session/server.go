package session

import (
	"context"
	"crypto/tls"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"
)

// Server runs SMTP sessions with one configuration. It is safe for
// concurrent use; each connection is served by Serve in its own goroutine.
type Server struct {
	cfg          Config
	hooks        *hookSet
	ehloKeywords []string
	heloReply    *Reply // "250 <hostname>", the HELO reply without a hook's text
	quitReply    *Reply // "221 2.0.0 <hostname> closing connection"

	mu       sync.Mutex
	sessions map[*Session]struct{}
	perIP    map[netip.Addr]int // sessions per client IP
	chunks   sync.Pool          // body chunk buffers of cap ChunkSize
	done     chan struct{}      // made by Shutdown, closed when the last session has ended
	draining atomic.Bool
	graceEnd atomic.Int64 // unix nanoseconds: sessions are cut after this once draining
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
	return &Server{
		cfg:          c,
		hooks:        newHookSet(c.Handlers),
		ehloKeywords: ehloKeywords(&c),
		heloReply:    &Reply{Code: 250, Lines: []string{c.Hostname}, plain: true},
		quitReply:    &Reply{Code: 221, Enhanced: "2.0.0", Lines: []string{c.Hostname + " closing connection"}},
		sessions:     map[*Session]struct{}{},
		perIP:        map[netip.Addr]int{},
	}, nil
}

// Config returns the server's configuration with defaults filled in.
func (srv *Server) Config() Config { return srv.cfg }

// Serve runs one SMTP session on conn until it ends and returns nil for an
// ordinary end (QUIT, client gone, timeout) or the I/O error that ended it.
// Serve does not close conn. ctx is the parent of the session context that
// every hook gets.
func (srv *Server) Serve(ctx context.Context, conn net.Conn, info ConnInfo) error {
	s := newSession(srv, conn, info)
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
	return s.run(ctx)
}

// track registers a new session, or returns the 421 it gets instead:
// shutting down, or over MaxConnections or MaxConnectionsPerIP.
func (srv *Server) track(s *Session) *Reply {
	srv.mu.Lock()
	defer srv.mu.Unlock()
	switch {
	case srv.draining.Load():
		return replyShuttingDown
	case srv.cfg.MaxConnections > 0 && len(srv.sessions) >= srv.cfg.MaxConnections:
		return replyTooManyConnections
	}
	s.ip = remoteIP(s.remote)
	if srv.cfg.MaxConnectionsPerIP > 0 && srv.perIP[s.ip] >= srv.cfg.MaxConnectionsPerIP {
		return replyTooManyFromIP
	}
	srv.sessions[s] = struct{}{}
	srv.perIP[s.ip]++
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
	srv.mu.Lock()
	defer srv.mu.Unlock()
	delete(srv.sessions, s)
	if srv.perIP[s.ip]--; srv.perIP[s.ip] <= 0 {
		delete(srv.perIP, s.ip)
	}
	if len(srv.sessions) == 0 && srv.done != nil {
		close(srv.done) // no session is added once draining, so this runs once
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
		}
	}
	return srv.done
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
