package session

import (
	"context"
	"slices"
	"strings"
	"testing"
)

// extFunc is a sub-handler that adds EHLO keywords.
type extFunc func(s *Session) []string

func (f extFunc) Extensions(s *Session) []string { return f(s) }

// dsnConfig returns a config whose sub-handlers advertise DSN and record
// the parameters of the last transaction at end of message.
func dsnConfig(got *Transaction) Config {
	return Config{MaxErrors: 100, Handlers: []SubHandler{
		{Name: "ext", Handler: extFunc(func(*Session) []string { return []string{"DSN"} })},
		{Name: "eom", Handler: eomFunc(func(_ context.Context, s *Session) (*Reply, error) {
			t := s.Transaction()
			*got = Transaction{MailParams: t.MailParams, Recipients: slices.Clone(t.Recipients)}
			return nil, nil
		})},
	}}
}

func TestDSNNotAdvertised(t *testing.T) {
	ts := start(t, Config{Handlers: []SubHandler{
		{Name: "ext", Handler: extFunc(func(*Session) []string { return []string{"XFOO"} })},
	}})
	r := ts.cmd("EHLO client.example", 250, "")
	if strings.Contains(r.raw, "DSN") {
		t.Fatalf("DSN advertised without a sub-handler asking: %q", r.raw)
	}
	for _, line := range []string{
		"MAIL FROM:<a@example.com> RET=FULL",
		"MAIL FROM:<a@example.com> ENVID=x",
		"MAIL FROM:<a@example.com> RET=BOGUS", // unknown, not malformed, without DSN
	} {
		ts.cmd(line, 555, "5.5.4")
	}
	ts.cmd("MAIL FROM:<a@example.com>", 250, "2.1.0")
	ts.cmd("RCPT TO:<b@example.com> NOTIFY=NEVER", 555, "5.5.4")
	ts.cmd("RCPT TO:<b@example.com> ORCPT=rfc822;b@example.com", 555, "5.5.4")
}

func TestDSNAccepted(t *testing.T) {
	var got Transaction
	ts := start(t, dsnConfig(&got))
	r := ts.cmd("EHLO client.example", 250, "")
	if !strings.Contains(r.raw, "250-DSN\r\n") && !strings.Contains(r.raw, "250 DSN\r\n") {
		t.Fatalf("EHLO does not advertise DSN: %q", r.raw)
	}
	ts.cmd("MAIL FROM:<a@example.com> RET=hdrs ENVID=QQ314159+2B1", 250, "2.1.0")
	ts.cmd("RCPT TO:<b@example.com> NOTIFY=SUCCESS,failure,DELAY ORCPT=rfc822;b+40example.com", 250, "2.1.5")
	ts.cmd("RCPT TO:<c@example.com> notify=never", 250, "2.1.5")
	ts.cmd("RCPT TO:<d@example.com>", 250, "2.1.5")
	ts.cmd("DATA", 354, "")
	ts.sendRaw(stuff("Subject: x\r\n\r\nbody\r\n"))
	ts.expect(250, "2.0.0")

	want := Params{{Key: "RET", Value: "hdrs", HasValue: true}, {Key: "ENVID", Value: "QQ314159+2B1", HasValue: true}}
	if !slices.Equal(got.MailParams, want) {
		t.Errorf("MailParams = %+v, want %+v", got.MailParams, want)
	}
	if len(got.Recipients) != 3 {
		t.Fatalf("%d recipients, want 3", len(got.Recipients))
	}
	if v, _ := got.Recipients[0].Params.Get("NOTIFY"); v != "SUCCESS,failure,DELAY" {
		t.Errorf("NOTIFY = %q", v)
	}
	if v, _ := got.Recipients[0].Params.Get("ORCPT"); v != "rfc822;b+40example.com" {
		t.Errorf("ORCPT = %q", v)
	}
	if v, _ := got.Recipients[1].Params.Get("NOTIFY"); v != "never" {
		t.Errorf("NOTIFY = %q", v)
	}
	if len(got.Recipients[2].Params) != 0 {
		t.Errorf("params of a plain RCPT: %+v", got.Recipients[2].Params)
	}
	envid, _ := got.MailParams.Get("ENVID")
	if d, err := DecodeXtext(envid); err != nil || d != "QQ314159+1" {
		t.Errorf("DecodeXtext(%q) = %q, %v", envid, d, err)
	}
}

func TestDSNSyntax(t *testing.T) {
	var got Transaction
	ts := start(t, dsnConfig(&got))
	ts.ehlo()
	for _, c := range []struct {
		line string
		code int
		enh  string
	}{
		{"MAIL FROM:<a@example.com> RET=BOGUS", 501, "5.5.4"},
		{"MAIL FROM:<a@example.com> RET", 501, "5.5.4"},
		{"MAIL FROM:<a@example.com> RET=", 501, "5.5.4"},
		{"MAIL FROM:<a@example.com> RET=FULL RET=HDRS", 501, "5.5.4"},
		{"MAIL FROM:<a@example.com> ENVID=", 501, "5.5.4"},
		{"MAIL FROM:<a@example.com> ENVID", 501, "5.5.4"},
		{"MAIL FROM:<a@example.com> ENVID=a+4", 501, "5.5.4"},
		{"MAIL FROM:<a@example.com> ENVID=a+GG", 501, "5.5.4"},
		{"MAIL FROM:<a@example.com> ENVID=" + strings.Repeat("x", 101), 501, "5.5.4"},
		{"MAIL FROM:<a@example.com> ENVID=a ENVID=b", 501, "5.5.4"},
		{"MAIL FROM:<a@example.com> ENVID=\xc3\xa9", 501, "5.5.4"},
		{"MAIL FROM:<a@example.com> NOTIFY=NEVER", 555, "5.5.4"}, // a RCPT parameter
		{"MAIL FROM:<a@example.com> ORCPT=rfc822;a", 555, "5.5.4"},
		{"MAIL FROM:<a@example.com> ENVID=" + strings.Repeat("x", 100) + " RET=FULL", 250, "2.1.0"},
		{"RCPT TO:<b@example.com> NOTIFY=NEVER,SUCCESS", 501, "5.5.4"},
		{"RCPT TO:<b@example.com> NOTIFY=SUCCESS,SUCCESS", 501, "5.5.4"},
		{"RCPT TO:<b@example.com> NOTIFY=", 501, "5.5.4"},
		{"RCPT TO:<b@example.com> NOTIFY", 501, "5.5.4"},
		{"RCPT TO:<b@example.com> NOTIFY=SUCCESS,", 501, "5.5.4"},
		{"RCPT TO:<b@example.com> NOTIFY=ALWAYS", 501, "5.5.4"},
		{"RCPT TO:<b@example.com> NOTIFY=NEVER NOTIFY=NEVER", 501, "5.5.4"},
		{"RCPT TO:<b@example.com> ORCPT=rfc822", 501, "5.5.4"},
		{"RCPT TO:<b@example.com> ORCPT=;b@example.com", 501, "5.5.4"},
		{"RCPT TO:<b@example.com> ORCPT=rfc822;", 501, "5.5.4"},
		{"RCPT TO:<b@example.com> ORCPT=rf(c;b@example.com", 501, "5.5.4"},
		{"RCPT TO:<b@example.com> ORCPT=rfc822;b+4", 501, "5.5.4"},
		{"RCPT TO:<b@example.com> ORCPT=rfc822;" + strings.Repeat("x", 500), 501, "5.5.4"},
		{"RCPT TO:<b@example.com> ORCPT=utf-8;\xc3\xa9@example.com", 501, "5.5.4"}, // UTF-8 needs SMTPUTF8
		{"RCPT TO:<b@example.com> RET=FULL", 555, "5.5.4"},                         // a MAIL parameter
		{"RCPT TO:<b@example.com> NOTIFY=DELAY FOO=1", 555, "5.5.4"},
		{"RCPT TO:<b@example.com> NOTIFY=DELAY ORCPT=rfc822;b@example.com", 250, "2.1.5"},
		{"RSET", 250, "2.0.0"},
		{"MAIL FROM:<a@example.com> SMTPUTF8", 250, "2.1.0"},
		{"RCPT TO:<b@example.com> ORCPT=utf-8;\xc3\xa9@example.com", 250, "2.1.5"},
	} {
		ts.cmd(c.line, c.code, c.enh)
	}
}

// TestDSNPerSession checks that DSN is accepted only in the sessions whose
// sub-handlers advertise it.
func TestDSNPerSession(t *testing.T) {
	srv, err := newServer(Config{Handlers: []SubHandler{
		{Name: "ext", Handler: extFunc(func(s *Session) []string {
			if s.Helo() == "dsn.example" {
				return []string{"DSN"}
			}
			return nil
		})},
	}})
	if err != nil {
		t.Fatal(err)
	}
	a := startOn(t, srv, ConnInfo{})
	a.cmd("EHLO dsn.example", 250, "")
	a.cmd("MAIL FROM:<a@example.com> RET=FULL", 250, "2.1.0")
	b := startOn(t, srv, ConnInfo{})
	b.cmd("EHLO other.example", 250, "")
	b.cmd("MAIL FROM:<a@example.com> RET=FULL", 555, "5.5.4")
}

func TestDecodeXtext(t *testing.T) {
	for _, c := range []struct {
		in, out string
		ok      bool
	}{
		{"", "", true},
		{"plain", "plain", true},
		{"a+2Bb", "a+b", true},
		{"a+2bb", "a+b", true},
		{"+3D+20+2B", "= +", true},
		{"a+2", "", false},
		{"a+", "", false},
		{"a+ZZ", "", false},
		{"a=b", "", false},
	} {
		got, err := DecodeXtext(c.in)
		if (err == nil) != c.ok || got != c.out {
			t.Errorf("DecodeXtext(%q) = %q, %v; want %q, ok %v", c.in, got, err, c.out, c.ok)
		}
	}
}
