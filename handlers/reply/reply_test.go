package reply

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"

	"github.com/caddy-esmtp/caddy-esmtp/internal/smtptest"
)

// step is one exchange: send (nothing when empty), then want the reply
// (exactly when it ends with "$", as a prefix otherwise), or want the
// connection closed when want is "closed".
type step struct{ send, want string }

// run checks the greeting and then the steps.
func run(t *testing.T, srv *smtptest.Server, greeting string, steps []step) {
	t.Helper()
	c := srv.DialTCP()
	g := c.ReadReply().String()
	if !matches(g, greeting) {
		t.Fatalf("greeting %q, want %q", g, greeting)
	}
	for _, s := range steps {
		if s.send != "" {
			c.Send(s.send + "\r\n")
		}
		if s.want == "closed" {
			c.ExpectClosed()
			continue
		}
		if got := c.ReadReply().String(); !matches(got, s.want) {
			t.Fatalf("after %q: got %q, want %q", s.send, got, s.want)
		}
	}
}

func matches(got, want string) bool {
	if exact, ok := strings.CutSuffix(want, "$"); ok {
		return got == exact
	}
	return strings.HasPrefix(got, want)
}

var txn = []step{
	{"EHLO client.example", "250-mx.example.test\n"},
	{"MAIL FROM:<a@client.example>", "250 2.1.0"},
	{"RCPT TO:<b@example.test>", "250 2.1.5"},
}

var msg = []step{{"DATA", "354 "}, {"Subject: hi\r\n\r\nbody\r\n.", "250 2.0.0"}}

func concat(parts ...[]step) []step {
	var out []step
	for _, p := range parts {
		out = append(out, p...)
	}
	return out
}

// TestEvents configures each event in turn and checks the reply the client
// gets, and that other events keep their defaults.
func TestEvents(t *testing.T) {
	for _, tc := range []struct {
		name     string
		r        Reply
		greeting string
		steps    []step
	}{
		{"greeting", Reply{Event: "connect", Code: 220, Lines: []string{"ESMTP ready, example.test only"}},
			"220 mx.example.test ESMTP ready, example.test only$", concat(txn, msg)},
		{"greeting multi-line", Reply{Event: "connect", Code: 220, Lines: []string{"ESMTP", "no spam please"}},
			"220-mx.example.test ESMTP\n220 no spam please$", txn},
		{"greeting without text", Reply{Event: "connect", Code: 220},
			"220 mx.example.test$", txn},
		{"greeting and close", Reply{Event: "connect", Code: 220, Lines: []string{"bye"}, Close: true},
			"220 mx.example.test bye$", []step{{"", "closed"}}},
		{"refuse service", Reply{Event: "connect", Code: 554, Lines: []string{"No SMTP service here"}},
			"554 No SMTP service here$", []step{{"", "closed"}}},
		{"helo", Reply{Event: "helo", Code: 250, Lines: []string{"pleased to meet you"}}, "220 ",
			[]step{{"HELO client.example", "250 mx.example.test pleased to meet you$"}, {"EHLO client.example", "250-mx.example.test\n"}}},
		{"ehlo", Reply{Event: "ehlo", Code: 250, Lines: []string{"hello there"}}, "220 ",
			[]step{{"EHLO client.example", "250-mx.example.test hello there\n250-PIPELINING"}, {"HELO client.example", "250 mx.example.test$"}}},
		{"ehlo refused", Reply{Event: "ehlo", Code: 550, Enhanced: "5.7.1", Lines: []string{"Go away"}}, "220 ",
			[]step{{"EHLO client.example", "550 5.7.1 Go away$"}, {"HELO client.example", "250 mx.example.test$"}}},
		{"mail", Reply{Event: "mail", Code: 451, Enhanced: "4.3.2", Lines: []string{"Maintenance, try later"}}, "220 ",
			[]step{{"EHLO client.example", "250-"}, {"MAIL FROM:<a@client.example>", "451 4.3.2 Maintenance, try later$"}, {"NOOP", "250 2.0.0 OK$"}}},
		{"mail accepted", Reply{Event: "mail", Code: 250, Enhanced: "2.1.0", Lines: []string{"Sender looks fine"}}, "220 ",
			concat([]step{{"EHLO client.example", "250-"}, {"MAIL FROM:<a@client.example>", "250 2.1.0 Sender looks fine$"}, {"RCPT TO:<b@example.test>", "250 2.1.5"}}, msg)},
		{"rcpt and close", Reply{Event: "rcpt", Code: 550, Enhanced: "5.7.1", Lines: []string{"Closed"}, Close: true}, "220 ",
			[]step{txn[0], txn[1], {"RCPT TO:<b@example.test>", "550 5.7.1 Closed$"}, {"", "closed"}}},
		{"rcpt 251", Reply{Event: "rcpt", Code: 251, Enhanced: "2.1.5", Lines: []string{"User not local; will forward"}}, "220 ",
			concat([]step{txn[0], txn[1], {"RCPT TO:<b@example.test>", "251 2.1.5 User not local; will forward$"}}, msg)},
		{"data", Reply{Event: "data", Code: 354, Lines: []string{"Go ahead"}}, "220 ",
			concat(txn, []step{{"DATA", "354 Go ahead$"}, {"x\r\n.", "250 2.0.0"}})},
		{"data refused", Reply{Event: "data", Code: 554, Enhanced: "5.7.1", Lines: []string{"No data today"}}, "220 ",
			concat(txn, []step{{"DATA", "554 5.7.1 No data today$"}, {"RCPT TO:<c@example.test>", "503 "}})},
		{"end of message", Reply{Event: "end_of_message", Code: 452, Enhanced: "4.3.1", Lines: []string{"Mailbox full"}}, "220 ",
			concat(txn, []step{{"DATA", "354 "}, {"x\r\n.", "452 4.3.1 Mailbox full$"}})},
		{"rset", Reply{Event: "rset", Code: 250, Enhanced: "2.0.0", Lines: []string{"Flushed"}}, "220 ",
			concat(txn, []step{{"RSET", "250 2.0.0 Flushed$"}, {"DATA", "503 "}})},
		{"noop without enhanced", Reply{Event: "noop", Code: 250, Lines: []string{"Still here"}}, "220 ",
			[]step{{"NOOP", "250 2.0.0 Still here$"}, {"RSET", "250 2.0.0 OK$"}}},
		{"help", Reply{Event: "help", Code: 214, Enhanced: "2.0.0", Lines: []string{"See https://example.test/mail", "or write to postmaster"}}, "220 ",
			[]step{{"HELP", "214-2.0.0 See https://example.test/mail\n214 2.0.0 or write to postmaster$"}, {"HELP MAIL", "214-2.0.0 See"}}},
		{"vrfy", Reply{Event: "vrfy", Code: 502, Enhanced: "5.5.1", Lines: []string{"VRFY disabled"}}, "220 ",
			[]step{{"VRFY root", "502 5.5.1 VRFY disabled$"}, {"EXPN staff", "502 5.5.1 Sorry"}}},
		{"expn", Reply{Event: "expn", Code: 252, Enhanced: "2.1.5", Lines: []string{"Not expanding lists"}}, "220 ",
			[]step{{"EXPN staff", "252 2.1.5 Not expanding lists$"}, {"VRFY root", "252 2.5.0 Cannot VRFY"}}},
		{"quit", Reply{Event: "quit", Code: 221, Enhanced: "2.0.0", Lines: []string{"See you"}}, "220 ",
			[]step{{"QUIT", "221 2.0.0 See you$"}, {"", "closed"}}},
		{"unknown", Reply{Event: "unknown", Code: 502, Enhanced: "5.5.1", Lines: []string{"Not here"}}, "220 ",
			[]step{{"XYZZY", "502 5.5.1 Not here$"}, {"ETRN example.test", "502 5.5.1 Not here$"}, {"NOOP", "250 2.0.0 OK$"}, {"HELP", "214-2.0.0 Commands"}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := tc.r
			run(t, smtptest.Serve(t, smtptest.Provisioned(t, &r)), tc.greeting, tc.steps)
		})
	}
}

// TestSeveral: one reply sub-handler per event, each answering only its
// own, the first in order winning.
func TestSeveral(t *testing.T) {
	help := smtptest.Provisioned(t, &Reply{Event: "help", Code: 214, Lines: []string{"first"}})
	help2 := smtptest.Provisioned(t, &Reply{Event: "help", Code: 214, Lines: []string{"second"}})
	vrfy := smtptest.Provisioned(t, &Reply{Event: "vrfy", Code: 550, Enhanced: "5.1.1", Lines: []string{"No"}})
	run(t, smtptest.Serve(t, help, vrfy, help2), "220 mx.example.test", []step{
		{"HELP", "214 2.0.0 first$"},
		{"VRFY x", "550 5.1.1 No$"},
		{"EXPN x", "502 5.5.1"},
		{"NOOP", "250 2.0.0 OK$"},
	})
}

func TestValidate(t *testing.T) {
	for _, tc := range []struct {
		r    Reply
		want string
	}{
		{Reply{Code: 250}, "reply: event: required"},
		{Reply{Event: "HELP", Code: 214}, `reply: event: unknown event "HELP"`},
		{Reply{Event: "help"}, "reply: code: required"},
		{Reply{Event: "help", Code: 199}, "reply: code: 199 is not an SMTP reply code"},
		{Reply{Event: "help", Code: 600}, "reply: code: 600 is not"},
		{Reply{Event: "help", Code: 570}, "reply: code: 570 is not"},
		{Reply{Event: "rcpt", Code: 354}, "reply: code: 354 does not fit event rcpt (allowed: 250, 251, 4xx, 5xx)"},
		{Reply{Event: "connect", Code: 250}, "reply: code: 250 does not fit event connect (allowed: 220, 4xx, 5xx)"},
		{Reply{Event: "data", Code: 250}, "reply: code: 250 does not fit event data (allowed: 354, 4xx, 5xx)"},
		{Reply{Event: "end_of_message", Code: 250}, "reply: code: 250 does not fit event end_of_message (allowed: 4xx, 5xx; a 2xx at end of message would"},
		{Reply{Event: "quit", Code: 421}, "reply: code: 421 does not fit event quit (allowed: 221)"},
		{Reply{Event: "unknown", Code: 250}, "reply: code: 250 does not fit event unknown"},
		{Reply{Event: "vrfy", Code: 214}, "reply: code: 214 does not fit event vrfy"},
		{Reply{Event: "connect", Code: 554, Enhanced: "5.7.1"}, "reply: enhanced: the greeting carries no enhanced status code"},
		{Reply{Event: "ehlo", Code: 250, Enhanced: "2.0.0"}, "reply: enhanced: a 250 reply to ehlo carries no enhanced status code"},
		{Reply{Event: "data", Code: 354, Enhanced: "2.0.0"}, "reply: enhanced: a 354 reply to data carries no"},
		{Reply{Event: "vrfy", Code: 502, Enhanced: "5.5"}, `reply: enhanced: "5.5" is not an enhanced status code`},
		{Reply{Event: "vrfy", Code: 502, Enhanced: "3.5.1"}, `reply: enhanced: "3.5.1" is not`},
		{Reply{Event: "vrfy", Code: 502, Enhanced: "5.5.1234"}, `reply: enhanced: "5.5.1234" is not`},
		{Reply{Event: "vrfy", Code: 502, Enhanced: "4.5.1"}, "reply: enhanced: class 4 of 4.5.1 does not match code 502"},
		{Reply{Event: "vrfy", Code: 252, Enhanced: "5.5.1"}, "reply: enhanced: class 5 of 5.5.1 does not match code 252"},
		{Reply{Event: "help", Code: 214, Lines: []string{"ok", "bad\r\nline"}}, "reply: lines[1]: only printable ASCII"},
		{Reply{Event: "help", Code: 214, Lines: []string{"caf\xc3\xa9"}}, "reply: lines[0]: only printable ASCII"},
		{Reply{Event: "help", Code: 214, Lines: []string{strings.Repeat("x", 401)}}, "reply: lines[0]: longer than 400"},
		{Reply{Event: "helo", Code: 250, Close: true}, "reply: close: a 250 reply to helo cannot close the connection"},
		{Reply{Event: "data", Code: 354, Close: true}, "reply: close: a 354 reply to data cannot"},
	} {
		r := tc.r
		err := smtptest.Provision(&r)
		if err == nil || !strings.HasPrefix(err.Error(), tc.want) {
			t.Errorf("%+v: got error %v, want %q...", tc.r, err, tc.want)
		}
	}
	for _, ok := range []Reply{
		{Event: "connect", Code: 421, Lines: []string{"Busy"}},
		{Event: "helo", Code: 550, Enhanced: "5.7.1", Close: true},
		{Event: "data", Code: 451, Enhanced: "4.3.0", Close: true},
		{Event: "end_of_message", Code: 554, Enhanced: "5.6.0"},
		{Event: "quit", Code: 221, Close: true},
		{Event: "help", Code: 211},
		{Event: "vrfy", Code: 252, Enhanced: "2.1.5", Lines: []string{strings.Repeat("x", 400), ""}},
	} {
		r := ok
		if err := smtptest.Provision(&r); err != nil {
			t.Errorf("%+v: %v", ok, err)
		}
	}
}

func TestCaddyfile(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{`reply help 214 2.0.0 "See https://example.com/mail"`, `{"event":"help","code":214,"enhanced":"2.0.0","lines":["See https://example.com/mail"]}`},
		{`reply vrfy 502 5.5.1 "VRFY disabled"`, `{"event":"vrfy","code":502,"enhanced":"5.5.1","lines":["VRFY disabled"]}`},
		{`reply vrfy 502 5.5.1 VRFY disabled`, `{"event":"vrfy","code":502,"enhanced":"5.5.1","lines":["VRFY disabled"]}`},
		{`reply connect 220 ESMTP ready`, `{"event":"connect","code":220,"lines":["ESMTP ready"]}`},
		{`reply noop 250`, `{"event":"noop","code":250}`},
		{"reply rcpt 550 5.7.1 Closed {\n close\n}", `{"event":"rcpt","code":550,"enhanced":"5.7.1","lines":["Closed"],"close":true}`},
		{"reply help 214 {\n line first line\n line \"second line\"\n}", `{"event":"help","code":214,"lines":["first line","second line"]}`},
		{"reply {\n event expn\n code 252\n enhanced 2.1.5\n line Not expanding\n}", `{"event":"expn","code":252,"enhanced":"2.1.5","lines":["Not expanding"]}`},
	} {
		var r Reply
		if err := r.UnmarshalCaddyfile(caddyfile.NewTestDispenser(tc.in)); err != nil {
			t.Errorf("%q: %v", tc.in, err)
			continue
		}
		got, _ := json.Marshal(&r)
		if string(got) != tc.want {
			t.Errorf("%q: got %s, want %s", tc.in, got, tc.want)
		}
	}
	for _, tc := range []struct{ in, want string }{
		{`reply`, "reply: event: required"},
		{`reply help`, "a code must follow the event"},
		{`reply help abc`, `reply: code: must be a three-digit reply code such as 550, got "abc"`},
		{`reply help 0214`, `got "0214"`},
		{`reply helo 354`, "reply: code: 354 does not fit event helo"},
		{`reply vrfy 502 4.5.1 no`, "class 4 of 4.5.1 does not match code 502"},
		{`reply dance 250`, `unknown event "dance"`},
		{"reply help 214 {\n code 250\n}", "reply: code given twice"},
		{"reply help 214 {\n close now\n}", "wrong argument count"},
		{"reply help 214 {\n shout\n}", `reply: unknown option "shout" (known: event, code, enhanced, line, close)`},
		{"reply data 354 {\n close\n}", "reply: close: a 354 reply to data cannot close"},
	} {
		var r Reply
		err := r.UnmarshalCaddyfile(caddyfile.NewTestDispenser(tc.in))
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%q: got error %v, want one containing %q", tc.in, err, tc.want)
		}
	}
}
