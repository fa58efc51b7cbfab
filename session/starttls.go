package session

import (
	"crypto/tls"
	"net"
	"net/netip"
	"strconv"
	"strings"

	"github.com/caddy-esmtp/caddy-esmtp/internal/clientnet"
	"go.uber.org/zap"
)

var (
	replyStartTLS       = NewReply(220, "2.0.0", "Ready to start TLS")
	replyTLSActive      = NewReply(503, "5.5.1", "TLS already active")
	replyTLSNotOn       = NewReply(502, "5.5.1", "STARTTLS not available")
	replyTLSRequired    = NewReply(530, "5.7.0", "Must issue a STARTTLS command first")
	replySmuggledTLS    = &Reply{Code: 554, Enhanced: "5.5.0", Lines: []string{"Commands pipelined after STARTTLS; closing connection"}, Close: true}
	replyXClientDenied  = NewReply(550, "5.7.0", "Insufficient authorization")
	replyXClientSyntax  = NewReply(501, "5.5.4", "Syntax: XCLIENT attribute=value ...")
	replyXClientInTxn   = NewReply(503, "5.5.1", "XCLIENT not allowed during a mail transaction")
	xclientAttributes   = "NAME ADDR PORT PROTO HELO LOGIN"
	xclientEHLOKeyword  = "XCLIENT " + xclientAttributes
	startTLSEHLOKeyword = "STARTTLS"
)

// startTLSOffered reports whether STARTTLS is advertised now.
func (s *Session) startTLSOffered() bool { return s.cfg.TLSConfig != nil && s.tls == nil }

// cmdStartTLS upgrades the connection (RFC 3207). Bytes the client sent
// after STARTTLS and before the handshake would be answered inside TLS as
// if the client had sent them there (CVE-2011-0411): they get 554 and the
// connection closes, never an answer. After the handshake the session
// starts afresh: the client must EHLO again.
func (s *Session) cmdStartTLS(hasArg bool) *Reply {
	switch {
	case hasArg:
		return replyNoArgs
	case s.tls != nil:
		return replyTLSActive
	case s.cfg.TLSConfig == nil:
		return replyTLSNotOn
	case s.r.Buffered() > 0:
		return replySmuggledTLS
	}
	s.reply(replyStartTLS)
	if err := s.flush(); err != nil {
		s.closing = true
		return nil
	}
	tlsConn := tls.Server(s.conn, s.cfg.TLSConfig)
	s.setDeadline(s.cfg.CommandTimeout)
	if err := tlsConn.HandshakeContext(s.ctx); err != nil {
		s.cfg.Observer.TLS(false)
		s.log.Info("TLS handshake failed", zap.String("session", s.id),
			zap.String("remote", s.remoteString()), zap.Error(err))
		s.closing = true
		return nil
	}
	s.cfg.Observer.TLS(true)
	state := tlsConn.ConnectionState()
	if s.txn != nil {
		s.abort(errReset)
	}
	s.conn, s.tls = tlsConn, &state
	s.r.Reset(tlsConn)
	s.helo, s.extended = "", false
	s.values = nil // nothing learnt in clear text carries over
	if s.debug {
		s.log.Debug("TLS established", zap.String("session", s.id), zap.String("version", tls.VersionName(state.Version)),
			zap.String("cipher", tls.CipherSuiteName(state.CipherSuite)), zap.String("server_name", state.ServerName))
	}
	return nil
}

// xclientAllowed reports whether the client may use XCLIENT.
func (s *Session) xclientAllowed() bool {
	if len(s.cfg.XClientNetworks) == 0 {
		return false
	}
	return clientnet.Contains(s.cfg.XClientNetworks, s.RemoteIP())
}

// cmdXClient handles Postfix's XCLIENT: a trusted proxy passes on the
// original client's address, HELO name, protocol and login. The session
// then starts afresh with a new greeting, as in Postfix.
func (s *Session) cmdXClient(arg string) *Reply {
	if !s.xclientAllowed() {
		return replyXClientDenied
	}
	if s.txn != nil {
		return replyXClientInTxn
	}
	if arg == "" {
		return replyXClientSyntax
	}
	var addr netip.Addr
	port := 0
	helo, login, proto := s.helo, "", ""
	for _, f := range strings.Fields(arg) {
		k, v, ok := strings.Cut(f, "=")
		if !ok {
			return replyXClientSyntax
		}
		v, ok = xtextDecode(v)
		if !ok {
			return replyXClientSyntax
		}
		unavailable := v == "[UNAVAILABLE]" || v == "[TEMPUNAVAIL]"
		switch strings.ToUpper(k) {
		case "ADDR":
			if unavailable {
				continue
			}
			a, err := netip.ParseAddr(strings.TrimPrefix(strings.ToLower(v), "ipv6:"))
			if err != nil {
				return replyXClientSyntax
			}
			addr = a
		case "PORT":
			if unavailable {
				continue
			}
			n, err := strconv.Atoi(v)
			if err != nil || n < 0 || n > 65535 {
				return replyXClientSyntax
			}
			port = n
		case "HELO":
			if !unavailable {
				helo = v
			}
		case "LOGIN":
			if !unavailable {
				login = v
			}
		case "PROTO":
			proto = strings.ToUpper(v)
			if proto != "SMTP" && proto != "ESMTP" {
				return replyXClientSyntax
			}
		case "NAME", "DESTADDR", "DESTPORT":
			// accepted; the engine does no reverse DNS
		default:
			return replyXClientSyntax
		}
	}
	if addr.IsValid() {
		s.remote = &net.TCPAddr{IP: addr.AsSlice(), Port: port}
	}
	s.values = nil
	s.helo = helo
	s.extended = proto != "SMTP" && s.extended
	if login != "" {
		s.SetAuthenticated(login)
	}
	s.log.Info("xclient", zap.String("session", s.id), zap.String("remote", s.remoteString()),
		zap.String("helo", logSafe(helo)), zap.String("login", logSafe(login)))
	greeting := ask(s, "connect", s.srv.hooks.connect, connectCall(s))
	if greeting == nil {
		greeting = s.defaultGreeting()
	}
	g := *greeting
	g.plain = true // a greeting has no enhanced code
	g.Close = g.Close || g.Code >= 400
	return &g
}

// xtextDecode decodes RFC 3461 xtext ("+XX" hex escapes).
func xtextDecode(v string) (string, bool) {
	if !strings.Contains(v, "+") {
		return v, true
	}
	var b strings.Builder
	for i := 0; i < len(v); i++ {
		if v[i] != '+' {
			b.WriteByte(v[i])
			continue
		}
		if i+2 >= len(v) {
			return "", false
		}
		n, err := strconv.ParseUint(v[i+1:i+3], 16, 8)
		if err != nil {
			return "", false
		}
		b.WriteByte(byte(n))
		i += 2
	}
	return b.String(), true
}
