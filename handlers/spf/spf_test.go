package spf

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"

	"github.com/caddy-esmtp/caddy-esmtp/authresults"
	"github.com/caddy-esmtp/caddy-esmtp/internal/smtptest"
	"github.com/caddy-esmtp/caddy-esmtp/session"
)

// client is the address every test session comes from.
const client = "192.0.2.10:4000"

// testZone holds the SPF records of the tests; the client is 192.0.2.10.
func testZone() zone {
	z := zone{
		"pass-ip4.test":     {txt: [][]string{{"v=spf1 ip4:192.0.2.0/24 -all"}}},
		"pass-a.test":       {txt: [][]string{{"v=spf1 a -all"}}, a: []string{"192.0.2.10"}},
		"pass-mx.test":      {txt: [][]string{{"v=spf1 mx -all"}}, mx: []string{"mail.pass-mx.test"}},
		"mail.pass-mx.test": {a: []string{"192.0.2.10"}},
		"pass-include.test": {txt: [][]string{{"v=spf1 include:inc.test -all"}}},
		"inc.test":          {txt: [][]string{{"v=spf1 ip4:192.0.2.10 -all"}}},
		// A record split into character-strings is one record.
		"split.test":     {txt: [][]string{{"v=spf1 ip4:198.51.100.1", " ip4:192.0.2.10 -all"}}},
		"fail.test":      {txt: [][]string{{"v=spf1 ip4:198.51.100.1 -all"}}},
		"softfail.test":  {txt: [][]string{{"v=spf1 ~all"}}},
		"neutral.test":   {txt: [][]string{{"v=spf1 ?all"}}},
		"norecord.test":  {txt: [][]string{{"google-site-verification=x"}}},
		"syntax.test":    {txt: [][]string{{"v=spf1 ip4:192.0.2.300 -all"}}},
		"two.test":       {txt: [][]string{{"v=spf1 -all"}, {"v=spf1 +all"}}},
		"servfail.test":  {rcode: 2}, // SERVFAIL
		"slow.test":      {drop: true},
		"helo-pass.test": {txt: [][]string{{"v=spf1 ip4:192.0.2.10 -all"}}},
		"helo-fail.test": {txt: [][]string{{"v=spf1 -all"}}},
		// 2 void lookups are allowed, the third is a permerror.
		"void2.test": {txt: [][]string{{"v=spf1 a:v1.test mx:v2.test ip4:192.0.2.10 -all"}}},
		"void3.test": {txt: [][]string{{"v=spf1 a:v1.test mx:v2.test a:v3.test ip4:192.0.2.10 -all"}}},
		"v2.test":    {}, // NOERROR, no data: void too
	}
	// 10 DNS-querying terms are allowed, the eleventh is a permerror.
	var ten, eleven []string
	for i := 1; i <= 11; i++ {
		name := fmt.Sprintf("l%d.test", i)
		z[name] = &node{a: []string{"198.51.100.1"}}
		if i <= 10 {
			ten = append(ten, "a:"+name)
		}
		eleven = append(eleven, "a:"+name)
	}
	z["lookups10.test"] = &node{txt: [][]string{{"v=spf1 " + strings.Join(ten, " ") + " ip4:192.0.2.10 -all"}}}
	z["lookups11.test"] = &node{txt: [][]string{{"v=spf1 " + strings.Join(eleven, " ") + " ip4:192.0.2.10 -all"}}}
	return z
}

// recorder is a MAIL hook placed after spf: it keeps the results spf
// recorded for the transaction.
type recorder struct {
	mu  sync.Mutex
	got []authresults.Result
}

func (r *recorder) Mail(_ context.Context, s *session.Session, _ session.Path, _ session.Params) (*session.Reply, error) {
	r.mu.Lock()
	r.got = append([]authresults.Result(nil), authresults.Of(s)...)
	r.mu.Unlock()
	return nil, nil
}

func (r *recorder) results() []authresults.Result {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.got
}

// keep is a delivery that keeps the last message.
type keep struct {
	mu  sync.Mutex
	got string
}

func (k *keep) Deliver(_ context.Context, _ *session.Session, d *session.Delivery) error {
	b, err := d.Message.Bytes()
	k.mu.Lock()
	k.got = string(b)
	k.mu.Unlock()
	return err
}

func (k *keep) message() string {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.got
}

// serve runs the engine with h (provisioned), a recorder and the extra
// handlers, its resolver asking ds.
func serve(t *testing.T, ds *dnsServer, h *SPF, extra ...any) (*smtptest.Server, *recorder) {
	t.Helper()
	smtptest.Provisioned(t, h)
	rec := &recorder{}
	handlers := append([]any{h, rec}, extra...)
	return smtptest.ServeConfig(t, session.Config{Resolver: ds.resolver()}, handlers...), rec
}

// pvalue is a property value as the field writes it: an address literal
// is quoted ("[" is not a token character).
func pvalue(s string) string {
	if strings.Contains(s, "[") {
		return `"` + s + `"`
	}
	return s
}

// format renders results as the Authentication-Results field would.
func format(rs []authresults.Result) string {
	return authresults.Format("x", rs)
}

// TestResults: each record gives the RFC 7208 result, recorded with the
// MAIL FROM address.
func TestResults(t *testing.T) {
	ds := startDNS(t, testZone())
	srv, rec := serve(t, ds, &SPF{Timeout: caddy.Duration(2 * time.Second)})
	for _, tc := range []struct{ domain, want string }{
		{"pass-ip4.test", "pass"},
		{"pass-a.test", "pass"},
		{"pass-mx.test", "pass"},
		{"pass-include.test", "pass"},
		{"split.test", "pass"},
		{"PASS-IP4.test", "pass"},
		{"fail.test", "fail"},
		{"softfail.test", "softfail"},
		{"neutral.test", "neutral"},
		{"norecord.test", "none"},
		{"nxdomain.test", "none"},
		{"syntax.test", "permerror"},
		{"two.test", "permerror"},
		{"lookups10.test", "pass"},
		{"lookups11.test", "permerror"},
		{"void2.test", "pass"},
		{"void3.test", "permerror"},
		{"servfail.test", "temperror"},
		{"slow.test", "temperror"}, // the check's timeout runs out
		{"[192.0.2.1]", "none"},    // an address literal: no domain to check
	} {
		t.Run(tc.domain, func(t *testing.T) {
			c := srv.DialHelo(client, "helo-pass.test")
			c.Cmd("MAIL FROM:<user@"+tc.domain+">", "250 ")
			got := rec.results()
			want := fmt.Sprintf("x;\r\n\tspf=%s smtp.mailfrom=%s", tc.want, pvalue("user@"+tc.domain))
			if len(got) != 1 || format(got) != want {
				t.Fatalf("recorded %q, want %q", format(got), want)
			}
		})
	}
	if n := ds.count("l11.test"); n != 0 {
		t.Errorf("the eleventh term was looked up %d times", n)
	}
	if n := ds.count("v3.test"); n == 0 {
		t.Errorf("v3.test never asked: the permerror did not come from the third void lookup")
	}
}

// TestNullSender: the null sender's identity is postmaster@<HELO name>;
// a HELO address literal gives none.
func TestNullSender(t *testing.T) {
	ds := startDNS(t, testZone())
	srv, rec := serve(t, ds, &SPF{RejectFail: true})
	for _, tc := range []struct{ helo, want, reply string }{
		{"helo-pass.test", "pass", "250 "},
		{"helo-fail.test", "fail", "550 5.7.23 SPF: helo-fail.test does not designate 192.0.2.10 as permitted sender"},
		{"[192.0.2.10]", "none", "250 "},
		{"localhost", "none", "250 "}, // not a multi-label name
	} {
		c := srv.DialHelo(client, tc.helo)
		c.Cmd("MAIL FROM:<>", tc.reply)
		want := fmt.Sprintf("x;\r\n\tspf=%s smtp.mailfrom=%s smtp.helo=%s", tc.want, pvalue("postmaster@"+tc.helo), pvalue(tc.helo))
		if got := format(rec.results()); got != want && tc.reply == "250 " {
			t.Errorf("HELO %s: recorded %q, want %q", tc.helo, got, want)
		}
	}
}

// TestReplies: by default nothing is refused; reject_fail and
// defer_temperror refuse fail and defer temperror, and only those.
func TestReplies(t *testing.T) {
	ds := startDNS(t, testZone())
	record, _ := serve(t, ds, &SPF{})
	strict, _ := serve(t, ds, &SPF{RejectFail: true, DeferTemperror: true})
	for _, tc := range []struct{ domain, record, strict string }{
		{"fail.test", "250 ", "550 5.7.23 SPF: fail.test does not designate 192.0.2.10 as permitted sender"},
		{"servfail.test", "250 ", "451 4.4.3 SPF: temporary DNS error checking servfail.test; try again later"},
		{"softfail.test", "250 ", "250 "},
		{"neutral.test", "250 ", "250 "},
		{"norecord.test", "250 ", "250 "},
		{"two.test", "250 ", "250 "},
		{"pass-ip4.test", "250 ", "250 "},
	} {
		record.DialHelo(client, "helo-pass.test").Cmd("MAIL FROM:<a@"+tc.domain+">", tc.record)
		c := strict.DialHelo(client, "helo-pass.test")
		c.Cmd("MAIL FROM:<a@"+tc.domain+">", tc.strict)
		if tc.strict != "250 " { // refused: no transaction; the next one is checked anew
			c.Cmd("MAIL FROM:<a@pass-ip4.test>", "250 ")
		}
	}
}

// TestHelo: with helo, the HELO identity is recorded as a second result,
// checked once per session; with reject_fail a failing HELO is refused
// before MAIL FROM is looked up.
func TestHelo(t *testing.T) {
	ds := startDNS(t, testZone())
	srv, rec := serve(t, ds, &SPF{Helo: true})
	c := srv.DialHelo(client, "helo-fail.test")
	for i := 0; i < 2; i++ {
		c.Cmd("MAIL FROM:<a@pass-ip4.test>", "250 ")
		want := "x;\r\n\tspf=pass smtp.mailfrom=a@pass-ip4.test;\r\n\tspf=fail smtp.helo=helo-fail.test"
		if got := format(rec.results()); got != want {
			t.Fatalf("recorded %q, want %q", got, want)
		}
		c.Cmd("RSET", "250 ")
	}
	if n := ds.count("helo-fail.test"); n != 1 {
		t.Errorf("HELO identity looked up %d times, want once for the session", n)
	}
	// The null sender: one check, the HELO identity's.
	c.Cmd("MAIL FROM:<>", "250 ")
	if got, want := format(rec.results()), "x;\r\n\tspf=fail smtp.mailfrom=postmaster@helo-fail.test smtp.helo=helo-fail.test"; got != want {
		t.Errorf("null sender: recorded %q, want %q", got, want)
	}

	strict, _ := serve(t, ds, &SPF{Helo: true, RejectFail: true})
	before := ds.count("fail.test")
	strict.DialHelo(client, "helo-fail.test").Cmd("MAIL FROM:<a@fail.test>",
		"550 5.7.23 SPF: helo-fail.test does not designate 192.0.2.10 as permitted sender")
	if n := ds.count("fail.test"); n != before {
		t.Errorf("MAIL FROM domain looked up after the HELO identity failed")
	}
	strict.DialHelo(client, "helo-pass.test").Cmd("MAIL FROM:<a@fail.test>", "550 5.7.23 SPF: fail.test ")
}

// TestAuthenticatedSkipped: an authenticated session is not checked and
// nothing is recorded, even with reject_fail.
func TestAuthenticatedSkipped(t *testing.T) {
	ds := startDNS(t, testZone())
	srv, rec := serve(t, ds, &SPF{RejectFail: true, Helo: true}, smtptest.LoginAs{})
	c := srv.DialHelo(client, "alice.auth")
	c.Cmd("MAIL FROM:<a@fail.test>", "250 ")
	if got := rec.results(); len(got) != 0 {
		t.Errorf("recorded %q for an authenticated session", format(got))
	}
	if n := ds.count("fail.test"); n != 0 {
		t.Errorf("looked up %d times for an authenticated session", n)
	}
}

// TestDelivered: the delivered message carries the result in its
// Authentication-Results field, and the message's log line the "spf"
// field.
func TestDelivered(t *testing.T) {
	ds := startDNS(t, testZone())
	core, logs := observer.New(zap.InfoLevel)
	h := smtptest.Provisioned(t, &SPF{Helo: true})
	k := &keep{}
	srv := smtptest.ServeConfig(t, session.Config{Resolver: ds.resolver(), Logger: zap.New(core)}, h, k)
	c := srv.DialHelo(client, "helo-pass.test")
	c.Cmd("MAIL FROM:<a@softfail.test>", "250 ")
	c.Cmd("RCPT TO:<b@example.test>", "250 ")
	c.Cmd("DATA", "354 ")
	c.Send("Authentication-Results: mx.example.test; spf=pass smtp.mailfrom=a@softfail.test\r\nSubject: x\r\n\r\nbody\r\n.\r\n")
	c.Expect("250 ")
	want := "Authentication-Results: mx.example.test;\r\n\tspf=softfail smtp.mailfrom=a@softfail.test;\r\n\tspf=pass smtp.helo=helo-pass.test\r\n"
	got := k.message()
	if !strings.HasPrefix(got, want) {
		t.Fatalf("delivered message starts\n%q\nwant\n%q", got[:min(len(got), len(want)+40)], want)
	}
	if strings.Count(got, "Authentication-Results:") != 1 {
		t.Errorf("the forged field is kept:\n%s", got)
	}
	found := false
	for _, e := range logs.All() {
		m := e.ContextMap()
		if m["spf"] == "softfail" && m["spf_helo"] == "pass" {
			found = true
		}
	}
	if !found {
		t.Errorf("no log line with spf=softfail and spf_helo=pass in %v", logs.All())
	}
}

func TestCaddyfile(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want SPF
		err  string
	}{
		{in: "spf", want: SPF{}},
		{in: "spf {\n helo\n reject_fail\n defer_temperror\n timeout 5s\n}",
			want: SPF{Helo: true, RejectFail: true, DeferTemperror: true, Timeout: caddy.Duration(5 * time.Second)}},
		{in: "spf {\n reject_fail\n reject_fail\n}", err: "given twice"},
		{in: "spf {\n helo yes\n}", err: "wrong argument count"},
		{in: "spf {\n timeout -1s\n}", err: "positive duration"},
		{in: "spf {\n reject_softfail\n}", err: "unknown option"},
		{in: "spf fail.test", err: "wrong argument count"},
	} {
		var h SPF
		err := h.UnmarshalCaddyfile(caddyfile.NewTestDispenser(tc.in))
		switch {
		case tc.err != "" && (err == nil || !strings.Contains(err.Error(), tc.err)):
			t.Errorf("%q: error %v, want %q", tc.in, err, tc.err)
		case tc.err == "" && err != nil:
			t.Errorf("%q: %v", tc.in, err)
		case tc.err == "" && h != tc.want:
			t.Errorf("%q: got %+v, want %+v", tc.in, h, tc.want)
		}
	}
}

func TestProvision(t *testing.T) {
	h := smtptest.Provisioned(t, &SPF{})
	if time.Duration(h.Timeout) != DefaultTimeout {
		t.Errorf("timeout %s, want %s", time.Duration(h.Timeout), DefaultTimeout)
	}
	if err := smtptest.Provision(&SPF{Timeout: -1}); err == nil || !strings.Contains(err.Error(), "timeout") {
		t.Errorf("negative timeout: %v", err)
	}
}
