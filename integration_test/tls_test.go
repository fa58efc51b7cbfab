package integration_test

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"fmt"
	"net"
	"net/http"
	"net/smtp"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddytls"
	"golang.org/x/crypto/bcrypt"
)

// testPassword is alice's password; testHash its bcrypt hash, at the
// lowest cost so that the race detector stays quick (Caddy's own default
// cost is tested in handlers/auth).
const testPassword = "correct horse battery staple"

var testHash = func() string {
	h, err := bcrypt.GenerateFromPassword([]byte(testPassword), bcrypt.MinCost)
	if err != nil {
		panic(err)
	}
	return string(h)
}()

// tlsCaddyfile is a submission server: STARTTLS with a certificate from
// Caddy's internal CA for mx.example.test, required before MAIL, AUTH for
// alice, into a Maildir.
const tlsCaddyfile = `{
	admin off
	persist_config off
	local_certs
	skip_install_trust
	storage file_system {
		root %STORAGE%
	}
	layer4 {
		127.0.0.1:%PORT% {
			route {
				esmtp {
					hostname mx.example.test
					starttls
					require_tls
					auth {
						alice %HASH%
					}
					maildir %MAIL%
				}
			}
		}
	}
}
`

// startTLSCaddyfile is startCaddyfile that also fills in %HASH% and
// %STORAGE% (Caddy's storage, a fresh directory: a new local CA per test)
// and waits until Caddy has the certificate for hostname. root is the
// file of the local CA's root certificate.
func startTLSCaddyfile(t *testing.T, caddyfile, hostname string) (addr, maildir, root string) {
	t.Helper()
	storage := filepath.Join(t.TempDir(), "caddy")
	addr, maildir = startCaddyfile(t, strings.NewReplacer("%HASH%", testHash, "%STORAGE%", storage).Replace(caddyfile))
	waitCertificate(t, hostname)
	return addr, maildir, localRoot(storage)
}

// waitCertificate waits until Caddy's tls app holds a certificate for
// host: the tls app obtains managed certificates in the background, even
// from its internal CA.
func waitCertificate(t *testing.T, host string) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		app, err := caddy.ActiveContext().App("tls")
		if err == nil && app.(*caddytls.TLS).HasCertificateForSubject(host) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("Caddy has no certificate for %s: %v", host, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// localRoot is the file of Caddy's local CA root certificate in the
// storage directory. (The tests give Caddy a storage directory of their
// own: caddy.DefaultStorage is fixed when the caddy package is initialised,
// before TestMain sets XDG_DATA_HOME.)
func localRoot(storage string) string {
	return filepath.Join(storage, "pki", "authorities", "local", "root.crt")
}

// localRoots is a pool with only the local CA root in file root.
func localRoots(t *testing.T, root string) *x509.CertPool {
	t.Helper()
	pem, err := os.ReadFile(root)
	if err != nil {
		t.Fatalf("Caddy's local CA root: %v", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		t.Fatalf("no certificate in %s", root)
	}
	return pool
}

// tlsConfig verifies the server's certificate for host against the local
// CA root in file root.
func tlsConfig(t *testing.T, root, host string) *tls.Config {
	return &tls.Config{ServerName: host, RootCAs: localRoots(t, root)}
}

// checkCaddyCert checks that the certificate was issued by Caddy's local
// CA for host.
func checkCaddyCert(t *testing.T, state tls.ConnectionState, host string) {
	t.Helper()
	if len(state.PeerCertificates) == 0 {
		t.Fatal("no peer certificate")
	}
	leaf := state.PeerCertificates[0]
	if len(leaf.DNSNames) != 1 || leaf.DNSNames[0] != host {
		t.Errorf("certificate for %v, want %s", leaf.DNSNames, host)
	}
	if !strings.Contains(leaf.Issuer.CommonName, "Caddy Local Authority") {
		t.Errorf("certificate issued by %q, want Caddy's local CA", leaf.Issuer)
	}
	if len(state.VerifiedChains) == 0 {
		t.Error("certificate chain not verified")
	}
}

// onlyDelivered checks that maildir holds exactly one message, want after
// a Received: field by hostname, and returns that field.
func onlyDelivered(t *testing.T, maildir, hostname, want string) string {
	t.Helper()
	files := delivered(t, maildir)
	if len(files) != 1 {
		t.Fatalf("%d messages delivered, want 1", len(files))
	}
	return splitReceived(t, files[0], hostname, []byte(want))
}

// upgrade sends STARTTLS on c and returns the client side of TLS over it,
// verified for host against the local CA root in file root.
func (c *conn) upgrade(t *testing.T, root, host string) *conn {
	t.Helper()
	c.send("STARTTLS\r\n")
	c.expect("220 2.0.0 ")
	if c.r.Buffered() > 0 {
		t.Fatalf("the server sent more after 220 to STARTTLS")
	}
	tc := tls.Client(c.c, tlsConfig(t, root, host))
	if err := tc.Handshake(); err != nil {
		t.Fatalf("TLS handshake: %v", err)
	}
	checkCaddyCert(t, tc.ConnectionState(), host)
	return &conn{t: t, c: tc, r: bufio.NewReader(tc)}
}

func TestStartTLSNetSMTP(t *testing.T) {
	addr, maildir, root := startTLSCaddyfile(t, tlsCaddyfile, "mx.example.test")
	c, err := smtp.Dial(addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.Hello("gotest.example"); err != nil {
		t.Fatal(err)
	}
	if ok, _ := c.Extension("STARTTLS"); !ok {
		t.Fatal("STARTTLS not advertised")
	}
	if ok, _ := c.Extension("AUTH"); ok {
		t.Fatal("AUTH advertised before TLS")
	}
	if err := c.StartTLS(tlsConfig(t, root, "mx.example.test")); err != nil {
		t.Fatalf("StartTLS: %v", err)
	}
	state, _ := c.TLSConnectionState()
	checkCaddyCert(t, state, "mx.example.test")
	if ok, _ := c.Extension("STARTTLS"); ok {
		t.Error("STARTTLS advertised inside TLS")
	}
	if ok, mechs := c.Extension("AUTH"); !ok || mechs != "PLAIN LOGIN" {
		t.Errorf("AUTH inside TLS: %v %q", ok, mechs)
	}
	// net/smtp's PlainAuth wants the name it dialled
	if err := c.Auth(smtp.PlainAuth("", "alice", testPassword, "127.0.0.1")); err != nil {
		t.Fatalf("AUTH PLAIN: %v", err)
	}
	if err := c.Mail("alice@client.test"); err != nil {
		t.Fatal(err)
	}
	if err := c.Rcpt("b@example.test"); err != nil {
		t.Fatal(err)
	}
	w, err := c.Data()
	if err != nil {
		t.Fatal(err)
	}
	w.Write([]byte(message))
	if err := w.Close(); err != nil {
		t.Fatalf("end of data: %v", err)
	}
	if err := c.Quit(); err != nil {
		t.Fatal(err)
	}
	rcv := onlyDelivered(t, maildir, "mx.example.test", message)
	// net/smtp asks for SMTPUTF8 when it is offered (RFC 6531: UTF8SMTP)
	if !strings.Contains(rcv, "from gotest.example ([127.0.0.1])") || !strings.Contains(rcv, " with UTF8SMTPSA id ") {
		t.Errorf("Received: %q, want from gotest.example ([127.0.0.1]) with UTF8SMTPSA", rcv)
	}
}

// TestAuthOverCaddy: AUTH before TLS is refused (538) and not advertised;
// a wrong password is 535 and counts as an error; inside TLS AUTH LOGIN
// works and Received says ESMTPSA.
func TestAuthOverCaddy(t *testing.T) {
	addr, maildir, root := startTLSCaddyfile(t, tlsCaddyfile, "mx.example.test")
	c := dial(t, addr)
	c.expect("220 ")
	c.send("EHLO client.test\r\n")
	ehlo := strings.Join(c.expect("250 "), "\n")
	if strings.Contains(ehlo, "AUTH") || !strings.Contains(ehlo, "STARTTLS") {
		t.Fatalf("EHLO before TLS: %q", ehlo)
	}
	plain := base64.StdEncoding.EncodeToString([]byte("\x00alice\x00" + testPassword))
	c.send("AUTH PLAIN " + plain + "\r\n")
	c.expect("538 5.7.11 ")
	c.send("AUTH LOGIN\r\n")
	c.expect("538 5.7.11 ")
	c.send("MAIL FROM:<alice@client.test>\r\n")
	c.expect("530 5.7.0 ") // require_tls

	tc := c.upgrade(t, root, "mx.example.test")
	tc.send("MAIL FROM:<alice@client.test>\r\n")
	tc.expect("503 5.5.1 ") // EHLO again after TLS
	tc.send("EHLO client.test\r\n")
	ehlo = strings.Join(tc.expect("250 "), "\n")
	if !strings.Contains(ehlo, "250 AUTH PLAIN LOGIN") || strings.Contains(ehlo, "STARTTLS") {
		t.Fatalf("EHLO inside TLS: %q", ehlo)
	}
	tc.send("AUTH PLAIN " + base64.StdEncoding.EncodeToString([]byte("\x00alice\x00wrong")) + "\r\n")
	tc.expect("535 5.7.8 ")
	tc.send("AUTH PLAIN " + base64.StdEncoding.EncodeToString([]byte("\x00mallory\x00"+testPassword)) + "\r\n")
	tc.expect("535 5.7.8 ")
	tc.send("AUTH LOGIN\r\n")
	tc.expect("334 VXNlcm5hbWU6")
	tc.send(base64.StdEncoding.EncodeToString([]byte("alice")) + "\r\n")
	tc.expect("334 UGFzc3dvcmQ6")
	tc.send(base64.StdEncoding.EncodeToString([]byte(testPassword)) + "\r\n")
	tc.expect("235 2.7.0 ")
	tc.send("AUTH PLAIN " + plain + "\r\n")
	tc.expect("503 5.5.1 ")
	tc.send("MAIL FROM:<alice@client.test>\r\nRCPT TO:<b@example.test>\r\nDATA\r\n")
	tc.expect("250 2.1.0")
	tc.expect("250 2.1.5")
	tc.expect("354 ")
	tc.send(stuffed(message) + ".\r\nQUIT\r\n")
	tc.expect("250 2.0.0 ")
	tc.expect("221 ")
	if rcv := onlyDelivered(t, maildir, "mx.example.test", message); !strings.Contains(rcv, " with ESMTPSA id ") {
		t.Errorf("Received: %q, want with ESMTPSA", rcv)
	}
}

// TestStartTLSSmuggledOverCaddy: a command pipelined after STARTTLS is
// never answered, in clear or inside TLS: 554 and close.
func TestStartTLSSmuggledOverCaddy(t *testing.T) {
	addr, maildir, root := startTLSCaddyfile(t, tlsCaddyfile, "mx.example.test")
	c := dial(t, addr)
	c.expect("220 ")
	c.send("EHLO client.test\r\nSTARTTLS\r\nMAIL FROM:<smuggled@client.test>\r\nRCPT TO:<b@example.test>\r\n")
	c.expect("250 ")
	c.expect("554 5.5.0 ")
	rest, err := readAll(c)
	if rest != "" || err != nil {
		t.Fatalf("after 554 the server sent %q (%v), want the connection closed", rest, err)
	}
	// all of it sent before the greeting
	c = dial(t, addr)
	c.send("EHLO client.test\r\nSTARTTLS\r\nMAIL FROM:<smuggled@client.test>\r\n")
	c.expect("220 ")
	c.expect("250 ")
	c.expect("554 5.5.0 ")
	if rest, err := readAll(c); rest != "" || err != nil {
		t.Fatalf("after 554 the server sent %q (%v), want the connection closed", rest, err)
	}
	if files := delivered(t, maildir); len(files) != 0 {
		t.Fatalf("%d messages delivered", len(files))
	}
	// the listener goes on
	c = dial(t, addr)
	c.expect("220 ")
	c.send("EHLO client.test\r\n")
	c.expect("250 ")
	c.upgrade(t, root, "mx.example.test")
}

// TestStartTLSClientALPN: Caddy's default ALPN (h2, http/1.1) is not
// offered on STARTTLS, so a client that offers its own protocols is not
// refused.
func TestStartTLSClientALPN(t *testing.T) {
	addr, _, root := startTLSCaddyfile(t, tlsCaddyfile, "mx.example.test")
	c := dial(t, addr)
	c.expect("220 ")
	c.send("EHLO client.test\r\n")
	c.expect("250 ")
	c.send("STARTTLS\r\n")
	c.expect("220 2.0.0 ")
	cfg := tlsConfig(t, root, "mx.example.test")
	cfg.NextProtos = []string{"smtp"}
	tc := tls.Client(c.c, cfg)
	if err := tc.Handshake(); err != nil {
		t.Fatalf("TLS handshake offering ALPN smtp: %v", err)
	}
	if p := tc.ConnectionState().NegotiatedProtocol; p != "" {
		t.Errorf("ALPN negotiated %q", p)
	}
	c = &conn{t: t, c: tc, r: bufio.NewReader(tc)}
	c.send("EHLO client.test\r\n")
	c.expect("250 ")
}

// readAll reads until the server closes the connection.
func readAll(c *conn) (string, error) {
	var b bytes.Buffer
	_, err := b.ReadFrom(c.r)
	return b.String(), err
}

// TestStartTLSHandshakeFailsOverCaddy: garbage instead of a ClientHello
// ends only that session; it is logged with the client address.
func TestStartTLSHandshakeFailsOverCaddy(t *testing.T) {
	logFile := filepath.Join(t.TempDir(), "esmtp.log")
	cf := strings.Replace(tlsCaddyfile, "\tlocal_certs\n", "\tlocal_certs\n\tlog {\n\t\toutput file "+logFile+"\n\t\tlevel INFO\n\t}\n", 1)
	addr, _, root := startTLSCaddyfile(t, cf, "mx.example.test")
	other := dial(t, addr)
	other.expect("220 ")
	other.send("EHLO client.test\r\n")
	other.expect("250 ")

	bad := dial(t, addr)
	bad.expect("220 ")
	bad.send("EHLO client.test\r\nSTARTTLS\r\n")
	bad.expect("250 ")
	bad.expect("220 2.0.0 ")
	bad.send("GET / HTTP/1.0\r\n\r\n")
	readAll(bad)
	badAddr := bad.c.LocalAddr().String()

	tc := other.upgrade(t, root, "mx.example.test")
	tc.send("EHLO client.test\r\n")
	tc.expect("250 ")
	tc.send("QUIT\r\n")
	tc.expect("221 ")

	logs, err := os.ReadFile(logFile)
	if err != nil {
		t.Fatal(err)
	}
	found := false
	for _, l := range strings.Split(string(logs), "\n") {
		if strings.Contains(l, `"msg":"TLS handshake failed"`) && strings.Contains(l, `"remote":"`+badAddr+`"`) {
			found = true
		}
	}
	if !found {
		t.Fatalf("no 'TLS handshake failed' log line with remote %s in:\n%s", badAddr, logs)
	}
}

func TestStartTLSPython(t *testing.T) {
	python := need(t, "python3")
	addr, maildir, root := startTLSCaddyfile(t, tlsCaddyfile, "mx.example.test")
	host, port, _ := net.SplitHostPort(addr)
	msgFile := filepath.Join(t.TempDir(), "msg")
	if err := os.WriteFile(msgFile, []byte(message), 0o644); err != nil {
		t.Fatal(err)
	}
	script := `
import smtplib, ssl, sys
host, port, msg_file, cafile, name, password = sys.argv[1:]
ctx = ssl.create_default_context(cafile=cafile)  # verifies the chain and the host name
s = smtplib.SMTP(host, int(port))
s.ehlo("python.test")
assert s.has_extn("starttls") and not s.has_extn("auth"), s.esmtp_features
s._host = name  # smtplib checks the certificate against the name it connected to
code, _ = s.starttls(context=ctx)
assert code == 220, code
cert = s.sock.getpeercert()
assert ("DNS", name) in cert["subjectAltName"], cert
s.ehlo("python.test")
assert s.has_extn("auth") and not s.has_extn("starttls"), s.esmtp_features
try:
    s.login("alice", "wrong password")
    raise SystemExit("login with a wrong password succeeded")
except smtplib.SMTPAuthenticationError as e:
    assert e.smtp_code == 535, e
code, _ = s.login("alice", password)
assert code == 235, code
refused = s.sendmail("a@client.test", ["b@example.test"], open(msg_file, "rb").read())
assert not refused, refused
s.quit()
print("ok")
`
	out, err := exec.Command(python, "-c", script, host, port, msgFile, root, "mx.example.test", testPassword).CombinedOutput()
	if err != nil || strings.TrimSpace(string(out)) != "ok" {
		t.Fatalf("python smtplib: %v\n%s", err, out)
	}
	// smtplib's login() uses the first offered of CRAM-MD5, PLAIN, LOGIN: PLAIN
	if rcv := onlyDelivered(t, maildir, "mx.example.test", message); !strings.Contains(rcv, "from python.test ([127.0.0.1])") ||
		!strings.Contains(rcv, " with ESMTPSA id ") {
		t.Errorf("Received: %q", rcv)
	}
}

func TestStartTLSSwaks(t *testing.T) {
	swaks := need(t, "swaks")
	addr, maildir, root := startTLSCaddyfile(t, tlsCaddyfile, "mx.example.test")
	host, port, _ := net.SplitHostPort(addr)
	// swaks ends the data with "\r\n.\r\n" itself.
	dataFile := filepath.Join(t.TempDir(), "data")
	if err := os.WriteFile(dataFile, []byte(strings.TrimSuffix(message, "\r\n")), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, mech := range []string{"PLAIN", "LOGIN"} {
		out, err := exec.Command(swaks, "--server", host, "--port", port, "--helo", "swaks.test",
			"--tls", "--tls-verify", "--tls-ca-path", root, "--tls-sni", "mx.example.test",
			"--auth", mech, "--auth-user", "alice", "--auth-password", testPassword,
			"--from", "a@client.test", "--to", "b@example.test", "--data", "@"+dataFile).CombinedOutput()
		if err != nil {
			t.Fatalf("swaks --auth %s: %v\n%s", mech, err, out)
		}
		for _, want := range []string{"<-  220 2.0.0 Ready to start TLS", "<~  235 2.7.0 ", "<~  250 2.0.0 "} {
			if !strings.Contains(string(out), want) {
				t.Fatalf("swaks --auth %s: no %q in:\n%s", mech, want, out)
			}
		}
		if strings.Contains(string(out), testPassword) {
			t.Errorf("swaks shows the password: is it sent in clear?\n%s", out)
		}
	}
	files := delivered(t, maildir)
	if len(files) != 2 {
		t.Fatalf("%d messages delivered, want 2", len(files))
	}
	for _, f := range files {
		if rcv := splitReceived(t, f, "mx.example.test", []byte(message)); !strings.Contains(rcv, " with ESMTPSA id ") {
			t.Errorf("Received: %q", rcv)
		}
	}

	// without TLS AUTH is not offered
	out, err := exec.Command(swaks, "--server", host, "--port", port, "--helo", "swaks.test",
		"--auth", "PLAIN", "--auth-user", "alice", "--auth-password", testPassword,
		"--from", "a@client.test", "--to", "b@example.test", "--data", "@"+dataFile).CombinedOutput()
	if err == nil || !strings.Contains(string(out), "Host did not advertise authentication") {
		t.Fatalf("swaks AUTH without TLS: %v\n%s", err, out)
	}
}

// TestStartTLSOpenSSL: openssl s_client -starttls smtp gets Caddy's
// certificate for the hostname, with SNI and without (default_sni).
func TestStartTLSOpenSSL(t *testing.T) {
	openssl := need(t, "openssl")
	addr, _, root := startTLSCaddyfile(t, tlsCaddyfile, "mx.example.test")
	for _, sni := range [][]string{{"-servername", "mx.example.test"}, {"-noservername"}} {
		args := append([]string{"s_client", "-starttls", "smtp", "-connect", addr, "-CAfile", root,
			"-verify_hostname", "mx.example.test", "-verify_return_error"}, sni...)
		cmd := exec.Command(openssl, args...)
		cmd.Stdin = strings.NewReader("")
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("openssl %v: %v\n%s", sni, err, out)
		}
		for _, want := range []string{"issuer=CN = Caddy Local Authority", "Verify return code: 0 (ok)", "Verified peername: mx.example.test"} {
			if !strings.Contains(string(out), want) {
				t.Errorf("openssl %v: no %q in:\n%s", sni, want, out)
			}
		}
	}
}

// implicitCaddyfile has a STARTTLS listener (which makes Caddy manage the
// hostname's certificate) and an implicit-TLS listener (RFC 8314) with
// caddy-l4's tls handler in front of esmtp.
const implicitCaddyfile = `{
	admin off
	persist_config off
	local_certs
	skip_install_trust
	storage file_system {
		root %STORAGE%
	}
	layer4 {
		127.0.0.1:%PORT% {
			route {
				esmtp {
					hostname mx.example.test
					starttls
					maildir %MAIL%
				}
			}
		}
		127.0.0.1:%PORT2% {
			route {
				tls {
					connection_policy {
						default_sni mx.example.test
					}
				}
				esmtp {
					hostname mx.example.test
					auth {
						alice %HASH%
					}
					maildir %MAIL%
				}
			}
		}
		127.0.0.1:%PORT3% {
			route {
				tls
				esmtp {
					hostname mx.example.test
					maildir %MAIL%
				}
			}
		}
	}
}
`

func TestImplicitTLS(t *testing.T) {
	port2, port3 := freePort(t), freePort(t)
	cf := strings.NewReplacer("%PORT2%", fmt.Sprint(port2), "%PORT3%", fmt.Sprint(port3)).Replace(implicitCaddyfile)
	_, maildir, root := startTLSCaddyfile(t, cf, "mx.example.test")
	implicit := fmt.Sprintf("127.0.0.1:%d", port2)
	waitListening(t, implicit)

	for i, cfg := range []*tls.Config{
		tlsConfig(t, root, "mx.example.test"),
		// no SNI (default_sni): verify the name by hand
		{InsecureSkipVerify: true, VerifyConnection: func(cs tls.ConnectionState) error {
			opts := x509.VerifyOptions{DNSName: "mx.example.test", Roots: localRoots(t, root), Intermediates: x509.NewCertPool()}
			for _, c := range cs.PeerCertificates[1:] {
				opts.Intermediates.AddCert(c)
			}
			_, err := cs.PeerCertificates[0].Verify(opts)
			return err
		}},
	} {
		tc, err := tls.DialWithDialer(&net.Dialer{Timeout: 30 * time.Second}, "tcp", implicit, cfg)
		if err != nil {
			t.Fatalf("implicit TLS %d: %v", i, err)
		}
		c := &conn{t: t, c: tc, r: bufio.NewReader(tc)}
		t.Cleanup(func() { tc.Close() })
		tc.SetDeadline(time.Now().Add(30 * time.Second))
		c.expect("220 mx.example.test ESMTP")
		c.send("EHLO client.test\r\n")
		ehlo := strings.Join(c.expect("250 "), "\n")
		if strings.Contains(ehlo, "STARTTLS") || !strings.Contains(ehlo, "AUTH PLAIN LOGIN") {
			t.Fatalf("EHLO on implicit TLS: %q", ehlo)
		}
		c.send("STARTTLS\r\n")
		c.expect("503 5.5.1 ")
		c.send("MAIL FROM:<a@client.test>\r\nRCPT TO:<b@example.test>\r\nDATA\r\n")
		c.expect("250 ")
		c.expect("250 ")
		c.expect("354 ")
		c.send(stuffed(message) + ".\r\n")
		c.expect("250 2.0.0 ")
		if i == 0 {
			c.send("AUTH PLAIN " + base64.StdEncoding.EncodeToString([]byte("\x00alice\x00"+testPassword)) + "\r\n")
			c.expect("235 2.7.0 ")
			c.send("MAIL FROM:<alice@client.test>\r\nRCPT TO:<b@example.test>\r\nDATA\r\n")
			c.expect("250 ")
			c.expect("250 ")
			c.expect("354 ")
			c.send(stuffed(message) + ".\r\n")
			c.expect("250 2.0.0 ")
		}
		c.send("QUIT\r\n")
		c.expect("221 ")
	}
	files := delivered(t, maildir)
	if len(files) != 3 {
		t.Fatalf("%d messages delivered, want 3", len(files))
	}
	var withS, withSA int
	for _, f := range files {
		rcv := splitReceived(t, f, "mx.example.test", []byte(message))
		switch {
		case strings.Contains(rcv, " with ESMTPS id "):
			withS++
		case strings.Contains(rcv, " with ESMTPSA id "):
			withSA++
		default:
			t.Errorf("Received: %q, want ESMTPS or ESMTPSA", rcv)
		}
	}
	if withS != 2 || withSA != 1 {
		t.Errorf("%d ESMTPS and %d ESMTPSA, want 2 and 1", withS, withSA)
	}

	// the README's bare `tls` handler, with SNI
	tc, err := tls.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", port3), tlsConfig(t, root, "mx.example.test"))
	if err != nil {
		t.Fatalf("implicit TLS with a bare tls handler: %v", err)
	}
	defer tc.Close()
	tc.SetDeadline(time.Now().Add(30 * time.Second))
	c := &conn{t: t, c: tc, r: bufio.NewReader(tc)}
	c.expect("220 ")
	c.send("EHLO client.test\r\n")
	if ehlo := strings.Join(c.expect("250 "), "\n"); strings.Contains(ehlo, "STARTTLS") {
		t.Fatalf("EHLO: %q", ehlo)
	}
}

// tlsReloadConfig is a JSON config with the admin API, Caddy's internal
// issuer and a STARTTLS esmtp server for hostname.
func tlsReloadConfig(adminPort, smtpPort int, storage, hostname, maildir string) []byte {
	return []byte(fmt.Sprintf(`{
		"admin": {"listen": "127.0.0.1:%d", "config": {"persist": false}},
		"storage": {"module": "file_system", "root": %q},
		"apps": {
			"pki": {"certificate_authorities": {"local": {"install_trust": false}}},
			"tls": {"automation": {"policies": [{"issuers": [{"module": "internal"}]}]}},
			"layer4": {"servers": {"smtp": {
				"listen": ["127.0.0.1:%d"],
				"routes": [{"handle": [{
					"handler": "esmtp",
					"hostname": %q,
					"starttls": {},
					"handlers": [{"handler": "maildir", "path": %q}]
				}]}]
			}}}
		}
	}`, adminPort, storage, smtpPort, hostname, maildir))
}

// TestReloadChangesCertificate reloads (POST /load) to a config with
// another hostname, so another certificate, while a session is inside TLS
// in the middle of DATA: it finishes and delivers on the old configuration
// with the old certificate; a new session gets the new certificate.
func TestReloadChangesCertificate(t *testing.T) {
	adminPort, smtpPort := freePort(t), freePort(t)
	dirA, dirB := filepath.Join(t.TempDir(), "a"), filepath.Join(t.TempDir(), "b")
	storage := filepath.Join(t.TempDir(), "caddy")
	root := localRoot(storage)
	load(t, tlsReloadConfig(adminPort, smtpPort, storage, "a.example.test", dirA))
	addr := fmt.Sprintf("127.0.0.1:%d", smtpPort)
	waitListening(t, addr)
	waitCertificate(t, "a.example.test")

	old := dial(t, addr)
	old.expect("220 a.example.test ")
	old.send("EHLO client.test\r\n")
	old.expect("250 ")
	old = old.upgrade(t, root, "a.example.test")
	old.send("EHLO client.test\r\nMAIL FROM:<a@client.test>\r\nRCPT TO:<b@example.test>\r\nDATA\r\n")
	old.expect("250 ")
	old.expect("250 ")
	old.expect("250 ")
	old.expect("354 ")
	wire := stuffed(message)
	half := len(wire) / 2
	old.send(wire[:half])

	resp, err := http.Post(fmt.Sprintf("http://127.0.0.1:%d/load", adminPort), "application/json",
		bytes.NewReader(tlsReloadConfig(adminPort, smtpPort, storage, "b.example.test", dirB)))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("POST /load: %s", resp.Status)
	}
	waitCertificate(t, "b.example.test")

	fresh := dial(t, addr)
	fresh.expect("220 b.example.test ")
	fresh.send("EHLO client.test\r\n")
	fresh.expect("250 ")
	fresh = fresh.upgrade(t, root, "b.example.test") // checks the certificate is for b.example.test

	old.send(wire[half:] + ".\r\n")
	old.expect("250 2.0.0 ")
	old.send("NOOP\r\n")
	old.expect("421 4.3.2 ")
	if rcv := onlyDelivered(t, dirA, "a.example.test", message); !strings.Contains(rcv, " with ESMTPS id ") {
		t.Errorf("old session's Received: %q", rcv)
	}

	fresh.send("EHLO client.test\r\nMAIL FROM:<a@client.test>\r\nRCPT TO:<b@example.test>\r\nDATA\r\n")
	fresh.expect("250 ")
	fresh.expect("250 ")
	fresh.expect("250 ")
	fresh.expect("354 ")
	fresh.send(stuffed(message) + ".\r\nQUIT\r\n")
	fresh.expect("250 2.0.0 ")
	fresh.expect("221 ")
	if rcv := onlyDelivered(t, dirB, "b.example.test", message); !strings.Contains(rcv, " with ESMTPS id ") {
		t.Errorf("new session's Received: %q", rcv)
	}
}
