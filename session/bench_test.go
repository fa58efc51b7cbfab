package session

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"strings"
	"testing"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// repeatReader yields head, then batch n times, then EOF.
type repeatReader struct {
	head, batch []byte
	n           int
	cur         []byte
}

func (r *repeatReader) Read(p []byte) (int, error) {
	total := 0
	for len(p) > 0 {
		if len(r.cur) == 0 {
			switch {
			case r.head != nil:
				r.cur, r.head = r.head, nil
			case r.n > 0:
				r.cur = r.batch
				r.n--
			default:
				if total == 0 {
					return 0, io.EOF
				}
				return total, nil
			}
		}
		c := copy(p, r.cur)
		r.cur, p = r.cur[c:], p[c:]
		total += c
	}
	return total, nil
}

// BenchmarkCommandParse runs pipelined MAIL/RCPT/RCPT/RSET batches through a
// session: one op is one batch of four commands and replies.
func BenchmarkCommandParse(b *testing.B) {
	srv, err := newServer(Config{})
	if err != nil {
		b.Fatal(err)
	}
	batch := []byte("MAIL FROM:<sender@example.com> SIZE=1000 BODY=8BITMIME\r\n" +
		"RCPT TO:<alice@example.org>\r\nRCPT TO:<bob@example.net>\r\nRSET\r\n")
	conn := &memConn{
		r: &repeatReader{head: []byte("EHLO client.example\r\n"), batch: batch, n: b.N},
		w: io.Discard,
	}
	b.SetBytes(int64(len(batch)))
	b.ReportAllocs()
	b.ResetTimer()
	if err := srv.Serve(context.Background(), conn, ConnInfo{}); err != nil {
		b.Fatal(err)
	}
}

type discardSink struct{ n int }

func (d *discardSink) write(p []byte) { d.n += len(p) }

// realisticMessage is a dot-stuffed ~1 MiB message: headers, a text part
// with some dot lines, a base64 attachment, then the end of data.
func realisticMessage(size int) []byte {
	var b bytes.Buffer
	b.WriteString("Received: from mail.example.org (mail.example.org [192.0.2.1])\r\n\tby mx.example.com with ESMTPS id 4Xyz; Tue, 1 Jul 2025 10:00:00 +0000\r\n")
	for i := 0; i < 20; i++ {
		fmt.Fprintf(&b, "X-Header-%d: value number %d with some text\r\n", i, i)
	}
	b.WriteString("Subject: quarterly report\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"b1\"\r\n\r\n")
	b.WriteString("--b1\r\nContent-Type: text/plain\r\n\r\n")
	for i := 0; i < 200; i++ {
		if i%25 == 0 {
			b.WriteString("..a line that started with a dot\r\n")
		}
		b.WriteString("The quick brown fox jumps over the lazy dog, again and again and again.\r\n")
	}
	b.WriteString("--b1\r\nContent-Type: application/octet-stream\r\nContent-Transfer-Encoding: base64\r\n\r\n")
	line := strings.Repeat("QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVo", 3)[:76] + "\r\n"
	for b.Len() < size-64 {
		b.WriteString(line)
	}
	b.WriteString("--b1--\r\n.\r\n")
	return b.Bytes()
}

func BenchmarkDecoder(b *testing.B) {
	msg := realisticMessage(1 << 20)
	var d decoder
	var sink discardSink
	b.SetBytes(int64(len(msg)))
	b.ReportAllocs()
	for b.Loop() {
		d.reset(true, false, DefaultMaxLineLength)
		in := msg
		for len(in) > 0 {
			n, end := d.decode(in[:min(len(in), 4096)], &sink) // the reader's buffer size
			in = in[n:]
			if end {
				break
			}
		}
		if len(in) != 0 || d.problem != problemNone {
			b.Fatalf("decode: %d left, problem %v", len(in), d.problem)
		}
	}
}

// BenchmarkHeaderSplit splits a message with many headers into header
// events, end of headers and body chunks for one sub-handler.
func BenchmarkHeaderSplit(b *testing.B) {
	var hb strings.Builder
	for i := 0; i < 40; i++ {
		fmt.Fprintf(&hb, "X-Header-%02d: some value for header %d\r\n", i, i)
		if i%5 == 0 {
			hb.WriteString("\tfolded continuation of the header\r\n")
		}
	}
	hb.WriteString("\r\n")
	hb.WriteString(strings.Repeat("body line of the message with text\r\n", 100))
	msg := []byte(hb.String())

	var headers, chunks int
	h := &struct {
		headerFunc
		bodyFunc
	}{
		headerFunc(func(ctx context.Context, s *Session, f HeaderField) error { headers++; return nil }),
		bodyFunc(func(ctx context.Context, s *Session, c []byte) error { chunks++; return nil }),
	}
	srv, err := newServer(Config{ChunkSize: 4096, Handlers: []SubHandler{{Name: "h", Handler: h}}})
	if err != nil {
		b.Fatal(err)
	}
	s := newSession(srv, &memConn{}, ConnInfo{})
	s.ctx = context.Background()
	b.SetBytes(int64(len(msg)))
	b.ReportAllocs()
	for b.Loop() {
		s.asm.reset(s, s.ctx, nil)
		for in := msg; len(in) > 0; {
			n := min(len(in), 4096)
			s.asm.write(in[:n])
			in = in[n:]
		}
		s.asm.finish()
		if s.asm.failure != nil {
			b.Fatal(s.asm.failure)
		}
	}
	if headers == 0 || chunks == 0 {
		b.Fatal("no events")
	}
}

// scriptConn hands the session one chunk of its script per Read, as a
// client that waits for each reply would, and counts the replies written.
type scriptConn struct {
	memConn
	script [][]byte
	next   int
	remote net.Addr
}

func (c *scriptConn) Read(p []byte) (int, error) {
	if c.next == len(c.script) {
		return 0, io.EOF
	}
	n := copy(p, c.script[c.next])
	if n == len(c.script[c.next]) {
		c.next++
	} else {
		c.script[c.next] = c.script[c.next][n:]
	}
	return n, nil
}

func (c *scriptConn) RemoteAddr() net.Addr { return c.remote }

// endOK accepts every message, as the discard sub-handler does.
type endOK struct{}

func (endOK) EndOfMessage(ctx context.Context, s *Session) (*Reply, error) {
	return nil, nil
}

// BenchmarkSession runs whole sessions as a client without pipelining
// drives them (smtp-source): greeting, HELO, MAIL, RCPT, DATA, a 10 KiB
// message, QUIT, with the INFO log lines encoded as Caddy's default logger
// would. One op is one session; allocs/op is what a connection costs the
// engine.
func BenchmarkSession(b *testing.B) {
	core := zapcore.NewCore(zapcore.NewJSONEncoder(zap.NewProductionEncoderConfig()), zapcore.AddSync(io.Discard), zap.InfoLevel)
	srv, err := newServer(Config{Hostname: "mx.example.test", Logger: zap.New(core), Handlers: []SubHandler{{Name: "ok", Handler: endOK{}}}})
	if err != nil {
		b.Fatal(err)
	}
	body := strings.Repeat(strings.Repeat("x", 78)+"\r\n", 10240/80)
	msg := []byte("Subject: bench\r\nFrom: <a@example.test>\r\n\r\n" + body + ".\r\n")
	lines := []string{"HELO client.example.test\r\n", "MAIL FROM:<a@example.test>\r\n",
		"RCPT TO:<b@example.test>\r\n", "DATA\r\n"}
	remote := &net.TCPAddr{IP: net.IPv4(192, 0, 2, 1), Port: 40000}
	b.SetBytes(int64(len(msg)))
	b.ReportAllocs()
	b.ResetTimer()
	for range b.N {
		script := make([][]byte, 0, 6)
		for _, l := range lines {
			script = append(script, []byte(l))
		}
		script = append(script, msg, []byte("QUIT\r\n"))
		c := &scriptConn{memConn: memConn{w: io.Discard}, script: script, remote: remote}
		if err := srv.Serve(context.Background(), c, ConnInfo{}); err != nil {
			b.Fatal(err)
		}
		if c.next != len(script) {
			b.Fatalf("session ended after %d of %d client writes", c.next, len(script))
		}
	}
}
