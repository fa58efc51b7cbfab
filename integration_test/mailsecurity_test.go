package integration_test

import (
	"bufio"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/caddy-esmtp/caddy-esmtp/internal/dnstest"
	"github.com/caddy-esmtp/caddy-esmtp/internal/testhooks"
	"github.com/caddy-esmtp/caddy-esmtp/mtasts"
	"github.com/caddy-esmtp/caddy-esmtp/queue"
)

// End-to-end tests of DANE (RFC 7672) and MTA-STS (RFC 8461) with the
// relay to mx behind a queue, in real Caddy (issue 16). One Caddy config
// holds
//
//   - the sending side: esmtp (sender.test) with a queue and relay mx,
//     its resolver a dnstest server (zones dane.test, both.test and up.test
//     answered with the AD bit), its mx_port the upstream's port, its
//     tls_ca Caddy's internal root (what MTA-STS verifies MX certificates
//     against);
//   - the upstream: esmtp (mx.up.test, the one MX host of every test
//     domain) on another layer4 port, with starttls and a certificate from
//     Caddy's internal CA (local_certs), into a Maildir; or without
//     starttls;
//   - the MTA-STS policies: https://mta-sts.<domain> sites of Caddy's own
//     HTTP app on a loopback port, with certificates from the internal CA.
//
// The MTA-STS fetcher of the relay's cache trusts the internal root and
// fetches from that port through internal/testhooks.MTASTSFetcher (the
// relay has no option for either: production fetches from port 443 with
// the system roots).
//
// Caddy's internal root exists only once Caddy has run with the storage
// directory, and the relay's tls_ca is read at provision: each test loads
// the config without the sender first (the CA, the upstream's and the
// sites' certificates), reads the root and the upstream's certificate
// (for the TLSA records), then loads the whole config with the same
// storage. The first config always has the upstream with STARTTLS: that
// makes Caddy create its CA and the upstream's certificate.

// mailSec is one test's environment.
type mailSec struct {
	t                                  *testing.T
	dns                                *dnstest.Server
	upPort, sendPort, httpsPort, httpP int
	storage, upMail, qdir, logFile     string
	stsCache                           string
	root                               string // PEM file of the internal root
	leaf                               *x509.Certificate
	sendAddr                           string
}

// mailSecConfig is what one config holds.
type mailSecConfig struct {
	sender   bool              // the sending side (needs the root: phase 2)
	starttls bool              // the upstream offers STARTTLS
	policies map[string]string // domain -> MTA-STS policy served
	upPort   int               // the port the relay's MX hosts are on (default: the upstream's)
}

func newMailSec(t *testing.T) *mailSec {
	dir := t.TempDir()
	e := &mailSec{
		t: t, upPort: freePort(t), sendPort: freePort(t), httpsPort: freePort(t), httpP: freePort(t),
		storage: filepath.Join(dir, "caddy"), upMail: filepath.Join(dir, "upstream"), qdir: filepath.Join(dir, "queue"),
		logFile: filepath.Join(dir, "caddy.log"), stsCache: filepath.Join(dir, "mta-sts.json"),
	}
	e.sendAddr = fmt.Sprintf("127.0.0.1:%d", e.sendPort)
	e.dns = dnstest.Start(t)
	for _, z := range []string{"dane.test", "both.test", "up.test"} {
		e.dns.Secure(z)
	}
	e.dns.Set(t,
		"mx.up.test. 60 IN A 127.0.0.1",
		"dane.test. 60 IN MX 10 mx.up.test.",
		"both.test. 60 IN MX 10 mx.up.test.",
		"sts.test. 60 IN MX 10 mx.up.test.",
		"testing.test. 60 IN MX 10 mx.up.test.",
		"outside.test. 60 IN MX 10 mx.outside.test.",
		"mx.outside.test. 60 IN A 127.0.0.1",
	)
	for _, d := range []string{"both.test", "sts.test", "testing.test", "outside.test"} {
		e.dns.Add(rr(t, "mta-sts."+d+". 60 IN A 127.0.0.1"))
		e.dns.SetTXT("_mta-sts."+d, "v=STSv1; id=1")
	}
	return e
}

func rr(t *testing.T, s string) dns.RR {
	t.Helper()
	r, err := dns.NewRR(s)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// policy is an MTA-STS policy file.
func policy(mode string, mx ...string) string {
	s := "version: STSv1\nmode: " + mode + "\n"
	for _, m := range mx {
		s += "mx: " + m + "\n"
	}
	return s + "max_age: 86400\n"
}

func (e *mailSec) caddyfile(c mailSecConfig) string {
	var b strings.Builder
	fmt.Fprintf(&b, `{
	admin off
	persist_config off
	local_certs
	skip_install_trust
	auto_https disable_redirects
	http_port %d
	https_port %d
	storage file_system {
		root %s
	}
	log {
		output file %s
		level DEBUG
	}
	layer4 {
		127.0.0.1:%d {
			route {
				esmtp {
					hostname mx.up.test
`, e.httpP, e.httpsPort, e.storage, e.logFile, e.upPort)
	if c.starttls {
		b.WriteString("\t\t\t\t\tstarttls\n")
	}
	fmt.Fprintf(&b, "\t\t\t\t\tmaildir %s\n\t\t\t\t}\n\t\t\t}\n\t\t}\n", e.upMail)
	if c.sender {
		mxPort := cmpOr(c.upPort, e.upPort)
		fmt.Fprintf(&b, `		127.0.0.1:%d {
			route {
				esmtp {
					hostname sender.test
					queue %s {
						retry_interval 1s
						max_retry_interval 1s
					}
					relay mx {
						relay_networks 127.0.0.1/32
						resolver %s
						mx_port %d
						mta_sts_cache %s
						tls_ca %s
						connect_timeout 5s
						timeout 10s
					}
				}
			}
		}
`, e.sendPort, e.qdir, e.dns.Addr, mxPort, e.stsCache, e.root)
	}
	b.WriteString("\t}\n}\n")
	domains := make([]string, 0, len(c.policies))
	for d := range c.policies {
		domains = append(domains, d)
	}
	slices.Sort(domains)
	for _, d := range domains {
		fmt.Fprintf(&b, "https://mta-sts.%s:%d {\n\tbind 127.0.0.1\n\theader Content-Type \"text/plain; charset=utf-8\"\n\trespond `%s` 200\n}\n", d, e.httpsPort, c.policies[d])
	}
	return b.String()
}

func cmpOr(a, b int) int {
	if a != 0 {
		return a
	}
	return b
}

// start runs c: first without the sender (Caddy's CA, the certificates),
// then, the root and the upstream's certificate read, with it.
func (e *mailSec) start(c mailSecConfig) {
	t := e.t
	t.Helper()
	first := c
	first.sender = false
	first.starttls = true // the CA and the upstream's certificate, even for a test without STARTTLS
	load(t, adapt(t, e.caddyfile(first)))
	waitCertificate(t, "mx.up.test")
	for d := range c.policies {
		waitCertificate(t, "mta-sts."+d)
	}
	e.root = localRoot(e.storage)
	rootPEM, err := os.ReadFile(e.root)
	if err != nil {
		t.Fatal(err)
	}
	blk, _ := pem.Decode(rootPEM)
	if blk == nil {
		t.Fatalf("no PEM in %s", e.root)
	}
	rootCert, err := x509.ParseCertificate(blk.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	// The relay's MTA-STS cache (one per cache file: this test's) fetches
	// from the sites' port and trusts the internal root.
	prev := testhooks.MTASTSFetcher
	testhooks.MTASTSFetcher = func() *mtasts.Fetcher {
		return &mtasts.Fetcher{ExtraRoots: []*x509.Certificate{rootCert}, Port: e.httpsPort, Timeout: 5 * time.Second}
	}
	t.Cleanup(func() { testhooks.MTASTSFetcher = prev })
	e.leaf = e.upstreamCert()
	e.reload(c)
}

// reload loads c (the root already there).
func (e *mailSec) reload(c mailSecConfig) {
	e.t.Helper()
	load(e.t, adapt(e.t, e.caddyfile(c)))
	if c.sender {
		waitListening(e.t, e.sendAddr)
	}
}

// upstreamCert is the certificate the upstream shows after STARTTLS.
func (e *mailSec) upstreamCert() *x509.Certificate {
	t := e.t
	t.Helper()
	c := dial(t, fmt.Sprintf("127.0.0.1:%d", e.upPort))
	c.expect("220 ")
	c.send("EHLO probe.test\r\n")
	c.expect("250 ")
	c.send("STARTTLS\r\n")
	c.expect("220 ")
	tc := tls.Client(c.c, &tls.Config{ServerName: "mx.up.test", RootCAs: localRoots(t, e.root)})
	if err := tc.Handshake(); err != nil {
		t.Fatalf("STARTTLS to the upstream: %v", err)
	}
	defer tc.Close()
	return tc.ConnectionState().PeerCertificates[0]
}

// tlsa serves the TLSA record of the upstream: 3 1 1 of its key, or of
// another when wrong.
func (e *mailSec) tlsa(wrong bool) {
	sum := sha256.Sum256(e.leaf.RawSubjectPublicKeyInfo)
	if wrong {
		sum = sha256.Sum256([]byte("some other key"))
	}
	e.dns.Add(rr(e.t, fmt.Sprintf("_%d._tcp.mx.up.test. 60 IN TLSA 3 1 1 %s", e.upPort, hex.EncodeToString(sum[:]))))
}

// send queues a message from a@client.test to rcpt at the sender.
func (e *mailSec) send(rcpt string) {
	t := e.t
	t.Helper()
	c := dial(t, e.sendAddr)
	c.expect("220 ")
	c.send("EHLO client.test\r\nMAIL FROM:<a@client.test>\r\n")
	c.expect("250 ")
	c.expect("250 2.1.0")
	c.send("RCPT TO:<" + rcpt + ">\r\n")
	c.expect("250 2.1.5")
	c.send("DATA\r\n")
	c.expect("354 ")
	c.send(stuffed(message) + ".\r\nQUIT\r\n")
	c.expect("250 2.0.0")
	c.expect("221 ")
}

// logLines are the JSON log lines with msg, each as a map.
func (e *mailSec) logLines(msg string) []map[string]any {
	f, err := os.Open(e.logFile)
	if err != nil {
		return nil
	}
	defer f.Close()
	var out []map[string]any
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		var m map[string]any
		if json.Unmarshal(sc.Bytes(), &m) == nil && m["msg"] == msg {
			out = append(out, m)
		}
	}
	return out
}

// logLine waits for a log line with msg and the fields want (compared as
// strings) and returns it.
func (e *mailSec) logLine(msg string, want map[string]string) map[string]any {
	e.t.Helper()
	var found map[string]any
	waitFor(e.t, fmt.Sprintf("a log line %q with %v", msg, want), func() bool {
		for _, m := range e.logLines(msg) {
			if matches(m, want) {
				found = m
				return true
			}
		}
		return false
	})
	return found
}

func matches(m map[string]any, want map[string]string) bool {
	for k, v := range want {
		if fmt.Sprint(m[k]) != v {
			return false
		}
	}
	return true
}

// delivered waits for the one message at the upstream, and checks it came
// over TLS (ESMTPS in the upstream's Received:) and the queue's log line
// for it: delivered, tls_policy policy; and the relay's.
func (e *mailSec) delivered(rcpt, policy string) {
	t := e.t
	t.Helper()
	waitFor(t, "the message at the upstream", func() bool { return len(delivered(t, e.upMail)) > 0 })
	got := delivered(t, e.upMail)
	if len(got) != 1 {
		t.Fatalf("%d messages at the upstream, want 1", len(got))
	}
	if !strings.HasSuffix(string(got[0]), message) {
		t.Errorf("the upstream got\n%s\nwant the message sent", got[0])
	}
	if !strings.Contains(string(got[0][:min(len(got[0]), 300)]), "by mx.up.test with ESMTPS") {
		t.Errorf("not received over TLS:\n%s", got[0])
	}
	e.logLine("delivery attempt", map[string]string{"rcpt": rcpt, "state": "delivered", "tls_policy": policy})
	e.logLine("queued message relayed", map[string]string{"relay_tls_policy": policy, "relay_tls": "true", "relay_tls_verified": "true", "relay_mx": "mx.up.test"})
}

// deferred waits for the queue's state of rcpt to be deferred with the
// status, its reply containing text and keeping the TLS policy that
// applied (tls_policy), and for the relay's log line saying why (domain,
// relay_tls_policy, relay_defer_reason).
func (e *mailSec) deferred(rcpt, status, text, policy, reason string) {
	t := e.t
	t.Helper()
	var got queue.Recipient
	waitFor(t, fmt.Sprintf("%s deferred with %s", rcpt, status), func() bool {
		states, _ := filepath.Glob(filepath.Join(e.qdir, "*.state"))
		for _, s := range states {
			b, err := os.ReadFile(s)
			if err != nil {
				continue
			}
			en, err := queue.DecodeState(b)
			if err != nil {
				continue
			}
			for _, r := range en.Recipients {
				if r.Addr == rcpt && r.State == queue.Deferred && r.Reply != nil {
					got = r
					return true
				}
			}
		}
		return false
	})
	if got.Reply.Code != 451 || got.Reply.Enhanced != status || !strings.Contains(got.Reply.Text, text) || got.Reply.TLSPolicy != policy {
		t.Errorf("reply of %s: %+v, want 451 %s ...%s..., tls_policy %s", rcpt, *got.Reply, status, text, policy)
	}
	e.logLine("delivery attempt", map[string]string{"rcpt": rcpt, "state": "deferred", "status": status, "tls_policy": policy})
	_, domain, _ := strings.Cut(rcpt, "@")
	e.logLine("no upstream for queued message", map[string]string{"domain": domain, "relay_tls_policy": policy, "relay_defer_reason": reason})
}

// nothingDelivered checks that the upstream got nothing, a retry later.
func (e *mailSec) nothingDelivered() {
	e.t.Helper()
	e.logLine("delivery attempt", map[string]string{"state": "deferred", "attempts": "2"})
	if got := delivered(e.t, e.upMail); len(got) != 0 {
		e.t.Fatalf("%d messages at the upstream, want none:\n%s", len(got), got[0])
	}
}

// TestMailSecurityDANEMatch: secure MX, address and TLSA records, the
// TLSA record (3 1 1) that of the upstream's key: delivered over TLS,
// policy dane.
func TestMailSecurityDANEMatch(t *testing.T) {
	e := newMailSec(t)
	e.start(mailSecConfig{sender: true, starttls: true})
	e.tlsa(false)
	e.send("b@dane.test")
	e.delivered("b@dane.test", "dane")
}

// TestMailSecurityDANEWrongTLSA: the TLSA record matches another key:
// deferred with 4.7.5 (relay_defer_reason says why), nothing at the
// upstream, attempt after attempt.
func TestMailSecurityDANEWrongTLSA(t *testing.T) {
	e := newMailSec(t)
	e.start(mailSecConfig{sender: true, starttls: true})
	e.tlsa(true)
	e.send("b@dane.test")
	e.deferred("b@dane.test", "4.7.5", "DANE", "dane", "dane: certificate mismatch")
	e.nothingDelivered()
}

// TestMailSecurityDANENoSTARTTLS: DANE applies and the upstream offers
// no STARTTLS: 4.7.5, never in clear.
func TestMailSecurityDANENoSTARTTLS(t *testing.T) {
	e := newMailSec(t)
	e.start(mailSecConfig{sender: true, starttls: false})
	e.dns.Add(rr(t, fmt.Sprintf("_%d._tcp.mx.up.test. 60 IN TLSA 3 1 1 %s", e.upPort, strings.Repeat("ab", 32))))
	e.send("b@dane.test")
	e.deferred("b@dane.test", "4.7.5", "STARTTLS", "dane", "dane: no starttls")
	e.nothingDelivered()
}

// TestMailSecurityMTASTSEnforce: an enforce policy naming the MX host,
// whose certificate verifies for it: delivered, mta-sts-enforce.
func TestMailSecurityMTASTSEnforce(t *testing.T) {
	e := newMailSec(t)
	e.start(mailSecConfig{sender: true, starttls: true, policies: map[string]string{"sts.test": policy("enforce", "mx.up.test")}})
	e.send("b@sts.test")
	e.delivered("b@sts.test", "mta-sts-enforce")
}

// TestMailSecurityMTASTSOutsidePolicy: the domain's MX host is not in its
// enforce policy: 4.4.4, and the MX host is never contacted (its address
// is not even looked up; a listener on the MX port sees no connection).
func TestMailSecurityMTASTSOutsidePolicy(t *testing.T) {
	e := newMailSec(t)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	var conns atomic.Int32
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			conns.Add(1)
			c.Close()
		}
	}()
	e.start(mailSecConfig{sender: true, starttls: true, upPort: l.Addr().(*net.TCPAddr).Port,
		policies: map[string]string{"outside.test": policy("enforce", "mx.up.test")}})
	e.send("b@outside.test")
	e.deferred("b@outside.test", "4.4.4", "MTA-STS", "mta-sts-enforce", "mta-sts: no mx host in the policy")
	e.logLine("MTA-STS enforce: MX hosts outside the policy not used", map[string]string{"domain": "outside.test"})
	e.logLine("delivery attempt", map[string]string{"rcpt": "b@outside.test", "state": "deferred", "attempts": "2"})
	if n := conns.Load(); n != 0 {
		t.Errorf("the MX port got %d connections, want none", n)
	}
	if n := e.dns.Queries("mx.outside.test", dns.TypeA); n != 0 {
		t.Errorf("the address of the MX host outside the policy was looked up %d times", n)
	}
}

// TestMailSecurityMTASTSNoSTARTTLS: enforce, the MX host in the policy,
// but no STARTTLS: 4.7.4, never in clear.
func TestMailSecurityMTASTSNoSTARTTLS(t *testing.T) {
	e := newMailSec(t)
	e.start(mailSecConfig{sender: true, starttls: false, policies: map[string]string{"sts.test": policy("enforce", "mx.up.test")}})
	e.send("b@sts.test")
	e.deferred("b@sts.test", "4.7.4", "STARTTLS", "mta-sts-enforce", "mta-sts: no starttls")
	e.nothingDelivered()
}

// TestMailSecurityMTASTSCachedPolicy: the enforce policy is fetched and
// cached with a first delivery; then its site is gone and the TXT id
// changes (so the relay tries to fetch again, and fails), and the upstream
// no longer offers STARTTLS: the cached policy still applies (4.7.4,
// nothing in clear).
func TestMailSecurityMTASTSCachedPolicy(t *testing.T) {
	e := newMailSec(t)
	e.start(mailSecConfig{sender: true, starttls: true, policies: map[string]string{"sts.test": policy("enforce", "mx.up.test")}})
	e.send("b@sts.test")
	e.delivered("b@sts.test", "mta-sts-enforce")
	if b, err := os.ReadFile(e.stsCache); err != nil || !strings.Contains(string(b), "sts.test") {
		t.Fatalf("MTA-STS cache file: %v\n%s", err, b)
	}
	os.RemoveAll(e.upMail)

	e.dns.SetTXT("_mta-sts.sts.test", "v=STSv1; id=2")
	e.reload(mailSecConfig{sender: true, starttls: false})
	e.send("c@sts.test")
	e.deferred("c@sts.test", "4.7.4", "STARTTLS", "mta-sts-enforce", "mta-sts: no starttls")
	e.logLine("MTA-STS policy discovery failed", map[string]string{"domain": "sts.test", "cached_policy_used": "true"})
	e.nothingDelivered()
}

// TestMailSecurityMTASTSTesting: a testing policy whose mx does not name
// the MX host: delivered all the same, mta-sts-testing, and the log says
// what enforce would have refused.
func TestMailSecurityMTASTSTesting(t *testing.T) {
	e := newMailSec(t)
	e.start(mailSecConfig{sender: true, starttls: true, policies: map[string]string{"testing.test": policy("testing", "mx.elsewhere.test")}})
	e.send("b@testing.test")
	e.delivered("b@testing.test", "mta-sts-testing")
	e.logLine("MTA-STS testing: MX hosts outside the policy", map[string]string{"domain": "testing.test"})
}

// TestMailSecurityDANEAndMTASTS: a domain with both (secure TLSA records
// and an enforce policy): DANE wins.
func TestMailSecurityDANEAndMTASTS(t *testing.T) {
	e := newMailSec(t)
	e.start(mailSecConfig{sender: true, starttls: true, policies: map[string]string{"both.test": policy("enforce", "mx.up.test")}})
	e.tlsa(false)
	e.send("b@both.test")
	e.delivered("b@both.test", "dane")
}
