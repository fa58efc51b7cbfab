package milter

import (
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	gomilter "github.com/d--j/go-milter"

	"github.com/caddy-esmtp/caddy-esmtp/internal/smtptest"
	"github.com/caddy-esmtp/caddy-esmtp/session"
)

func TestParseAddress(t *testing.T) {
	for in, want := range map[string]string{
		"127.0.0.1:11332":          "tcp 127.0.0.1:11332",
		"tcp:[::1]:8891":           "tcp [::1]:8891",
		"inet:8891@127.0.0.1":      "tcp 127.0.0.1:8891",
		"inet6:8891@[::1]":         "tcp [::1]:8891",
		"inet:8891":                "tcp 127.0.0.1:8891",
		"unix:/run/opendkim.sock":  "unix /run/opendkim.sock",
		"local:/run/clamav/m.sock": "unix /run/clamav/m.sock",
		"/run/m.sock":              "unix /run/m.sock",
	} {
		n, a, err := ParseAddress(in)
		if err != nil || n+" "+a != want {
			t.Errorf("ParseAddress(%q) = %q %q %v, want %q", in, n, a, err, want)
		}
	}
	for _, in := range []string{"", "unix:", "inet:x@h", "localhost", ":25", "h:99999"} {
		if _, _, err := ParseAddress(in); err == nil {
			t.Errorf("ParseAddress(%q): no error", in)
		}
	}
}

func TestCaddyfile(t *testing.T) {
	var m Milter
	in := "milter unix:/run/opendkim/opendkim.sock {\n name opendkim\n timeout 10s\n connect_timeout 5s\n on_error accept\n daemon_name submission\n}"
	if err := m.UnmarshalCaddyfile(caddyfile.NewTestDispenser(in)); err != nil || m.Name != "opendkim" || m.OnError != "accept" ||
		time.Duration(m.Timeout) != 10*time.Second || time.Duration(m.ConnectTimeout) != 5*time.Second || m.DaemonName != "submission" {
		t.Fatalf("%v %+v", err, &m)
	}
	for in, field := range map[string]string{
		"milter":                                    "address",
		"milter nowhere":                            "address",
		"milter 127.0.0.1:1 extra":                  "unexpected argument",
		"milter 127.0.0.1:1 {\n timeout -1s\n}":     "timeout",
		"milter 127.0.0.1:1 {\n timeout\n}":         "timeout",
		"milter 127.0.0.1:1 {\n on_error pass\n}":   "on_error",
		"milter 127.0.0.1:1 {\n bogus 1\n}":         "bogus",
		"milter 127.0.0.1:1 {\n name a\n name b\n}": "name: given twice",
	} {
		var m Milter
		if err := m.UnmarshalCaddyfile(caddyfile.NewTestDispenser(in)); err == nil || !strings.Contains(err.Error(), field) {
			t.Errorf("%q: %v, want an error naming %q", in, err, field)
		}
	}
	for field, m := range map[string]*Milter{
		"address":         {},
		"on_error":        {Address: "127.0.0.1:1", OnError: "pass"},
		"connect_timeout": {Address: "127.0.0.1:1", ConnectTimeout: -1},
		"name":            {Address: "127.0.0.1:1", Name: "a b"},
	} {
		if err := smtptest.Provision(m); err == nil || !strings.Contains(err.Error(), field) {
			t.Errorf("%s: %v", field, err)
		}
	}
}

func TestParseReplyCode(t *testing.T) {
	for in, want := range map[string]string{
		"550 5.7.1 go away":                       "550 5.7.1 go away",
		"550-5.7.1 one\r\n550 5.7.1 two":          "550 5.7.1 one two",
		"451 4.7.1 later\r\n":                     "451 4.7.1 later",
		"554 no enhanced code":                    "554 no enhanced code",
		"550-5.7.1 one\n550-5.7.1 two\n550 three": "550 5.7.1 one two three",
		"421 4.3.2 closing":                       "421 4.3.2 closing",
	} {
		r, err := parseReplyCode(in)
		if err != nil || r.Error() != want {
			t.Errorf("parseReplyCode(%q) = %v, %v; want %q", in, r, err, want)
		}
	}
	for _, in := range []string{"", "250 ok", "350 go on", "600 x", "55", "550-5.7.1 a\r\n450 4.7.1 b", "550 4.7.1 class mismatch",
		"550 5.7.1 a\r\n550 5.7.1 b", "550-a", "abc def", "550 x\x00y"} {
		if r, err := parseReplyCode(in); err == nil {
			t.Errorf("parseReplyCode(%q) = %v, want garbage", in, r)
		}
	}
}

// FuzzAnswers: whatever a milter answers (a reply code text, a modify
// action with any index, name, value and address), our code gives either
// errGarbage or a valid refusal and edits that render a header the
// answer cannot add fields to or end early; never a panic. Bounded: the
// inputs are cut to 4 KiB. Corpus: testdata/fuzz/FuzzAnswers.
func FuzzAnswers(f *testing.F) {
	f.Add("550-5.7.1 one\r\n550 5.7.1 two", uint8(gomilter.ActionAddHeader), uint32(0), "X-Test", "value", "<a@example.test>", "")
	f.Add("451 4.7.1 later", uint8(gomilter.ActionInsertHeader), uint32(1), "X-Ins", " v\n\tfolded", "a@example.test", "SIZE=10")
	f.Add("421 4.3.2 bye", uint8(gomilter.ActionChangeHeader), uint32(0), "Subject", "", "<>", "")
	f.Add("550 x", uint8(gomilter.ActionChangeFrom), uint32(9), "Subject", "evil\r\nBcc: x@example.test\r\n\r\nbody", "<new@example.test>", "BODY=8BITMIME")
	f.Add("5", uint8(gomilter.ActionAddRcpt), uint32(1<<31), "", "", "<postmaster>", "NOTIFY=NEVER")
	f.Add("", uint8(gomilter.ActionDelRcpt), uint32(0), "a:b", "", "b@example.test", "")
	f.Add("", uint8(gomilter.ActionQuarantine), uint32(0), "", "reason\x00\x01", "", "")
	f.Fuzz(func(t *testing.T, reply string, kind uint8, index uint32, name, value, addr, args string) {
		for _, s := range []*string{&reply, &name, &value, &addr, &args} {
			if len(*s) > 4096 {
				*s = (*s)[:4096]
			}
		}
		if r, err := parseReplyCode(reply); err == nil {
			if r.Code < 400 || r.Code > 599 || len(r.Lines) == 0 {
				t.Fatalf("parseReplyCode(%q) = %+v", reply, r)
			}
			for _, l := range r.Lines {
				if strings.ContainsAny(l, "\r\n\x00") {
					t.Fatalf("parseReplyCode(%q): line %q", reply, l)
				}
			}
		}
		act := gomilter.ModifyAction{Type: gomilter.ModifyActionType(kind % 10), HeaderIndex: index, HeaderName: name,
			HeaderValue: value, From: addr, FromArgs: args, Rcpt: addr, RcptArgs: args, Reason: value}
		edits, err := checkEdits([]gomilter.ModifyAction{act}, ^gomilter.OptAction(0))
		if err != nil {
			return
		}
		txn := &session.Transaction{Recipients: []session.Recipient{{Path: session.Path{Mailbox: "b@example.test"}}}}
		applyEdits(txn, edits, "milter test")
		for _, r := range txn.Recipients {
			if strings.ContainsAny(r.Path.Mailbox, "\r\n\x00<>") {
				t.Fatalf("recipient %q", r.Path.Mailbox)
			}
		}
		if strings.ContainsAny(txn.From.Mailbox, "\r\n\x00<>") {
			t.Fatalf("sender %q", txn.From.Mailbox)
		}
	})
}
