package webhook

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"testing/iotest"

	"github.com/caddy-esmtp/caddy-esmtp/internal/smtptest"
	"github.com/caddy-esmtp/caddy-esmtp/session"
)

// judgedMessage has a folded subject (the whole field is replaced), 8-bit
// text and dots.
const judgedMessage = "From: a@example.test\r\nSubject: a\r\n folded\r\n\tsubject\r\nX-8bit: \xc3\xa9t\xc3\xa9\r\n\r\n.\r\nbody \xc3\xa9\r\n..end\r\n"

// TestJudgeEdits: a judge's edits reach the webhook: the receiver gets
// exactly the edited message, byte for byte otherwise, in both formats,
// signed over what it got, from both spools.
func TestJudgeEdits(t *testing.T) {
	for spool, cfg := range spools(t) {
		t.Run(spool+"/raw", func(t *testing.T) {
			rc := newReceiver(t, nil)
			w := provision(t, &Webhook{URL: rc.URL, Secret: "k"})
			ts := smtptest.ServeConfig(t, cfg, smtptest.EditJudge, w)
			c := ts.DialTCPHello()
			if r := smtptest.Mail(c, judgedMessage, "rcpt@example.test"); !strings.HasPrefix(r, "250 2.0.0 ") {
				t.Fatalf("end of data: %q", r)
			}
			req := rc.only(t)
			checkSignature(t, req, "k")
			rest, ok := bytes.CutPrefix(req.body, []byte("X-Judged: yes\r\n"))
			if !ok {
				t.Fatalf("the message does not start with the judge's field: %q", req.body)
			}
			want := "From: a@example.test\r\nSubject: changed\r\nX-8bit: \xc3\xa9t\xc3\xa9\r\n\r\n.\r\nbody \xc3\xa9\r\n..end\r\n"
			if got := smtptest.SplitReceived(t, rest); string(got) != want {
				t.Errorf("POSTed message differs\n got: %q\nwant: %q", got, want)
			}
			if req.contentLength != int64(len(req.body)) {
				t.Errorf("Content-Length %d for %d bytes", req.contentLength, len(req.body))
			}
		})
		t.Run(spool+"/json", func(t *testing.T) {
			rc := newReceiver(t, nil)
			w := provision(t, &Webhook{URL: rc.URL, Format: "json", Secret: "k"})
			ts := smtptest.ServeConfig(t, cfg, smtptest.EditJudge, w)
			c := ts.DialTCPHello()
			if r := smtptest.Mail(c, judgedMessage, "rcpt@example.test"); !strings.HasPrefix(r, "250 2.0.0 ") {
				t.Fatalf("end of data: %q", r)
			}
			req := rc.only(t)
			checkSignature(t, req, "k")
			var m jsonMessage
			if err := json.Unmarshal(req.body, &m); err != nil {
				t.Fatalf("not JSON: %v\n%s", err, req.body)
			}
			var names []string
			for _, h := range m.Headers {
				names = append(names, h.Name+": "+h.Value)
			}
			if len(names) != 5 || names[0] != "X-Judged: yes" || !strings.HasPrefix(names[1], "Received: from ") ||
				strings.Join(names[2:], "|") != "From: a@example.test|Subject: changed|X-8bit: été" {
				t.Errorf("headers %q", names)
			}
			if want := ".\r\nbody é\r\n..end\r\n"; m.Body != want {
				t.Errorf("body %q, want %q", m.Body, want)
			}
		})
	}
}

func checkSignature(t *testing.T, req request, secret string) {
	t.Helper()
	mac := hmac.New(sha256.New, []byte(secret))
	mac.Write(req.body)
	if got, want := req.header.Get("X-Esmtp-Signature"), "sha256="+hex.EncodeToString(mac.Sum(nil)); got != want {
		t.Errorf("signature %q, want %q", got, want)
	}
}

// envelopeJudge changes the sender, removes a recipient and replaces the
// body.
type envelopeJudge struct{}

// EndOfMessage edits the envelope and the body.
func (envelopeJudge) EndOfMessage(_ context.Context, s *session.Session) (*session.Reply, error) {
	txn := s.Transaction()
	txn.SetSender(session.Path{Mailbox: "judged@example.test"}, nil)
	txn.RemoveRecipient("two@example.test")
	return nil, txn.ReplaceBody(strings.NewReader("new body\r\n"))
}

// TestJudgeEnvelope: the webhook sends the final envelope and body.
func TestJudgeEnvelope(t *testing.T) {
	for _, format := range []string{"raw", "json"} {
		t.Run(format, func(t *testing.T) {
			rc := newReceiver(t, nil)
			w := provision(t, &Webhook{URL: rc.URL, Format: format})
			ts := smtptest.ServeConfig(t, session.Config{}, envelopeJudge{}, w)
			c := ts.DialTCPHello()
			if r := smtptest.Mail(c, messages["plain"], "one@example.test", "two@example.test"); !strings.HasPrefix(r, "250 2.0.0 ") {
				t.Fatalf("end of data: %q", r)
			}
			req := rc.only(t)
			if got := req.header.Get("X-Esmtp-From"); got != "judged@example.test" {
				t.Errorf("X-Esmtp-From %q", got)
			}
			if got := req.header.Values("X-Esmtp-Rcpt"); strings.Join(got, ",") != "one@example.test" {
				t.Errorf("X-Esmtp-Rcpt %q", got)
			}
			if format == "raw" {
				want := "From: a@example.test\r\nTo: b@example.test\r\nSubject: hi\r\n\r\nnew body\r\n"
				if got := smtptest.SplitReceived(t, req.body); string(got) != want {
					t.Errorf("message %q, want %q", got, want)
				}
				return
			}
			var m jsonMessage
			if err := json.Unmarshal(req.body, &m); err != nil {
				t.Fatal(err)
			}
			if m.Envelope.From != "judged@example.test" || strings.Join(m.Envelope.Recipients, ",") != "one@example.test" ||
				m.Body != "new body\r\n" || len(m.Headers) != 4 {
				t.Errorf("got %+v", m)
			}
		})
	}
}

// domain matches the recipients of one domain.
type domain string

// MatchSession matches every session.
func (domain) MatchSession(*session.Session) bool { return true }

// MatchSender matches every sender.
func (domain) MatchSender(*session.Session, session.Path) bool { return true }

// MatchRecipient matches the recipients of the domain.
func (d domain) MatchRecipient(_ *session.Session, to session.Path) bool {
	return strings.HasSuffix(to.Mailbox, "@"+string(d))
}

// TestRecipientsPerDelivery: behind matchers, each webhook gets only the
// recipients it takes, in the headers and in the json envelope.
func TestRecipientsPerDelivery(t *testing.T) {
	a, b := newReceiver(t, nil), newReceiver(t, nil)
	cfg := smtptest.Config()
	cfg.Handlers = []session.SubHandler{
		{Name: "a", Handler: provision(t, &Webhook{URL: a.URL, Format: "json"}), Match: domain("a.test")},
		{Name: "b", Handler: provision(t, &Webhook{URL: b.URL}), Match: domain("b.test")},
	}
	ts := smtptest.NewServer(t, cfg)
	c := ts.DialTCPHello()
	if r := smtptest.Mail(c, messages["plain"], "one@a.test", "two@b.test", "three@a.test"); !strings.HasPrefix(r, "250 2.0.0 ") {
		t.Fatalf("end of data: %q", r)
	}
	c.Cmd("MAIL FROM:<x@example.test>", "250")
	c.Cmd("RCPT TO:<nobody@c.test>", "550")
	c.Cmd("RSET", "250")
	reqA, reqB := a.only(t), b.only(t)
	if got := reqA.header.Values("X-Esmtp-Rcpt"); strings.Join(got, ",") != "one@a.test,three@a.test" {
		t.Errorf("a: X-Esmtp-Rcpt %q", got)
	}
	var m jsonMessage
	if err := json.Unmarshal(reqA.body, &m); err != nil || strings.Join(m.Envelope.Recipients, ",") != "one@a.test,three@a.test" {
		t.Errorf("a: %v %+v", err, m.Envelope)
	}
	if got := reqB.header.Values("X-Esmtp-Rcpt"); strings.Join(got, ",") != "two@b.test" {
		t.Errorf("b: X-Esmtp-Rcpt %q", got)
	}
	if got := smtptest.SplitReceived(t, reqB.body); string(got) != messages["plain"] {
		t.Errorf("b: message %q", got)
	}
}

// TestJSONEncoderReads: the json encoding does not depend on how the
// message is read: byte by byte (every UTF-8 sequence, header line and
// the end of the header cut at every offset), in halves, or at once; and
// it splits the header as the engine does.
func TestJSONEncoderReads(t *testing.T) {
	env := []byte(`{"queue_id":"Q"}`)
	cases := map[string]struct {
		msg     string
		headers [][2]string
		body    string
	}{
		"plain":      {messages["plain"], [][2]string{{"From", "a@example.test"}, {"To", "b@example.test"}, {"Subject", "hi"}}, "Hello.\r\n"},
		"folded":     {"Subject:  a\r\n folded\r\n\tfield \r\nX-E:\r\n\r\nbody", [][2]string{{"Subject", "a folded\tfield"}, {"X-E", ""}}, "body"},
		"no body":    {"Subject: only a header\r\n", [][2]string{{"Subject", "only a header"}}, ""},
		"no header":  {"just a body line\r\nSubject: not a field\r\n", nil, "just a body line\r\nSubject: not a field\r\n"},
		"no blank":   {"Subject: x\r\nnot a field\r\nmore\r\n", [][2]string{{"Subject", "x"}}, "not a field\r\nmore\r\n"},
		"last line":  {"Subject: x\r\nA: b", [][2]string{{"Subject", "x"}}, "A: b"},
		"space line": {" folded first\r\nA: b\r\n", nil, " folded first\r\nA: b\r\n"},
		"utf-8":      {"Subject: \xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80 \xff\r\n\r\n\xf0\x9f\x98\x80\xe2\x82\r\n\"\\\t\x01", [][2]string{{"Subject", "é€😀 \ufffd"}}, "😀\ufffd\ufffd\r\n\"\\\t\x01"},
		"long field": {"X-Long: " + strings.Repeat("v", 100<<10) + "\r\n\r\n" + strings.Repeat("é", 40<<10), [][2]string{{"X-Long", strings.Repeat("v", 100<<10)}}, strings.Repeat("é", 40<<10)},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			whole, err := io.ReadAll(newJSONEncoder(env, strings.NewReader(tc.msg)))
			if err != nil {
				t.Fatal(err)
			}
			var m struct {
				Envelope struct {
					QueueID string `json:"queue_id"`
				} `json:"envelope"`
				Headers []struct{ Name, Value string } `json:"headers"`
				Body    string                         `json:"body"`
			}
			if err := json.Unmarshal(whole, &m); err != nil {
				t.Fatalf("not JSON: %v\n%.300s", err, whole)
			}
			if m.Envelope.QueueID != "Q" || m.Headers == nil || len(m.Headers) != len(tc.headers) || m.Body != tc.body {
				t.Fatalf("got %.300q", whole)
			}
			for i, h := range tc.headers {
				if m.Headers[i].Name != h[0] || m.Headers[i].Value != h[1] {
					t.Errorf("header %d: %.100q, want %.100q", i, m.Headers[i], h)
				}
			}
			readers := map[string]io.Reader{
				"one byte":      iotest.OneByteReader(newJSONEncoder(env, iotest.OneByteReader(strings.NewReader(tc.msg)))),
				"halves":        iotest.HalfReader(newJSONEncoder(env, iotest.HalfReader(strings.NewReader(tc.msg)))),
				"data with EOF": newJSONEncoder(env, iotest.DataErrReader(strings.NewReader(tc.msg))),
			}
			for how, r := range readers {
				got, err := io.ReadAll(r)
				if err != nil || !bytes.Equal(got, whole) {
					t.Errorf("%s: %v, %.300q", how, err, got)
				}
			}
			var buf bytes.Buffer
			if n, err := newJSONEncoder(env, iotest.OneByteReader(strings.NewReader(tc.msg))).WriteTo(&buf); err != nil || n != int64(buf.Len()) || !bytes.Equal(buf.Bytes(), whole) {
				t.Errorf("WriteTo: %d, %v, %.300q", n, err, buf.Bytes())
			}
		})
	}
	// A read error is the encoder's error.
	if _, err := io.ReadAll(newJSONEncoder(env, iotest.TimeoutReader(strings.NewReader(messages["big"])))); err != iotest.ErrTimeout {
		t.Errorf("read error: %v", err)
	}
}

// TestBodyAfterAttempt: a request body read after its attempt ended
// fails, never reading the message again.
func TestBodyAfterAttempt(t *testing.T) {
	p := &payload{size: 5, open: func() io.Reader { return strings.NewReader("hello") }}
	var bodies attemptBodies
	b := bodies.open(p)
	buf := make([]byte, 2)
	if n, err := b.Read(buf); n != 2 || err != nil {
		t.Fatalf("read: %d %v", n, err)
	}
	again := bodies.open(p) // as GetBody would
	bodies.end()
	for _, b := range []*body{b, again} {
		if n, err := b.Read(buf); n != 0 || err != errBodyClosed {
			t.Errorf("read after the attempt: %d %v", n, err)
		}
	}
}

// TestTempDirIgnored: temp_dir, no longer used, still loads, even naming
// no directory.
func TestTempDirIgnored(t *testing.T) {
	if err := smtptest.Provision(&Webhook{URL: "http://example.test/", TempDir: "/nonexistent/spool"}); err != nil {
		t.Errorf("temp_dir: %v", err)
	}
}

// TestEarlyAnswer: a receiver that answers before reading the body (a
// large message refused at once) ends the attempt; the transport reading
// on does not touch the message once the engine has freed its spool, and
// the session goes on.
func TestEarlyAnswer(t *testing.T) {
	for spool, cfg := range spools(t) {
		t.Run(spool, func(t *testing.T) {
			rc := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
				w.WriteHeader(http.StatusRequestEntityTooLarge)
			}))
			t.Cleanup(rc.Close)
			w := provision(t, &Webhook{URL: rc.URL, PermanentStatuses: []int{413}})
			cfg.MaxMessageSize = 64 << 20
			ts := smtptest.ServeConfig(t, cfg, w)
			c := ts.DialTCPHello()
			big := "Subject: big\r\n\r\n" + strings.Repeat(strings.Repeat("x", 998)+"\r\n", 8<<10)
			for range 2 {
				if r := smtptest.Mail(c, big, "rcpt@example.test"); !strings.HasPrefix(r, "554 5.6.0 ") {
					t.Fatalf("end of data: %q", r)
				}
			}
			c.Cmd("QUIT", "221")
			ts.Close()
			if cfg.SpoolDir != "" {
				smtptest.AssertNoSpool(t, cfg.SpoolDir)
			}
		})
	}
}
