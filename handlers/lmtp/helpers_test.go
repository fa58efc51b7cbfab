package lmtp

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync/atomic"
	"testing"

	"go.uber.org/zap"
	"go.uber.org/zap/zaptest"

	"github.com/caddy-esmtp/caddy-esmtp/internal/filtertest"
	"github.com/caddy-esmtp/caddy-esmtp/internal/smtptest"
)

// provision provisions l through Caddy's API, with its logger writing to
// the test log, and quits its idle connections when the test ends.
func provision(tb testing.TB, l *LMTP) *LMTP {
	tb.Helper()
	if err := smtptest.Provision(l); err != nil {
		tb.Fatalf("provisioning lmtp: %v", err)
	}
	l.logger = zaptest.NewLogger(tb, zaptest.Level(zap.InfoLevel))
	tb.Cleanup(func() { l.Cleanup() })
	return l
}

var userSeq atomic.Int64

// user returns a fresh address at example.test, name and a number, so
// that the tests sharing the package's Dovecot never share a Maildir.
func user(name string) string {
	return fmt.Sprintf("%s.%d@example.test", name, userSeq.Add(1))
}

// stored returns the messages Dovecot stored for user (in new/ and cur/
// of its Maildir), sorted by file name, each without the Return-Path:
// field Dovecot puts first.
func stored(tb testing.TB, dv *filtertest.Dovecot, user string) [][]byte {
	tb.Helper()
	var names []string
	for _, sub := range []string{"new", "cur"} {
		entries, err := os.ReadDir(filepath.Join(dv.Maildir(user), sub))
		if err != nil && !os.IsNotExist(err) {
			tb.Fatal(err)
		}
		for _, e := range entries {
			names = append(names, filepath.Join(dv.Maildir(user), sub, e.Name()))
		}
	}
	sort.Strings(names)
	var out [][]byte
	for _, n := range names {
		b, err := os.ReadFile(n)
		if err != nil {
			tb.Fatal(err)
		}
		if !bytes.HasPrefix(b, []byte("Return-Path: <")) {
			tb.Fatalf("%s does not start with Dovecot's Return-Path: %q", n, b[:min(len(b), 200)])
		}
		out = append(out, b[bytes.Index(b, []byte("\r\n"))+2:])
	}
	return out
}

// storedOnce checks that user got exactly one message: our Received:
// field, then want.
func storedOnce(tb testing.TB, dv *filtertest.Dovecot, user string, want []byte) {
	tb.Helper()
	msgs := stored(tb, dv, user)
	if len(msgs) != 1 {
		tb.Fatalf("%s has %d messages, want 1\nDovecot:\n%s", user, len(msgs), dv.Output())
	}
	if got := splitReceived(tb, msgs[0]); !bytes.Equal(got, want) {
		tb.Errorf("%s got a message that differs from what was sent (%d bytes, want %d)\n got: %q\nwant: %q",
			user, len(got), len(want), clip(got), clip(want))
	}
}

// splitReceived checks that file, a stored message, starts with our
// Received: field (with ESMTP, or UTF8SMTP for an SMTPUTF8 message) and
// returns the rest.
func splitReceived(tb testing.TB, file []byte) []byte {
	tb.Helper()
	if !bytes.HasPrefix(file, []byte("Received: from ")) {
		tb.Fatalf("message does not start with Received: %q", clip(file))
	}
	end := 0
	for { // the field ends at the first CRLF not followed by white space
		i := bytes.Index(file[end:], []byte("\r\n"))
		if i < 0 {
			tb.Fatalf("unterminated Received: field in %q", clip(file))
		}
		end += i + 2
		if end >= len(file) || (file[end] != '\t' && file[end] != ' ') {
			break
		}
	}
	if !bytes.Contains(file[:end], []byte("by "+smtptest.Hostname+" with ")) {
		tb.Errorf("unexpected Received: field %q", file[:end])
	}
	return file[end:]
}

func clip(b []byte) []byte {
	if len(b) > 300 {
		return append(b[:300:300], "..."...)
	}
	return b
}

// message is a test message with lines that start with a dot (stuffed
// on the way) and an 8-bit line.
func message(subject string) string {
	return "From: sender@example.test\r\n" +
		"To: someone@example.test\r\n" +
		"Subject: " + subject + "\r\n" +
		"Message-ID: <" + strings.ReplaceAll(subject, " ", ".") + "@example.test>\r\n" +
		"\r\n" +
		"Hello.\r\n" +
		".a line that starts with a dot\r\n" +
		"..two dots\r\n" +
		".\r\n" +
		"Gr\xc3\xbc\xc3\x9fe\r\n"
}
