package integration_test

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// badInputCaddyfile has four listeners: the main one with small limits,
// one that rejects early talkers, one with max_connections and one with
// short timeouts.
const badInputCaddyfile = `{
	admin off
	persist_config off
	layer4 {
		127.0.0.1:%PORT% {
			route {
				esmtp {
					hostname bad.example.test
					max_message_size 2MiB
					max_header_size 64KiB
					max_recipients 50
					maildir %MAIL%
				}
			}
		}
		127.0.0.1:%EARLY% {
			route {
				esmtp {
					hostname early.example.test
					reject_early_talkers 500ms
					maildir %MAIL%
				}
			}
		}
		127.0.0.1:%LIMITED% {
			route {
				esmtp {
					hostname limited.example.test
					max_connections 100
					max_connections_per_ip unlimited # every test client is 127.0.0.1
					maildir %MAIL%
				}
			}
		}
		127.0.0.1:%SLOW% {
			route {
				esmtp {
					hostname slow.example.test
					command_timeout 2s
					data_timeout 2s
					maildir %MAIL%
				}
			}
		}
	}
}
`

// badConn is a raw client that checks every reply line is printable
// ASCII: nothing a client sent comes back raw.
type badConn struct {
	t *testing.T
	c net.Conn
	r *bufio.Reader
}

func dialBad(t *testing.T, addr string) *badConn {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(hangGuard))
	return &badConn{t: t, c: c, r: bufio.NewReaderSize(c, 1<<16)}
}

// greeted dials, reads the greeting and sends EHLO.
func greeted(t *testing.T, addr string) *badConn {
	t.Helper()
	b := dialBad(t, addr)
	b.expect("220 ")
	b.send("EHLO bad.client.test\r\n")
	b.expect("250 ")
	return b
}

func (b *badConn) send(s string) {
	b.t.Helper()
	if _, err := io.WriteString(b.c, s); err != nil {
		b.t.Fatalf("write: %v", err)
	}
}

// sendAsync writes s in the background (the server may answer, or close,
// before it has read everything) and returns a channel with the result.
func (b *badConn) sendAsync(s []byte) <-chan error {
	done := make(chan error, 1)
	go func() {
		_, err := b.c.Write(s)
		done <- err
	}()
	return done
}

// expect reads one reply and checks that its last line starts with prefix.
func (b *badConn) expect(prefix string) string {
	b.t.Helper()
	var last string
	for {
		l, err := b.r.ReadString('\n')
		if err != nil {
			b.t.Fatalf("reading a reply (want %q): %v", prefix, err)
		}
		if len(l) < 6 || !strings.HasSuffix(l, "\r\n") {
			b.t.Fatalf("malformed reply line %q", l)
		}
		for _, c := range []byte(l[:len(l)-2]) {
			if c < 0x20 || c > 0x7e {
				b.t.Fatalf("reply line %q has a byte outside printable ASCII", l)
			}
		}
		last = l[:len(l)-2]
		if l[3] == ' ' {
			break
		}
	}
	if !strings.HasPrefix(last, prefix) {
		b.t.Fatalf("got reply %q, want %q...", last, prefix)
	}
	return last
}

func (b *badConn) cmd(line, prefix string) string {
	b.t.Helper()
	b.send(line + "\r\n")
	return b.expect(prefix)
}

// expectEOF checks that the server sends nothing more and closes.
func (b *badConn) expectEOF() {
	b.t.Helper()
	l, err := b.r.ReadString('\n')
	if err == nil || l != "" {
		b.t.Fatalf("got %q (%v), want the connection closed", l, err)
	}
	if !errors.Is(err, io.EOF) && !errors.Is(err, syscall.ECONNRESET) {
		b.t.Fatalf("want the connection closed, got %v", err)
	}
}

// mail opens a transaction.
func (b *badConn) mail() {
	b.t.Helper()
	b.cmd("MAIL FROM:<bad@client.test>", "250 2.1.0")
	b.cmd("RCPT TO:<rcpt@example.test>", "250 2.1.5")
}

// dirHolds reports whether a file in dir/sub has s in its first 8 KiB.
func dirHolds(dir, sub, s string) bool {
	entries, _ := os.ReadDir(filepath.Join(dir, sub))
	for _, e := range entries {
		f, err := os.Open(filepath.Join(dir, sub, e.Name()))
		if err != nil {
			continue
		}
		buf := make([]byte, 8<<10)
		n, _ := io.ReadFull(f, buf)
		f.Close()
		if bytes.Contains(buf[:n], []byte(s)) {
			return true
		}
	}
	return false
}

// badInputs counts the bad inputs tried, for the README's figures.
var badInputs atomic.Int64

// TestBadInput attacks one Caddy over loopback with malformed, oversized,
// out-of-order and abusive input. Each attack gets a clear reply, and the
// session (or, where it must end, the server) goes on.
func TestBadInput(t *testing.T) {
	ports := map[string]int{}
	for _, k := range []string{"PORT", "EARLY", "LIMITED", "SLOW"} {
		ports[k] = freePort(t)
	}
	maildir := filepath.Join(t.TempDir(), "mail")
	cf := badInputCaddyfile
	for k, p := range ports {
		cf = strings.ReplaceAll(cf, "%"+k+"%", fmt.Sprint(p))
	}
	load(t, adapt(t, strings.ReplaceAll(cf, "%MAIL%", maildir)))
	addr := func(k string) string { return fmt.Sprintf("127.0.0.1:%d", ports[k]) }
	main, slow := addr("PORT"), addr("SLOW")
	for k := range ports {
		waitListening(t, addr(k))
	}
	delivered := func(id string) bool { return dirHolds(maildir, "new", id) }
	tried := func(n int) { badInputs.Add(int64(n)) }

	// Subtests run in parallel, each on its own sessions; they find their
	// messages in the shared Maildir by a unique text.
	t.Run("group", func(t *testing.T) {
		t.Run("NUL in commands", func(t *testing.T) {
			t.Parallel()
			b := dialBad(t, main)
			b.expect("220 ")
			for _, l := range []string{"EHLO cl\x00ient.test", "\x00\x00\x00\x00", "NOOP\x00", "\x00EHLO client.test"} {
				b.cmd(l, "501 5.5.2")
			}
			b.cmd("EHLO client.test", "250 ")
			b.cmd("MAIL FROM:<a@b\x00c.test>", "501 5.5.2")
			b.cmd("MAIL FROM:<a@client.test>", "250 2.1.0")
			b.cmd("RCPT TO:<r\x00@example.test>", "501 5.5.2")
			b.cmd("NOOP", "250 2.0.0")
			tried(6)
		})

		t.Run("invalid UTF-8 in commands", func(t *testing.T) {
			t.Parallel()
			b := dialBad(t, main)
			b.expect("220 ")
			b.cmd("\xff\xfe\xfd\xfc", "500 5.5.2")
			b.cmd("\xc3\x28 \xa0\xa1", "500 5.5.2")
			b.cmd("EHLO \xc3\x28bad\xff.example", "250") // a name is not checked; it is sanitised where used
			b.cmd("MAIL FROM:<\xff\xfe@client.test>", "501 5.1.7")
			b.cmd("MAIL FROM:<\xff\xfe@client.test> SMTPUTF8", "501 5.1.7")
			b.cmd("MAIL FROM:<utf8-invalid@client.test> SMTPUTF8", "250 2.1.0")
			b.cmd("RCPT TO:<\xc3\x28@example.test>", "501 5.1.3")
			b.cmd("RCPT TO:<r@ex\xe2\x82ample.test>", "501 5.1.3")
			b.cmd("RCPT TO:<rcpt@example.test>", "250 2.1.5")
			b.cmd("NOOP \xff\xff", "250 2.0.0")
			b.cmd("DATA", "354 ")
			b.send("Subject: utf8-invalid \xff\xfe\r\n\r\nbody \xc3\x28\r\n.\r\n")
			b.expect("250 2.0.0")
			b.cmd("QUIT", "221 ")
			// The Received: field shows the HELO name sanitised.
			entries, _ := os.ReadDir(filepath.Join(maildir, "new"))
			for _, e := range entries {
				f, _ := os.ReadFile(filepath.Join(maildir, "new", e.Name()))
				if !bytes.Contains(f, []byte("Subject: utf8-invalid")) {
					continue
				}
				rcv, _, _ := bytes.Cut(f, []byte(";\r\n"))
				for _, c := range rcv {
					if (c < 0x20 && c != '\r' && c != '\n' && c != '\t') || c > 0x7e {
						t.Fatalf("Received: field has raw client bytes: %q", rcv)
					}
				}
				return
			}
			t.Fatal("the message is not in the Maildir")
		})

		t.Run("1 MB line without CRLF", func(t *testing.T) {
			t.Parallel()
			b := greeted(t, main)
			done := b.sendAsync(append([]byte("NOOP "), bytes.Repeat([]byte("A"), 2<<20)...))
			b.expect("500 5.5.2")
			b.expectEOF()
			<-done // fails once the server closes; either way it ends
			// The server goes on.
			greeted(t, main).cmd("QUIT", "221 ")
			tried(1)
		})

		t.Run("10000 RCPTs", func(t *testing.T) {
			t.Parallel()
			b := greeted(t, main)
			b.cmd("MAIL FROM:<many@client.test>", "250 2.1.0")
			var batch bytes.Buffer
			for i := range 10000 {
				fmt.Fprintf(&batch, "RCPT TO:<r%d@example.test>\r\n", i)
			}
			done := b.sendAsync(batch.Bytes())
			for i := range 10000 {
				if i < 50 {
					b.expect("250 2.1.5")
				} else {
					b.expect("452 4.5.3")
				}
			}
			if err := <-done; err != nil {
				t.Fatal(err)
			}
			b.cmd("DATA", "354 ")
			b.send("Subject: ten-thousand-rcpts\r\n\r\nhi\r\n.\r\n")
			b.expect("250 2.0.0")
			b.cmd("NOOP", "250 2.0.0")
			if !delivered("ten-thousand-rcpts") {
				t.Error("the message to 50 recipients is not in the Maildir")
			}
			tried(10000)
		})

		t.Run("100000 header lines", func(t *testing.T) {
			t.Parallel()
			b := greeted(t, main)
			// 100,000 small fields: within the size limits, but over
			// the fields the engine indexes in a spooled message
			// (10,000, for the edits): refused.
			b.mail()
			b.cmd("DATA", "354 ")
			var msg bytes.Buffer
			msg.WriteString("Subject: too-many-header-fields\r\n")
			for i := range 100000 {
				fmt.Fprintf(&msg, "X-H: %d\r\n", i)
			}
			msg.WriteString("\r\nbody\r\n.\r\n")
			done := b.sendAsync(msg.Bytes())
			b.expect("552 5.3.4")
			<-done
			b.cmd("NOOP", "250 2.0.0")
			if delivered("too-many-header-fields") {
				t.Error("the message with 100,000 header fields was delivered")
			}
			// 9,000 small fields: within every limit, accepted.
			b.mail()
			b.cmd("DATA", "354 ")
			msg.Reset()
			msg.WriteString("Subject: many-header-fields\r\n")
			for i := range 9000 {
				fmt.Fprintf(&msg, "X-H: %d\r\n", i)
			}
			msg.WriteString("\r\nbody\r\n.\r\n")
			done = b.sendAsync(msg.Bytes())
			b.expect("250 2.0.0")
			<-done
			if !delivered("many-header-fields") {
				t.Error("the message with 9,000 header fields is missing")
			}
			// 100,000 folded lines of one field: over max_header_size.
			b.mail()
			b.cmd("DATA", "354 ")
			msg.Reset()
			msg.WriteString("Subject: many-folded-lines\r\nX-Folded: start\r\n")
			for range 100000 {
				msg.WriteString(" folded\r\n")
			}
			msg.WriteString("\r\nbody\r\n.\r\n")
			done = b.sendAsync(msg.Bytes())
			b.expect("552 5.3.4")
			<-done
			b.cmd("NOOP", "250 2.0.0")
			if delivered("many-folded-lines") {
				t.Error("the message with a too large header field was delivered")
			}
			tried(3)
		})

		t.Run("10 MB header", func(t *testing.T) {
			t.Parallel()
			b := greeted(t, main)
			// one field of 10 MB, folded: over max_header_size and the size
			b.mail()
			b.cmd("DATA", "354 ")
			var msg bytes.Buffer
			msg.WriteString("Subject: huge-folded-header\r\nX-Huge: x\r\n")
			line := " " + strings.Repeat("h", 75) + "\r\n"
			for msg.Len() < 10<<20 {
				msg.WriteString(line)
			}
			msg.WriteString("\r\nbody\r\n.\r\n")
			done := b.sendAsync(msg.Bytes())
			b.expect("552 5.3.4")
			<-done
			// one 10 MB line: over max_line_length
			b.mail()
			b.cmd("DATA", "354 ")
			msg.Reset()
			msg.WriteString("Subject: huge-line-header\r\nX-Huge: ")
			msg.Write(bytes.Repeat([]byte("h"), 10<<20))
			msg.WriteString("\r\n\r\nbody\r\n.\r\n")
			done = b.sendAsync(msg.Bytes())
			b.expect("550 5.5.2") // line too long comes first
			<-done
			b.cmd("NOOP", "250 2.0.0")
			if delivered("huge-folded-header") || delivered("huge-line-header") {
				t.Error("a message with a 10 MB header was delivered")
			}
			tried(2)
		})

		t.Run("UTF-8 address without SMTPUTF8 then VRFY", func(t *testing.T) {
			t.Parallel()
			b := greeted(t, main)
			b.cmd("MAIL FROM:<jörg@exämple.test>", "553 5.6.7")
			b.cmd("VRFY jörg@exämple.test", "252 2.5.0")
			b.cmd("VRFY <jörg@exämple.test>", "252 2.5.0")
			b.cmd("VRFY \xff\xfe", "252 2.5.0")
			b.cmd("EXPN jörg", "502 5.5.1")
			b.cmd("RCPT TO:<ü@example.test>", "503 5.5.1")
			b.cmd("MAIL FROM:<a@client.test>", "250 2.1.0")
			b.cmd("RCPT TO:<jörg@exämple.test>", "553 5.6.7")
			b.cmd("VRFY jörg", "252 2.5.0")
			b.cmd("RCPT TO:<rcpt@example.test>", "250 2.1.5")
			b.cmd("DATA", "354 ")
			b.send("Subject: after-vrfy\r\n\r\nok\r\n.\r\n")
			b.expect("250 2.0.0")
			tried(9)
		})

		t.Run("BDAT with fewer bytes than announced, then a command", func(t *testing.T) {
			t.Parallel()
			b := greeted(t, slow)
			b.mail()
			// "QUIT" is chunk data: the server waits for the other bytes
			// until data_timeout.
			b.send("BDAT 100 LAST\r\nSubject: bdat-short\r\n\r\nQUIT\r\n")
			b.expect("421 4.4.2")
			b.expectEOF()
			if delivered("bdat-short") {
				t.Error("the short BDAT was delivered")
			}
			tried(1)
		})

		t.Run("BDAT with more bytes than announced", func(t *testing.T) {
			t.Parallel()
			b := greeted(t, main)
			b.mail()
			chunk := "Subject: bdat-more\r\n\r\nbody\r\n"
			b.send(fmt.Sprintf("BDAT %d LAST\r\n%sNOT A COMMAND\r\n", len(chunk), chunk))
			b.expect("250 2.0.0")
			b.expect("500 5.5.2")
			b.cmd("NOOP", "250 2.0.0")
			if !delivered("bdat-more") {
				t.Error("the BDAT message is missing")
			}
			tried(1)
		})

		t.Run("BDAT over the size limit", func(t *testing.T) {
			t.Parallel()
			b := greeted(t, main)
			b.mail()
			// 3 MB > 2 MiB: refused, and the whole chunk is read as data
			data := bytes.Repeat([]byte("RSET\r\n"), 3_000_000/6)
			done := b.sendAsync(append([]byte(fmt.Sprintf("BDAT %d LAST\r\n", len(data))), data...))
			b.expect("552 5.3.4")
			if err := <-done; err != nil {
				t.Fatal(err)
			}
			b.cmd("NOOP", "250 2.0.0") // not 500 000 RSET replies
			// A size that cannot be skipped: 501 and close.
			b.send("BDAT 99999999999999999999 LAST\r\n")
			b.expect("501 5.5.4")
			b.expectEOF()
			tried(2)
		})

		t.Run("BDAT mixed with DATA", func(t *testing.T) {
			t.Parallel()
			b := greeted(t, main)
			b.mail()
			first := "Subject: bdat-then-data\r\n\r\n"
			b.send(fmt.Sprintf("BDAT %d\r\n%s", len(first), first))
			b.expect("250 2.0.0")
			b.cmd("DATA", "503 5.5.1")
			b.send("BDAT 6 LAST\r\nlast\r\n")
			b.expect("250 2.0.0")
			// DATA, then "BDAT" inside the data is only text
			b.mail()
			b.cmd("DATA", "354 ")
			b.send("Subject: data-then-bdat\r\n\r\nBDAT 5 LAST\r\nhello\r\n.\r\n")
			b.expect("250 2.0.0")
			b.cmd("BDAT 0 LAST", "503 5.5.1")
			b.cmd("NOOP", "250 2.0.0")
			if !delivered("bdat-then-data") || !delivered("data-then-bdat") {
				t.Error("a message is missing")
			}
			tried(3)
		})

		t.Run("commands pipelined after DATA", func(t *testing.T) {
			t.Parallel()
			b := greeted(t, main)
			b.send("MAIL FROM:<a@client.test>\r\nRCPT TO:<rcpt@example.test>\r\nDATA\r\nSubject: too-early\r\n\r\nx\r\n.\r\n")
			b.expect("250 2.1.0")
			b.expect("250 2.1.5")
			b.expect("554 5.5.0")
			b.expectEOF()
			if delivered("too-early") {
				t.Error("data sent before the 354 was delivered")
			}
			tried(1)
		})

		t.Run("commands pipelined after BDAT LAST", func(t *testing.T) {
			t.Parallel()
			b := greeted(t, main)
			chunk := "Subject: bdat-pipelined\r\n\r\nbody\r\n"
			b.send(fmt.Sprintf("MAIL FROM:<a@client.test>\r\nRCPT TO:<rcpt@example.test>\r\nBDAT %d LAST\r\n%sNOOP\r\nQUIT\r\n",
				len(chunk), chunk))
			b.expect("250 2.1.0")
			b.expect("250 2.1.5")
			b.expect("250 2.0.0")
			b.expect("250 2.0.0")
			b.expect("221 ")
			b.expectEOF()
			if !delivered("bdat-pipelined") {
				t.Error("the pipelined BDAT message is missing")
			}
			tried(1)
		})

		t.Run("commands after QUIT", func(t *testing.T) {
			t.Parallel()
			b := greeted(t, main)
			b.send("QUIT\r\nNOOP\r\nMAIL FROM:<after-quit@client.test>\r\n")
			b.expect("221 ")
			b.expectEOF()
			tried(1)
		})

		t.Run("smuggling variants", func(t *testing.T) {
			t.Parallel()
			b := greeted(t, main)
			variants := []string{"\n.\n", "\r.\r", "\r.\n", "\n.\r", "\n.\r\n", "\r\n.\n", "\r.\r\n", "\r\n.\r",
				"\r\n.\r\r\n", "\r\n\x00.\r\n", "\r\n.\x00\r\n"}
			for i, v := range variants {
				b.mail()
				b.cmd("DATA", "354 ")
				b.send(fmt.Sprintf("Subject: smuggle-%d\r\n\r\nbody%sMAIL FROM:<evil@attacker.test>\r\n"+
					"RCPT TO:<victim@example.test>\r\nDATA\r\nSubject: smuggled-%d\r\n\r\nevil\r\n.\r\n", i, v, i))
				b.expect("550 5.5.2")
				b.cmd("NOOP", "250 2.0.0")
			}
			for i := range variants {
				if delivered(fmt.Sprintf("smuggle-%d", i)) || delivered(fmt.Sprintf("smuggled-%d", i)) {
					t.Errorf("variant %q delivered something", variants[i])
				}
			}
			tried(len(variants))
		})

		t.Run("early talker", func(t *testing.T) {
			t.Parallel()
			b := dialBad(t, addr("EARLY"))
			b.send("EHLO early.client.test\r\n")
			b.expect("554 5.5.0")
			b.expectEOF()
			polite := dialBad(t, addr("EARLY"))
			polite.expect("220 ")
			polite.cmd("EHLO polite.client.test", "250 ")
			tried(1)
		})

		t.Run("slowloris", func(t *testing.T) {
			t.Parallel()
			b := dialBad(t, slow)
			b.expect("220 ")
			stop := make(chan struct{})
			var wg sync.WaitGroup
			wg.Add(1)
			go func() { // one byte every 100ms of a command that never ends
				defer wg.Done()
				for i := 0; i < int(hangGuard/(100*time.Millisecond)); i++ {
					select {
					case <-stop:
						return
					case <-time.After(100 * time.Millisecond):
					}
					if _, err := b.c.Write([]byte{"EHLO slow"[i%9]}); err != nil {
						return
					}
				}
			}()
			b.expect("421 4.4.2")
			close(stop)
			b.expectEOF()
			wg.Wait()
			tried(1)
		})

		t.Run("disconnect mid-DATA", func(t *testing.T) {
			t.Parallel()
			b := greeted(t, main)
			b.mail()
			b.cmd("DATA", "354 ")
			b.send("Subject: hung-up-in-data\r\n\r\n" + strings.Repeat("a body line\r\n", 10000))
			b.c.Close()
			// The engine spools the message (memory, or an unlinked
			// file): the Maildir sees it only at end of data, never
			// here.
			time.Sleep(200 * time.Millisecond)
			if dirHolds(maildir, "tmp", "hung-up-in-data") {
				t.Error("the message of the hung-up client is in tmp/")
			}
			if delivered("hung-up-in-data") {
				t.Error("the message of the hung-up client was delivered")
			}
			tried(1)
		})

		t.Run("2000 connections at once", func(t *testing.T) {
			t.Parallel()
			const n, limit = 2000, 100
			raiseNoFile(t, 3*n+1000)
			conns := make([]*badConn, n)
			lines := make([]string, n)
			var wg sync.WaitGroup
			for i := range n {
				wg.Add(1)
				go func() {
					defer wg.Done()
					c, err := net.Dial("tcp", addr("LIMITED"))
					if err != nil {
						lines[i] = "dial: " + err.Error()
						return
					}
					c.SetDeadline(time.Now().Add(hangGuard))
					conns[i] = &badConn{t: t, c: c, r: bufio.NewReader(c)}
					l, err := conns[i].r.ReadString('\n')
					if err != nil {
						lines[i] = "read: " + err.Error()
						return
					}
					lines[i] = l
				}()
			}
			wg.Wait()
			var greetedConns []*badConn
			refused, other := 0, map[string]int{}
			for i, l := range lines {
				switch {
				case strings.HasPrefix(l, "220 "):
					greetedConns = append(greetedConns, conns[i])
				case strings.HasPrefix(l, "421 4.7.0 "):
					refused++
				default:
					other[l]++
				}
			}
			if len(greetedConns) != limit || refused != n-limit || len(other) > 0 {
				t.Errorf("%d greeted, %d refused with 421 4.7.0, others %v; want %d and %d", len(greetedConns), refused, other, limit, n-limit)
			}
			for _, c := range conns {
				if c != nil {
					c.c.Close()
				}
			}
			// Once those sessions are over the server serves again.
			waitFor(t, "a session after the flood", func() bool {
				c, err := net.Dial("tcp", addr("LIMITED"))
				if err != nil {
					return false
				}
				defer c.Close()
				c.SetDeadline(time.Now().Add(hangGuard))
				l, _ := bufio.NewReader(c).ReadString('\n')
				return strings.HasPrefix(l, "220 ")
			})
			t.Logf("figures: %d connections at once, max_connections %d: %d greeted, %d got 421 4.7.0", n, limit, len(greetedConns), refused)
			tried(n)
		})
	})
	if !t.Failed() {
		t.Logf("figures: %d bad inputs tried", badInputs.Load())
	}
}
