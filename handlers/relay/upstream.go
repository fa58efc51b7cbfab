package relay

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"net/textproto"
	"strings"
	"time"

	"github.com/emersion/go-smtp"
	"go.uber.org/zap"

	"github.com/caddy-esmtp/caddy-esmtp/session"
)

// target is one address to try: host:port, and the name the upstream's
// certificate must carry.
type target struct {
	addr string
	name string
	// secure: with to mx, the MX answer (or its secure denial) and the
	// host's address records are DNSSEC-authenticated (see dane.go).
	secure bool
	// sts: the MTA-STS policy of its domain (to mx): stsEnforce, stsTesting
	// or ""; DANE, when it applies, wins (see policyFor).
	sts string
}

// upstream is one connection to an upstream SMTP server, greeted (and
// secured and authenticated as configured), between transactions.
type upstream struct {
	c     *smtp.Client
	uc    *upConn
	addr  string // host:port, for logs
	hello string // the name we gave in EHLO
	tls   bool
	// verified: its certificate verified (always, with TLS, unless
	// Relay.opportunistic).
	verified bool
	// policy is the TLS policy that applied (to mx: dane, opportunistic).
	policy string
	// tlsOK: a REQUIRETLS message may go over this connection: TLS that
	// DANE verified (to mx), or a verified certificate (smart host).
	tlsOK bool
}

// close drops the connection at once, without QUIT: used when the
// connection is broken, or in the middle of DATA, where the upstream must
// see the message end without its final dot and discard it.
func (u *upstream) close() { u.c.Close() }

// quit ends the connection politely, bounded by the command timeout.
func (u *upstream) quit() {
	if err := u.c.Quit(); err != nil {
		u.c.Close()
	}
}

// hasExt reports whether the upstream advertised an EHLO keyword.
func (u *upstream) hasExt(ext string) bool {
	ok, _ := u.c.Extension(ext)
	return ok
}

// upConn is the connection under the SMTP client. It replays a greeting
// to the client when the real one was read before STARTTLS, and gives every
// write a deadline, so a stalled upstream cannot hold a session while the
// message is sent.
type upConn struct {
	net.Conn
	greeting []byte
	timeout  time.Duration
}

func (c *upConn) Read(p []byte) (int, error) {
	if len(c.greeting) > 0 {
		n := copy(p, c.greeting)
		c.greeting = c.greeting[n:]
		return n, nil
	}
	return c.Conn.Read(p)
}

func (c *upConn) Write(p []byte) (int, error) {
	c.Conn.SetWriteDeadline(time.Now().Add(c.timeout))
	return c.Conn.Write(p)
}

// Replies for failures of the upstream connection: all temporary, so the
// client tries again later and nothing is lost.
var (
	replyUnreachable = session.NewReply(451, "4.4.1", "Upstream mail server not reachable; try again later")
	replyConnLost    = session.NewReply(451, "4.4.2", "Connection to the upstream mail server lost; try again later")
	replyUpClosed    = session.NewReply(451, "4.4.2", "Upstream mail server closed the connection; try again later")
	replyNoTLS       = session.NewReply(451, "4.7.4", "Upstream mail server does not offer STARTTLS; try again later")
	replyTLSFailed   = session.NewReply(451, "4.7.5", "TLS with the upstream mail server failed; try again later")
	replyUpAuth      = session.NewReply(451, "4.7.0", "Authentication to the upstream mail server failed; try again later")
)

// setupError is a failure to set up an upstream connection: the reply for
// the client, and the cause for the log.
type setupError struct {
	reply  *session.Reply
	cause  error
	reason string // for relay_defer_reason: DANE, MTA-STS, REQUIRETLS
	policy string // the TLS policy of the mail server that failed (relay_tls_policy), or ""
}

// under records the TLS policy that applied (once: the first one set wins).
func (e *setupError) under(policy string) *setupError {
	if e.policy == "" {
		e.policy = policy
	}
	return e
}

// queueReply is the reply for a queued recipient: with the TLS policy that
// applied, which the queue keeps (tls_policy).
func (e *setupError) queueReply() *session.Reply {
	if e.policy == "" {
		return e.reply
	}
	c := *e.reply
	c.TLSPolicy = e.policy
	return &c
}

func (e *setupError) because(reason string) *setupError {
	e.reason = reason
	return e
}

func (e *setupError) Error() string { return e.cause.Error() }

func failed(r *session.Reply, format string, args ...any) *setupError {
	return &setupError{reply: r, cause: fmt.Errorf(format, args...)}
}

// connect opens a connection to t and greets it as hello: implicit TLS
// (smtps), or STARTTLS when the upstream offers it (required when
// requireTLS), then AUTH PLAIN when credentials are configured.
//
// pol is the TLS policy of a mail server (to mx), nil for the smart host:
// a mandatory one (DANE) defers a server without STARTTLS or whose
// certificate fails its check.
func (r *Relay) connect(ctx context.Context, t target, hello string, pol *tlsPolicy) (*upstream, *setupError) {
	d := net.Dialer{Timeout: time.Duration(r.ConnectTimeout)}
	raw, err := d.DialContext(ctx, "tcp", t.addr)
	if err != nil {
		return nil, failed(replyUnreachable, "connecting to %s: %v", t.addr, err)
	}
	up, serr := r.greet(ctx, raw, t, hello, pol)
	if serr != nil {
		raw.Close()
		return nil, serr
	}
	return up, nil
}

// maxPreTLS bounds what an upstream may send before TLS (greeting, EHLO
// and STARTTLS replies).
const maxPreTLS = 64 << 10

func (r *Relay) greet(ctx context.Context, raw net.Conn, t target, hello string, pol *tlsPolicy) (*upstream, *setupError) {
	mandatory := pol != nil && pol.mandatory
	timeout := r.commandTimeout(ctx)
	raw.SetDeadline(time.Now().Add(timeout))
	var conn net.Conn = raw
	var greeting []byte
	secure, verified := false, false
	if r.implicitTLS {
		tc := tls.Client(raw, r.tlsConfig(t.name))
		if err := tc.HandshakeContext(ctx); err != nil {
			return nil, failed(replyTLSFailed, "TLS with %s: %v", t.addr, err)
		}
		conn, secure, verified = tc, true, r.checkCertificate(tc, t)
	} else {
		// Greeting, EHLO and STARTTLS are spoken here rather than by the
		// SMTP client, which would say EHLO as "localhost" before TLS and
		// cannot do STARTTLS only when offered.
		br := bufio.NewReader(io.LimitReader(raw, maxPreTLS))
		tr := textproto.NewReader(br)
		_, msg, err := tr.ReadResponse(220)
		if err != nil {
			return nil, failed(replyUnreachable, "greeting of %s: %v", t.addr, err)
		}
		first, _, _ := strings.Cut(msg, "\n")
		greeting = []byte("220 " + first + "\r\n")
		offered := false
		if _, err := fmt.Fprintf(raw, "EHLO %s\r\n", hello); err != nil {
			return nil, failed(replyUnreachable, "EHLO to %s: %v", t.addr, err)
		}
		if _, msg, err := tr.ReadResponse(250); err == nil {
			lines := strings.Split(msg, "\n")
			for _, l := range lines[1:] {
				kw, _, _ := strings.Cut(l, " ")
				offered = offered || strings.EqualFold(kw, "STARTTLS")
			}
		} else if _, ok := err.(*textproto.Error); !ok {
			return nil, failed(replyUnreachable, "EHLO to %s: %v", t.addr, err)
		}
		if offered {
			if _, err := fmt.Fprintf(raw, "STARTTLS\r\n"); err != nil {
				return nil, failed(replyUnreachable, "STARTTLS to %s: %v", t.addr, err)
			}
			if _, _, err := tr.ReadResponse(220); err == nil {
				if br.Buffered() > 0 {
					// Bytes after the 220 and before the handshake were
					// not sent by the server's TLS (CVE-2011-0411 class).
					return nil, failed(replyTLSFailed, "%s sent data after its STARTTLS reply", t.addr)
				}
				cfg := r.tlsConfig(t.name)
				if mandatory {
					// DANE: the TLSA records, not the roots or the name
					// (RFC 7672 3.1), checked during the handshake.
					cfg.InsecureSkipVerify, cfg.VerifyConnection = true, pol.verify
				}
				tc := tls.Client(raw, cfg)
				if err := tc.HandshakeContext(ctx); err != nil {
					if mandatory {
						return nil, failed(replyDANECert, "DANE: STARTTLS with %s (%s): %v", t.addr, t.name, err).because(reasonDANECert)
					}
					return nil, failed(replyTLSFailed, "STARTTLS with %s: %v", t.addr, err)
				}
				conn, secure = tc, true
				if mandatory {
					verified = pol.verified
				} else {
					verified = r.checkCertificate(tc, t)
				}
			} else if _, ok := err.(*textproto.Error); !ok {
				return nil, failed(replyUnreachable, "STARTTLS to %s: %v", t.addr, err)
			}
		}
		if !secure && mandatory {
			return nil, failed(replyDANENoTLS, "DANE: %s (%s) does not offer STARTTLS", t.addr, t.name).because(reasonDANENoTLS)
		}
		if !secure && r.requireTLS {
			return nil, failed(replyNoTLS, "%s: no STARTTLS (require_tls is on)", t.addr)
		}
		if br.Buffered() > 0 {
			return nil, failed(replyUnreachable, "%s sent data out of turn", t.addr)
		}
	}
	if pol != nil && (pol.kind == stsEnforce || pol.kind == stsTesting) {
		if serr := r.stsCheck(t, secure, verified); serr != nil {
			return nil, serr
		}
	}
	raw.SetDeadline(time.Time{})

	uc := &upConn{Conn: conn, greeting: greeting, timeout: timeout}
	c := smtp.NewClient(uc)
	c.CommandTimeout = timeout
	up := &upstream{c: c, uc: uc, addr: t.addr, hello: hello, tls: secure, verified: verified}
	switch {
	case pol == nil:
		up.tlsOK = secure && verified && !r.opportunistic
	case pol.kind == stsEnforce:
		// stsCheck above required TLS and a verified certificate.
		up.policy, up.tlsOK = pol.kind, secure && verified
	default:
		up.policy, up.tlsOK = pol.kind, secure && pol.verified
	}
	if err := c.Hello(hello); err != nil {
		c.Close()
		return nil, failed(replyUnreachable, "greeting %s: %v", t.addr, err)
	}
	if r.user != "" {
		if !secure {
			c.Close()
			return nil, failed(replyNoTLS, "%s: credentials are sent only over TLS", t.addr)
		}
		if !up.hasExt("AUTH") {
			c.Close()
			return nil, failed(replyUpAuth, "%s does not offer AUTH", t.addr)
		}
		if err := c.Auth(plainAuth{user: r.user, pass: r.password}); err != nil {
			c.Close()
			return nil, failed(replyUpAuth, "AUTH PLAIN to %s as %q: %v", t.addr, r.user, err)
		}
	}
	return up, nil
}

// serverName is the name the certificate of an upstream named name must
// carry.
func (r *Relay) serverName(name string) string {
	if r.TLSServerName != "" {
		return r.TLSServerName
	}
	return name
}

// tlsConfig is the client TLS configuration for an upstream named name.
// The handshake verifies the certificate unless TLS is opportunistic: then
// checkCertificate does, for the log.
func (r *Relay) tlsConfig(name string) *tls.Config {
	return &tls.Config{
		ServerName:         r.serverName(name),
		RootCAs:            r.roots,
		InsecureSkipVerify: r.opportunistic,
		MinVersion:         tls.VersionTLS12,
	}
}

// checkCertificate reports whether the certificate of the upstream t on tc
// (handshake done) verifies against the roots and its name. Without
// opportunistic TLS the handshake verified it already; with it (RFC 7435:
// encryption without authentication beats none) the connection is used
// either way, and this says which it is.
func (r *Relay) checkCertificate(tc *tls.Conn, t target) bool {
	if !r.opportunistic {
		return true
	}
	certs := tc.ConnectionState().PeerCertificates
	err := errors.New("no certificate")
	if len(certs) > 0 {
		opts := x509.VerifyOptions{Roots: r.roots, DNSName: r.serverName(t.name), Intermediates: x509.NewCertPool()}
		for _, c := range certs[1:] {
			opts.Intermediates.AddCert(c)
		}
		_, err = certs[0].Verify(opts)
	}
	if err != nil {
		if ce := r.logger.Check(zap.DebugLevel, "upstream certificate not verified; TLS used all the same"); ce != nil {
			ce.Write(zap.String("upstream", t.addr), zap.String("name", r.serverName(t.name)), zap.Error(err))
		}
		return false
	}
	return true
}

// commandTimeout is the timeout of one upstream command, never past the
// hook's deadline.
func (r *Relay) commandTimeout(ctx context.Context) time.Duration {
	return within(ctx, time.Duration(r.Timeout))
}

func within(ctx context.Context, d time.Duration) time.Duration {
	if dl, ok := ctx.Deadline(); ok {
		if left := time.Until(dl); left < d {
			d = max(left, time.Millisecond)
		}
	}
	return d
}

// plainAuth is the SASL PLAIN mechanism (RFC 4616) for the SMTP client.
type plainAuth struct{ user, pass string }

func (a plainAuth) Start() (string, []byte, error) {
	return "PLAIN", []byte("\x00" + a.user + "\x00" + a.pass), nil
}

func (a plainAuth) Next([]byte) ([]byte, error) {
	return nil, errors.New("unexpected server challenge")
}

// upstreamReply turns an upstream's error reply into ours: its code,
// enhanced code and text (sanitized) are passed through to the client. A
// code that is not a failure becomes 451 4.4.2.
func upstreamReply(e *smtp.SMTPError) *session.Reply {
	if e.Code < 400 || e.Code > 599 {
		return replyConnLost
	}
	r := &session.Reply{Code: e.Code}
	ec := e.EnhancedCode
	if ec[0] == e.Code/100 && ec[1] >= 0 && ec[1] < 1000 && ec[2] >= 0 && ec[2] < 1000 {
		r.Enhanced = fmt.Sprintf("%d.%d.%d", ec[0], ec[1], ec[2])
	}
	for i, l := range strings.Split(e.Message, "\n") {
		if i == 8 {
			break
		}
		r.Lines = append(r.Lines, session.Sanitize(strings.TrimSpace(l), 400))
	}
	return r
}

// replyFor is the reply for an error of an SMTP client call, and whether
// the connection is still good for the next command: the upstream's reply
// when it answered, else the connection is gone. A 421 is the upstream
// closing the connection (RFC 5321 3.8): passed on as such it would tell
// the client that our session ends, so it is 451 4.4.2 instead, and the
// connection is done.
func replyFor(err error) (*session.Reply, bool) {
	var se *smtp.SMTPError
	if errors.As(err, &se) {
		if se.Code == 421 {
			return replyUpClosed, false
		}
		return upstreamReply(se), true
	}
	return replyConnLost, false
}
