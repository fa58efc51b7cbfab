package webhook

import (
	"bytes"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"

	"github.com/caddy-esmtp/caddy-esmtp/internal/smtptest"
	"github.com/caddy-esmtp/caddy-esmtp/session"
)

// request is what the test receiver got.
type request struct {
	method        string
	host          string
	header        http.Header
	contentLength int64
	chunked       bool
	body          []byte
}

// receiver is an HTTP server on loopback that records every request and
// answers with respond (n counts requests from 0); nil answers 200.
type receiver struct {
	*httptest.Server
	mu      sync.Mutex
	reqs    []request
	respond func(n int, w http.ResponseWriter, r *http.Request)
}

func newReceiver(t *testing.T, respond func(n int, w http.ResponseWriter, r *http.Request)) *receiver {
	rc := &receiver{respond: respond}
	rc.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, err := io.ReadAll(r.Body)
		if err != nil {
			t.Errorf("reading the request body: %v", err)
		}
		rc.mu.Lock()
		n := len(rc.reqs)
		rc.reqs = append(rc.reqs, request{method: r.Method, host: r.Host, header: r.Header.Clone(),
			contentLength: r.ContentLength, chunked: slices.Contains(r.TransferEncoding, "chunked"), body: body})
		rc.mu.Unlock()
		if rc.respond != nil {
			rc.respond(n, w, r)
		}
	}))
	t.Cleanup(rc.Close)
	return rc
}

func (rc *receiver) requests() []request {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	return append([]request(nil), rc.reqs...)
}

func (rc *receiver) only(t *testing.T) request {
	t.Helper()
	reqs := rc.requests()
	if len(reqs) != 1 {
		t.Fatalf("receiver got %d requests, want 1", len(reqs))
	}
	return reqs[0]
}

// hang answers nothing until the client gives up.
func hang(_ int, _ http.ResponseWriter, r *http.Request) { <-r.Context().Done() }

func intp(n int) *int { return &n }

var messages = map[string]string{
	"plain":                   "From: a@example.test\r\nTo: b@example.test\r\nSubject: hi\r\n\r\nHello.\r\n",
	"dots":                    "Subject: dots\r\n\r\n.\r\n..\r\n.leading dot\r\nend.\r\n",
	"folded header and 8 bit": "Subject: a\r\n folded\r\n\tfield\r\nX-8bit: \xc3\xa9t\xc3\xa9\r\n\r\nbody \xff\xfe\r\n",
	"no body":                 "Subject: only a header\r\n",
	"no header":               "just a body line, no header at all\r\nsecond\r\n",
	"big":                     "Subject: big\r\n\r\n" + strings.Repeat(strings.Repeat("0123456789", 99)+"\r\n", 300),
}

// TestRawByteExact: the raw body is the message byte for byte, our
// Received: field first, with a Content-Length, whether the engine keeps
// the message in memory or in a file (and then leaves no file behind).
func TestRawByteExact(t *testing.T) {
	for spool, cfg := range spools(t) {
		for name, msg := range messages {
			t.Run(spool+"/"+name, func(t *testing.T) {
				rc := newReceiver(t, nil)
				w := provision(t, &Webhook{URL: rc.URL + "/in"})
				ts := smtptest.ServeConfig(t, cfg, w)
				c := ts.DialTCPHello()
				r := smtptest.Mail(c, msg, "one@example.test", "two@example.test")
				if !strings.HasPrefix(r, "250 2.0.0 ") {
					t.Fatalf("end of data: %q", r)
				}
				queueID := strings.Fields(r)[2]
				req := rc.only(t)
				if got := smtptest.SplitReceived(t, req.body); !bytes.Equal(got, []byte(msg)) {
					t.Errorf("POSTed message differs\n got: %q\nwant: %q", got, msg)
				}
				if req.contentLength != int64(len(req.body)) || req.chunked {
					t.Errorf("Content-Length %d (chunked %v) for %d bytes", req.contentLength, req.chunked, len(req.body))
				}
				want := map[string][]string{
					"Content-Type":     {"message/rfc822"},
					"X-Esmtp-Queue-Id": {queueID},
					"X-Esmtp-From":     {"sender@example.test"},
					"X-Esmtp-Rcpt":     {"one@example.test", "two@example.test"},
					"X-Esmtp-Remote":   {c.Conn.LocalAddr().String()},
				}
				for k, v := range want {
					if got := req.header.Values(k); strings.Join(got, "|") != strings.Join(v, "|") {
						t.Errorf("header %s = %q, want %q", k, got, v)
					}
				}
				if req.method != http.MethodPost {
					t.Errorf("method %s, want POST", req.method)
				}
				if req.header.Get("X-Esmtp-Signature") != "" {
					t.Errorf("signed without a secret")
				}
				c.Cmd("QUIT", "221")
				ts.Close()
				if cfg.SpoolDir != "" {
					smtptest.AssertNoSpool(t, cfg.SpoolDir)
				}
			})
		}
	}
}

// jsonMessage is the json format, decoded.
type jsonMessage struct {
	Envelope struct {
		QueueID    string   `json:"queue_id"`
		From       string   `json:"from"`
		Recipients []string `json:"recipients"`
		Remote     string   `json:"remote"`
		Helo       string   `json:"helo"`
		Auth       string   `json:"auth"`
		TLS        bool     `json:"tls"`
	} `json:"envelope"`
	Headers []struct {
		Name  string `json:"name"`
		Value string `json:"value"`
	} `json:"headers"`
	Body string `json:"body"`
}

func TestJSONShape(t *testing.T) {
	for spool, cfg := range spools(t) {
		t.Run(spool, func(t *testing.T) { testJSONShape(t, cfg) })
	}
}

func testJSONShape(t *testing.T, cfg session.Config) {
	rc := newReceiver(t, nil)
	w := provision(t, &Webhook{URL: rc.URL, Format: "json"})
	ts := smtptest.ServeConfig(t, cfg, w)
	c := ts.DialTCPHello()
	// Long enough for several reads of the message, so multi-byte
	// characters are cut between reads (TestJSONEncoderReads cuts them at
	// every offset).
	body := strings.Repeat("é€😀 \"quoted\" back\\slash\ttab\x01\r\n", 2000) + "bad \xff\xfe utf-8\r\n"
	msg := "From: a@example.test\r\nSubject: a\r\n folded\r\n\tfield\r\nX-Quote: \"x\" \\ y\r\n\r\n" + body
	r := smtptest.Mail(c, msg, "one@example.test", "two@example.test")
	if !strings.HasPrefix(r, "250 2.0.0 ") {
		t.Fatalf("end of data: %q", r)
	}
	queueID := strings.Fields(r)[2]
	req := rc.only(t)
	if ct := req.header.Get("Content-Type"); ct != "application/json" {
		t.Errorf("Content-Type %q", ct)
	}
	if req.contentLength != int64(len(req.body)) || req.chunked {
		t.Errorf("Content-Length %d (chunked %v) for %d bytes", req.contentLength, req.chunked, len(req.body))
	}
	var top map[string]json.RawMessage
	if err := json.Unmarshal(req.body, &top); err != nil {
		t.Fatalf("not JSON: %v\n%s", err, req.body)
	}
	if len(top) != 3 || top["envelope"] == nil || top["headers"] == nil || top["body"] == nil {
		t.Errorf("top-level keys: %s", req.body[:200])
	}
	var m jsonMessage
	dec := json.NewDecoder(bytes.NewReader(req.body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&m); err != nil {
		t.Fatal(err)
	}
	env := m.Envelope
	if env.QueueID != queueID || env.From != "sender@example.test" || strings.Join(env.Recipients, ",") != "one@example.test,two@example.test" ||
		env.Remote != c.Conn.LocalAddr().String() || env.Helo != smtptest.Helo || env.Auth != "" || env.TLS {
		t.Errorf("envelope %+v", env)
	}
	if len(m.Headers) != 4 || m.Headers[0].Name != "Received" || !strings.Contains(m.Headers[0].Value, "by mx.example.test with ESMTP id "+queueID) {
		t.Fatalf("headers %+v", m.Headers)
	}
	wantHeaders := [][2]string{{"From", "a@example.test"}, {"Subject", "a folded\tfield"}, {"X-Quote", `"x" \ y`}}
	for i, h := range wantHeaders {
		if got := m.Headers[i+1]; got.Name != h[0] || got.Value != h[1] {
			t.Errorf("header %d: %+v, want %q", i+1, got, h)
		}
	}
	wantBody := strings.Repeat("é€😀 \"quoted\" back\\slash\ttab\x01\r\n", 2000) + "bad \ufffd\ufffd utf-8\r\n"
	if m.Body != wantBody {
		t.Errorf("body differs\n got: %q\nwant: %q", m.Body, wantBody)
	}
	ts.Close()
	if cfg.SpoolDir != "" {
		smtptest.AssertNoSpool(t, cfg.SpoolDir)
	}
}

func TestJSONNullSenderNoBody(t *testing.T) {
	rc := newReceiver(t, nil)
	w := provision(t, &Webhook{URL: rc.URL, Format: "json"})
	ts := smtptest.ServeConfig(t, session.Config{}, w)
	c := ts.DialTCPHello()
	c.Cmd("MAIL FROM:<>", "250")
	c.Cmd("RCPT TO:<postmaster@example.test>", "250")
	c.Cmd("DATA", "354")
	c.Send("Subject: bounce\r\n.\r\n")
	c.Expect("250 ")
	req := rc.only(t)
	var m jsonMessage
	if err := json.Unmarshal(req.body, &m); err != nil {
		t.Fatalf("not JSON: %v\n%s", err, req.body)
	}
	if m.Envelope.From != "" || m.Body != "" || len(m.Headers) != 2 || m.Headers[1].Value != "bounce" {
		t.Errorf("got %+v", m)
	}
	if v, ok := req.header["X-Esmtp-From"]; !ok || len(v) != 1 || v[0] != "" {
		t.Errorf("X-Esmtp-From %q, want one empty value", v)
	}
}

// TestTextEscaping feeds strings to the JSON escaper cut at every offset and
// compares with encoding/json.
func TestTextEscaping(t *testing.T) {
	inputs := []string{
		"plain ascii",
		"é€😀\u2028",
		"\x00\x01\x1f\x7f\"\\/\r\n\t<>&",
		"bad \xff \xe2\x82 \xf0\x9f\x98 end",
		"\xe2\x82",
		"\xc3",
		"😀",
	}
	for _, in := range inputs {
		want, _ := json.Marshal(in)
		var wantStr string
		json.Unmarshal(want, &wantStr)
		for cut := 0; cut <= len(in); cut++ {
			for cut2 := cut; cut2 <= len(in); cut2++ {
				e := &jsonEncoder{}
				e.out = append(e.out, '"')
				e.text([]byte(in[:cut]))
				e.text([]byte(in[cut:cut2]))
				e.text([]byte(in[cut2:]))
				e.flushText()
				e.out = append(e.out, '"')
				var got string
				if err := json.Unmarshal(e.out, &got); err != nil {
					t.Fatalf("%q cut at %d,%d: invalid JSON %s: %v", in, cut, cut2, e.out, err)
				}
				if got != wantStr {
					t.Errorf("%q cut at %d,%d: got %q, want %q", in, cut, cut2, got, wantStr)
				}
			}
		}
	}
}

// TestStatusCodes: by default only 2xx accepts, and every other status is
// temporary: a receiver's configuration error (401 after a token rotation,
// 404 during a redeploy) must never bounce mail. With permanent_statuses,
// the listed statuses (and only those) reject for good, without a retry.
func TestStatusCodes(t *testing.T) {
	permanent := []int{400, 413, 415, 501}
	cases := []struct {
		status    int
		permanent []int
		reply     string
		requests  int
	}{
		{200, nil, "250 2.0.0 ", 1},
		{202, nil, "250 2.0.0 ", 1},
		{204, nil, "250 2.0.0 ", 1},
		{400, nil, "451 4.3.0 Delivery failed: webhook answered 400 Bad Request; try again later", 3},
		{401, nil, "451 4.3.0 Delivery failed: webhook answered 401 Unauthorized; try again later", 3},
		{403, nil, "451 4.3.0 Delivery failed: webhook answered 403 Forbidden; try again later", 3},
		{404, nil, "451 4.3.0 Delivery failed: webhook answered 404 Not Found; try again later", 3},
		{413, nil, "451 4.3.0 Delivery failed: webhook answered 413 Request Entity Too Large; try again later", 3},
		{408, nil, "451 4.3.0 Delivery failed: webhook answered 408 Request Timeout; try again later", 3},
		{429, nil, "451 4.3.0 Delivery failed: webhook answered 429 Too Many Requests; try again later", 3},
		{499, nil, "451 4.3.0 Delivery failed: webhook answered 499; try again later", 3},
		{500, nil, "451 4.3.0 Delivery failed: webhook answered 500 Internal Server Error; try again later", 3},
		{503, nil, "451 4.3.0 ", 3},
		{302, nil, "451 4.3.0 Delivery failed: webhook answered 302 Found; try again later", 3},

		{200, permanent, "250 2.0.0 ", 1},
		{400, permanent, "554 5.6.0 Rejected by webhook: 400 Bad Request", 1},
		{413, permanent, "554 5.6.0 Rejected by webhook: 413 Request Entity Too Large", 1},
		{415, permanent, "554 5.6.0 Rejected by webhook: 415 Unsupported Media Type", 1},
		{501, permanent, "554 5.6.0 Rejected by webhook: 501 Not Implemented", 1},
		{401, permanent, "451 4.3.0 Delivery failed: webhook answered 401 Unauthorized; try again later", 3},
		{404, permanent, "451 4.3.0 ", 3},
		{500, permanent, "451 4.3.0 ", 3},
	}
	for _, tc := range cases {
		name := fmt.Sprint(tc.status)
		if tc.permanent != nil {
			name += " permanent_statuses " + fmt.Sprint(tc.permanent)
		}
		t.Run(name, func(t *testing.T) {
			rc := newReceiver(t, func(_ int, w http.ResponseWriter, _ *http.Request) {
				if tc.status == 302 {
					w.Header().Set("Location", "/elsewhere")
				}
				w.WriteHeader(tc.status)
			})
			w := provision(t, &Webhook{URL: rc.URL, Retries: intp(2), Backoff: caddy.Duration(time.Millisecond), PermanentStatuses: tc.permanent})
			cfg := fileSpool(t)
			ts := smtptest.ServeConfig(t, cfg, w)
			c := ts.DialTCPHello()
			if r := smtptest.Mail(c, messages["plain"], "rcpt@example.test"); !strings.HasPrefix(r, tc.reply) {
				t.Errorf("got %q, want %q", r, tc.reply)
			}
			reqs := rc.requests()
			if len(reqs) != tc.requests {
				t.Errorf("%d requests, want %d", len(reqs), tc.requests)
			}
			for _, req := range reqs {
				if req.method != http.MethodPost || !bytes.Equal(req.body, reqs[0].body) {
					t.Errorf("attempts differ: %s %q", req.method, req.body)
				}
			}
			// A rejected message leaves the session usable.
			if r := smtptest.Mail(c, messages["plain"], "rcpt@example.test"); !strings.HasPrefix(r, tc.reply) {
				t.Errorf("second message: got %q, want %q", r, tc.reply)
			}
			ts.Close()
			smtptest.AssertNoSpool(t, cfg.SpoolDir)
		})
	}
}

// TestFailTimeoutRecover: the receiver fails, then times out, then
// recovers; the message is accepted on the third attempt, each attempt
// with the same body.
func TestFailTimeoutRecover(t *testing.T) {
	rc := newReceiver(t, func(n int, w http.ResponseWriter, r *http.Request) {
		switch n {
		case 0:
			w.WriteHeader(http.StatusInternalServerError)
		case 1:
			hang(n, w, r)
		default:
			w.WriteHeader(http.StatusOK)
		}
	})
	w := provision(t, &Webhook{URL: rc.URL, Timeout: caddy.Duration(300 * time.Millisecond), Backoff: caddy.Duration(time.Millisecond)})
	ts := smtptest.ServeConfig(t, session.Config{}, w)
	c := ts.DialTCPHello()
	if r := smtptest.Mail(c, messages["dots"], "rcpt@example.test"); !strings.HasPrefix(r, "250 2.0.0 ") {
		t.Fatalf("end of data: %q", r)
	}
	reqs := rc.requests()
	if len(reqs) != 3 {
		t.Fatalf("%d requests, want 3", len(reqs))
	}
	for i, req := range reqs {
		if got := smtptest.SplitReceived(t, req.body); string(got) != messages["dots"] {
			t.Errorf("attempt %d: body %q", i, got)
		}
	}
}

// TestTimeoutThenGiveUp: a receiver that never answers gets 451 after the
// configured retries.
func TestTimeoutThenGiveUp(t *testing.T) {
	rc := newReceiver(t, hang)
	w := provision(t, &Webhook{URL: rc.URL, Timeout: caddy.Duration(100 * time.Millisecond), Retries: intp(1), Backoff: caddy.Duration(time.Millisecond)})
	cfg := fileSpool(t)
	ts := smtptest.ServeConfig(t, cfg, w)
	c := ts.DialTCPHello()
	smtptest.Mail(c, messages["plain"], "rcpt@example.test")
	if r := smtptest.Mail(c, messages["plain"], "rcpt@example.test"); !strings.HasPrefix(r, "451 4.3.0 ") {
		t.Fatalf("end of data: %q", r)
	}
	if n := len(rc.requests()); n != 4 {
		t.Errorf("%d requests for two messages, want 4", n)
	}
	ts.Close()
	smtptest.AssertNoSpool(t, cfg.SpoolDir)
}

// TestBoundedByHandlerTimeout: retries and their waits stop when the
// engine's handler_timeout is nearly over, whatever the retries setting.
func TestBoundedByHandlerTimeout(t *testing.T) {
	rc := newReceiver(t, hang)
	w := provision(t, &Webhook{URL: rc.URL, Timeout: caddy.Duration(time.Hour), Retries: intp(100), Backoff: caddy.Duration(time.Hour)})
	ts := smtptest.ServeConfig(t, session.Config{HandlerTimeout: time.Second}, w)
	c := ts.DialTCPHello()
	if r := smtptest.Mail(c, messages["plain"], "rcpt@example.test"); !strings.HasPrefix(r, "451 4.3.0 ") {
		t.Fatalf("end of data: %q", r)
	}
	if n := len(rc.requests()); n != 1 {
		t.Errorf("%d requests, want 1 (no time for a retry)", n)
	}
}

func TestConnectionRefused(t *testing.T) {
	rc := newReceiver(t, nil)
	url := rc.URL
	rc.Close()
	w := provision(t, &Webhook{URL: url, Retries: intp(1), Backoff: caddy.Duration(time.Millisecond)})
	cfg := fileSpool(t)
	ts := smtptest.ServeConfig(t, cfg, w)
	c := ts.DialTCPHello()
	if r := smtptest.Mail(c, messages["plain"], "rcpt@example.test"); !strings.HasPrefix(r, "451 4.3.0 ") {
		t.Fatalf("end of data: %q", r)
	}
	ts.Close()
	smtptest.AssertNoSpool(t, cfg.SpoolDir)
}

// TestSignature: the signature is the HMAC of the body as sent, in both
// formats and from both spools, and a retry sends the same body and
// signature.
func TestSignature(t *testing.T) {
	for spool, cfg := range spools(t) {
		for _, format := range []string{"raw", "json"} {
			t.Run(spool+"/"+format, func(t *testing.T) {
				rc := newReceiver(t, func(n int, w http.ResponseWriter, _ *http.Request) {
					if n == 0 {
						w.WriteHeader(http.StatusServiceUnavailable)
					}
				})
				w := provision(t, &Webhook{URL: rc.URL, Format: format, Secret: "s3cret", Backoff: caddy.Duration(time.Millisecond)})
				ts := smtptest.ServeConfig(t, cfg, w)
				c := ts.DialTCPHello()
				if r := smtptest.Mail(c, messages["big"], "rcpt@example.test"); !strings.HasPrefix(r, "250 ") {
					t.Fatalf("end of data: %q", r)
				}
				reqs := rc.requests()
				if len(reqs) != 2 {
					t.Fatalf("%d requests, want 2", len(reqs))
				}
				for i, req := range reqs {
					mac := hmac.New(sha256.New, []byte("s3cret"))
					mac.Write(req.body)
					want := "sha256=" + hex.EncodeToString(mac.Sum(nil))
					if got := req.header.Get("X-Esmtp-Signature"); got != want {
						t.Errorf("attempt %d: signature %q, want %q", i, got, want)
					}
					if !bytes.Equal(req.body, reqs[0].body) {
						t.Errorf("attempt %d: another body", i)
					}
				}
			})
		}
	}
}

func TestCustomHeaders(t *testing.T) {
	t.Setenv("WEBHOOK_TEST_TOKEN", "from-env")
	rc := newReceiver(t, nil)
	w := provision(t, &Webhook{URL: rc.URL, Headers: http.Header{
		"authorization": {"Bearer {env.WEBHOOK_TEST_TOKEN}"},
		"X-Extra":       {"a", "b"},
		"Content-Type":  {"message/rfc822; charset=utf-8"},
		"Host":          {"hooks.example.test"},
	}})
	ts := smtptest.ServeConfig(t, session.Config{}, w)
	c := ts.DialTCPHello()
	smtptest.Mail(c, messages["plain"], "rcpt@example.test")
	req := rc.only(t)
	if got := req.header.Get("Authorization"); got != "Bearer from-env" {
		t.Errorf("Authorization %q", got)
	}
	if got := req.header.Values("X-Extra"); strings.Join(got, ",") != "a,b" {
		t.Errorf("X-Extra %q", got)
	}
	if got := req.header.Get("Content-Type"); got != "message/rfc822; charset=utf-8" {
		t.Errorf("Content-Type %q", got)
	}
	if req.host != "hooks.example.test" {
		t.Errorf("Host %q", req.host)
	}
}

// TestTwoInstances: two webhooks in one list read the engine's one spool
// of the message, and keep no file of their own: each receiver gets the
// message in its format.
func TestTwoInstances(t *testing.T) {
	cfg := fileSpool(t)
	tmp := t.TempDir()
	t.Setenv("TMPDIR", tmp) // where a temporary file of the webhook's own would go
	open := func(int, http.ResponseWriter, *http.Request) {
		if n, ok := smtptest.OpenIn(t, cfg.SpoolDir); ok && n != 1 {
			t.Errorf("%d spool files open during the delivery, want 1", n)
		}
		if n, _ := smtptest.OpenIn(t, tmp); n != 0 {
			t.Errorf("%d temporary files open during the delivery, want 0", n)
		}
	}
	raw, js := newReceiver(t, open), newReceiver(t, open)
	w1 := provision(t, &Webhook{URL: raw.URL})
	w2 := provision(t, &Webhook{URL: js.URL, Format: "json"})
	ts := smtptest.ServeConfig(t, cfg, w1, w2)
	c := ts.DialTCPHello()
	if r := smtptest.Mail(c, messages["plain"], "rcpt@example.test"); !strings.HasPrefix(r, "250 ") {
		t.Fatalf("end of data: %q", r)
	}
	if got := smtptest.SplitReceived(t, raw.only(t).body); string(got) != messages["plain"] {
		t.Errorf("raw body %q", got)
	}
	var m jsonMessage
	if err := json.Unmarshal(js.only(t).body, &m); err != nil || m.Body != "Hello.\r\n" {
		t.Errorf("json: %v %+v", err, m)
	}
}

// TestRefusedNotPosted: a message refused while streaming (too big), a
// message a judge refuses and a client gone mid-DATA make no request and
// leave no spool file.
func TestRefusedNotPosted(t *testing.T) {
	rc := newReceiver(t, nil)
	w := provision(t, &Webhook{URL: rc.URL})
	started := make(chan struct{})
	cfg := fileSpool(t)
	cfg.MaxMessageSize = 10000
	ts := smtptest.ServeConfig(t, cfg, smtptest.Failing{}, w, smtptest.EOHSignal{Ch: started})
	c := ts.DialTCPHello()
	if r := smtptest.Mail(c, messages["big"], "rcpt@example.test"); !strings.HasPrefix(r, "552 ") {
		t.Fatalf("too big: %q", r)
	}
	if r := smtptest.Mail(c, "Subject: fail\r\n\r\nx\r\n", "rcpt@example.test"); !strings.HasPrefix(r, "550 5.7.1 ") {
		t.Fatalf("refused by a judge: %q", r)
	}
	c.Cmd("MAIL FROM:<a@example.test>", "250")
	c.Cmd("RCPT TO:<b@example.test>", "250")
	c.Cmd("DATA", "354")
	c.Send("Subject: x\r\n\r\n" + strings.Repeat("line\r\n", 500))
	<-started
	c.Conn.Close()
	ts.Close()
	if n := len(rc.requests()); n != 0 {
		t.Errorf("%d requests for refused messages", n)
	}
	smtptest.AssertNoSpool(t, cfg.SpoolDir)
}

func TestProvisionErrors(t *testing.T) {
	cases := map[string]*Webhook{
		"url is required":          {},
		"url:":                     {URL: "ftp://example.test/"},
		"format:":                  {URL: "http://example.test/", Format: "xml"},
		"retries:":                 {URL: "http://example.test/", Retries: intp(-1)},
		"timeout:":                 {URL: "http://example.test/", Timeout: -1},
		"headers:":                 {URL: "http://example.test/", Headers: http.Header{"X-Esmtp-From": {"x"}}},
		"url: {esmtp.*}":           {URL: "http://example.test/{esmtp.rcpt.domain}"},
		"headers: X-Rcpt":          {URL: "http://example.test/", Headers: http.Header{"X-Rcpt": {"{esmtp.rcpt}"}}},
		"permanent_statuses: 200 ": {URL: "http://example.test/", PermanentStatuses: []int{400, 200}},
		"permanent_statuses: 399 ": {URL: "http://example.test/", PermanentStatuses: []int{399}},
		"permanent_statuses: 600 ": {URL: "http://example.test/", PermanentStatuses: []int{600}},
		"permanent_statuses: 0 ":   {URL: "http://example.test/", PermanentStatuses: []int{0}},
	}
	for want, w := range cases {
		err := smtptest.Provision(w)
		if err == nil || !strings.Contains(err.Error(), "webhook: "+want) {
			t.Errorf("%+v: got %v, want an error naming %q", w, err, want)
		}
	}
}

func TestUnmarshalCaddyfile(t *testing.T) {
	d := caddyfile.NewTestDispenser(`webhook https://hooks.example.test/mail {
		format json
		timeout 5s
		retries 0
		backoff 250ms
		secret {env.SECRET}
		header Authorization "Bearer xyz"
		header X-A 1
		temp_dir /var/spool/esmtp
		permanent_statuses 400 413
		permanent_statuses 415
	}`)
	var w Webhook
	if err := w.UnmarshalCaddyfile(d); err != nil {
		t.Fatal(err)
	}
	got, _ := json.Marshal(&w)
	want := `{"url":"https://hooks.example.test/mail","format":"json","timeout":5000000000,"retries":0,"backoff":250000000,"secret":"{env.SECRET}","headers":{"Authorization":["Bearer xyz"],"X-A":["1"]},"temp_dir":"/var/spool/esmtp","permanent_statuses":[400,413,415]}`
	if string(got) != want {
		t.Errorf("got  %s\nwant %s", got, want)
	}
	for _, bad := range []string{
		"webhook",
		"webhook a b",
		"webhook http://x/ {\n format xml\n}",
		"webhook http://x/ {\n retries -1\n}",
		"webhook http://x/ {\n timeout soon\n}",
		"webhook http://x/ {\n header X-Esmtp-Rcpt x\n}",
		"webhook http://x/ {\n header Bad:Name x\n}",
		"webhook http://x/ {\n header X-A\n}",
		"webhook http://x/ {\n bogus\n}",
		"webhook http://x/ {\n permanent_statuses\n}",
		"webhook http://x/ {\n permanent_statuses 404 200\n}",
		"webhook http://x/ {\n permanent_statuses 600\n}",
		"webhook http://x/ {\n permanent_statuses 4xx\n}",
	} {
		var w Webhook
		if err := w.UnmarshalCaddyfile(caddyfile.NewTestDispenser(bad)); err == nil {
			t.Errorf("%q: no error", bad)
		}
	}
}
