package dmarc

import (
	"fmt"

	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"

	"github.com/caddy-esmtp/caddy-esmtp/authresults"
	"github.com/caddy-esmtp/caddy-esmtp/internal/smtptest"
)

// arDMARC returns the dmarc clause of the Authentication-Results field on
// top of a delivered message (under the quarantine mark, if any), "" when
// there is none.
func arDMARC(t *testing.T, msg string) string {
	t.Helper()
	rest := msg
	for strings.HasPrefix(rest, "X-Esmtp-Quarantine:") {
		_, rest, _ = strings.Cut(rest, "\r\n")
	}
	if !strings.HasPrefix(rest, "Authentication-Results: "+smtptest.Hostname+";") {
		t.Fatalf("no Authentication-Results on top of:\n%s", msg)
	}
	for _, line := range strings.Split(rest, "\r\n") {
		if strings.HasPrefix(line, "\tdmarc=") {
			return strings.TrimSuffix(strings.TrimPrefix(line, "\t"), ";")
		}
		if line == "" {
			break
		}
	}
	return ""
}

// fixed is an intn that always draws n.
func fixed(n int) func(int) int { return func(int) int { return n } }

func off() *bool { f := false; return &f }

// TestPolicies sends one message per case through [judge recording the
// SPF and DKIM results, dmarc, delivery] with a real DNS server serving
// the _dmarc records.
func TestPolicies(t *testing.T) {
	zones := zone{
		txt: map[string][]string{
			"_dmarc.reject.test":      {"v=DMARC1; p=reject; rua=mailto:dmarc@reject.test"},
			"_dmarc.strict.test":      {"v=DMARC1; p=reject; adkim=s; aspf=s"},
			"_dmarc.subnone.test":     {"v=DMARC1; p=reject; sp=none"},
			"_dmarc.own.subnone.test": {"v=DMARC1; p=quarantine"},
			"_dmarc.none.test":        {"v=DMARC1; p=none"},
			"_dmarc.quarantine.test":  {"some other TXT record", "v=DMARC1; p=quarantine"},
			"_dmarc.pct0.test":        {"v=DMARC1; p=reject; pct=0"},
			"_dmarc.pct50.test":       {"v=DMARC1; p=reject; pct=50"},
			"_dmarc.pct100.test":      {"v=DMARC1; p=reject; pct=100"},
			"_dmarc.malformed.test":   {"v=DMARC1; p=bogus"},
			"_dmarc.twice.test":       {"v=DMARC1; p=reject", "v=DMARC1; p=none"},
			"_dmarc.long.test":        {"v=DMARC1; p=reject; rua=mailto:" + strings.Repeat("a", 200) + "@long.test"},
			"_dmarc.example.co.uk":    {"v=DMARC1; p=reject"},
			"_dmarc.upper.test":       {"v=DMARC1; P=Reject; ASPF=S; rua=mailto:Reports@Upper.test"},
			"_dmarc.v-later.test":     {"p=reject; v=DMARC1"},
		},
		servfail: map[string]bool{"_dmarc.broken.test": true},
	}
	cases := []struct {
		name        string
		h           *DMARC
		auth        []authresults.Result
		from        string // From: value; the message is fromMsg(from) unless msg is set
		msg         string
		reply       string // prefix of the end-of-data reply
		ar          string // the dmarc clause of Authentication-Results ("" when not delivered)
		disposition string
		quarantined bool
	}{
		{name: "spf only, aligned", auth: []authresults.Result{spf("pass", "bounce@reject.test"), dkim("fail", "reject.test")},
			from: "Alice <alice@reject.test>", reply: "250 ", ar: "dmarc=pass header.from=reject.test policy.dmarc=reject", disposition: "none"},
		{name: "dkim only", auth: []authresults.Result{spf("fail", "bounce@elsewhere.test"), dkim("pass", "other.test"), dkim("pass", "REJECT.test")},
			from: "alice@reject.test", reply: "250 ", ar: "dmarc=pass header.from=reject.test policy.dmarc=reject", disposition: "none"},
		{name: "spf pass not aligned, dkim pass not aligned", auth: []authresults.Result{spf("pass", "bounce@elsewhere.test"), dkim("pass", "other.test")},
			from: "alice@reject.test", reply: "550 5.7.1 Message rejected by the DMARC policy of reject.test", disposition: "reject"},
		{name: "spf softfail aligned does not count", auth: []authresults.Result{spf("softfail", "bounce@reject.test")},
			from: "alice@reject.test", reply: "550 5.7.1 ", disposition: "reject"},
		{name: "null sender: helo aligned", auth: []authresults.Result{{Method: "spf", Value: "pass", Props: []authresults.Prop{{Type: "smtp", Name: "helo", Value: "mx.reject.test"}}}},
			from: "mailer-daemon@reject.test", reply: "250 ", ar: "dmarc=pass header.from=reject.test policy.dmarc=reject", disposition: "none"},
		{name: "relaxed: subdomain From, org record, dkim d= the org domain", auth: []authresults.Result{dkim("pass", "reject.test")},
			from: "alice@mail.reject.test", reply: "250 ", ar: "dmarc=pass header.from=mail.reject.test policy.dmarc=reject", disposition: "none"},
		{name: "relaxed: spf of a sibling subdomain", auth: []authresults.Result{spf("pass", "b@bounces.reject.test")},
			from: "alice@mail.reject.test", reply: "250 ", ar: "dmarc=pass header.from=mail.reject.test policy.dmarc=reject", disposition: "none"},
		{name: "relaxed uses the public suffix list", auth: []authresults.Result{dkim("pass", "mail.example.co.uk")},
			from: "alice@example.co.uk", reply: "250 ", ar: "dmarc=pass header.from=example.co.uk policy.dmarc=reject", disposition: "none"},
		{name: "relaxed: another domain under the same public suffix is not aligned", auth: []authresults.Result{dkim("pass", "other.co.uk")},
			from: "alice@example.co.uk", reply: "550 5.7.1 ", disposition: "reject"},
		{name: "strict: subdomain not aligned", auth: []authresults.Result{spf("pass", "b@strict.test"), dkim("pass", "strict.test")},
			from: "alice@mail.strict.test", reply: "550 5.7.1 Message rejected by the DMARC policy of mail.strict.test", disposition: "reject"},
		{name: "strict: equal domain aligned", auth: []authresults.Result{dkim("pass", "strict.test")},
			from: "alice@strict.test", reply: "250 ", ar: "dmarc=pass header.from=strict.test policy.dmarc=reject", disposition: "none"},
		{name: "sp=none for a subdomain", from: "alice@mail.subnone.test",
			reply: "250 ", ar: "dmarc=fail header.from=mail.subnone.test policy.dmarc=none", disposition: "none"},
		{name: "p=reject for the organizational domain itself", from: "alice@subnone.test",
			reply: "550 5.7.1 ", disposition: "reject"},
		{name: "the subdomain's own record wins over sp=", from: "alice@own.subnone.test",
			reply: "250 ", ar: "dmarc=fail header.from=own.subnone.test policy.dmarc=quarantine", disposition: "quarantine", quarantined: true},
		{name: "p=none", auth: []authresults.Result{spf("pass", "b@elsewhere.test")}, from: "alice@none.test",
			reply: "250 ", ar: "dmarc=fail header.from=none.test policy.dmarc=none", disposition: "none"},
		{name: "p=quarantine", from: "alice@quarantine.test",
			reply: "250 ", ar: "dmarc=fail header.from=quarantine.test policy.dmarc=quarantine", disposition: "quarantine", quarantined: true},
		{name: "p=quarantine passing is not marked", auth: []authresults.Result{dkim("pass", "quarantine.test")}, from: "alice@quarantine.test",
			reply: "250 ", ar: "dmarc=pass header.from=quarantine.test policy.dmarc=quarantine", disposition: "none"},
		{name: "p=reject", from: "alice@reject.test", reply: "550 5.7.1 Message rejected by the DMARC policy of reject.test", disposition: "reject"},
		{name: "tags and values in upper case", auth: []authresults.Result{spf("pass", "b@mail.upper.test")}, from: "alice@upper.test",
			reply: "550 5.7.1 Message rejected by the DMARC policy of upper.test", disposition: "reject"},
		{name: "v= not first: no record", from: "alice@v-later.test", reply: "250 ", ar: "dmarc=none header.from=v-later.test", disposition: "none"},
		{name: "a long record in several strings", from: "alice@long.test", reply: "550 5.7.1 ", disposition: "reject"},
		{name: "pct=0: quarantine instead of reject", h: &DMARC{intn: fixed(0)}, from: "alice@pct0.test",
			reply: "250 ", ar: `dmarc=fail reason="pct=0 sampled out, published policy reject" header.from=pct0.test policy.dmarc=quarantine`,
			disposition: "quarantine", quarantined: true},
		{name: "pct=100: reject", h: &DMARC{intn: fixed(99)}, from: "alice@pct100.test", reply: "550 5.7.1 ", disposition: "reject"},
		{name: "pct=50, drawn 49: in the sample", h: &DMARC{intn: fixed(49)}, from: "alice@pct50.test", reply: "550 5.7.1 ", disposition: "reject"},
		{name: "pct=50, drawn 50: sampled out", h: &DMARC{intn: fixed(50)}, from: "alice@pct50.test",
			reply: "250 ", ar: `dmarc=fail reason="pct=50 sampled out, published policy reject" header.from=pct50.test policy.dmarc=quarantine`,
			disposition: "quarantine", quarantined: true},
		{name: "no record", from: "alice@norecord.test", reply: "250 ", ar: "dmarc=none header.from=norecord.test", disposition: "none"},
		{name: "two DMARC records: none", from: "alice@twice.test", reply: "250 ", ar: "dmarc=none header.from=twice.test", disposition: "none"},
		{name: "temperror", auth: []authresults.Result{dkim("pass", "broken.test")}, from: "alice@broken.test",
			reply: "451 4.7.0 DMARC record of broken.test unavailable"},
		{name: "temperror, enforce off", h: &DMARC{Enforce: off()}, from: "alice@broken.test",
			reply: "250 ", ar: `dmarc=temperror reason="DNS error on the DMARC record" header.from=broken.test`},
		{name: "malformed record: permerror, accepted", from: "alice@malformed.test",
			reply: "250 ", ar: `dmarc=permerror reason="malformed DMARC record" header.from=malformed.test`, disposition: "none"},
		{name: "p=reject, enforce off", h: &DMARC{Enforce: off()}, from: "alice@reject.test",
			reply: "250 ", ar: `dmarc=fail reason="not enforced" header.from=reject.test policy.dmarc=reject`, disposition: "reject"},
		{name: "p=quarantine, enforce off: not marked", h: &DMARC{Enforce: off()}, from: "alice@quarantine.test",
			reply: "250 ", ar: `dmarc=fail reason="not enforced" header.from=quarantine.test policy.dmarc=quarantine`, disposition: "quarantine"},
		{name: "no From", msg: "To: rcpt@example.test\r\nSubject: x\r\n\r\nHello.\r\n",
			reply: "550 5.7.1 Message must have exactly one From address", disposition: "reject"},
		{name: "two From fields", msg: "From: a@none.test\r\nFrom: b@none.test\r\n\r\nHello.\r\n",
			reply: "550 5.7.1 Message must have exactly one From address", disposition: "reject"},
		{name: "two From domains in one field", from: "a@none.test, b@reject.test",
			reply: "550 5.7.1 Message must have exactly one From address", disposition: "reject"},
		{name: "two From addresses of one domain", from: "a@reject.test, B@Reject.Test",
			reply: "550 5.7.1 Message rejected by the DMARC policy of reject.test", disposition: "reject"},
		{name: "empty group From", from: "undisclosed-recipients:;",
			reply: "550 5.7.1 Message must have exactly one From address", disposition: "reject"},
		{name: "no From, enforce off", h: &DMARC{Enforce: off()}, msg: "Subject: x\r\n\r\nHello.\r\n",
			reply: "250 ", ar: `dmarc=permerror reason="no From field"`, disposition: "reject"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			h := tc.h
			if h == nil {
				h = &DMARC{}
			}
			msg := tc.msg
			if msg == "" {
				msg = fromMsg(tc.from)
			}
			got := send(t, zones, h, tc.auth, msg)
			if !strings.HasPrefix(got.reply, tc.reply) {
				t.Fatalf("end of data: %q, want %q...", got.reply, tc.reply)
			}
			if !strings.HasPrefix(tc.reply, "250 ") {
				if got.delivered != "" {
					t.Fatalf("refused but delivered:\n%s", got.delivered)
				}
			} else {
				if got.delivered == "" {
					t.Fatal("accepted but not delivered")
				}
				if ar := arDMARC(t, got.delivered); ar != tc.ar {
					t.Errorf("Authentication-Results dmarc clause\n%q\nwant\n%q", ar, tc.ar)
				}
				marked := strings.HasPrefix(got.delivered, "X-Esmtp-Quarantine: dmarc\r\n")
				if marked != tc.quarantined {
					t.Errorf("X-Esmtp-Quarantine: dmarc on the message: %v, want %v:\n%s", marked, tc.quarantined, got.delivered)
				}
			}
			if got.disposition != tc.disposition && strings.HasPrefix(tc.reply, "250 ") {
				t.Errorf("Disposition: %q, want %q", got.disposition, tc.disposition)
			}
			wantResult := strings.TrimPrefix(strings.Fields(tc.ar + " dmarc=")[0], "dmarc=")
			if tc.ar == "" {
				wantResult = map[string]string{"550": "fail", "451": "temperror"}[tc.reply[:3]]
				if strings.Contains(tc.reply, "From address") {
					wantResult = "permerror"
				}
			}
			if (wantResult == "temperror" || strings.Contains(tc.ar, "malformed")) != (got.log["dmarc_error"] != "") {
				t.Errorf("log field dmarc_error=%q", got.log["dmarc_error"])
			}
			if got.log["dmarc"] != wantResult {
				t.Errorf("log field dmarc=%q, want %q (log %v)", got.log["dmarc"], wantResult, got.log)
			}
			if d := got.log["dmarc_disposition"]; (tc.disposition == "quarantine" || tc.disposition == "reject") != (d != "") || d != "" && d != tc.disposition {
				t.Errorf("log field dmarc_disposition=%q, want %q", d, tc.disposition)
			}
		})
	}
}

// TestOneAuthenticationResults: the DMARC result joins the SPF and DKIM
// results in the one Authentication-Results field on top of the
// delivered message, the quarantine mark above it.
func TestOneAuthenticationResults(t *testing.T) {
	z := zone{txt: map[string][]string{"_dmarc.example.test": {"v=DMARC1; p=quarantine"}}}
	got := send(t, z, &DMARC{}, []authresults.Result{spf("pass", "b@elsewhere.test"), dkim("fail", "example.test")},
		"Authentication-Results: "+smtptest.Hostname+"; dmarc=pass header.from=example.test\r\n"+fromMsg("alice@example.test"))
	if !strings.HasPrefix(got.reply, "250 ") {
		t.Fatalf("end of data: %q", got.reply)
	}
	want := "X-Esmtp-Quarantine: dmarc\r\n" +
		"Authentication-Results: " + smtptest.Hostname + ";\r\n" +
		"\tspf=pass smtp.mailfrom=b@elsewhere.test;\r\n" +
		"\tdkim=fail header.d=example.test header.s=sel header.a=rsa-sha256;\r\n" +
		"\tdmarc=fail header.from=example.test policy.dmarc=quarantine\r\n"
	if !strings.HasPrefix(got.delivered, want) {
		t.Fatalf("delivered message\n%s\nwant it to start\n%s", got.delivered, want)
	}
	if rest := string(smtptest.SplitReceived(t, []byte(got.delivered[len(want):]))); !strings.HasPrefix(rest, "From: alice@example.test\r\n") {
		t.Fatalf("the forged Authentication-Results was kept:\n%s", got.delivered)
	}
	if got.log["dmarc"] != "fail" || got.log["dmarc_domain"] != "example.test" || got.log["dmarc_disposition"] != "quarantine" {
		t.Fatalf("log fields: %v", got.log)
	}
}

// TestFromDomains: the RFC5322.From domains of From: values.
func TestFromDomains(t *testing.T) {
	cases := []struct {
		in   string
		want string // domains joined by ","; "" for an error
	}{
		{"alice@example.test", "example.test"},
		{"Alice <alice@Example.TEST.>", "example.test"},
		{`"Doe, Alice" <alice@example.test>`, "example.test"},
		{"=?x-unknown?q?Alice?= <alice@example.test>", "example.test"},
		{"a@one.test, b@two.test", "one.test,two.test"},
		{"friends: a@one.test, b@two.test;", "one.test,two.test"},
		{"alice@bücher.example", "xn--bcher-kva.example"},
		{"Alice Smith (the boss <alice@example.test>", "example.test"}, // lenient: net/mail refuses it
		{"alice@[192.0.2.1]", ""},
		{"alice@exa mple.test", ""},
		{"alice", ""},
		{"undisclosed-recipients:;", ""},
		{"", ""},
		{"a@b@c.test", ""},
		{"alice@" + strings.Repeat("a", 64) + ".test", ""},
	}
	for _, tc := range cases {
		ds, err := fromDomains(tc.in)
		got := strings.Join(ds, ",")
		if err != nil {
			got = ""
		}
		if got != tc.want {
			t.Errorf("fromDomains(%q) = %q, %v; want %q", tc.in, ds, err, tc.want)
		}
	}
}

// TestOrgDomain: organizational domains from the public suffix list.
func TestOrgDomain(t *testing.T) {
	for in, want := range map[string]string{
		"mail.example.com":    "example.com",
		"example.com":         "example.com",
		"a.b.example.co.uk":   "example.co.uk",
		"co.uk":               "co.uk",
		"x.y.example.test":    "example.test",
		"user.github.io":      "user.github.io",
		"deep.user.github.io": "user.github.io",
	} {
		if got := orgDomain(in); got != want {
			t.Errorf("orgDomain(%q) = %q, want %q", in, got, want)
		}
	}
}

// TestCaddyfile: the options, and errors naming them.
func TestCaddyfile(t *testing.T) {
	for in, want := range map[string]string{
		"dmarc":                                 "<nil>",
		"dmarc {\n enforce off\n}":              "false",
		"dmarc {\n enforce on\n}":               "true",
		"dmarc extra":                           "error",
		"dmarc {\n enforce maybe\n}":            "error",
		"dmarc {\n enforce\n}":                  "error",
		"dmarc {\n enforce on\n enforce off\n}": "error",
		"dmarc {\n reject off\n}":               "error",
	} {
		h := &DMARC{}
		err := h.UnmarshalCaddyfile(caddyfile.NewTestDispenser(in))
		got := "<nil>"
		switch {
		case err != nil:
			got = "error"
		case h.Enforce != nil:
			got = fmt.Sprint(*h.Enforce)
		}
		if got != want {
			t.Errorf("%q: %s (%v), want %s", in, got, err, want)
		}
	}
}
