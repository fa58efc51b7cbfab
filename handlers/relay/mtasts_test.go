package relay

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"math/big"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"

	"github.com/caddy-esmtp/caddy-esmtp/mtasts"
)

// policyServer serves MTA-STS policies over HTTPS for the mta-sts.<domain>
// hosts of policies, with a certificate from a CA of its own.
func policyServer(t *testing.T, policies map[string]string) (port int, root *x509.Certificate) {
	caKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	caTmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "sts CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	root, _ = x509.ParseCertificate(caDER)
	var names []string
	for d := range policies {
		names = append(names, "mta-sts."+d)
	}
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(2), DNSNames: names,
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, root, &key.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		p, ok := policies[strings.TrimPrefix(r.Host, "mta-sts.")]
		if !ok || r.URL.Path != "/.well-known/mta-sts.txt" {
			http.NotFound(w, r)
			return
		}
		w.Header().Set("Content-Type", "text/plain")
		w.Write([]byte(p))
	}))
	srv.TLS = &tls.Config{Certificates: []tls.Certificate{{Certificate: [][]byte{der}, PrivateKey: key}}}
	srv.StartTLS()
	t.Cleanup(srv.Close)
	return mustPort(t, srv.Listener.Addr().String()), root
}

// TestMTASTS checks the relay's MTA-STS: with enforce, an MX host outside
// the policy is never contacted, and a certificate that does not verify
// for the MX host defers the domain without sending anything; testing only
// logs.
func TestMTASTS(t *testing.T) {
	good := startUpstream(t, upstreamOpts{tls: true}) // certificate for mx.test, localhost
	port, root := policyServer(t, map[string]string{
		"s1.test": "version: STSv1\nmode: enforce\nmx: mx.test\nmax_age: 3600\n",
		"s2.test": "version: STSv1\nmode: enforce\nmx: *.s2.test\nmax_age: 3600\n",
		"s3.test": "version: STSv1\nmode: testing\nmx: *.s3.test\nmax_age: 3600\n",
	})
	mxPort := mustPort(t, good.addr)
	// The evil MX (no TLS, outside the policy) has the better preference.
	evil := startUpstream(t, upstreamOpts{addr: "127.0.0.2:" + strconv.Itoa(mxPort)})
	resolver := dnsServer(t,
		"s1.test. 60 IN MX 5 evil.test.",
		"s1.test. 60 IN MX 10 mx.test.",
		"evil.test. 60 IN A 127.0.0.2",
		"mx.test. 60 IN A 127.0.0.1",
		"s2.test. 60 IN MX 10 localhost.s2.test.",
		"localhost.s2.test. 60 IN A 127.0.0.1",
		"s3.test. 60 IN MX 10 localhost.s3.test.",
		"localhost.s3.test. 60 IN A 127.0.0.1",
		`_mta-sts.s1.test. 60 IN TXT "v=STSv1; id=1;"`,
		`_mta-sts.s2.test. 60 IN TXT "v=STSv1; id=1;"`,
		`_mta-sts.s3.test. 60 IN TXT "v=STSv1; id=1;"`,
		"mta-sts.s1.test. 60 IN A 127.0.0.1",
		"mta-sts.s2.test. 60 IN A 127.0.0.1",
		"mta-sts.s3.test. 60 IN A 127.0.0.1",
	)
	r := provisioned(t, &Relay{To: "mx", Resolver: resolver, MXPort: mxPort, TLSCA: certs(t).caFile,
		Domains: []string{"s1.test", "s2.test", "s3.test"}, MTASTSCache: t.TempDir() + "/sts.json"})
	var err error
	if r.sts, err = mtasts.NewCache(&mtasts.Fetcher{ExtraRoots: []*x509.Certificate{root}, Port: port, Timeout: 5 * time.Second}, ""); err != nil {
		t.Fatal(err)
	}
	cfg, logs := observed()
	rcore, rlogs := observer.New(zap.DebugLevel)
	r.logger = zap.New(rcore)
	c, _ := dial(t, serve(t, cfg, r))

	// s1: evil.test (preferred, outside the policy) is never contacted.
	if got := send(t, c, "a@client.example", "x@s1.test"); !strings.HasPrefix(got, "250 2.0.0") {
		t.Fatalf("s1: end of data: %q", got)
	}
	if evil.connections() != 0 {
		t.Fatalf("s1: the MX host outside the policy was contacted")
	}
	if msgs := good.messages(); len(msgs) != 1 || !msgs[0].tls {
		t.Fatalf("s1: upstream got %+v", msgs)
	}
	if f := messageLog(t, logs, 1); f["relay_tls_policy"] != "mta-sts-enforce" || f["relay_tls_verified"] != true {
		t.Errorf("s1: log %v", f)
	}

	// s2: the certificate does not name localhost.s2.test: deferred, no
	// transaction, nothing in clear.
	c.Cmd("MAIL FROM:<a@client.example>", "250 2.1.0")
	c.Cmd("RCPT TO:<x@s2.test>", "451 4.7.5 ")
	c.Cmd("RSET", "250 ")
	if msgs := good.messages(); len(msgs) != 1 {
		t.Fatalf("s2: upstream got %+v", msgs)
	}
	if e := rlogs.FilterMessage("no upstream").FilterField(zap.String("domain", "s2.test")).All(); len(e) != 1 ||
		e[0].ContextMap()["relay_tls_policy"] != stsEnforce || e[0].ContextMap()["relay_defer_reason"] != reasonSTSCert {
		t.Errorf("s2: no upstream log lines %v, want one with relay_tls_policy %s, relay_defer_reason %s", e, stsEnforce, reasonSTSCert)
	}

	// s3 (testing): the same certificate problem is only logged.
	if got := send(t, c, "a@client.example", "x@s3.test"); !strings.HasPrefix(got, "250 2.0.0") {
		t.Fatalf("s3: end of data: %q", got)
	}
	if f := messageLog(t, logs, 2); f["relay_tls_policy"] != "mta-sts-testing" {
		t.Errorf("s3: log %v", f)
	}
}
