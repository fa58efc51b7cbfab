package session

import (
	"context"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
)

// Memory bounds under abusive input, seen from inside the engine (the
// integration tests send the same input through Caddy and check replies).

// countHeaders is a sub-handler that only counts header fields, so the
// test itself keeps nothing.
func countHeaders(n *atomic.Int64) SubHandler {
	return SubHandler{Name: "count", Handler: headerFunc(func(ctx context.Context, s *Session, h HeaderField) error {
		n.Add(1)
		return nil
	})}
}

// TestHugeHeaderBounded: a 10 MB header field, folded or on one line, is
// refused with 552 5.3.4 once it passes MaxHeaderSize, and the buffers
// holding it never grow far past that limit, even with the message size
// and line length limits out of the way.
func TestHugeHeaderBounded(t *testing.T) {
	const maxHeader = 1 << 20
	var n atomic.Int64
	ts := start(t, Config{MaxMessageSize: 64 << 20, MaxLineLength: 32 << 20, MaxHeaderSize: maxHeader,
		Handlers: []SubHandler{countHeaders(&n)}})
	ts.ehlo()
	line := " " + strings.Repeat("f", 75) + "\r\n"
	for name, field := range map[string]string{
		"folded":   "X-Huge: start\r\n" + strings.Repeat(line, (10<<20)/len(line)),
		"one line": "X-Huge: " + strings.Repeat("h", 10<<20) + "\r\n",
	} {
		ts.mailTo("b@example.com")
		ts.sendData("Subject: huge\r\n" + field + "\r\nbody\r\n.\r\n")
		ts.expect(552, "5.3.4")
		ts.cmd("NOOP", 250, "2.0.0") // orders the reads below after the session's writes
		if f, l := cap(ts.sess.asm.field), cap(ts.sess.asm.line); f > 2*maxHeader || l > 2*maxHeader {
			t.Errorf("%s: header buffers grew to %d and %d bytes for a %d-byte limit", name, f, l, maxHeader)
		}
		// The next message does not keep that memory.
		ts.mailTo("b@example.com")
		ts.sendData("Subject: small\r\n\r\nbody\r\n.\r\n")
		ts.expect(250, "2.0.0")
		ts.cmd("NOOP", 250, "2.0.0")
		if c := cap(ts.sess.asm.field) + cap(ts.sess.asm.line); c > 64<<10 {
			t.Errorf("%s: after a small message the header buffers still hold %d bytes", name, c)
		}
	}
}

// TestManyHeaderLinesBounded: 100,000 header fields are each handed on as
// they complete; the engine holds one at a time.
func TestManyHeaderLinesBounded(t *testing.T) {
	var n atomic.Int64
	ts := start(t, Config{MaxMessageSize: 64 << 20, Handlers: []SubHandler{countHeaders(&n)}})
	ts.ehlo()
	ts.mailTo("b@example.com")
	var b strings.Builder
	for i := range 100000 {
		fmt.Fprintf(&b, "X-Line-%d: value %d\r\n", i, i)
	}
	ts.sendData(b.String() + "\r\nbody\r\n.\r\n")
	ts.expect(250, "2.0.0")
	ts.cmd("NOOP", 250, "2.0.0")
	if got := n.Load(); got != 100000+1 { // and the Received: field
		t.Errorf("header hook called %d times, want %d", got, 100001)
	}
	if c := cap(ts.sess.asm.field) + cap(ts.sess.asm.line); c > 4<<10 {
		t.Errorf("header buffers grew to %d bytes for fields of 30", c)
	}
}

// TestManyRecipientsBounded: 10,000 RCPTs keep MaxRecipients, the rest get
// 452 4.5.3 without counting as errors, and the session goes on.
func TestManyRecipientsBounded(t *testing.T) {
	ts := start(t, Config{MaxRecipients: 100})
	ts.ehlo()
	ts.cmd("MAIL FROM:<a@example.com>", 250, "2.1.0")
	var b strings.Builder
	for i := range 10000 {
		fmt.Fprintf(&b, "RCPT TO:<r%d@example.com>\r\n", i)
	}
	done := make(chan struct{})
	go func() { // net.Pipe: the replies must be read while sending
		defer close(done)
		ts.conn.Write([]byte(b.String()))
	}()
	for i := range 10000 {
		if i < 100 {
			ts.expect(250, "2.1.5")
		} else {
			ts.expect(452, "4.5.3")
		}
	}
	<-done
	ts.cmd("NOOP", 250, "2.0.0")
	if n, c := len(ts.sess.txn.Recipients), cap(ts.sess.txn.Recipients); n != 100 || c > 256 {
		t.Errorf("%d recipients kept in a slice of %d", n, c)
	}
	if ts.sess.errors != 0 {
		t.Errorf("452s counted as %d errors", ts.sess.errors)
	}
}
