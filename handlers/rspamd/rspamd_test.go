package rspamd

import (
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"

	"github.com/caddy-esmtp/caddy-esmtp/authresults"
	"github.com/caddy-esmtp/caddy-esmtp/internal/filtertest"
	"github.com/caddy-esmtp/caddy-esmtp/internal/smtptest"
	"github.com/caddy-esmtp/caddy-esmtp/session"
)

// TestRequest: the request is a POST to /checkv2 with the envelope and
// the client in rspamd's headers (one Rcpt per recipient), the password
// and the extra headers, a Content-Length, and as body the message as it
// is at this judge: our Received: field first, an earlier judge's edit
// applied.
func TestRequest(t *testing.T) {
	si := startStandIn(t, 200, `{"action":"no action","score":0.5,"symbols":{}}`)
	h := &Rspamd{URL: si.srv.URL, Password: "s3cret", Headers: map[string]string{"Settings-ID": "inbound"}}
	earlier := smtptest.Judge(func(s *session.Session) { s.Transaction().PrependHeader("X-Earlier", "yes") })
	out := send(t, h, message, earlier)
	if !strings.HasPrefix(out.reply, "250 ") {
		t.Fatalf("reply %q", out.reply)
	}
	reqs := si.requests()
	if len(reqs) != 1 {
		t.Fatalf("%d requests", len(reqs))
	}
	r := reqs[0]
	if r.method != "POST" || r.path != "/checkv2" {
		t.Errorf("%s %s", r.method, r.path)
	}
	want := map[string][]string{
		"Ip":          {"127.0.0.1"},
		"Helo":        {smtptest.Helo},
		"From":        {"sender@example.test"},
		"Rcpt":        {"rcpt@example.test", "other@example.test"},
		"Mta-Name":    {smtptest.Hostname},
		"Password":    {"s3cret"},
		"Settings-Id": {"inbound"},
	}
	for k, v := range want {
		if !slices.Equal(r.header[k], v) {
			t.Errorf("header %s: %q, want %q", k, r.header[k], v)
		}
	}
	qid := r.header.Get("Queue-Id")
	if qid == "" || r.header.Get("Log-Tag") != qid {
		t.Errorf("Queue-Id %q, Log-Tag %q", qid, r.header.Get("Log-Tag"))
	}
	for _, k := range []string{"User", "Hostname", "Tls-Version", "Tls-Cipher"} {
		if v, ok := r.header[k]; ok {
			t.Errorf("header %s sent (%q) for an unauthenticated plain-text client without iprev", k, v)
		}
	}
	if r.contentLength != int64(len(r.body)) {
		t.Errorf("Content-Length %d for a body of %d bytes", r.contentLength, len(r.body))
	}
	if !strings.HasPrefix(r.body, "X-Earlier: yes\r\nReceived: from ") || !strings.Contains(r.body, "id "+qid) ||
		!strings.HasSuffix(r.body, message) {
		t.Errorf("body is not our Received: field, the earlier edit and the message:\n%s", r.body)
	}
	if out.log["rspamd_action"] != "no action" || out.log["rspamd_score"] != 0.5 {
		t.Errorf("log fields %v", out.log)
	}
}

// TestUser: an authenticated session sends User.
func TestUser(t *testing.T) {
	si := startStandIn(t, 200, `{"action":"no action"}`)
	srv := smtptest.Serve(t, smtptest.LoginAs{}, smtptest.Provisioned(t, &Rspamd{URL: si.srv.URL}), &keep{})
	c := srv.DialTCP().Hello("alice.auth")
	if r := smtptest.Mail(c, message, "rcpt@example.test"); !strings.HasPrefix(r, "250 ") {
		t.Fatal(r)
	}
	if u := si.requests()[0].header.Get("User"); u != "alice" {
		t.Errorf("User %q", u)
	}
}

// TestActions: each of rspamd's actions gives the client and the
// delivered copy what the package documentation says.
func TestActions(t *testing.T) {
	for _, tc := range []struct {
		name      string
		reply     string
		h         Rspamd
		code      string   // start of the end-of-data reply
		fields    []string // fields the delivered copy has ("Name:value")
		nofields  []string // field names it does not have
		logFields map[string]any
	}{
		{name: "reject", reply: `{"action":"reject","score":20,"messages":{"smtp_message":"Go away, spammer"}}`,
			code: "554 5.7.1 Go away, spammer"},
		{name: "reject without message", reply: `{"action":"reject","score":20}`,
			code: "554 5.7.1 Spam message rejected"},
		{name: "reject, message sanitized", reply: `{"action":"reject","messages":{"smtp_message":"bad\r\n250 ok"}}`,
			code: "554 5.7.1 bad??250 ok"},
		{name: "reject as discard", reply: `{"action":"reject","milter":{"reject":"discard"}}`,
			code: "250 ", logFields: map[string]any{"discarded": "rspamd"}},
		{name: "reject as quarantine", reply: `{"action":"reject","milter":{"reject":"quarantine"}}`,
			code: "250 ", fields: []string{"X-Esmtp-Quarantine:rspamd"}},
		{name: "soft reject", reply: `{"action":"soft reject","messages":{"smtp_message":"Ratelimited"}}`,
			code: "451 4.7.1 Ratelimited"},
		{name: "soft reject without message", reply: `{"action":"soft reject"}`,
			code: "451 4.7.1 Try again later"},
		{name: "greylist", reply: `{"action":"greylist","score":4.5}`,
			code: "451 4.7.1 Try again later"},
		{name: "greylist accepted", reply: `{"action":"greylist","score":4.5}`, h: Rspamd{Greylist: "accept"},
			code: "250 ", nofields: []string{"X-Spam"}},
		{name: "rewrite subject", reply: `{"action":"rewrite subject","subject":"[SPAM] Hello there"}`,
			code: "250 ", fields: []string{"Subject:[SPAM] Hello there"}},
		{name: "rewrite subject, default", reply: `{"action":"rewrite subject"}`,
			code: "250 ", fields: []string{"Subject:*** SPAM *** Hello there"}},
		{name: "rewrite subject, own template", reply: `{"action":"rewrite subject"}`, h: Rspamd{Subject: "{spam} %s"},
			code: "250 ", fields: []string{"Subject:{spam} Hello there"}},
		{name: "add header", reply: `{"action":"add header","score":7}`,
			code: "250 ", fields: []string{"X-Spam:Yes"}},
		{name: "add header, own name", reply: `{"action":"add header","score":7}`, h: Rspamd{SpamHeader: "X-Is-Spam"},
			code: "250 ", fields: []string{"X-Is-Spam:Yes", "X-Spam:forged"}},
		{name: "add header, milter spam_header", reply: `{"action":"add header","milter":{"spam_header":{"X-Junk":"high"}}}`,
			code: "250 ", fields: []string{"X-Junk:high", "X-Spam:forged"}},
		{name: "no action", reply: `{"action":"no action","score":-1}`,
			code: "250 ", fields: []string{"X-Spam:forged", "Subject:Hello there"}},
		{name: "no_action in the milter block", reply: `{"action":"reject","milter":{"no_action":true}}`,
			code: "250 ", fields: []string{"X-Rspamd-Action:reject"}},
		{name: "discard", reply: `{"action":"discard"}`,
			code: "250 ", logFields: map[string]any{"discarded": "rspamd"}},
		{name: "quarantine", reply: `{"action":"quarantine"}`,
			code: "250 ", fields: []string{"X-Esmtp-Quarantine:rspamd"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			si := startStandIn(t, 200, tc.reply)
			h := tc.h
			h.URL = si.srv.URL
			out := send(t, &h, message)
			if !strings.HasPrefix(out.reply, tc.code) {
				t.Fatalf("reply %q, want %q", out.reply, tc.code)
			}
			if !strings.HasPrefix(tc.code, "250") {
				if out.delivered != "" {
					t.Errorf("delivered although refused")
				}
				return
			}
			if out.delivered == "" && tc.logFields["discarded"] == nil {
				t.Fatal("not delivered")
			}
			got := names(out.delivered)
			for _, f := range tc.fields {
				if !slices.Contains(got, f) {
					t.Errorf("no field %q in %q", f, got)
				}
			}
			for _, n := range tc.nofields {
				for _, f := range got {
					if strings.HasPrefix(f, n+":") && f != "X-Spam:forged" {
						t.Errorf("field %q", f)
					}
				}
			}
			if tc.name == "add header" && slices.Contains(got, "X-Spam:forged") {
				t.Errorf("the sender's X-Spam field was kept: %q", got)
			}
			for k, v := range tc.logFields {
				if out.log[k] != v {
					t.Errorf("log %s=%v, want %v (%v)", k, out.log[k], v, out.log)
				}
			}
		})
	}
}

// TestMilterHeaders: milter.remove_headers and milter.add_headers are
// applied as rspamd's milter proxy applies them: removals first (0: every
// field of the name, n: the n-th, -n: the n-th from the last), then
// additions (a string: after the last field; {value, order}: inserted at
// order, 0 the top, our Received: field being 0 in the message rspamd
// saw; a negative order counts from the end; a list: each), then a
// DKIM-Signature after our Received: field.
func TestMilterHeaders(t *testing.T) {
	msg := "X-A: 1\r\nX-A: 2\r\nX-A: 3\r\nX-B: 1\r\nX-B: 2\r\nX-C: 1\r\nSubject: s\r\n\r\nbody\r\n"
	reply := `{"action":"no action","milter":{
		"remove_headers":{"X-A":2,"X-B":0,"X-C":-1,"X-Missing":1,"X-Bad":"1"},
		"add_headers":{
			"X-Spamd-Result":{"value":"default: False [0.5 / 15.0];\r\n\tSYM(0.5)[]","order":-1},
			"Authentication-Results":{"value":"mx.example.test;\r\n\tnone","order":1},
			"X-Top":{"value":"top","order":0},
			"X-Plain":"plain",
			"X-List":["one",{"value":"two"}],
			"Bad Name":"x",
			"X-No-Value":{"order":1},
			"X-Before-Last":{"value":"bl","order":-2}
		}},
		"dkim-signature":"v=1; a=rsa-sha256; d=example.test; b=abc"}`
	si := startStandIn(t, 200, reply)
	out := send(t, &Rspamd{URL: si.srv.URL}, msg)
	if !strings.HasPrefix(out.reply, "250 ") {
		t.Fatal(out.reply)
	}
	got := names(out.delivered)
	// Each insertion counts the fields as they are when it is applied,
	// in rspamd's order (as a milter's do): Authentication-Results at 1
	// follows Received:, then X-Top at 0 precedes it, then the
	// DKIM-Signature at 1 follows X-Top; -1 is after the last field,
	// as the strings and the list are, and -2 before the last field of
	// the header as it is then.
	want := []string{
		"X-Top:top",
		"DKIM-Signature:v=1; a=rsa-sha256; d=example.test; b=abc",
		"Received",
		"Authentication-Results:mx.example.test;\tnone",
		"X-A:1", "X-A:3", "Subject:s",
		"X-Spamd-Result:default: False [0.5 / 15.0];\tSYM(0.5)[]",
		"X-Plain:plain", "X-List:one", "X-Before-Last:bl", "X-List:two",
	}
	for i := range got {
		if strings.HasPrefix(got[i], "Received:") {
			got[i] = "Received"
		}
	}
	if !slices.Equal(got, want) {
		t.Errorf("fields\n got %q\nwant %q", got, want)
	}
}

// TestOwnAuthenticationResults: rspamd's "remove every
// Authentication-Results" keeps the field of our own authserv-id that
// the authentication sub-handlers add (package authresults), and removes
// the others; without such results, it removes every one.
func TestOwnAuthenticationResults(t *testing.T) {
	si := startStandIn(t, 200, `{"action":"no action","milter":{"remove_headers":{"Authentication-Results":0}}}`)
	msg := "Authentication-Results: other.example; spf=pass\r\n" + message
	spf := smtptest.Judge(func(s *session.Session) {
		authresults.Add(s, authresults.Result{Method: "spf", Value: "pass"})
	})
	out := send(t, &Rspamd{URL: si.srv.URL}, msg, spf)
	if ar := fieldsNamed(out.delivered, "Authentication-Results"); !slices.Equal(ar, []string{smtptest.Hostname + ";\tspf=pass"}) {
		t.Errorf("Authentication-Results: %q", ar)
	}
	out = send(t, &Rspamd{URL: si.srv.URL}, msg)
	if ar := fieldsNamed(out.delivered, "Authentication-Results"); len(ar) != 0 {
		t.Errorf("Authentication-Results left: %q", ar)
	}
}

// TestOnError: when rspamd cannot give a verdict (a 500, a reply that is
// not its JSON, an unknown action, no answer within the timeout, nobody
// listening), on_error decides: 451 4.3.0 by default, the message
// passes with accept, 554 5.3.0 with reject; never a silent pass by
// default, and always a log field and a warning.
func TestOnError(t *testing.T) {
	closed := startStandIn(t, 200, "")
	closed.srv.Close()
	for _, tc := range []struct {
		name   string
		status int
		body   string
		hang   bool
		url    string
		errSub string
	}{
		{name: "500", status: 500, body: "Internal error", errSub: "HTTP status 500"},
		{name: "malformed JSON", status: 200, body: `{"action":"reject",`, errSub: "malformed reply"},
		{name: "not an object", status: 200, body: `["reject"]`, errSub: "malformed reply"},
		{name: "no action", status: 200, body: `{"score":3}`, errSub: "no action"},
		{name: "unknown action", status: 200, body: `{"action":"explode"}`, errSub: `unknown action "explode"`},
		{name: "timeout", hang: true, errSub: "no answer within"},
		{name: "refused", url: closed.srv.URL, errSub: "connect"},
	} {
		for _, onError := range []string{"", "tempfail", "accept", "reject"} {
			t.Run(tc.name+"/"+onError, func(t *testing.T) {
				si := startStandIn(t, tc.status, tc.body)
				si.hang = tc.hang
				h := &Rspamd{URL: si.srv.URL, OnError: onError}
				if tc.url != "" {
					h.URL = tc.url
				}
				if tc.hang {
					h.Timeout = caddy.Duration(100 * time.Millisecond) // the stand-in never answers
				}
				out := send(t, h, message)
				want := map[string]string{"": "451 4.3.0", "tempfail": "451 4.3.0", "accept": "250 ", "reject": "554 5.3.0"}[onError]
				if !strings.HasPrefix(out.reply, want) {
					t.Errorf("reply %q, want %q", out.reply, want)
				}
				if (out.delivered != "") != (onError == "accept") {
					t.Errorf("delivered: %v", out.delivered != "")
				}
				if e, _ := out.log["rspamd_error"].(string); !strings.Contains(e, tc.errSub) {
					t.Errorf("rspamd_error %q, want %q in it", e, tc.errSub)
				}
				if out.warnings != 1 {
					t.Errorf("%d warnings", out.warnings)
				}
			})
		}
	}
}

// TestMaxSize: a message over max_size is not sent to rspamd; it passes
// and its log line says why.
func TestMaxSize(t *testing.T) {
	si := startStandIn(t, 200, `{"action":"reject"}`)
	out := send(t, &Rspamd{URL: si.srv.URL, MaxSize: 200}, withBody(strings.Repeat("x", 300)+"\r\n"))
	if !strings.HasPrefix(out.reply, "250 ") || len(si.requests()) != 0 {
		t.Fatalf("reply %q after %d requests", out.reply, len(si.requests()))
	}
	if s, _ := out.log["rspamd_skipped"].(string); !strings.Contains(s, "over max_size 200") {
		t.Errorf("log %v", out.log)
	}
	// Under it, or with no limit, the message is scanned.
	for _, max := range []int64{1 << 20, -1} {
		if out := send(t, &Rspamd{URL: si.srv.URL, MaxSize: max}, message); !strings.HasPrefix(out.reply, "554 ") {
			t.Errorf("max_size %d: reply %q", max, out.reply)
		}
	}
}

// TestSymbolsLogged: the log line names the symbols, highest score first.
func TestSymbolsLogged(t *testing.T) {
	si := startStandIn(t, 200, `{"action":"add header","score":6.5,"symbols":{
		"LOW":{"name":"LOW","score":0.5},"HIGH":{"name":"HIGH","score":5},"NEG":{"name":"NEG","score":-1},"ZERO":{"name":"ZERO"},"AZERO":{"score":0}}}`)
	out := send(t, &Rspamd{URL: si.srv.URL}, message)
	if out.log["rspamd_symbols"] != "HIGH,LOW,AZERO,ZERO,NEG" || out.log["rspamd_action"] != "add header" || out.log["rspamd_score"] != 6.5 {
		t.Errorf("log %v", out.log)
	}
}

// TestKeepAlive: the sessions share one client whose connections to
// rspamd are reused.
func TestKeepAlive(t *testing.T) {
	si := startStandIn(t, 200, `{"action":"no action"}`)
	h := smtptest.Provisioned(t, &Rspamd{URL: si.srv.URL})
	for range 3 {
		if out := send(t, h, message); !strings.HasPrefix(out.reply, "250 ") {
			t.Fatal(out.reply)
		}
	}
	si.mu.Lock()
	defer si.mu.Unlock()
	if len(si.reqs) != 3 || si.conns != 1 {
		t.Fatalf("%d requests over %d connections, want 3 over 1", len(si.reqs), si.conns)
	}
}

// TestCaddyfile: the options, and errors that name the field.
func TestCaddyfile(t *testing.T) {
	d := caddyfile.NewTestDispenser(`rspamd http://rspamd.internal:11333 {
		password secret
		timeout 10s
		max_size 10MiB
		on_error accept
		greylist accept
		spam_header X-Is-Spam
		subject "[SPAM] %s"
		header Settings-ID inbound
		header MTA-Tag mx
	}`)
	var h Rspamd
	if err := h.UnmarshalCaddyfile(d); err != nil {
		t.Fatal(err)
	}
	want := Rspamd{URL: "http://rspamd.internal:11333", Password: "secret", Timeout: caddy.Duration(10 * time.Second),
		MaxSize: 10 << 20, OnError: "accept", Greylist: "accept", SpamHeader: "X-Is-Spam", Subject: "[SPAM] %s",
		Headers: map[string]string{"Settings-ID": "inbound", "MTA-Tag": "mx"}}
	if fmt.Sprint(h) != fmt.Sprint(want) {
		t.Errorf("got  %+v\nwant %+v", h, want)
	}
	var off Rspamd
	if err := off.UnmarshalCaddyfile(caddyfile.NewTestDispenser(`rspamd {
max_size off
}`)); err != nil || off.MaxSize != -1 {
		t.Errorf("max_size off: %v, %d", err, off.MaxSize)
	}
	for _, bad := range []struct{ in, err string }{
		{`rspamd ftp://x`, "url"},
		{`rspamd {
url
}`, "wrong argument count"},
		{`rspamd {
timeout -1s
}`, "timeout"},
		{`rspamd {
max_size lots
}`, "max_size"},
		{`rspamd {
on_error shrug
}`, "on_error"},
		{`rspamd {
greylist maybe
}`, "greylist"},
		{`rspamd {
spam_header "X Spam"
}`, "spam_header"},
		{`rspamd {
header Rcpt x
}`, "headers: Rcpt"},
		{`rspamd {
header X-A a
			header X-A b
}`, "header: X-A given twice"},
		{`rspamd {
timeout 1s
			timeout 2s
}`, "timeout: given twice"},
		{`rspamd {
colour blue
}`, `unknown option "colour"`},
	} {
		var h Rspamd
		err := h.UnmarshalCaddyfile(caddyfile.NewTestDispenser(bad.in))
		if err == nil || !strings.Contains(err.Error(), bad.err) {
			t.Errorf("%s: error %v, want %q", bad.in, err, bad.err)
		}
	}
}

// TestProvision: defaults, and errors naming the field.
func TestProvision(t *testing.T) {
	h := smtptest.Provisioned(t, &Rspamd{})
	if h.checkURL != "http://127.0.0.1:11333/checkv2" || time.Duration(h.Timeout) != DefaultTimeout ||
		h.MaxSize != DefaultMaxSize || h.SpamHeader != "X-Spam" || h.Subject != DefaultSubject {
		t.Errorf("defaults: %+v", h)
	}
	for url, want := range map[string]string{
		"http://r:1":              "http://r:1/checkv2",
		"https://r/rspamd/":       "https://r/rspamd/checkv2",
		"http://r:1/x/checkv2":    "http://r:1/x/checkv2",
		"{env.ESMTP_NO_SUCH_VAR}": "http://127.0.0.1:11333/checkv2",
	} {
		if h := smtptest.Provisioned(t, &Rspamd{URL: url}); h.checkURL != want {
			t.Errorf("%s: %s, want %s", url, h.checkURL, want)
		}
	}
	for _, bad := range []struct {
		h   Rspamd
		err string
	}{
		{Rspamd{URL: "mailto:x"}, "rspamd: url"},
		{Rspamd{URL: "http://r/?q=1"}, "rspamd: url"},
		{Rspamd{Timeout: -1}, "rspamd: timeout"},
		{Rspamd{MaxSize: -2}, "rspamd: max_size"},
		{Rspamd{OnError: "pass"}, "rspamd: on_error"},
		{Rspamd{Greylist: "no"}, "rspamd: greylist"},
		{Rspamd{SpamHeader: "X:Spam"}, "rspamd: spam_header"},
		{Rspamd{Password: "a\nb"}, "rspamd: password"},
		{Rspamd{Headers: map[string]string{"IP": "1.2.3.4"}}, "rspamd: headers: IP"},
		{Rspamd{Headers: map[string]string{"X-A": "a\r\nb"}}, "rspamd: headers: the value of X-A"},
	} {
		if err := smtptest.Provision(&bad.h); err == nil || !strings.Contains(err.Error(), bad.err) {
			t.Errorf("%+v: error %v, want %q", bad.h, err, bad.err)
		}
	}
}

// TestRealRspamd: against the real rspamd's normal worker (through the
// engine, without Caddy: the Caddy test is in integration_test), rspamd's
// test patterns give each of its actions: GTUBE is refused with rspamd's
// message; its "add header" variant is delivered with X-Spam: Yes (the
// sender's own X-Spam removed) and rspamd's headers; its "rewrite
// subject" variant with rspamd's subject; a clean message with rspamd's
// headers (X-Spamd-Result, X-Rspamd-Queue-Id = our queue id,
// Authentication-Results).
func TestRealRspamd(t *testing.T) {
	r := filtertest.StartRspamd(t)
	h := smtptest.Provisioned(t, &Rspamd{URL: r.URL})

	out := send(t, h, withBody(filtertest.GTUBE+"\r\n"))
	if out.reply != "554 5.7.1 Gtube pattern" || out.log["rspamd_symbols"] != "GTUBE" {
		t.Errorf("GTUBE: reply %q, log %v", out.reply, out.log)
	}

	out = send(t, h, withBody("Y"+filtertest.GTUBE[1:]+"\r\n"))
	if !strings.HasPrefix(out.reply, "250 ") || !slices.Equal(fieldsNamed(out.delivered, "X-Spam"), []string{"Yes"}) {
		t.Errorf("add header: reply %q, X-Spam %q", out.reply, fieldsNamed(out.delivered, "X-Spam"))
	}

	out = send(t, h, withBody("Z"+filtertest.GTUBE[1:]+"\r\n"))
	if s := fieldsNamed(out.delivered, "Subject"); !strings.HasPrefix(out.reply, "250 ") || len(s) != 1 || s[0] == "Hello there" || !strings.Contains(s[0], "Hello there") {
		t.Errorf("rewrite subject: reply %q, Subject %q", out.reply, s)
	}

	out = send(t, h, message)
	if !strings.HasPrefix(out.reply, "250 ") {
		t.Fatalf("clean: reply %q (%v)", out.reply, out.log)
	}
	qid := strings.Fields(out.reply)[2]
	if q := fieldsNamed(out.delivered, "X-Rspamd-Queue-Id"); !slices.Equal(q, []string{qid}) {
		t.Errorf("X-Rspamd-Queue-Id %q, want %q", q, qid)
	}
	for _, f := range []string{"X-Spamd-Result", "Authentication-Results"} {
		if len(fieldsNamed(out.delivered, f)) != 1 {
			t.Errorf("clean: %s: %q\n%s", f, fieldsNamed(out.delivered, f), out.delivered)
		}
	}
	t.Logf("clean: %v\n%s", out.log, out.delivered)
}
