package integration_test

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
)

// webhookReceiver is a real HTTP server on loopback that records each
// request and answers as respond says (n counts requests from 0).
type webhookReceiver struct {
	*httptest.Server
	mu     sync.Mutex
	bodies [][]byte
	heads  []http.Header
}

func newWebhookReceiver(t *testing.T, respond func(n int, w http.ResponseWriter, r *http.Request)) *webhookReceiver {
	t.Helper()
	rc := &webhookReceiver{}
	rc.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		rc.mu.Lock()
		n := len(rc.bodies)
		rc.bodies = append(rc.bodies, body)
		rc.heads = append(rc.heads, r.Header.Clone())
		rc.mu.Unlock()
		respond(n, w, r)
	}))
	t.Cleanup(rc.Close)
	return rc
}

func (rc *webhookReceiver) got() ([][]byte, []http.Header) {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	return append([][]byte(nil), rc.bodies...), append([]http.Header(nil), rc.heads...)
}

// sendMessage sends message from a@client.test to rcpts over a raw
// session and returns the reply to the end of data.
func sendMessage(t *testing.T, addr string, rcpts ...string) string {
	t.Helper()
	c := dial(t, addr)
	c.expect("220 ")
	c.send("EHLO client.test\r\n")
	c.expect("250 ")
	c.send("MAIL FROM:<a@client.test>\r\n")
	c.expect("250 ")
	for _, r := range rcpts {
		c.send("RCPT TO:<" + r + ">\r\n")
		c.expect("250 ")
	}
	c.send("DATA\r\n")
	c.expect("354 ")
	c.send(stuffed(message) + ".\r\n")
	lines := c.reply()
	c.send("QUIT\r\n")
	c.expect("221 ")
	return lines[len(lines)-1]
}

// TestWebhookCaddyfile: in real Caddy, a webhook whose receiver fails
// (500), then times out, then recovers delivers the message on the third
// attempt: each attempt carries the message byte for byte, the envelope
// headers, the custom header and a valid signature.
func TestWebhookCaddyfile(t *testing.T) {
	t.Setenv("ESMTP_TEST_WEBHOOK_SECRET", "integration-secret")
	rc := newWebhookReceiver(t, func(n int, w http.ResponseWriter, r *http.Request) {
		switch n {
		case 0:
			w.WriteHeader(http.StatusInternalServerError)
		case 1:
			<-r.Context().Done() // until the webhook's timeout
		default:
			w.WriteHeader(http.StatusNoContent)
		}
	})
	addr, _ := startCaddyfile(t, esmtpCaddyfile(`
					webhook `+rc.URL+`/mail {
						timeout 300ms
						retries 2
						backoff 10ms
						secret {env.ESMTP_TEST_WEBHOOK_SECRET}
						header X-Token abc
					}
`))
	reply := sendMessage(t, addr, "one@example.test", "two@example.test")
	if !strings.HasPrefix(reply, "250 2.0.0 ") {
		t.Fatalf("end of data: %q", reply)
	}
	queueID := strings.Fields(reply)[2]
	bodies, heads := rc.got()
	if len(bodies) != 3 {
		t.Fatalf("%d requests, want 3 (fail, time out, recover)", len(bodies))
	}
	for i, body := range bodies {
		splitReceived(t, body, "mx.example.test", []byte(message))
		h := heads[i]
		mac := hmac.New(sha256.New, []byte("integration-secret"))
		mac.Write(body)
		if got, want := h.Get("X-Esmtp-Signature"), "sha256="+hex.EncodeToString(mac.Sum(nil)); got != want {
			t.Errorf("attempt %d: signature %q, want %q", i, got, want)
		}
		if h.Get("X-Esmtp-Queue-Id") != queueID || h.Get("X-Esmtp-From") != "a@client.test" ||
			strings.Join(h.Values("X-Esmtp-Rcpt"), ",") != "one@example.test,two@example.test" ||
			!strings.HasPrefix(h.Get("X-Esmtp-Remote"), "127.0.0.1:") ||
			h.Get("X-Token") != "abc" || h.Get("Content-Type") != "message/rfc822" {
			t.Errorf("attempt %d: headers %v", i, h)
		}
	}
}

// TestWebhookJSON: the json format from Caddy's JSON config; a status
// listed in permanent_statuses answered 554, any other 4xx 451.
func TestWebhookJSON(t *testing.T) {
	rc := newWebhookReceiver(t, func(_ int, w http.ResponseWriter, r *http.Request) {
		switch rcpt := r.Header.Get("X-Esmtp-Rcpt"); {
		case strings.Contains(rcpt, "unknown@"):
			w.WriteHeader(http.StatusNotFound)
		case strings.Contains(rcpt, "rotated@"):
			w.WriteHeader(http.StatusUnauthorized)
		}
	})
	port := freePort(t)
	load(t, []byte(fmt.Sprintf(`{
		"admin": {"disabled": true, "config": {"persist": false}},
		"apps": {"layer4": {"servers": {"smtp": {
			"listen": ["127.0.0.1:%d"],
			"routes": [{"handle": [{
				"handler": "esmtp",
				"hostname": "mx.example.test",
				"handlers": [{"handler": "webhook", "url": %q, "format": "json", "retries": 0, "permanent_statuses": [404]}]
			}]}]
		}}}}
	}`, port, rc.URL)))
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	waitListening(t, addr)

	reply := sendMessage(t, addr, "b@example.test")
	if !strings.HasPrefix(reply, "250 2.0.0 ") {
		t.Fatalf("end of data: %q", reply)
	}
	if r := sendMessage(t, addr, "unknown@example.test"); !strings.HasPrefix(r, "554 5.6.0 Rejected by webhook: 404") {
		t.Errorf("a 404: %q", r)
	}
	if r := sendMessage(t, addr, "rotated@example.test"); !strings.HasPrefix(r, "451 4.3.0 Delivery failed: webhook answered 401") {
		t.Errorf("a 401: %q", r)
	}
	bodies, heads := rc.got()
	if len(bodies) != 3 || heads[0].Get("Content-Type") != "application/json" {
		t.Fatalf("%d requests: %v", len(bodies), heads)
	}
	var m struct {
		Envelope struct {
			QueueID    string   `json:"queue_id"`
			From       string   `json:"from"`
			Recipients []string `json:"recipients"`
			Helo       string   `json:"helo"`
			TLS        bool     `json:"tls"`
		} `json:"envelope"`
		Headers []struct{ Name, Value string } `json:"headers"`
		Body    string                         `json:"body"`
	}
	if err := json.Unmarshal(bodies[0], &m); err != nil {
		t.Fatalf("not JSON: %v\n%s", err, bodies[0])
	}
	if m.Envelope.QueueID != strings.Fields(reply)[2] || m.Envelope.From != "a@client.test" ||
		strings.Join(m.Envelope.Recipients, ",") != "b@example.test" || m.Envelope.Helo != "client.test" || m.Envelope.TLS {
		t.Errorf("envelope %+v", m.Envelope)
	}
	if len(m.Headers) != 4 || m.Headers[0].Name != "Received" || m.Headers[3].Name != "Subject" || m.Headers[3].Value != "a folded subject" {
		t.Errorf("headers %+v", m.Headers)
	}
	if want := message[strings.Index(message, "\r\n\r\n")+4:]; m.Body != want {
		t.Errorf("body %q, want %q", m.Body, want)
	}
}

// TestWebhookJudged: in real Caddy, a judge's edit reaches every webhook
// delivery: a raw and a json webhook after example_judge both get the
// message with the judge's field first, signed over what they got.
func TestWebhookJudged(t *testing.T) {
	ok := func(int, http.ResponseWriter, *http.Request) {}
	raw, js := newWebhookReceiver(t, ok), newWebhookReceiver(t, ok)
	addr, _ := startCaddyfile(t, esmtpCaddyfile(`
					example_judge
					webhook `+raw.URL+` {
						secret k
					}
					webhook `+js.URL+` {
						format json
						secret k
					}
`))
	if reply := sendMessage(t, addr, "b@example.test"); !strings.HasPrefix(reply, "250 2.0.0 ") {
		t.Fatalf("end of data: %q", reply)
	}
	body := message[strings.Index(message, "\r\n\r\n")+4:]
	judged := fmt.Sprintf("X-Example-Judge: passed; %d body bytes\r\n", len(body))
	for name, rc := range map[string]*webhookReceiver{"raw": raw, "json": js} {
		bodies, heads := rc.got()
		if len(bodies) != 1 {
			t.Fatalf("%s: %d requests, want 1", name, len(bodies))
		}
		mac := hmac.New(sha256.New, []byte("k"))
		mac.Write(bodies[0])
		if got, want := heads[0].Get("X-Esmtp-Signature"), "sha256="+hex.EncodeToString(mac.Sum(nil)); got != want {
			t.Errorf("%s: signature %q, want %q", name, got, want)
		}
		if name == "raw" {
			rest, found := strings.CutPrefix(string(bodies[0]), judged)
			if !found {
				t.Fatalf("raw: no judge's field first: %q", bodies[0])
			}
			splitReceived(t, []byte(rest), "mx.example.test", []byte(message))
			continue
		}
		var m struct {
			Headers []struct{ Name, Value string } `json:"headers"`
			Body    string                         `json:"body"`
		}
		if err := json.Unmarshal(bodies[0], &m); err != nil {
			t.Fatalf("json: %v", err)
		}
		if len(m.Headers) != 5 || m.Headers[0].Name+": "+m.Headers[0].Value+"\r\n" != judged || m.Headers[1].Name != "Received" || m.Body != body {
			t.Errorf("json: %+v", m)
		}
	}
}

// TestExecCaddyfile: in real Caddy, exec pipes the message to a script
// with the envelope in its arguments; exit 0 accepts, 75 defers, 67
// (EX_NOUSER) rejects, 1 (a crash) defers.
func TestExecCaddyfile(t *testing.T) {
	if runtime.GOOS == "windows" {
		t.Skip("needs /bin/sh")
	}
	dir := t.TempDir()
	out := filepath.Join(dir, "out")
	if err := os.Mkdir(out, 0o700); err != nil {
		t.Fatal(err)
	}
	sh := filepath.Join(dir, "deliver")
	if err := os.WriteFile(sh, []byte(`#!/bin/sh
out=$1; id=$2; shift 2
cat > "$out/$id"
printf '%s\n' "$@" > "$out/$id.args"
case "$*" in
*tempfail@*) exit 75 ;;
*reject@*) echo "no such mailbox" >&2; exit 67 ;;
*crash@*) echo "Traceback" >&2; exit 1 ;;
esac
`), 0o755); err != nil {
		t.Fatal(err)
	}
	addr, _ := startCaddyfile(t, esmtpCaddyfile(`
					exec `+sh+` `+out+` {esmtp.queue_id} -f {esmtp.from} -- {esmtp.rcpt} {
						timeout 30s
					}
`))
	reply := sendMessage(t, addr, "one@example.test", "two@example.test")
	if !strings.HasPrefix(reply, "250 2.0.0 ") {
		t.Fatalf("end of data: %q", reply)
	}
	queueID := strings.Fields(reply)[2]
	stdin, err := os.ReadFile(filepath.Join(out, queueID))
	if err != nil {
		t.Fatal(err)
	}
	splitReceived(t, stdin, "mx.example.test", []byte(message))
	args, err := os.ReadFile(filepath.Join(out, queueID+".args"))
	if err != nil {
		t.Fatal(err)
	}
	if want := "-f\na@client.test\n--\none@example.test\ntwo@example.test\n"; string(args) != want {
		t.Errorf("args %q, want %q", args, want)
	}

	if r := sendMessage(t, addr, "tempfail@example.test"); !strings.HasPrefix(r, "451 4.3.0 ") {
		t.Errorf("exit 75: %q", r)
	}
	if r := sendMessage(t, addr, "reject@example.test"); !strings.HasPrefix(r, "550 5.1.1 Rejected by deliver") {
		t.Errorf("exit 67: %q", r)
	}
	if r := sendMessage(t, addr, "crash@example.test"); !strings.HasPrefix(r, "451 4.3.0 ") {
		t.Errorf("exit 1: %q", r)
	}
}
