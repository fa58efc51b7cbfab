package relay

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"io"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"

	"github.com/caddy-esmtp/caddy-esmtp/internal/smtptest"
	"github.com/caddy-esmtp/caddy-esmtp/session"
)

// hangGuard bounds waits so a broken relay fails a test instead of hanging
// it; it is not a timing assertion.
const hangGuard = 60 * time.Second

// testCA is a certificate authority and a server certificate it signed for
// "mx.test", "localhost" and 127.0.0.1, made once per test binary.
type testCA struct {
	caFile string // PEM of the CA, for tls_ca
	server tls.Certificate
	caCert *x509.Certificate
	leaf   *x509.Certificate
}

var (
	caOnce sync.Once
	ca     testCA
	caErr  error
)

func certs(t testing.TB) testCA {
	t.Helper()
	caOnce.Do(func() {
		dir, err := os.MkdirTemp("", "relay-ca-")
		if err != nil {
			caErr = err
			return
		}
		caKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		caTmpl := &x509.Certificate{
			SerialNumber:          big.NewInt(1),
			Subject:               pkix.Name{CommonName: "relay test CA"},
			NotBefore:             time.Now().Add(-time.Hour),
			NotAfter:              time.Now().Add(24 * time.Hour),
			IsCA:                  true,
			BasicConstraintsValid: true,
			KeyUsage:              x509.KeyUsageCertSign,
		}
		caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
		if err != nil {
			caErr = err
			return
		}
		caCert, _ := x509.ParseCertificate(caDER)
		key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		tmpl := &x509.Certificate{
			SerialNumber: big.NewInt(2),
			Subject:      pkix.Name{CommonName: "mx.test"},
			DNSNames:     []string{"mx.test", "localhost"},
			IPAddresses:  []net.IP{net.IPv4(127, 0, 0, 1)},
			NotBefore:    time.Now().Add(-time.Hour),
			NotAfter:     time.Now().Add(24 * time.Hour),
			KeyUsage:     x509.KeyUsageDigitalSignature,
			ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, caCert, &key.PublicKey, caKey)
		if err != nil {
			caErr = err
			return
		}
		ca.caFile = filepath.Join(dir, "ca.pem")
		caErr = os.WriteFile(ca.caFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER}), 0o600)
		ca.server = tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
		ca.caCert = caCert
		ca.leaf, caErr = x509.ParseCertificate(der)
	})
	if caErr != nil {
		t.Fatal(caErr)
	}
	return ca
}

// upMsg is a message as the upstream received it.
type upMsg struct {
	from     string
	mailOpts smtp.MailOptions
	rcpts    []string
	rcptOpts []smtp.RcptOptions
	data     []byte
	tls      bool
	auth     string
}

// upstreamOpts configures a test upstream.
type upstreamOpts struct {
	tls        bool   // offer STARTTLS with the test certificate
	implicit   bool   // TLS from the start (smtps)
	user, pass string // require AUTH PLAIN with these
	dsn        bool
	utf8       bool
	addr       string // listen address; 127.0.0.1:0 by default
	rejectRcpt map[string]*smtp.SMTPError
	rejectData *smtp.SMTPError
	rejectMail *smtp.SMTPError
	// requireTLS offers REQUIRETLS (RFC 8689) inside TLS.
	requireTLS bool
	// chain sends the CA's certificate after the server's (DANE-TA).
	chain bool
	// rejectDataTo refuses the end of data of a message whose first
	// recipient is the key.
	rejectDataTo map[string]*smtp.SMTPError
}

// upstream is an in-process go-smtp server on loopback that records what
// it gets, and the raw bytes it reads.
type upstreamServer struct {
	addr  string
	opts  upstreamOpts
	mu    sync.Mutex
	msgs  []upMsg
	conns int
	ended int // connections whose reading ended
	raw   bytes.Buffer
}

func startUpstream(t testing.TB, o upstreamOpts) *upstreamServer {
	t.Helper()
	u := &upstreamServer{opts: o}
	srv := smtp.NewServer(u)
	srv.Domain = "upstream.test"
	srv.AllowInsecureAuth = !o.tls && !o.implicit
	srv.EnableDSN = o.dsn
	srv.EnableSMTPUTF8 = o.utf8
	srv.MaxLineLength = 4000
	srv.ErrorLog = log{}
	srv.EnableREQUIRETLS = o.requireTLS
	if o.tls {
		cert := certs(t).server
		if o.chain {
			cert.Certificate = append(cert.Certificate[:1:1], certs(t).caCert.Raw)
		}
		srv.TLSConfig = &tls.Config{Certificates: []tls.Certificate{cert}}
	}
	addr := o.addr
	if addr == "" {
		addr = "127.0.0.1:0"
	}
	l, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	var ln net.Listener = &countingListener{Listener: l, u: u}
	if o.implicit {
		ln = tls.NewListener(ln, &tls.Config{Certificates: []tls.Certificate{certs(t).server}})
	}
	u.addr = l.Addr().String()
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return u
}

type log struct{}

func (log) Printf(string, ...any) {}
func (log) Println(...any)        {}

func (u *upstreamServer) messages() []upMsg {
	u.mu.Lock()
	defer u.mu.Unlock()
	return append([]upMsg(nil), u.msgs...)
}

func (u *upstreamServer) connections() int {
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.conns
}

func (u *upstreamServer) closed() int {
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.ended
}

func (u *upstreamServer) rawBytes() []byte {
	u.mu.Lock()
	defer u.mu.Unlock()
	return bytes.Clone(u.raw.Bytes())
}

// countingListener counts connections and records the bytes read.
type countingListener struct {
	net.Listener
	u *upstreamServer
}

func (l *countingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err == nil {
		l.u.mu.Lock()
		l.u.conns++
		l.u.mu.Unlock()
		c = &recordingConn{Conn: c, u: l.u}
	}
	return c, err
}

type recordingConn struct {
	net.Conn
	u     *upstreamServer
	ended bool
}

func (c *recordingConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	c.u.mu.Lock()
	c.u.raw.Write(p[:n])
	if err != nil && !c.ended {
		c.ended = true
		c.u.ended++
	}
	c.u.mu.Unlock()
	return n, err
}

// NewSession implements smtp.Backend.
func (u *upstreamServer) NewSession(c *smtp.Conn) (smtp.Session, error) {
	return &upSession{u: u, c: c}, nil
}

type upSession struct {
	u    *upstreamServer
	c    *smtp.Conn
	auth string
	msg  upMsg
}

func (s *upSession) AuthMechanisms() []string {
	if s.u.opts.user == "" {
		return nil
	}
	return []string{sasl.Plain}
}

func (s *upSession) Auth(mech string) (sasl.Server, error) {
	return sasl.NewPlainServer(func(_, user, pass string) error {
		if user != s.u.opts.user || pass != s.u.opts.pass {
			return errors.New("invalid credentials")
		}
		s.auth = user
		return nil
	}), nil
}

func (s *upSession) Reset() { s.msg = upMsg{} }

func (s *upSession) Logout() error { return nil }

func (s *upSession) Mail(from string, opts *smtp.MailOptions) error {
	if s.u.opts.user != "" && s.auth == "" {
		return smtp.ErrAuthRequired
	}
	if s.u.opts.rejectMail != nil {
		return s.u.opts.rejectMail
	}
	s.msg = upMsg{from: from, auth: s.auth}
	if opts != nil {
		s.msg.mailOpts = *opts
	}
	_, s.msg.tls = s.c.TLSConnectionState()
	return nil
}

func (s *upSession) Rcpt(to string, opts *smtp.RcptOptions) error {
	if e := s.u.opts.rejectRcpt[to]; e != nil {
		return e
	}
	s.msg.rcpts = append(s.msg.rcpts, to)
	var o smtp.RcptOptions
	if opts != nil {
		o = *opts
	}
	s.msg.rcptOpts = append(s.msg.rcptOpts, o)
	return nil
}

func (s *upSession) Data(r io.Reader) error {
	b, err := io.ReadAll(r)
	if err != nil {
		return err
	}
	if s.u.opts.rejectData != nil {
		return s.u.opts.rejectData
	}
	if len(s.msg.rcpts) > 0 && s.u.opts.rejectDataTo[s.msg.rcpts[0]] != nil {
		return s.u.opts.rejectDataTo[s.msg.rcpts[0]]
	}
	s.msg.data = b
	s.u.mu.Lock()
	s.u.msgs = append(s.u.msgs, s.msg)
	s.u.mu.Unlock()
	return nil
}

// provisioned provisions r through Caddy's API and fails the test on error.
func provisioned(t testing.TB, r *Relay) *Relay {
	t.Helper()
	if err := smtptest.Provision(r); err != nil {
		t.Fatalf("provision: %v", err)
	}
	t.Cleanup(func() { r.Cleanup() })
	return r
}

// authAs is a sub-handler that marks every session as authenticated.
type authAs string

func (a authAs) Connect(_ context.Context, s *session.Session) (*session.Reply, error) {
	s.SetAuthenticated(string(a))
	return nil, nil
}

// serve runs the engine with base's settings and the sub-handlers.
func serve(t testing.TB, base session.Config, handlers ...any) *smtptest.Server {
	t.Helper()
	cfg := smtptest.Config(handlers...)
	cfg.BareLineEndings = base.BareLineEndings
	cfg.Logger = base.Logger
	cfg.Resolver = base.Resolver
	return smtptest.NewServer(t, cfg)
}

// observed returns an engine configuration whose logger records its
// entries, and the record: the per-message log lines are in it.
func observed() (session.Config, *observer.ObservedLogs) {
	core, logs := observer.New(zap.InfoLevel)
	return session.Config{Logger: zap.New(core)}, logs
}

// messageLog returns the fields of the n-th (from 1) per-message log line,
// waiting for it: it may be written after the reply to the end of data.
func messageLog(t testing.TB, logs *observer.ObservedLogs, n int) map[string]any {
	t.Helper()
	deadline := time.Now().Add(hangGuard)
	for {
		if entries := logs.FilterMessage("message").All(); len(entries) >= n {
			return entries[n-1].ContextMap()
		}
		if time.Now().After(deadline) {
			t.Fatalf("waiting for per-message log line %d", n)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// mailParam is a sub-handler that adds a MAIL parameter to the transaction
// of each sender in the map, as the engine does with the parameters it
// accepts: the relay sees it in Transaction.MailParams.
type mailParam map[string]session.Param

func (m mailParam) Mail(_ context.Context, s *session.Session, from session.Path, _ session.Params) (*session.Reply, error) {
	if p, ok := m[from.Mailbox]; ok {
		txn := s.Transaction()
		txn.MailParams = append(txn.MailParams, p)
	}
	return nil, nil
}

// dial connects over loopback TCP (so the client address is 127.0.0.1),
// reads the greeting and says EHLO; it returns the EHLO reply's lines.
func dial(t testing.TB, srv *smtptest.Server) (*smtptest.Client, []string) {
	t.Helper()
	c := srv.DialTCP()
	c.Expect("220 ")
	c.Send("EHLO " + smtptest.Helo + "\r\n")
	r := c.ReadReply()
	if r.Code != 250 {
		t.Fatalf("EHLO: %s", r)
	}
	return c, r.Lines
}

// stuff dot-stuffs msg (CRLF line ends) and appends the end of data.
func stuff(msg string) string {
	var b strings.Builder
	for _, l := range strings.SplitAfter(msg, "\r\n") {
		if strings.HasPrefix(l, ".") {
			b.WriteByte('.')
		}
		b.WriteString(l)
	}
	b.WriteString(".\r\n")
	return b.String()
}

// splitReceived checks that data is one Received: field from the relay
// followed by exactly want.
func splitReceived(t testing.TB, data []byte, want string) {
	t.Helper()
	if !bytes.HasPrefix(data, []byte("Received: from ")) {
		t.Fatalf("upstream data does not start with our Received: field: %q", data)
	}
	end := 0
	for {
		i := bytes.Index(data[end:], []byte("\r\n"))
		if i < 0 {
			t.Fatalf("unterminated Received: in %q", data)
		}
		end += i + 2
		if end >= len(data) || data[end] != '\t' {
			break
		}
	}
	if !strings.Contains(string(data[:end]), "by "+smtptest.Hostname+" with ") {
		t.Errorf("Received: field does not name the relay: %q", data[:end])
	}
	if got := string(data[end:]); got != want {
		t.Errorf("upstream got\n%q\nwant\n%q", got, want)
	}
}
