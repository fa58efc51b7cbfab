package dkimsign_test

import (
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"

	"github.com/caddy-esmtp/caddy-esmtp/authresults"
	"github.com/caddy-esmtp/caddy-esmtp/handlers/dkim"
	dkimsign "github.com/caddy-esmtp/caddy-esmtp/handlers/dkim_sign"
	"github.com/caddy-esmtp/caddy-esmtp/internal/dkimtest"
	"github.com/caddy-esmtp/caddy-esmtp/internal/dnstest"
	"github.com/caddy-esmtp/caddy-esmtp/internal/smtptest"
	"github.com/caddy-esmtp/caddy-esmtp/session"
)

const testMsg = "From: Alice <alice@Example.COM>\r\n" +
	"To: bob@example.net\r\n" +
	"Subject: hello\r\n" +
	"Date: Sun, 1 Jun 2025 12:00:00 +0000\r\n" +
	"\r\n" +
	"Hello Bob,  with  spaces \r\n" +
	".a line with a dot\r\n" +
	"\r\n\r\n"

// signed is what one message became: the message after dkim_sign, and the
// results of our verifier at the next hop.
type signed struct {
	msg     []byte
	results []authresults.Result
}

// signAll sends each message through dkim_sign, then what it became
// through a second server with dkim (the receiving MX, which verifies the
// message as it receives it), and returns both for each.
func signAll(t *testing.T, dns *dnstest.Server, g *dkimsign.Sign, msgs ...string) []signed {
	t.Helper()
	bytesOut := make(chan []byte, len(msgs))
	keep := smtptest.Judge(func(s *session.Session) {
		b, err := s.Transaction().Message().Bytes()
		if err != nil {
			t.Error(err)
		}
		bytesOut <- b
	})
	resultsOut := make(chan []authresults.Result, len(msgs))
	capture := smtptest.Judge(func(s *session.Session) {
		resultsOut <- append([]authresults.Result(nil), authresults.Of(s)...)
	})
	signer := smtptest.ServeConfig(t, session.Config{Resolver: dns.Resolver()}, smtptest.Provisioned(t, g), keep)
	verifier := smtptest.ServeConfig(t, session.Config{Resolver: dns.Resolver()}, smtptest.Provisioned(t, &dkim.DKIM{}), capture)
	sc, vc := signer.DialTCPHello(), verifier.DialTCPHello()
	var res []signed
	for _, m := range msgs {
		if got := smtptest.Mail(sc, m, "bob@example.net"); !strings.HasPrefix(got, "250") {
			t.Fatalf("message refused: %s", got)
		}
		b := <-bytesOut
		if got := smtptest.Mail(vc, string(b), "bob@example.net"); !strings.HasPrefix(got, "250") {
			t.Fatalf("signed message refused at the next hop: %s", got)
		}
		res = append(res, signed{msg: b, results: <-resultsOut})
	}
	return res
}

// withoutAR removes the Authentication-Results field (prepended by
// authresults, not signed) so that dkimpy sees the signature first.
func withoutAR(b []byte) []byte {
	s := string(b)
	if strings.HasPrefix(s, "Authentication-Results:") {
		i := strings.Index(s, "\r\nDKIM-Signature:")
		s = s[i+2:]
	}
	return []byte(s)
}

// TestSignVerify: our RSA and Ed25519 signatures verify with our verifier
// and with dkimpy; a message of a domain without key is not signed.
func TestSignVerify(t *testing.T) {
	keys := dkimtest.GenKeys(t)
	dns := dnstest.New(t)
	dns.SetTXT("r1._domainkey.example.com", dkimtest.RSARecord(&keys.RSA.PublicKey))
	dns.SetTXT("e1._domainkey.example.com", dkimtest.Ed25519Record(keys.Ed25519))
	g := &dkimsign.Sign{Keys: []dkimsign.Key{
		{Domain: "example.com", Selector: "r1", KeyFile: dkimtest.WriteFile(t, "r1.pem", dkimtest.PKCS8(keys.RSA))},
		{Domain: "Example.com.", Selector: "e1", KeyFile: dkimtest.WriteFile(t, "e1.pem", dkimtest.PKCS8(keys.Ed25519))},
	}}
	other := strings.Replace(testMsg, "alice@Example.COM", "alice@example.org", 1)
	got := signAll(t, dns, g, testMsg, other)

	if n := strings.Count(string(got[0].msg), "DKIM-Signature:"); n != 2 {
		t.Fatalf("%d signatures:\n%s", n, got[0].msg)
	}
	var values []string
	for _, r := range got[0].results {
		values = append(values, r.Value)
	}
	if strings.Join(values, " ") != "pass pass" {
		t.Errorf("our verifier: %+v\n%s", got[0].results, got[0].msg)
	}
	if !strings.Contains(string(got[0].msg), "h=from:from:reply-to:subject:") && !strings.Contains(string(got[0].msg), "h=From:From:Reply-To:Subject:") {
		t.Errorf("From not oversigned:\n%s", got[0].msg)
	}
	if strings.Contains(string(got[1].msg), "DKIM-Signature:") || len(got[1].results) != 1 || got[1].results[0].Value != "none" {
		t.Errorf("example.org signed: %+v\n%s", got[1].results, got[1].msg)
	}

	// dkimpy verifies the first signature (the Ed25519 one, prepended
	// last), then, with that one removed, the RSA one.
	py := dkimtest.Python(t)
	msg := withoutAR(got[0].msg)
	if !dkimtest.PyVerify(t, py, "e1._domainkey.example.com", dkimtest.Ed25519Record(keys.Ed25519), msg) {
		t.Errorf("dkimpy does not verify the Ed25519 signature:\n%s", msg)
	}
	rest := string(msg)
	i := strings.Index(rest, "\r\nDKIM-Signature:")
	rest = rest[i+2:]
	if !dkimtest.PyVerify(t, py, "r1._domainkey.example.com", dkimtest.RSARecord(&keys.RSA.PublicKey), []byte(rest)) {
		t.Errorf("dkimpy does not verify the RSA signature:\n%s", rest)
	}
	changed := strings.Replace(rest, "Hello Bob", "Hello Eve", 1)
	if dkimtest.PyVerify(t, py, "r1._domainkey.example.com", dkimtest.RSARecord(&keys.RSA.PublicKey), []byte(changed)) {
		t.Errorf("dkimpy verifies a changed message")
	}
}

// TestKeys: the key forms taken, and errors that name the file.
func TestKeys(t *testing.T) {
	keys := dkimtest.GenKeys(t)
	for name, data := range map[string][]byte{
		"pkcs1":     dkimtest.PKCS1(keys.RSA),
		"pkcs8-rsa": dkimtest.PKCS8(keys.RSA),
		"pkcs8-ed":  dkimtest.PKCS8(keys.Ed25519),
		"seed":      dkimtest.Seed(keys.Ed25519),
	} {
		if _, err := dkimsign.LoadKey(dkimtest.WriteFile(t, name, data)); err != nil {
			t.Errorf("%s: %v", name, err)
		}
	}
	small := "-----BEGIN RSA PRIVATE KEY-----\nMIIBOgIBAAJBAKj34GkxFhD90vcNLYLInFEX6Ppy1tPf9Cnzj4p4WGeKLs1Pt8Qu\nKUpRKfFLfRYC9AIKjbJTWit+CqvjWYzvQwECAwEAAQJAIJLixBy2qpFoS4DSmoEm\no3qGy0t6z09AIJtH+5OeRV1be+N4cDYJKffGzDa88vQENZiRm0GRq6a+HPGQMd2k\nTQIhAKMSvzIBnni7ot/OSie2TmJLY4SwTQAevXysE2RbFDYdAiEBCUEaRQnMnbp7\n9mxDXDf6AU0cN/RPBjb9qSHDcWZHGzUCIG2Es59z8ugGrDY+pxLQnwfotadxd+Uy\nv/Ow5T0q5gIJAiEAyS4RaI9YG8EWx/2w0T67ZUVAw8eOMB6BIUg0Xcu+3okCIBOs\n/5OiPgoTdSy7bcF9IGpSE8ZgGKzgYQVZeN97YE00\n-----END RSA PRIVATE KEY-----\n"
	for name, c := range map[string]struct{ data, want string }{
		"small.pem":   {small, "512 bits"},
		"garbage.pem": {"not a key", "no PEM"},
		"cert.pem":    {"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n", "not a private key"},
	} {
		path := dkimtest.WriteFile(t, name, []byte(c.data))
		err := smtptest.Provision(&dkimsign.Sign{Keys: []dkimsign.Key{{Domain: "example.com", Selector: "s1", KeyFile: path}}})
		if err == nil || !strings.Contains(err.Error(), path) || !strings.Contains(err.Error(), c.want) || !strings.Contains(err.Error(), "keys[0].key_file") {
			t.Errorf("%s: %v", name, err)
		}
	}
	err := smtptest.Provision(&dkimsign.Sign{Keys: []dkimsign.Key{{Domain: "example.com", Selector: "s1", KeyFile: "/nonexistent/s1.key"}}})
	if err == nil || !strings.Contains(err.Error(), "/nonexistent/s1.key") {
		t.Errorf("missing file: %v", err)
	}
	ok := dkimtest.WriteFile(t, "ok.pem", dkimtest.PKCS8(keys.Ed25519))
	for field, g := range map[string]*dkimsign.Sign{
		"keys":             {},
		"keys[0].domain":   {Keys: []dkimsign.Key{{Domain: "bad domain", Selector: "s1", KeyFile: ok}}},
		"keys[0].selector": {Keys: []dkimsign.Key{{Domain: "example.com", KeyFile: ok}}},
		"keys[0].key_file": {Keys: []dkimsign.Key{{Domain: "example.com", Selector: "s1"}}},
		"headers":          {Keys: []dkimsign.Key{{Domain: "example.com", Selector: "s1", KeyFile: ok}}, Headers: []string{"Subject"}},
		"expire":           {Keys: []dkimsign.Key{{Domain: "example.com", Selector: "s1", KeyFile: ok}}, Expire: -1},
	} {
		if err := smtptest.Provision(g); err == nil || !strings.Contains(err.Error(), field) {
			t.Errorf("%s: %v", field, err)
		}
	}
}

func TestCaddyfile(t *testing.T) {
	var g dkimsign.Sign
	if err := g.UnmarshalCaddyfile(caddyfile.NewTestDispenser("dkim_sign example.com s1 /etc/mail/s1.key")); err != nil || len(g.Keys) != 1 || g.Keys[0].KeyFile != "/etc/mail/s1.key" {
		t.Fatalf("%v %+v", err, g)
	}
	g = dkimsign.Sign{}
	in := "dkim_sign {\n key example.com s1 /k1\n key example.org s2 /k2\n headers From From Subject\n expire 7d\n}"
	if err := g.UnmarshalCaddyfile(caddyfile.NewTestDispenser(in)); err != nil || len(g.Keys) != 2 || len(g.Headers) != 3 || g.Expire == 0 {
		t.Fatalf("%v %+v", err, g)
	}
	for _, in := range []string{"dkim_sign", "dkim_sign a b", "dkim_sign {\n key a b\n}", "dkim_sign a b c {\n headers Subject\n}",
		"dkim_sign a b c {\n expire -1s\n}", "dkim_sign a b c {\n bogus\n}", "dkim_sign a b c {\n expire 1h\n expire 2h\n}"} {
		var g dkimsign.Sign
		if err := g.UnmarshalCaddyfile(caddyfile.NewTestDispenser(in)); err == nil {
			t.Errorf("%q: no error", in)
		}
	}
}

func TestFromDomain(t *testing.T) {
	for in, want := range map[string]string{
		"Alice <alice@Example.COM>":              "example.com",
		"alice@example.com":                      "example.com",
		"a@example.com, b@example.com":           "example.com",
		"a@example.com, b@example.org":           "",
		"=?utf-8?q?Al=C3=AFce?= <a@example.com>": "example.com",
		"\"x@evil.example\" <a@example.com>":     "example.com",
		"undisclosed":                            "",
		"":                                       "",
	} {
		if got := dkimsign.FromDomain(in); got != want {
			t.Errorf("FromDomain(%q) = %q, want %q", in, got, want)
		}
	}
}

func FuzzFromDomain(f *testing.F) {
	f.Add("Alice <alice@example.com>")
	f.Add("a@example.com, b@example.org")
	f.Fuzz(func(t *testing.T, v string) {
		d := dkimsign.FromDomain(v)
		if d != strings.ToLower(d) || strings.ContainsAny(d, "@<>\r\n") {
			t.Errorf("FromDomain(%q) = %q", v, d)
		}
	})
}
