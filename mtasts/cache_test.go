package mtasts

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddy-esmtp/caddy-esmtp/internal/dnstest"
)

// policyServer serves the policy over HTTPS on loopback with a
// certificate for mta-sts.example.com from a CA of its own.
type policyServer struct {
	srv   *httptest.Server
	ca    *x509.Certificate
	port  int
	body  atomic.Value // string
	ctype atomic.Value // string
	hits  atomic.Int32
}

func startPolicyServer(t *testing.T, body string) *policyServer {
	caKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	caTmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	ca, _ := x509.ParseCertificate(caDER)
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(2), DNSNames: []string{"mta-sts.example.com"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	ps := &policyServer{ca: ca}
	ps.body.Store(body)
	ps.ctype.Store("text/plain; charset=utf-8")
	ps.srv = httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ps.hits.Add(1)
		if r.URL.Path == "/redirect" || r.Host != "mta-sts.example.com" {
			http.Error(w, "wrong host", http.StatusNotFound)
			return
		}
		if r.URL.Path != "/.well-known/mta-sts.txt" {
			http.NotFound(w, r)
			return
		}
		if b := ps.body.Load().(string); b == "redirect" {
			http.Redirect(w, r, "/redirect", http.StatusFound)
			return
		}
		w.Header().Set("Content-Type", ps.ctype.Load().(string))
		w.Write([]byte(ps.body.Load().(string)))
	}))
	ps.srv.TLS = &tls.Config{Certificates: []tls.Certificate{{Certificate: [][]byte{der}, PrivateKey: key}}}
	ps.srv.StartTLS()
	t.Cleanup(ps.srv.Close)
	_, port, _ := net.SplitHostPort(ps.srv.Listener.Addr().String())
	ps.port, _ = strconv.Atoi(port)
	return ps
}

const enforcePolicy = "version: STSv1\r\nmode: enforce\r\nmx: mx.example.com\r\nmax_age: 3600\r\n"

func setup(t *testing.T, body string) (*policyServer, *dnstest.Server, *Fetcher) {
	ps := startPolicyServer(t, body)
	dns := dnstest.Start(t, "mta-sts.example.com. 60 IN A 127.0.0.1")
	dns.SetTXT("_mta-sts.example.com.", "v=STSv1; id=1;")
	return ps, dns, &Fetcher{Resolver: dns.Resolver(), ExtraRoots: []*x509.Certificate{ps.ca}, Port: ps.port, Timeout: 5 * time.Second}
}

func TestFetchPolicy(t *testing.T) {
	ps, dns, f := setup(t, enforcePolicy)
	ctx := context.Background()
	p, err := f.Policy(ctx, dns.Resolver(), "example.com")
	if err != nil {
		t.Fatal(err)
	}
	if p.Mode != ModeEnforce || !p.Match("mx.example.com") || p.MaxAge != time.Hour {
		t.Fatalf("policy %+v", p)
	}
	ps.ctype.Store("text/html")
	if _, err := f.Policy(ctx, dns.Resolver(), "example.com"); err == nil {
		t.Error("text/html accepted")
	}
	ps.ctype.Store("text/plain")
	ps.body.Store("redirect")
	if _, err := f.Policy(ctx, dns.Resolver(), "example.com"); err == nil {
		t.Error("redirect followed")
	}
	ps.body.Store(enforcePolicy + "x-pad: " + string(make([]byte, MaxPolicySize)) + "\n")
	if _, err := f.Policy(ctx, dns.Resolver(), "example.com"); err == nil {
		t.Error("oversized policy accepted")
	}
	// Without the test CA the certificate does not verify.
	g := &Fetcher{Resolver: dns.Resolver(), Port: ps.port, Timeout: 5 * time.Second}
	ps.body.Store(enforcePolicy)
	if _, err := g.Policy(ctx, dns.Resolver(), "example.com"); err == nil {
		t.Error("certificate from an unknown CA accepted")
	}
	// The policy host's address comes from the resolver given.
	if _, err := f.Policy(ctx, dns.Resolver(), "other.example"); err == nil {
		t.Error("policy host without an address reached")
	}
}

func TestCache(t *testing.T) {
	ps, dns, f := setup(t, enforcePolicy)
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "sub", "mta-sts.json")
	c, err := NewCache(f, path)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	c.Now = func() time.Time { return now }
	if p, err := c.Lookup(ctx, "example.com"); err != nil || p == nil || p.Mode != ModeEnforce {
		t.Fatalf("first lookup: %+v %v", p, err)
	}
	// Same id, unexpired: no fetch.
	if p, err := c.Lookup(ctx, "Example.COM."); err != nil || p == nil || ps.hits.Load() != 1 {
		t.Fatalf("cached lookup: %+v %v, %d fetches", p, err, ps.hits.Load())
	}
	// New id: fetched again.
	ps.body.Store("version: STSv1\nmode: testing\nmx: mx.example.com\nmax_age: 3600\n")
	dns.SetTXT("_mta-sts.example.com.", "v=STSv1; id=2;")
	if p, err := c.Lookup(ctx, "example.com"); err != nil || p.Mode != ModeTesting || ps.hits.Load() != 2 {
		t.Fatalf("after the id changed: %+v %v, %d fetches", p, err, ps.hits.Load())
	}
	// New id, fetch failing: the cached policy applies, with the error.
	ps.body.Store("garbage")
	dns.SetTXT("_mta-sts.example.com.", "v=STSv1; id=3;")
	if p, err := c.Lookup(ctx, "example.com"); err == nil || p == nil || p.Mode != ModeTesting {
		t.Fatalf("fetch failing with a cached policy: %+v %v", p, err)
	}
	// TXT lookup failing: the cached policy applies.
	dns.ServFail("_mta-sts.example.com.")
	if p, err := c.Lookup(ctx, "example.com"); err == nil || p == nil || p.Mode != ModeTesting {
		t.Fatalf("TXT failing with a cached policy: %+v %v", p, err)
	}
	// Persisted: a new cache on the same file has it, without a fetch.
	hits := ps.hits.Load()
	c2, err := NewCache(f, path)
	if err != nil {
		t.Fatal(err)
	}
	c2.Now = c.Now
	if p, err := c2.Lookup(ctx, "example.com"); p == nil || p.Mode != ModeTesting || ps.hits.Load() != hits {
		t.Fatalf("reloaded cache: %+v %v", p, err)
	}
	// Expired (max_age): not used any more.
	now = now.Add(time.Hour + time.Second)
	if p, err := c2.Lookup(ctx, "example.com"); p != nil || err == nil {
		t.Fatalf("expired policy: %+v %v", p, err)
	}
	// No record, nothing cached: no policy.
	if p, err := c2.Lookup(ctx, "nosts.example"); p != nil || err != nil {
		t.Fatalf("no record: %+v %v", p, err)
	}
}
