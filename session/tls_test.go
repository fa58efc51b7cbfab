package session

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"io"
	"math/big"
	"net"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"
)

// testCert makes a self-signed certificate for hosts and returns a server
// tls.Config serving it and a pool that trusts it.
func testCert(t testing.TB, hosts ...string) (*tls.Config, *x509.CertPool) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(time.Now().UnixNano()),
		Subject:               pkix.Name{CommonName: hosts[0]},
		DNSNames:              hosts,
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(cert)
	return &tls.Config{Certificates: []tls.Certificate{{Certificate: [][]byte{der}, PrivateKey: key, Leaf: cert}}}, pool
}

// chanConn is the client side of the raw connection once the testClient's
// reader goroutine owns it: it reads what that goroutine received (bytes
// already received first) and writes to the connection. crypto/tls runs
// over it after STARTTLS, so there is never a second reader on the raw
// connection. Only one goroutine may read it at a time.
type chanConn struct {
	net.Conn
	c *testClient
}

func (cc *chanConn) Read(p []byte) (int, error) {
	for len(cc.c.pending) == 0 {
		if cc.c.eof {
			return 0, io.EOF
		}
		b, ok := <-cc.c.chunks
		if !ok {
			cc.c.eof = true
			return 0, io.EOF
		}
		cc.c.pending = b
	}
	n := copy(p, cc.c.pending)
	cc.c.pending = cc.c.pending[n:]
	return n, nil
}

// handshake runs the client side of TLS over c's connection with the
// server name and roots given, and returns a client reading inside TLS.
// c must not be used afterwards.
func handshake(t testing.TB, c *testClient, roots *x509.CertPool, serverName string) (*testClient, error) {
	t.Helper()
	if len(c.pending) > 0 {
		t.Fatalf("the server sent %q after 220 and before the handshake", c.pending)
	}
	tc := tls.Client(&chanConn{Conn: c.conn, c: c}, &tls.Config{RootCAs: roots, ServerName: serverName})
	ctx, cancel := context.WithTimeout(context.Background(), hangGuard)
	defer cancel()
	if err := tc.HandshakeContext(ctx); err != nil {
		return nil, err
	}
	return newTestClient(t, tc), nil
}

// startTLS sends STARTTLS, checks the 220 and returns a client inside TLS
// whose certificate was verified for serverName.
func startTLS(t testing.TB, c *testClient, roots *x509.CertPool, serverName string) *testClient {
	t.Helper()
	c.cmd("STARTTLS", 220, "2.0.0")
	tc, err := handshake(t, c, roots, serverName)
	if err != nil {
		t.Fatalf("TLS handshake: %v", err)
	}
	return tc
}

// drain reads until the server closes and returns what it sent.
func drain(c *testClient) string {
	b := c.pending
	c.pending = nil
	for !c.eof {
		b = append(b, c.nextChunk()...)
	}
	return string(b)
}

// ehloKeywordsOf returns the EHLO reply's lines after the first.
func ehloKeywordsOf(r smtpReply) string { return strings.Join(r.texts[1:], "|") }

func hasKeyword(r smtpReply, kw string) bool {
	for _, l := range r.texts[1:] {
		if l == kw || strings.HasPrefix(l, kw+" ") {
			return true
		}
	}
	return false
}

// receivedValue returns the value of the Received: field the recorder saw
// for the last message.
func receivedValue(t testing.TB, rec *recorder) string {
	t.Helper()
	v := ""
	for _, e := range rec.events() {
		if e.kind == "header" && e.arg == "Received" {
			v = e.value
		}
	}
	if v == "" {
		t.Fatalf("no Received: field seen; events %v", rec.kinds())
	}
	return v
}

// sendMessage runs a whole transaction on c and checks the 250.
func sendMessage(t testing.TB, c *testClient) {
	t.Helper()
	c.cmd("MAIL FROM:<sender@client.example>", 250, "2.1.0")
	c.cmd("RCPT TO:<rcpt@example.org>", 250, "2.1.5")
	c.cmd("DATA", 354, "")
	c.sendRaw(stuff("Subject: tls\r\n\r\nhello\r\n"))
	c.expect(250, "2.0.0")
}

func TestStartTLS(t *testing.T) {
	serverTLS, roots := testCert(t, "mx.example.org")
	rec := &recorder{}
	ts := start(t, Config{Hostname: "mx.example.org", TLSConfig: serverTLS,
		Handlers: []SubHandler{{Name: "rec", Handler: rec}}})

	r := ts.cmd("EHLO client.example", 250, "")
	if !hasKeyword(r, "STARTTLS") {
		t.Fatalf("STARTTLS not advertised before TLS: %q", r.raw)
	}
	ts.cmd("MAIL FROM:<a@client.example>", 250, "2.1.0")
	ts.cmd("STARTTLS now", 501, "5.5.4")

	// STARTTLS in a transaction: the transaction is dropped with the
	// session state.
	tc := startTLS(t, ts.testClient, roots, "mx.example.org")
	tc.cmd("MAIL FROM:<a@client.example>", 503, "5.5.1") // EHLO again first
	if rec.count("abort") != 1 {
		t.Errorf("the transaction open before STARTTLS was not aborted: %v", rec.kinds())
	}
	tc.cmd("RCPT TO:<b@example.org>", 503, "5.5.1")
	r = tc.cmd("EHLO client.example", 250, "")
	if hasKeyword(r, "STARTTLS") {
		t.Fatalf("STARTTLS advertised inside TLS: %q", r.raw)
	}
	if ehloKeywordsOf(r) != "PIPELINING|SIZE 26214400|8BITMIME|SMTPUTF8|ENHANCEDSTATUSCODES|CHUNKING|HELP|REQUIRETLS" {
		t.Errorf("EHLO keywords inside TLS: %q", ehloKeywordsOf(r))
	}
	tc.cmd("STARTTLS", 503, "5.5.1")
	rec.reset()
	sendMessage(t, tc)
	if rcv := receivedValue(t, rec); !strings.Contains(rcv, " with ESMTPS id ") {
		t.Errorf("Received: after STARTTLS = %q, want with ESMTPS", rcv)
	}
	tc.cmd("QUIT", 221, "2.0.0")
	tc.expectClosed()
	if err := ts.wait(); err != nil {
		t.Fatalf("Serve: %v", err)
	}
}

// TestStartTLSSmuggled: a command pipelined after STARTTLS in the same
// write (CVE-2011-0411) gets 554 5.5.0 and the connection closes; the
// command is answered neither in clear nor inside TLS.
func TestStartTLSSmuggled(t *testing.T) {
	serverTLS, _ := testCert(t, "mx.example.org")
	for _, batch := range []string{
		"STARTTLS\r\nMAIL FROM:<x@y>\r\n",
		"STARTTLS\r\nRSET\r\n",
		"STARTTLS\r\n\x16\x03\x01", // even the start of a ClientHello must wait for the 220
	} {
		rec := &recorder{}
		ts := start(t, Config{Hostname: "mx.example.org", TLSConfig: serverTLS,
			Handlers: []SubHandler{{Name: "rec", Handler: rec}}})
		ts.ehlo()
		ts.sendRaw(batch)
		ts.expect(554, "5.5.0")
		if rest := drain(ts.testClient); rest != "" {
			t.Fatalf("%q: after 554 the server sent %q", batch, rest)
		}
		if err := ts.wait(); err != nil {
			t.Fatalf("Serve: %v", err)
		}
		for _, e := range rec.events() {
			if e.kind == "mail" || e.kind == "verb" {
				t.Fatalf("%q: the smuggled command reached a hook: %v", batch, rec.kinds())
			}
		}
	}
}

// TestStartTLSResetsAuth: what was learnt in clear, AUTH included, does
// not survive STARTTLS (RFC 3207 4.2).
func TestStartTLSResetsAuth(t *testing.T) {
	serverTLS, roots := testCert(t, "mx.example.org")
	auth := &testAuth{users: map[string]string{"alice": "s3cret"}, insecure: true}
	seen := &authUserSeen{}
	ts := start(t, Config{Hostname: "mx.example.org", TLSConfig: serverTLS,
		Handlers: []SubHandler{{Name: "auth", Handler: auth}, {Name: "seen", Handler: seen}}})
	ts.ehlo()
	ts.cmd("AUTH PLAIN "+plain("", "alice", "s3cret"), 235, "2.7.0")
	tc := startTLS(t, ts.testClient, roots, "mx.example.org")
	r := tc.cmd("EHLO client.example", 250, "")
	if !hasKeyword(r, "AUTH") {
		t.Fatalf("AUTH not offered again after STARTTLS: %q", r.raw)
	}
	tc.cmd("MAIL FROM:<a@client.example>", 250, "2.1.0")
	if seen.last() != "" {
		t.Fatalf("the login from before STARTTLS survived it: %q", seen.last())
	}
	tc.cmd("RSET", 250, "2.0.0")
	tc.cmd("AUTH PLAIN "+plain("", "alice", "s3cret"), 235, "2.7.0")
}

// TestStartTLSSmuggledAtBufferEnd: when STARTTLS ends exactly where the
// reader's buffer does, the smuggled command after it is still in the
// connection, not buffered: the handshake then reads it as its
// ClientHello and fails. It is never answered either way.
func TestStartTLSSmuggledAtBufferEnd(t *testing.T) {
	serverTLS, _ := testCert(t, "mx.example.org")
	rec := &recorder{}
	ts := start(t, Config{Hostname: "mx.example.org", TLSConfig: serverTLS,
		Handlers: []SubHandler{{Name: "rec", Handler: rec}}})
	var b strings.Builder
	for range 9 {
		b.WriteString("NOOP " + strings.Repeat("x", 447) + "\r\n") // 454 bytes
	}
	b.WriteString("STARTTLS\r\n")
	if b.Len() != 4096 {
		t.Fatalf("batch of %d bytes, want the reader's 4096", b.Len())
	}
	b.WriteString("EHLO evil.example\r\nMAIL FROM:<x@y>\r\n")
	ts.ehlo()
	go ts.sendLate(b.String()) // net.Pipe: the write completes only as the server reads
	for range 9 {
		ts.expect(250, "2.0.0")
	}
	r, err := ts.tryReadReply()
	switch {
	case err == nil && r.code == 220 && r.enh == "2.0.0":
		// the handshake read the smuggled bytes and failed
		if rest := drain(ts.testClient); rest != "" {
			t.Fatalf("after 220 the server sent %q", rest)
		}
	case err == nil && r.code == 554 && r.enh == "5.5.0":
		if rest := drain(ts.testClient); rest != "" {
			t.Fatalf("after 554 the server sent %q", rest)
		}
	default:
		t.Fatalf("reply to STARTTLS %q (%v)", r.raw, err)
	}
	if err := ts.wait(); err != nil {
		t.Fatalf("Serve: %v", err)
	}
	for _, e := range rec.events() {
		if e.kind == "helo" && e.arg == "evil.example" || e.kind == "mail" {
			t.Fatalf("a smuggled command reached a hook: %v", rec.kinds())
		}
	}
}

func TestRequireTLS(t *testing.T) {
	serverTLS, roots := testCert(t, "mx.example.org")
	ts := start(t, Config{Hostname: "mx.example.org", TLSConfig: serverTLS, RequireTLS: true})
	ts.ehlo()
	ts.cmd("MAIL FROM:<a@client.example>", 530, "5.7.0")
	ts.cmd("RCPT TO:<b@example.org>", 503, "5.5.1")
	tc := startTLS(t, ts.testClient, roots, "mx.example.org")
	tc.cmd("EHLO client.example", 250, "")
	sendMessage(t, tc)

	// implicit TLS counts as TLS
	srv := mustServer(t, Config{Hostname: "mx.example.org", RequireTLS: true})
	its := startOn(t, srv, ConnInfo{TLS: &tls.ConnectionState{Version: tls.VersionTLS13}})
	its.ehlo()
	its.cmd("MAIL FROM:<a@client.example>", 250, "2.1.0")
}

// TestRequireTLSParam: MAIL FROM's REQUIRETLS (RFC 8689) is advertised
// and accepted only on a TLS session, and kept in MailParams.
func TestRequireTLSParam(t *testing.T) {
	serverTLS, roots := testCert(t, "mx.example.org")
	rec := &paramsRecorder{recorder: &recorder{}}
	ts := start(t, Config{Hostname: "mx.example.org", TLSConfig: serverTLS,
		Handlers: []SubHandler{{Name: "rec", Handler: rec}}})
	r := ts.cmd("EHLO client.example", 250, "")
	if hasKeyword(r, "REQUIRETLS") {
		t.Fatalf("REQUIRETLS advertised before TLS: %q", r.raw)
	}
	ts.cmd("MAIL FROM:<a@client.example> REQUIRETLS", 555, "5.5.4")
	tc := startTLS(t, ts.testClient, roots, "mx.example.org")
	if r := tc.cmd("EHLO client.example", 250, ""); !hasKeyword(r, "REQUIRETLS") {
		t.Fatalf("REQUIRETLS not advertised inside TLS: %q", r.raw)
	}
	tc.cmd("MAIL FROM:<a@client.example> REQUIRETLS=yes", 555, "5.5.4")
	tc.cmd("MAIL FROM:<a@client.example> REQUIRETLS REQUIRETLS", 555, "5.5.4")
	tc.cmd("MAIL FROM:<a@client.example> REQUIRETLS", 250, "2.1.0")
	tc.cmd("RCPT TO:<b@example.org>", 250, "2.1.5")
	tc.cmd("DATA", 354, "")
	tc.sendRaw(stuff("Subject: tls\r\n\r\nhello\r\n"))
	tc.expect(250, "2.0.0")
	rec.mu.Lock()
	defer rec.mu.Unlock()
	if _, ok := rec.params.Get("REQUIRETLS"); !ok {
		t.Errorf("REQUIRETLS not in MailParams: %v", rec.params)
	}
}

// paramsRecorder is a recorder that keeps the last MAIL parameters.
type paramsRecorder struct {
	*recorder
	params Params
}

func (r *paramsRecorder) Mail(ctx context.Context, s *Session, from Path, params Params) (*Reply, error) {
	r.mu.Lock()
	r.params = params
	r.mu.Unlock()
	return r.recorder.Mail(ctx, s, from, params)
}

// TestStartTLSHandshakeFails: a client that sends garbage instead of a
// ClientHello loses only its own session; it is logged with its address.
func TestStartTLSHandshakeFails(t *testing.T) {
	serverTLS, roots := testCert(t, "mx.example.org")
	core, logs := observer.New(zap.InfoLevel)
	srv := mustServer(t, Config{Hostname: "mx.example.org", TLSConfig: serverTLS, Logger: zap.New(core)})
	remote := &net.TCPAddr{IP: net.IPv4(203, 0, 113, 50), Port: 40000}

	other := startOn(t, srv, ConnInfo{})
	other.ehlo()
	other.cmd("MAIL FROM:<a@client.example>", 250, "2.1.0")

	bad := startOn(t, srv, ConnInfo{RemoteAddr: remote})
	bad.ehlo()
	bad.cmd("STARTTLS", 220, "2.0.0")
	bad.sendRaw("this is not a TLS ClientHello\r\n\r\n")
	drain(bad.testClient)
	if err := bad.wait(); err != nil {
		t.Fatalf("Serve after a failed handshake: %v", err)
	}
	found := false
	for _, e := range logs.FilterMessage("TLS handshake failed").All() {
		if e.ContextMap()["remote"] == remote.String() {
			found = true
		}
	}
	if !found {
		t.Errorf("no 'TLS handshake failed' log line with remote %s: %v", remote, logs.All())
	}

	// a handshake the client aborts (untrusted certificate) as well
	bad2 := startOn(t, srv, ConnInfo{})
	bad2.ehlo()
	bad2.cmd("STARTTLS", 220, "2.0.0")
	if _, err := handshake(t, bad2.testClient, x509.NewCertPool(), "mx.example.org"); err == nil {
		t.Fatal("handshake with an untrusted certificate succeeded")
	}
	bad2.wait()

	// the session opened before goes on, and new ones are served
	other.cmd("RCPT TO:<b@example.org>", 250, "2.1.5")
	other.cmd("DATA", 354, "")
	other.sendRaw(stuff("Subject: still here\r\n\r\nx\r\n"))
	other.expect(250, "2.0.0")
	fresh := startOn(t, srv, ConnInfo{})
	fresh.ehlo()
	tc := startTLS(t, fresh.testClient, roots, "mx.example.org")
	tc.cmd("EHLO client.example", 250, "")
	sendMessage(t, tc)
}

// TestImplicitTLS: a connection that is TLS already (a tls handler in
// front) is not offered STARTTLS, is offered AUTH, and says ESMTPS.
func TestImplicitTLS(t *testing.T) {
	serverTLS, _ := testCert(t, "mx.example.org")
	rec := &recorder{}
	auth := &testAuth{users: map[string]string{"alice": "s3cret"}}
	srv := mustServer(t, Config{Hostname: "mx.example.org", TLSConfig: serverTLS,
		Handlers: []SubHandler{{Name: "rec", Handler: rec}, {Name: "auth", Handler: auth}}})
	ts := startOn(t, srv, ConnInfo{TLS: &tls.ConnectionState{Version: tls.VersionTLS13}})
	r := ts.cmd("EHLO client.example", 250, "")
	if hasKeyword(r, "STARTTLS") || !hasKeyword(r, "AUTH") {
		t.Fatalf("EHLO on implicit TLS: %q", r.raw)
	}
	ts.cmd("STARTTLS", 503, "5.5.1")
	sendMessage(t, ts.testClient)
	if rcv := receivedValue(t, rec); !strings.Contains(rcv, " with ESMTPS id ") {
		t.Errorf("Received: %q, want with ESMTPS", rcv)
	}
	ts.cmd("AUTH PLAIN "+plain("", "alice", "s3cret"), 235, "2.7.0")
	rec.reset()
	sendMessage(t, ts.testClient)
	if rcv := receivedValue(t, rec); !strings.Contains(rcv, " with ESMTPSA id ") {
		t.Errorf("Received: %q, want with ESMTPSA", rcv)
	}
}

// TestReceivedProtocol: ESMTPS after STARTTLS, ESMTPSA after STARTTLS and
// AUTH, ESMTPA after AUTH without TLS.
func TestReceivedProtocol(t *testing.T) {
	serverTLS, roots := testCert(t, "mx.example.org")
	for _, tc := range []struct {
		tls, auth bool
		want      string
	}{
		{false, false, "ESMTP"},
		{true, false, "ESMTPS"},
		{true, true, "ESMTPSA"},
		{false, true, "ESMTPA"},
	} {
		rec := &recorder{}
		auth := &testAuth{users: map[string]string{"alice": "s3cret"}, insecure: true}
		ts := start(t, Config{Hostname: "mx.example.org", TLSConfig: serverTLS,
			Handlers: []SubHandler{{Name: "rec", Handler: rec}, {Name: "auth", Handler: auth}}})
		c := ts.testClient
		if tc.tls {
			c.cmd("EHLO client.example", 250, "")
			c = startTLS(t, c, roots, "mx.example.org")
		}
		c.cmd("EHLO client.example", 250, "")
		if tc.auth {
			c.cmd("AUTH PLAIN "+plain("", "alice", "s3cret"), 235, "2.7.0")
		}
		sendMessage(t, c)
		if rcv := receivedValue(t, rec); !strings.Contains(rcv, " with "+tc.want+" id ") {
			t.Errorf("tls=%v auth=%v: Received: %q, want with %s", tc.tls, tc.auth, rcv, tc.want)
		}
	}
}
