package dkim_test

import (
	"fmt"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"

	"github.com/caddy-esmtp/caddy-esmtp/authresults"
	"github.com/caddy-esmtp/caddy-esmtp/handlers/dkim"
	"github.com/caddy-esmtp/caddy-esmtp/internal/dkimtest"
	"github.com/caddy-esmtp/caddy-esmtp/internal/dnstest"
	"github.com/caddy-esmtp/caddy-esmtp/internal/smtptest"
	"github.com/caddy-esmtp/caddy-esmtp/session"
)

const testMsg = "From: Alice <alice@example.com>\r\n" +
	"To: bob@example.net\r\n" +
	"Subject: hello\r\n" +
	"Date: Sun, 1 Jun 2025 12:00:00 +0000\r\n" +
	"\r\n" +
	"Hello Bob,\r\n" +
	".a line with a dot\r\n" +
	"\r\n"

// verifyAll sends each message through an engine with v and returns the
// DKIM results recorded for each.
func verifyAll(t *testing.T, dns *dnstest.Server, v *dkim.DKIM, msgs ...string) [][]authresults.Result {
	t.Helper()
	results := make(chan []authresults.Result, len(msgs))
	capture := smtptest.Judge(func(s *session.Session) {
		results <- append([]authresults.Result(nil), authresults.Of(s)...)
	})
	srv := smtptest.ServeConfig(t, session.Config{Resolver: dns.Resolver()}, smtptest.Provisioned(t, v), capture)
	c := srv.DialTCPHello()
	var out [][]authresults.Result
	for _, m := range msgs {
		if got := smtptest.Mail(c, m, "bob@example.net"); !strings.HasPrefix(got, "250") {
			t.Fatalf("message refused: %s", got)
		}
		out = append(out, <-results)
	}
	return out
}

// prop returns a result's header.<name> property.
func prop(r authresults.Result, name string) string {
	for _, p := range r.Props {
		if p.Type == "header" && p.Name == name {
			return p.Value
		}
	}
	return ""
}

// TestDkimpySigned: messages signed by dkimpy with RSA and Ed25519 keys
// verify; the same messages changed after signing fail.
func TestDkimpySigned(t *testing.T) {
	py := dkimtest.Python(t)
	keys := dkimtest.GenKeys(t)
	dns := dnstest.New(t)
	dns.SetTXT("r1._domainkey.example.com", dkimtest.RSARecord(&keys.RSA.PublicKey))
	dns.SetTXT("e1._domainkey.example.com", dkimtest.Ed25519Record(keys.Ed25519))
	rsaFile := dkimtest.WriteFile(t, "rsa.pem", dkimtest.PKCS1(keys.RSA))
	edFile := dkimtest.WriteFile(t, "ed.key", dkimtest.Seed(keys.Ed25519))

	rsaSig := dkimtest.PySign(t, py, "r1", "example.com", rsaFile, "rsa-sha256", []byte(testMsg))
	edSig := dkimtest.PySign(t, py, "e1", "example.com", edFile, "ed25519-sha256", []byte(testMsg))
	both := edSig + rsaSig + testMsg
	changedBody := rsaSig + strings.Replace(testMsg, "Hello Bob", "Hello Eve", 1)
	changedHeader := edSig + strings.Replace(testMsg, "Subject: hello", "Subject: hullo", 1)

	got := verifyAll(t, dns, &dkim.DKIM{}, rsaSig+testMsg, edSig+testMsg, both, changedBody, changedHeader)
	want := [][]string{{"pass r1 rsa-sha256"}, {"pass e1 ed25519-sha256"},
		{"pass e1 ed25519-sha256", "pass r1 rsa-sha256"}, {"fail r1 rsa-sha256"}, {"fail e1 ed25519-sha256"}}
	for i, rs := range got {
		var have []string
		for _, r := range rs {
			if r.Method != "dkim" || prop(r, "d") != "example.com" {
				t.Errorf("message %d: result %+v", i, r)
			}
			have = append(have, r.Value+" "+prop(r, "s")+" "+prop(r, "a"))
		}
		if fmt.Sprint(have) != fmt.Sprint(want[i]) {
			t.Errorf("message %d: results %v, want %v", i, have, want[i])
		}
	}
}

// sigField makes a DKIM-Signature field with the given tags.
func sigField(tags string) string { return "DKIM-Signature: " + tags + "\r\n" }

// TestBadInput: malformed signatures give a result each (permerror,
// fail, policy, temperror), never a crash nor a hang, and the message is
// accepted.
func TestBadInput(t *testing.T) {
	dns := dnstest.New(t)
	keys := dkimtest.GenKeys(t)
	dns.SetTXT("r1._domainkey.example.com", dkimtest.RSARecord(&keys.RSA.PublicKey))
	dns.SetTXT("short._domainkey.example.com", shortKeyRecord)
	dns.SetTXT("bad._domainkey.example.com", "v=DKIM1; k=rsa; p=!!!notbase64")

	const bh = "bh=47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU="
	ok := "v=1; a=rsa-sha256; c=relaxed/relaxed; d=example.com; s=r1; h=from; " + bh + "; b=AAAA"
	cases := []struct {
		name, field, value string
	}{
		{"no tags", sigField("garbage"), "permerror"},
		{"empty", "DKIM-Signature:\r\n", "permerror"},
		{"missing b", sigField("v=1; a=rsa-sha256; d=example.com; s=r1; h=from; " + bh), "permerror"},
		{"bad version", sigField(strings.Replace(ok, "v=1", "v=2", 1)), "permerror"},
		{"duplicate tag", sigField(ok + "; d=example.org"), "permerror"},
		{"bad base64 b", sigField(strings.Replace(ok, "b=AAAA", "b=@@@", 1)), "permerror"},
		{"bad base64 bh", sigField(strings.Replace(ok, bh, "bh=###", 1)), "permerror"},
		{"rsa-sha1", sigField(strings.Replace(ok, "rsa-sha256", "rsa-sha1", 1)), "permerror"},
		{"unknown algorithm", sigField(strings.Replace(ok, "rsa-sha256", "dsa-sha512", 1)), "permerror"},
		{"From not signed", sigField(strings.Replace(ok, "h=from", "h=subject", 1)), "permerror"},
		{"i outside d", sigField(ok + "; i=@example.org"), "permerror"},
		{"expired", sigField(ok + "; x=1000"), "permerror"},
		{"no key", sigField(strings.Replace(ok, "s=r1", "s=none", 1)), "permerror"},
		{"bad key", sigField(strings.Replace(ok, "s=r1", "s=bad", 1)), "permerror"},
		{"dns failure", sigField(strings.Replace(ok, "d=example.com", "d=servfail.example", 1)), "temperror"},
		{"huge l", sigField(ok + "; l=99999999999999999999999999999"), "policy"},
		{"l", sigField(ok + "; l=3"), "policy"},
		{"short key", sigField(strings.Replace(ok, "s=r1", "s=short", 1)), "fail"},
		{"wrong signature", sigField(ok), "fail"},
		{"huge field", sigField(ok + "; z=" + strings.Repeat(strings.Repeat("x", 900)+"\r\n ", 250)), "fail"},
		{"folded", "DKIM-Signature: v=1;\r\n\ta=rsa-sha256;\r\n d=example.com; s=r1; h=from; " + bh + ";\r\n b=AA\r\n AA\r\n", "fail"},
	}
	var msgs []string
	for _, c := range cases {
		msgs = append(msgs, c.field+testMsg)
	}
	got := verifyAll(t, dns, &dkim.DKIM{}, msgs...)
	for i, c := range cases {
		if len(got[i]) != 1 || got[i][0].Value != c.value {
			t.Errorf("%s: results %+v, want one %s", c.name, got[i], c.value)
		}
		if c.name == "short key" && !strings.Contains(got[i][0].Reason, "too short") {
			t.Errorf("short key: reason %q", got[i][0].Reason)
		}
	}
	// The properties come from the signature, cut short.
	if r := got[len(cases)-1][0]; prop(r, "d") != "example.com" || prop(r, "s") != "r1" || prop(r, "a") != "rsa-sha256" {
		t.Errorf("folded: props %+v", r.Props)
	}
}

// shortKeyRecord is a 512-bit RSA public key (RFC 8301: never valid).
const shortKeyRecord = "v=DKIM1; k=rsa; p=MFwwDQYJKoZIhvcNAQEBBQADSwAwSAJBAMtwluYTvIWjaXCqA/WAOL0SLFX4H2XU84/rwhnjDYCtgEd6ykRf5N2XvP0fZJe7LuaQERW41GMiAnGMeqaSj8kCAwEAAQ=="

// TestManySignatures: 50 signatures: the first max_signatures get a
// result each, the rest one "policy" result.
func TestManySignatures(t *testing.T) {
	dns := dnstest.New(t)
	var sigs strings.Builder
	for i := range 50 {
		sigs.WriteString(sigField(fmt.Sprintf("v=1; a=rsa-sha256; d=example.com; s=s%d; h=from; bh=AAAA; b=AAAA", i)))
	}
	got := verifyAll(t, dns, &dkim.DKIM{MaxSignatures: 5}, sigs.String()+testMsg)[0]
	if len(got) != 6 {
		t.Fatalf("%d results, want 6: %+v", len(got), got)
	}
	for i, r := range got[:5] {
		if r.Value != "permerror" || prop(r, "s") != fmt.Sprintf("s%d", i) {
			t.Errorf("result %d: %+v", i, r)
		}
	}
	if r := got[5]; r.Value != "policy" || !strings.Contains(r.Reason, "45 signatures") {
		t.Errorf("last result %+v", r)
	}
}

// TestUnsigned: a message without signature gets dkim=none; one without a
// body (nor blank line) is read too.
func TestUnsigned(t *testing.T) {
	dns := dnstest.New(t)
	got := verifyAll(t, dns, &dkim.DKIM{}, testMsg, "From: a@example.com\r\nSubject: x\r\n",
		sigField("v=1; a=rsa-sha256; d=example.com; s=r1; h=from; bh=AAAA; b=AAAA")+"From: a@example.com\r\n")
	for i, want := range []string{"none", "none", "permerror"} {
		if len(got[i]) != 1 || got[i][0].Value != want {
			t.Errorf("message %d: %+v, want %s", i, got[i], want)
		}
	}
}

func TestCaddyfile(t *testing.T) {
	var v dkim.DKIM
	if err := v.UnmarshalCaddyfile(caddyfile.NewTestDispenser("dkim {\n max_signatures 3\n}")); err != nil || v.MaxSignatures != 3 {
		t.Fatalf("%v %+v", err, v)
	}
	for _, in := range []string{"dkim x", "dkim {\n max_signatures 0\n}", "dkim {\n max_signatures\n}", "dkim {\n bogus\n}"} {
		var v dkim.DKIM
		if err := v.UnmarshalCaddyfile(caddyfile.NewTestDispenser(in)); err == nil {
			t.Errorf("%q: no error", in)
		}
	}
	if err := smtptest.Provision(&dkim.DKIM{MaxSignatures: -1}); err == nil || !strings.Contains(err.Error(), "max_signatures") {
		t.Errorf("negative max_signatures: %v", err)
	}
}

// TestEditsBeforeVerification: a judge placed before dkim that edits the
// message (a tag in the Subject, a field on top) does not break its
// signature: dkim verifies the message as it was received.
func TestEditsBeforeVerification(t *testing.T) {
	py := dkimtest.Python(t)
	keys := dkimtest.GenKeys(t)
	dns := dnstest.New(t)
	dns.SetTXT("r1._domainkey.example.com", dkimtest.RSARecord(&keys.RSA.PublicKey))
	rsaFile := dkimtest.WriteFile(t, "rsa.pem", dkimtest.PKCS1(keys.RSA))
	signed := dkimtest.PySign(t, py, "r1", "example.com", rsaFile, "rsa-sha256", []byte(testMsg)) + testMsg

	results := make(chan []authresults.Result, 1)
	tagger := smtptest.Judge(func(s *session.Session) {
		s.Transaction().ChangeHeader("Subject", 1, "[tagged] hello")
		s.Transaction().PrependHeader("X-Scanned", "yes")
	})
	capture := smtptest.Judge(func(s *session.Session) {
		results <- append([]authresults.Result(nil), authresults.Of(s)...)
	})
	srv := smtptest.ServeConfig(t, session.Config{Resolver: dns.Resolver()}, tagger, smtptest.Provisioned(t, &dkim.DKIM{}), capture)
	c := srv.DialTCPHello()
	if got := smtptest.Mail(c, signed, "bob@example.net"); !strings.HasPrefix(got, "250") {
		t.Fatalf("message refused: %s", got)
	}
	rs := <-results
	if len(rs) != 1 || rs[0].Value != "pass" {
		t.Fatalf("results %+v, want one pass", rs)
	}
}
