// Package loadgen is the ESMTP load generator of the benchmark harness: N
// concurrent sessions send messages with PIPELINING (MAIL, RCPT and DATA in
// one write), one message per connection or many per connection, for a
// bounded count and time, and report messages/s, the latency of the
// end-of-message reply and errors.
package loadgen

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// Config is one load run.
type Config struct {
	// Addr is the server, host:port.
	Addr string
	// Conns is the number of concurrent sessions.
	Conns int
	// Messages is the total number of messages to send; 0 means no count,
	// only Duration.
	Messages int64
	// Size is the message size in bytes (header and body).
	Size int64
	// Reuse sends many messages per connection; otherwise one message per
	// connection (connect, EHLO, transaction, QUIT).
	Reuse bool
	// PerConn is the most messages per connection with Reuse; 0: no limit.
	PerConn int
	// Duration caps the run: no message is started after it.
	Duration time.Duration
	// Timeout bounds each wait for the server.
	Timeout time.Duration
	// NoPipelining sends MAIL, RCPT and DATA one at a time, waiting for
	// each reply, even when the server offers PIPELINING.
	NoPipelining bool
	// Rcpts is the number of recipients per message.
	Rcpts int
	// From, To and Helo are the envelope and the EHLO name.
	From, To, Helo string
	// Echo speaks no SMTP: per "message" it connects, writes a short
	// probe, reads it back and closes. Against an echo server this
	// measures the bare cost of a connection.
	Echo bool
	// IDPrefix, if set, numbers the messages: each one sent gets its own
	// Message-ID, <bench-IDPREFIX-NNNNNNNN@example.test> (NNNNNNNN: 8 hex
	// digits counting from 00000000 in this run), so a receiver can count
	// distinct messages and tell duplicates. Not with Data.
	IDPrefix string
	// Data, if set, is the message sent (whole, as it is: see
	// MessageFromBytes) instead of one of Size bytes.
	Data []byte
}

// Result is what a run measured.
type Result struct {
	Addr        string         `json:"addr"`
	Conns       int            `json:"conns"`
	Size        int64          `json:"size"`
	Reuse       bool           `json:"reuse"`
	Pipelining  bool           `json:"pipelining"`
	Messages    int64          `json:"messages"`
	Errors      int64          `json:"errors"`
	ErrorKinds  map[string]int `json:"error_kinds,omitempty"`
	Connections int64          `json:"connections"`
	Elapsed     float64        `json:"elapsed_s"`
	MsgsPerSec  float64        `json:"msgs_per_s"`
	MBPerSec    float64        `json:"mb_per_s"`
	P50ms       float64        `json:"p50_ms"`
	P99ms       float64        `json:"p99_ms"`
	Maxms       float64        `json:"max_ms"`
	StoppedBy   string         `json:"stopped_by"`
}

// String is a one-line human summary.
func (r *Result) String() string {
	mode := "per-connection"
	if r.Reuse {
		mode = "reuse"
	}
	s := fmt.Sprintf("%s c=%d size=%d %s: %d msgs in %.2fs = %.0f msgs/s (%.1f MB/s), p50 %.2f ms, p99 %.2f ms, max %.2f ms, %d connections, %d errors (stopped by %s)",
		r.Addr, r.Conns, r.Size, mode, r.Messages, r.Elapsed, r.MsgsPerSec, r.MBPerSec, r.P50ms, r.P99ms, r.Maxms, r.Connections, r.Errors, r.StoppedBy)
	if !r.Pipelining {
		s += " [no pipelining]"
	}
	for k, v := range r.ErrorKinds {
		s += fmt.Sprintf("\n  error %q x%d", k, v)
	}
	return s
}

// Run runs the load described by cfg and returns its result.
func Run(cfg Config) (*Result, error) {
	if cfg.Conns <= 0 {
		return nil, errors.New("conns must be positive")
	}
	if cfg.Messages <= 0 && cfg.Duration <= 0 {
		return nil, errors.New("need a message count or a duration")
	}
	if cfg.Duration <= 0 {
		cfg.Duration = time.Hour
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = 30 * time.Second
	}
	if cfg.Rcpts <= 0 {
		cfg.Rcpts = 1
	}
	if cfg.From == "" {
		cfg.From = "bench@example.test"
	}
	if cfg.To == "" {
		cfg.To = "sink@example.test"
	}
	if cfg.Helo == "" {
		cfg.Helo = "loadgen.example.test"
	}
	msg := NewMessage(cfg.Size, cfg.From, cfg.To)
	if cfg.IDPrefix != "" {
		if cfg.Data != nil {
			return nil, errors.New("numbered Message-IDs need a generated message, not Data")
		}
		var err error
		if msg, err = NewNumberedMessage(cfg.Size, cfg.From, cfg.To, cfg.IDPrefix); err != nil {
			return nil, err
		}
	}
	if cfg.Data != nil {
		var err error
		if msg, err = MessageFromBytes(cfg.Data); err != nil {
			return nil, err
		}
	}
	r := &run{cfg: cfg, msg: msg, kinds: map[string]int{}}
	r.pipelined.Store(true)
	r.batch = r.buildBatch()
	r.start = time.Now()
	r.deadline = r.start.Add(cfg.Duration)
	lat := make([][]time.Duration, cfg.Conns)
	var wg sync.WaitGroup
	for i := range cfg.Conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			lat[i] = r.worker()
		}()
	}
	wg.Wait()
	elapsed := time.Since(r.start)

	all := slices.Concat(lat...)
	slices.Sort(all)
	res := &Result{
		Addr:        cfg.Addr,
		Conns:       cfg.Conns,
		Size:        r.msg.Size(),
		Reuse:       cfg.Reuse,
		Pipelining:  !cfg.NoPipelining && r.pipelined.Load(),
		Messages:    r.ok.Load(),
		Errors:      r.errs.Load(),
		Connections: r.dials.Load(),
		Elapsed:     elapsed.Seconds(),
		StoppedBy:   "count",
	}
	if cfg.Messages <= 0 || r.claimed.Load() < cfg.Messages {
		res.StoppedBy = "duration"
	}
	if r.aborted.Load() {
		res.StoppedBy = "errors"
	}
	if len(r.kinds) > 0 {
		res.ErrorKinds = r.kinds
	}
	res.MsgsPerSec = float64(res.Messages) / res.Elapsed
	res.MBPerSec = res.MsgsPerSec * float64(res.Size) / 1e6
	if n := len(all); n > 0 {
		ms := func(d time.Duration) float64 { return float64(d) / 1e6 }
		res.P50ms = ms(all[(n-1)*50/100])
		res.P99ms = ms(all[(n-1)*99/100])
		res.Maxms = ms(all[n-1])
	}
	return res, nil
}

type run struct {
	cfg      Config
	msg      *Message
	batch    []byte // MAIL, RCPT..., DATA
	start    time.Time
	deadline time.Time

	claimed   atomic.Int64
	ok        atomic.Int64
	errs      atomic.Int64
	dials     atomic.Int64
	seq       atomic.Uint32 // the next numbered Message-ID (Config.IDPrefix)
	aborted   atomic.Bool
	pipelined atomic.Bool

	mu    sync.Mutex
	kinds map[string]int
}

func (r *run) buildBatch() []byte {
	var b strings.Builder
	fmt.Fprintf(&b, "MAIL FROM:<%s> SIZE=%d\r\n", r.cfg.From, r.msg.Size())
	for i := range r.cfg.Rcpts {
		to := r.cfg.To
		if i > 0 {
			to = strconv.Itoa(i) + "." + to
		}
		fmt.Fprintf(&b, "RCPT TO:<%s>\r\n", to)
	}
	b.WriteString("DATA\r\n")
	return []byte(b.String())
}

// claim reserves the next message, or reports that the run is over.
func (r *run) claim() bool {
	if r.aborted.Load() || !time.Now().Before(r.deadline) {
		return false
	}
	if r.cfg.Messages > 0 && r.claimed.Add(1) > r.cfg.Messages {
		return false
	}
	return true
}

// maxConsecutiveErrors ends a worker whose server keeps failing, so a dead
// server ends the run instead of spinning until the duration.
const maxConsecutiveErrors = 50

func (r *run) fail(kind string) {
	r.errs.Add(1)
	r.mu.Lock()
	if len(r.kinds) < 100 {
		r.kinds[kind]++
	} else {
		r.kinds["other"]++
	}
	r.mu.Unlock()
}

// conn is one client connection.
type conn struct {
	c    net.Conn
	r    *bufio.Reader
	w    *bufio.Writer
	sent int // messages sent on it
	pipe bool
}

func (r *run) worker() []time.Duration {
	lat := make([]time.Duration, 0, 1024)
	var c *conn
	consecutive := 0
	defer func() {
		if c != nil {
			r.quit(c)
		}
	}()
	if r.cfg.Echo {
		return r.echoWorker()
	}
	for r.claim() {
		t0 := time.Now()
		if c == nil {
			var kind string
			c, kind = r.dial()
			if c == nil {
				r.fail(kind)
				if consecutive++; consecutive >= maxConsecutiveErrors {
					r.aborted.Store(true)
					return lat
				}
				time.Sleep(10 * time.Millisecond)
				continue
			}
			if r.cfg.Reuse {
				// With reuse, latency is from MAIL; one message per
				// connection counts it from the dial.
				t0 = time.Now()
			}
		}
		if kind := r.send(c); kind != "" {
			r.fail(kind)
			c.c.Close()
			c = nil
			if consecutive++; consecutive >= maxConsecutiveErrors {
				r.aborted.Store(true)
				return lat
			}
			continue
		}
		consecutive = 0
		lat = append(lat, time.Since(t0))
		r.ok.Add(1)
		c.sent++
		if !r.cfg.Reuse || (r.cfg.PerConn > 0 && c.sent >= r.cfg.PerConn) {
			r.quit(c)
			c = nil
		}
	}
	return lat
}

// echoWorker connects, writes a probe, reads it back and closes, once per
// claimed message.
func (r *run) echoWorker() []time.Duration {
	lat := make([]time.Duration, 0, 1024)
	probe := []byte("ping\r\n")
	buf := make([]byte, len(probe))
	consecutive := 0
	for r.claim() {
		t0 := time.Now()
		r.dials.Add(1)
		kind := ""
		c, err := net.DialTimeout("tcp", r.cfg.Addr, r.cfg.Timeout)
		if err != nil {
			kind = "dial: " + errKind(err)
		} else {
			c.SetDeadline(time.Now().Add(r.cfg.Timeout))
			if _, err := c.Write(probe); err != nil {
				kind = "write: " + errKind(err)
			} else if _, err := io.ReadFull(c, buf); err != nil {
				kind = "echo: " + errKind(err)
			}
			c.Close()
		}
		if kind != "" {
			r.fail(kind)
			if consecutive++; consecutive >= maxConsecutiveErrors {
				r.aborted.Store(true)
				return lat
			}
			continue
		}
		consecutive = 0
		lat = append(lat, time.Since(t0))
		r.ok.Add(1)
	}
	return lat
}

func (r *run) setDeadline(c *conn) {
	c.c.SetDeadline(time.Now().Add(r.cfg.Timeout))
}

// dial connects, reads the greeting and sends EHLO.
func (r *run) dial() (*conn, string) {
	nc, err := net.DialTimeout("tcp", r.cfg.Addr, r.cfg.Timeout)
	r.dials.Add(1)
	if err != nil {
		return nil, "dial: " + errKind(err)
	}
	c := &conn{c: nc, r: bufio.NewReaderSize(nc, 4096), w: bufio.NewWriterSize(nc, 64<<10)}
	r.setDeadline(c)
	if code, _, err := readReply(c.r); err != nil || code != 220 {
		nc.Close()
		return nil, replyKind("greeting", code, err)
	}
	fmt.Fprintf(c.w, "EHLO %s\r\n", r.cfg.Helo)
	if err := c.w.Flush(); err != nil {
		nc.Close()
		return nil, "ehlo: " + errKind(err)
	}
	code, lines, err := readReply(c.r)
	if err != nil || code != 250 {
		nc.Close()
		return nil, replyKind("ehlo", code, err)
	}
	for _, l := range lines {
		if strings.EqualFold(strings.Fields(l + " ")[0], "PIPELINING") {
			c.pipe = !r.cfg.NoPipelining
		}
	}
	if !c.pipe {
		r.pipelined.Store(false)
	}
	return c, ""
}

// send runs one transaction and returns "" or the kind of failure.
func (r *run) send(c *conn) string {
	r.setDeadline(c)
	if c.pipe {
		c.w.Write(r.batch)
		if err := c.w.Flush(); err != nil {
			return "write: " + errKind(err)
		}
		for i := 0; i < r.cfg.Rcpts+2; i++ {
			want, what := 250, "rcpt"
			switch i {
			case 0:
				what = "mail"
			case r.cfg.Rcpts + 1:
				want, what = 354, "data"
			}
			if code, _, err := readReply(c.r); err != nil || code != want {
				return replyKind(what, code, err)
			}
		}
	} else {
		for line := range strings.Lines(string(r.batch)) {
			c.w.WriteString(line)
			if err := c.w.Flush(); err != nil {
				return "write: " + errKind(err)
			}
			want := 250
			if strings.HasPrefix(line, "DATA") {
				want = 354
			}
			if code, _, err := readReply(c.r); err != nil || code != want {
				return replyKind(strings.Fields(line)[0], code, err)
			}
		}
	}
	if err := r.msg.WriteNumbered(c.w, r.seq.Add(1)-1); err != nil {
		return "write: " + errKind(err)
	}
	c.w.WriteString(".\r\n")
	if err := c.w.Flush(); err != nil {
		return "write: " + errKind(err)
	}
	if r.msg.Size() > 64<<20 {
		// A huge message may take a while for the server to finish.
		c.c.SetDeadline(time.Now().Add(r.cfg.Timeout))
	}
	if code, _, err := readReply(c.r); err != nil || code != 250 {
		return replyKind("end of data", code, err)
	}
	return ""
}

// quit ends a connection politely; its errors are not the run's.
func (r *run) quit(c *conn) {
	r.setDeadline(c)
	c.w.WriteString("QUIT\r\n")
	if c.w.Flush() == nil {
		readReply(c.r)
	}
	c.c.Close()
}

// readReply reads one (possibly multi-line) reply: its code and the text of
// each line.
func readReply(r *bufio.Reader) (int, []string, error) {
	var lines []string
	for {
		line, err := r.ReadSlice('\n')
		if err != nil {
			return 0, nil, err
		}
		if len(line) < 4 || line[len(line)-2] != '\r' {
			return 0, nil, fmt.Errorf("malformed reply %q", line)
		}
		code, err := strconv.Atoi(string(line[:3]))
		if err != nil {
			return 0, nil, fmt.Errorf("malformed reply %q", line)
		}
		if len(line) > 6 {
			lines = append(lines, string(line[4:len(line)-2]))
		}
		if line[3] != '-' {
			return code, lines, nil
		}
	}
}

func replyKind(what string, code int, err error) string {
	if err != nil {
		return what + ": " + errKind(err)
	}
	return fmt.Sprintf("%s: reply %d", what, code)
}

// errKind shortens an error to its kind, for counting.
func errKind(err error) string {
	var ne net.Error
	switch {
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
		return "connection closed"
	case errors.Is(err, syscall.ECONNRESET):
		return "connection reset"
	case errors.Is(err, syscall.ECONNREFUSED):
		return "connection refused"
	case errors.Is(err, syscall.EADDRNOTAVAIL):
		return "no local address (ports exhausted)"
	case errors.Is(err, syscall.EPIPE):
		return "broken pipe"
	case errors.Is(err, os.ErrDeadlineExceeded), errors.As(err, &ne) && ne.Timeout():
		return "timeout"
	}
	return err.Error()
}
