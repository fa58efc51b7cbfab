package integration_test

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/caddy-esmtp/caddy-esmtp/internal/filtertest"
)

// upstreamSink is an SMTP server (go-smtp) that keeps what it gets and
// refuses the recipient "refused@example.test" with 550 5.1.1.
type upstreamSink struct {
	mu   sync.Mutex
	msgs [][]byte
	srv  *smtp.Server
}

func (u *upstreamSink) NewSession(*smtp.Conn) (smtp.Session, error) { return &sinkSession{u: u}, nil }

type sinkSession struct{ u *upstreamSink }

func (s *sinkSession) Mail(string, *smtp.MailOptions) error { return nil }
func (s *sinkSession) Rcpt(to string, _ *smtp.RcptOptions) error {
	if to == "refused@example.test" {
		return &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 1, 1}, Message: "No such user here"}
	}
	return nil
}
func (s *sinkSession) Data(r io.Reader) error {
	b, err := io.ReadAll(r)
	if err != nil {
		return err
	}
	s.u.mu.Lock()
	s.u.msgs = append(s.u.msgs, b)
	s.u.mu.Unlock()
	return nil
}
func (s *sinkSession) Reset()        {}
func (s *sinkSession) Logout() error { return nil }

func (u *upstreamSink) count() int {
	u.mu.Lock()
	defer u.mu.Unlock()
	return len(u.msgs)
}

// startUpstreamSink serves u on addr (which may have been unused until
// now) until the test ends.
func startUpstreamSink(t *testing.T, u *upstreamSink, addr string) {
	t.Helper()
	l, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	u.srv = smtp.NewServer(u)
	u.srv.Domain = "upstream.example.test"
	go u.srv.Serve(l)
	t.Cleanup(func() { u.srv.Close() })
}

// TestQueueUpstreamDownThenPartlyRefusing: with a queue before relay, the
// client gets 250 while the upstream is down; the messages stay queued
// and arrive once it starts, each once. Then an upstream that refuses one
// of two recipients: the other is delivered, and the refused one bounces
// with a DSN in the sender's Maildir that Python's email package reads
// (no defects; the delivery-status block of the refused recipient with
// Action failed, Status 5.1.1, the upstream as Remote-MTA and its reply
// as Diagnostic-Code).
func TestQueueUpstreamDownThenPartlyRefusing(t *testing.T) {
	py, err := exec.LookPath("python3")
	if err != nil {
		filtertest.Missing(t, "python3 not installed")
	}
	qdir := filepath.Join(t.TempDir(), "queue")
	upAddr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	addr, maildir := startCaddyfile(t, esmtpCaddyfile(`
					queue `+qdir+` {
						retry_interval 1s
						max_retry_interval 1s
					}
					@sender rcpt client.test
					@out rcpt example.test
					maildir @sender %MAIL%
					relay @out smtp://`+upAddr+` {
						domains example.test
						require_tls off
					}
`))
	send := func(rcpts ...string) {
		t.Helper()
		c := dial(t, addr)
		c.expect("220 ")
		c.send("EHLO client.test\r\nMAIL FROM:<a@client.test>\r\n")
		c.expect("250 ")
		c.expect("250 2.1.0")
		for _, r := range rcpts {
			c.send("RCPT TO:<" + r + ">\r\n")
			c.expect("250 2.1.5")
		}
		c.send("DATA\r\n")
		c.expect("354 ")
		c.send(stuffed(message) + ".\r\nQUIT\r\n")
		c.expect("250 2.0.0")
		c.expect("221 ")
	}
	for range 3 {
		send("b@example.test")
	}
	waitFor(t, "a deferred attempt of each message", func() bool {
		states, _ := filepath.Glob(filepath.Join(qdir, "*.state"))
		n := 0
		for _, s := range states {
			if b, _ := os.ReadFile(s); bytes.Contains(b, []byte(`"deferred"`)) {
				n++
			}
		}
		return n == 3
	})
	up := &upstreamSink{}
	startUpstreamSink(t, up, upAddr)
	waitFor(t, "the 3 queued messages at the upstream", func() bool { return up.count() >= 3 })
	waitFor(t, "an empty queue", func() bool {
		msgs, _ := filepath.Glob(filepath.Join(qdir, "*.msg"))
		return len(msgs) == 0
	})
	time.Sleep(1500 * time.Millisecond) // a retry that should not happen would have
	if n := up.count(); n != 3 {
		t.Fatalf("the upstream got %d messages, want 3 (each once)", n)
	}

	send("b@example.test", "refused@example.test")
	waitFor(t, "the DSN in the sender's Maildir", func() bool { return len(delivered(t, maildir)) == 1 })
	if n := up.count(); n != 4 {
		t.Errorf("the upstream got %d messages, want 4", n)
	}
	dsn := delivered(t, maildir)[0]
	cmd := exec.Command(py, "../queue/dsn/testdata/parse_dsn.py")
	cmd.Stdin = bytes.NewReader(dsn)
	out, err := cmd.Output()
	if err != nil {
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			t.Fatalf("python: %v\n%s", err, ee.Stderr)
		}
		t.Fatal(err)
	}
	var got struct {
		Defects     []string     `json:"defects"`
		ContentType string       `json:"content_type"`
		ReportType  string       `json:"report_type"`
		To          string       `json:"to"`
		From        string       `json:"from"`
		Blocks      [][][]string `json:"blocks"`
	}
	if err := json.Unmarshal(out, &got); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	if len(got.Defects) != 0 || got.ContentType != "multipart/report" || got.ReportType != "delivery-status" || !strings.Contains(got.To, "a@client.test") {
		t.Fatalf("Python read %+v\n%s", got, dsn)
	}
	var recipients []map[string]string
	for _, b := range got.Blocks[1:] {
		m := map[string]string{}
		for _, kv := range b {
			m[kv[0]] = kv[1]
		}
		recipients = append(recipients, m)
	}
	if len(recipients) != 1 {
		t.Fatalf("DSN recipient blocks %v, want only the refused one", recipients)
	}
	r := recipients[0]
	for k, want := range map[string]string{
		"Final-Recipient": "rfc822; refused@example.test",
		"Action":          "failed",
		"Status":          "5.1.1",
		"Remote-MTA":      "dns; 127.0.0.1",
	} {
		if r[k] != want {
			t.Errorf("%s: %q, want %q", k, r[k], want)
		}
	}
	if d := r["Diagnostic-Code"]; !strings.Contains(d, "550") || !strings.Contains(d, "No such user here") {
		t.Errorf("Diagnostic-Code %q, want the upstream's reply", d)
	}
}
