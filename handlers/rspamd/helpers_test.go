package rspamd

import (
	"context"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/caddy-esmtp/caddy-esmtp/internal/smtptest"
	"github.com/caddy-esmtp/caddy-esmtp/session"
)

// standIn is an HTTP server standing in for rspamd, for what the real
// one cannot be made to do on demand: it answers every request with
// status and body, or, with hang, answers nothing until the client gives
// up. It records the requests it got.
type standIn struct {
	srv    *httptest.Server
	status int
	body   string
	hang   bool

	mu    sync.Mutex
	reqs  []request
	conns int // connections accepted
}

// request is one request the stand-in got.
type request struct {
	method, path  string
	header        http.Header
	contentLength int64
	body          string
}

func startStandIn(t *testing.T, status int, body string) *standIn {
	t.Helper()
	si := &standIn{status: status, body: body}
	si.srv = httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		si.mu.Lock()
		si.reqs = append(si.reqs, request{r.Method, r.URL.Path, r.Header.Clone(), r.ContentLength, string(b)})
		si.mu.Unlock()
		if si.hang {
			<-r.Context().Done()
			return
		}
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(si.status)
		io.WriteString(w, si.body)
	}))
	si.srv.Config.ConnState = func(_ net.Conn, state http.ConnState) {
		if state == http.StateNew {
			si.mu.Lock()
			si.conns++
			si.mu.Unlock()
		}
	}
	si.srv.Start()
	t.Cleanup(si.srv.Close)
	return si
}

func (si *standIn) requests() []request {
	si.mu.Lock()
	defer si.mu.Unlock()
	return append([]request(nil), si.reqs...)
}

// keep is a delivery that keeps the messages it gets.
type keep struct {
	mu  sync.Mutex
	got []string
}

func (k *keep) Deliver(_ context.Context, _ *session.Session, d *session.Delivery) error {
	b, err := d.Message.Bytes()
	k.mu.Lock()
	k.got = append(k.got, string(b))
	k.mu.Unlock()
	return err
}

func (k *keep) messages() []string {
	k.mu.Lock()
	defer k.mu.Unlock()
	return append([]string(nil), k.got...)
}

// outcome is what one message sent through [before..., h, keep] came to.
type outcome struct {
	reply     string         // the last line of the end-of-data reply
	delivered string         // the delivered message, "" when none
	log       map[string]any // the fields of the message's log line
	warnings  int            // warnings logged by h
}

// send provisions h (unless it is) and sends msg through the judges
// before, h and a delivery that keeps it, over loopback TCP.
func send(t *testing.T, h *Rspamd, msg string, before ...any) outcome {
	t.Helper()
	core, logs := observer.New(zapcore.InfoLevel)
	if h.client == nil {
		h = smtptest.Provisioned(t, h)
	}
	h.logger = zap.New(core)
	k := &keep{}
	srv := smtptest.ServeConfig(t, session.Config{Logger: zap.New(core)}, append(append(before, h), k)...)
	c := srv.DialTCPHello()
	var out outcome
	out.reply = smtptest.Mail(c, msg, "rcpt@example.test", "other@example.test")
	c.Cmd("QUIT", "221")
	srv.Close()
	switch got := k.messages(); len(got) {
	case 0:
	case 1:
		out.delivered = got[0]
	default:
		t.Fatalf("%d deliveries", len(got))
	}
	out.log = map[string]any{}
	for _, e := range logs.FilterMessage("message").All() {
		for k, v := range e.ContextMap() {
			out.log[k] = v
		}
	}
	out.warnings = logs.FilterLevelExact(zapcore.WarnLevel).Len()
	return out
}

// message is the test message.
const message = "From: Alice <alice@example.test>\r\n" +
	"To: rcpt@example.test\r\n" +
	"Subject: Hello there\r\n" +
	"X-Spam: forged\r\n" +
	"Message-ID: <m1@example.test>\r\n" +
	"\r\n" +
	"A clean message.\r\n"

// withBody replaces the test message's body.
func withBody(body string) string {
	head, _, _ := strings.Cut(message, "\r\n\r\n")
	return head + "\r\n\r\n" + body
}

// names returns the names of the header fields of msg, in order, with
// the value of each after a colon ("Subject:Hello"), values unfolded.
func names(msg string) []string {
	var out []string
	walkFields(strings.NewReader(msg), func(name string, value []byte) bool {
		v := strings.TrimSpace(strings.NewReplacer("\r\n", "", "\n", "").Replace(string(value)))
		out = append(out, name+":"+v)
		return true
	})
	return out
}

// fieldsNamed returns the values of the fields called name, in order.
func fieldsNamed(msg, name string) []string {
	var out []string
	for _, f := range names(msg) {
		if n, v, _ := strings.Cut(f, ":"); strings.EqualFold(n, name) {
			out = append(out, v)
		}
	}
	return out
}
