package loadgen

import (
	"bufio"
	"fmt"
	"net"
	"sync"
	"time"
)

// InData is a set of sessions held in the middle of a message: each has had
// its greeting, EHLO, MAIL, RCPT and DATA answered (354) and has sent the
// first part of the message, and waits. Finish sends the rest.
type InData struct {
	msg      *Message
	cut      int
	sessions []*conn
}

// OpenInData opens n sessions to addr, each in DATA with the first cut
// bytes of a size-byte message sent (cut is clamped to the message), with
// at most `parallel` sessions being set up at once. Every wait for the
// server is bounded by timeout. On error it closes what it opened.
func OpenInData(addr string, n int, size int64, cut int, parallel int, timeout time.Duration) (*InData, error) {
	d := &InData{msg: NewMessage(size, "bench@example.test", "sink@example.test"), sessions: make([]*conn, n)}
	if d.msg.whole == nil {
		return nil, fmt.Errorf("message of %d bytes: too large to hold sessions in DATA", size)
	}
	d.cut = min(max(cut, 0), len(d.msg.whole))
	batch := fmt.Appendf(nil, "MAIL FROM:<bench@example.test> SIZE=%d\r\nRCPT TO:<sink@example.test>\r\nDATA\r\n", d.msg.Size())
	errs := make(chan error, n)
	work := make(chan int)
	var wg sync.WaitGroup
	for range max(parallel, 1) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range work {
				c, err := d.openOne(addr, batch, timeout)
				if err != nil {
					errs <- fmt.Errorf("session %d: %w", i, err)
					continue
				}
				d.sessions[i] = c
			}
		}()
	}
	for i := range n {
		work <- i
	}
	close(work)
	wg.Wait()
	close(errs)
	if err := <-errs; err != nil {
		d.Close()
		return nil, err
	}
	return d, nil
}

func (d *InData) openOne(addr string, batch []byte, timeout time.Duration) (*conn, error) {
	nc, err := net.DialTimeout("tcp", addr, timeout)
	if err != nil {
		return nil, fmt.Errorf("dial: %s", errKind(err))
	}
	c := &conn{c: nc, r: bufio.NewReaderSize(nc, 512), w: bufio.NewWriterSize(nc, 512)}
	nc.SetDeadline(time.Now().Add(timeout))
	fail := func(kind string) (*conn, error) {
		nc.Close()
		return nil, fmt.Errorf("%s", kind)
	}
	if code, _, err := readReply(c.r); err != nil || code != 220 {
		return fail(replyKind("greeting", code, err))
	}
	if _, err := nc.Write([]byte("EHLO loadgen.example.test\r\n")); err != nil {
		return fail("ehlo: " + errKind(err))
	}
	code, lines, err := readReply(c.r)
	if err != nil || code != 250 {
		return fail(replyKind("ehlo", code, err))
	}
	pipe := false
	for _, l := range lines {
		if len(l) >= 10 && (l[:10] == "PIPELINING" || l[:10] == "pipelining") {
			pipe = true
		}
	}
	if pipe {
		if _, err := nc.Write(batch); err != nil {
			return fail("write: " + errKind(err))
		}
		for i, want := range []int{250, 250, 354} {
			if code, _, err := readReply(c.r); err != nil || code != want {
				return fail(replyKind([]string{"mail", "rcpt", "data"}[i], code, err))
			}
		}
	} else {
		for i, line := range []string{"MAIL FROM:<bench@example.test>\r\n", "RCPT TO:<sink@example.test>\r\n", "DATA\r\n"} {
			if _, err := nc.Write([]byte(line)); err != nil {
				return fail("write: " + errKind(err))
			}
			want := 250
			if i == 2 {
				want = 354
			}
			if code, _, err := readReply(c.r); err != nil || code != want {
				return fail(replyKind([]string{"mail", "rcpt", "data"}[i], code, err))
			}
		}
	}
	if _, err := nc.Write(d.msg.whole[:d.cut]); err != nil {
		return fail("write: " + errKind(err))
	}
	nc.SetDeadline(time.Time{})
	return c, nil
}

// Len is the number of sessions held.
func (d *InData) Len() int { return len(d.sessions) }

// Finish sends the rest of the message and the final dot on every session
// at once (one goroutine each), reads the end-of-data replies and closes
// the sessions. It returns the number of 250 replies and the failures by
// kind.
func (d *InData) Finish(timeout time.Duration) (int, map[string]int) {
	rest := append(append([]byte(nil), d.msg.whole[d.cut:]...), ".\r\n"...)
	var mu sync.Mutex
	ok, kinds := 0, map[string]int{}
	var wg sync.WaitGroup
	deadline := time.Now().Add(timeout)
	for _, c := range d.sessions {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c.c.SetDeadline(deadline)
			kind := ""
			if _, err := c.c.Write(rest); err != nil {
				kind = "write: " + errKind(err)
			} else if code, _, err := readReply(c.r); err != nil || code != 250 {
				kind = replyKind("end of data", code, err)
			} else {
				c.c.Write([]byte("QUIT\r\n"))
			}
			c.c.Close()
			mu.Lock()
			if kind == "" {
				ok++
			} else {
				kinds[kind]++
			}
			mu.Unlock()
		}()
	}
	wg.Wait()
	d.sessions = nil
	return ok, kinds
}

// Close drops every session without finishing its message.
func (d *InData) Close() {
	for _, c := range d.sessions {
		if c != nil {
			c.c.Close()
		}
	}
	d.sessions = nil
}
