package smtptest

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/caddy-esmtp/caddy-esmtp/session"
)

// This file holds the plumbing of the tests of the delivering
// sub-handlers (exec, webhook, maildir): sending whole messages, reading
// back what was delivered, and checking that spool files are gone.

// ServeConfig is NewServer with cfg, whose Hostname and Handlers are
// replaced by those of Config(handlers...).
func ServeConfig(tb testing.TB, cfg session.Config, handlers ...any) *Server {
	tb.Helper()
	base := Config(handlers...)
	cfg.Hostname, cfg.Handlers = base.Hostname, base.Handlers
	return NewServer(tb, cfg)
}

// DialTCPHello is DialTCP().Hello(Helo): a session over loopback TCP that
// has been greeted with 220 and has said EHLO.
func (s *Server) DialTCPHello() *Client {
	s.tb.Helper()
	return s.DialTCP().Hello(Helo)
}

// Mail sends one message (CRLF line ends) from sender@example.test to
// rcpts with DATA, dot-stuffing it, and returns the last line of the
// final reply.
func Mail(c *Client, msg string, rcpts ...string) string {
	c.Cmd("MAIL FROM:<sender@example.test>", "250")
	for _, r := range rcpts {
		c.Cmd("RCPT TO:<"+r+">", "250")
	}
	c.Cmd("DATA", "354")
	c.Send(Stuff(msg) + ".\r\n")
	return c.ReadReply().Last()
}

// Stuff dot-stuffs msg (RFC 5321 4.5.2).
func Stuff(msg string) string {
	lines := strings.SplitAfter(msg, "\r\n")
	for i, l := range lines {
		if strings.HasPrefix(l, ".") {
			lines[i] = "." + l
		}
	}
	return strings.Join(lines, "")
}

// SplitReceived checks that file, a delivered message, starts with a
// Received: field by Hostname and returns the rest.
func SplitReceived(tb testing.TB, file []byte) []byte {
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
	if !bytes.Contains(file[:end], []byte("by "+Hostname+" with ESMTP id ")) {
		tb.Errorf("unexpected Received: field %q", file[:end])
	}
	return file[end:]
}

// OpenIn counts this process's open files in dir (Linux: /proc/self/fd);
// ok is false where that cannot be known.
func OpenIn(tb testing.TB, dir string) (n int, ok bool) {
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

// AssertNoSpool checks that the spool directory dir holds no file and
// that no file in it is still open.
func AssertNoSpool(tb testing.TB, dir string) {
	tb.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil {
		tb.Fatal(err)
	}
	for _, e := range entries {
		tb.Errorf("spool directory holds %s", e.Name())
	}
	if n, ok := OpenIn(tb, dir); ok && n > 0 {
		tb.Errorf("%d spool files in %s are still open", n, dir)
	}
}

// EOHSignal is a sub-handler that closes its channel at the first end of
// headers it sees: by then the sub-handlers before it have started their
// spools.
type EOHSignal struct {
	// Ch is closed once, at the first end of headers.
	Ch chan struct{}
}

var signalled sync.Map // the channels EOHSignal has closed

// EndOfHeaders closes Ch the first time it runs.
func (b EOHSignal) EndOfHeaders(context.Context, *session.Session, []byte) error {
	if _, done := signalled.LoadOrStore(b.Ch, true); !done {
		close(b.Ch)
	}
	return nil
}

// Failing is a sub-handler that rejects at end of message a message whose
// subject is "fail": placed before a delivering sub-handler, that one is
// then never asked to deliver it.
type Failing struct{}

type failKey struct{}

// Header notes a "Subject: fail" field.
func (Failing) Header(_ context.Context, s *session.Session, h session.HeaderField) error {
	if h.Name == "Subject" && h.Value == "fail" {
		s.Transaction().SetValue(failKey{}, true)
	}
	return nil
}

// EndOfMessage answers 550 5.7.1 when Header noted "Subject: fail".
func (Failing) EndOfMessage(_ context.Context, s *session.Session) (*session.Reply, error) {
	if s.Transaction().Value(failKey{}) != nil {
		return session.NewReply(550, "5.7.1", "Refused by an earlier sub-handler"), nil
	}
	return nil, nil
}
