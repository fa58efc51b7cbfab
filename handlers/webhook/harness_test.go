package webhook

import (
	"bufio"
	"bytes"
	"context"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/caddyserver/caddy/v2"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest"

	"github.com/caddy-esmtp/caddy-esmtp/internal/smtptest"
	"github.com/caddy-esmtp/caddy-esmtp/session"
)

// provision provisions w through Caddy's API, with its logger writing to
// the test log and its spool files in a fresh directory.
func provision(tb testing.TB, w *Webhook) *Webhook {
	tb.Helper()
	if w.TempDir == "" {
		w.TempDir = tb.TempDir()
	}
	if err := tryProvision(w); err != nil {
		tb.Fatalf("provisioning webhook: %v", err)
	}
	w.logger = zaptest.NewLogger(tb, zaptest.Level(zap.InfoLevel))
	tb.Cleanup(func() { w.Cleanup() })
	return w
}

func tryProvision(w *Webhook) error {
	ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
	defer cancel()
	return w.Provision(ctx)
}

// serve runs the engine with cfg and the sub-handlers in order.
func serve(tb testing.TB, cfg session.Config, handlers ...any) *smtptest.Server {
	tb.Helper()
	base := smtptest.Config(handlers...)
	cfg.Hostname, cfg.Handlers = base.Hostname, base.Handlers
	return smtptest.NewServer(tb, cfg)
}

// dial opens a session over loopback TCP that has said EHLO.
func dial(ts *smtptest.Server) *smtptest.Client {
	return ts.DialTCP().Hello(smtptest.Helo)
}

// mail sends one message (CRLF line ends) from sender@example.test to
// rcpts with DATA, dot-stuffing it, and returns the final reply.
func mail(c *smtptest.Client, msg string, rcpts ...string) string {
	c.Cmd("MAIL FROM:<sender@example.test>", "250")
	for _, r := range rcpts {
		c.Cmd("RCPT TO:<"+r+">", "250")
	}
	c.Cmd("DATA", "354")
	c.Send(stuff(msg) + ".\r\n")
	return c.ReadReply().Last()
}

// stuff dot-stuffs msg (RFC 5321 4.5.2).
func stuff(msg string) string {
	lines := strings.SplitAfter(msg, "\r\n")
	for i, l := range lines {
		if strings.HasPrefix(l, ".") {
			lines[i] = "." + l
		}
	}
	return strings.Join(lines, "")
}

// splitReceived checks that file starts with a Received: field by our
// hostname and returns the rest.
func splitReceived(tb testing.TB, file []byte) []byte {
	tb.Helper()
	if !bytes.HasPrefix(file, []byte("Received: from ")) {
		tb.Fatalf("message does not start with Received: %q", file)
	}
	end := 0
	for { // the field ends at the first CRLF not followed by white space
		i := bytes.Index(file[end:], []byte("\r\n"))
		if i < 0 {
			tb.Fatalf("unterminated Received: field in %q", file)
		}
		end += i + 2
		if end >= len(file) || (file[end] != '\t' && file[end] != ' ') {
			break
		}
	}
	if !bytes.Contains(file[:end], []byte("by mx.example.test with ESMTP id ")) {
		tb.Errorf("unexpected Received: field %q", file[:end])
	}
	return file[end:]
}

// openIn counts this process's open files in dir (Linux: /proc/self/fd);
// ok is false where that cannot be known.
func openIn(tb testing.TB, dir string) (n int, ok bool) {
	tb.Helper()
	entries, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		return 0, false
	}
	dir = filepath.Clean(dir) + string(filepath.Separator)
	for _, e := range entries {
		target, err := os.Readlink(filepath.Join("/proc/self/fd", e.Name()))
		if err == nil && strings.HasPrefix(target, dir) {
			n++
		}
	}
	return n, true
}

// assertNoSpool checks that dir holds no file and that no file in it is
// still open.
func assertNoSpool(tb testing.TB, dir string) {
	tb.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil {
		tb.Fatal(err)
	}
	for _, e := range entries {
		tb.Errorf("spool directory holds %s", e.Name())
	}
	if n, ok := openIn(tb, dir); ok && n > 0 {
		tb.Errorf("%d spool files in %s are still open", n, dir)
	}
}

func bufioWriter(w io.Writer) *bufio.Writer { return bufio.NewWriter(w) }

func readDir(dir string) ([]os.DirEntry, error) { return os.ReadDir(dir) }

// eohSignal is a sub-handler that closes its channel at the first end of
// headers it sees: by then the sub-handlers before it have started their
// spools.
type eohSignal struct{ ch chan struct{} }

var signalled sync.Map

func (b eohSignal) EndOfHeaders(context.Context, *session.Session, []byte) error {
	if _, done := signalled.LoadOrStore(b.ch, true); !done {
		close(b.ch)
	}
	return nil
}

// failing rejects at end of message a message whose subject is "fail";
// placed before a webhook, the webhook is then never asked to deliver it.
type failing struct{}

type failKey struct{}

func (failing) Header(_ context.Context, s *session.Session, h session.HeaderField) error {
	if h.Name == "Subject" && h.Value == "fail" {
		s.Transaction().SetValue(failKey{}, true)
	}
	return nil
}

func (failing) EndOfMessage(_ context.Context, s *session.Session) (*session.Reply, error) {
	if s.Transaction().Value(failKey{}) != nil {
		return session.NewReply(550, "5.7.1", "Refused by an earlier sub-handler"), nil
	}
	return nil, nil
}
