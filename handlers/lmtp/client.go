package lmtp

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/caddy-esmtp/caddy-esmtp/session"
)

// conn is one connection to the LMTP server, greeted (LHLO), between
// transactions or in one. It is used by one delivery at a time.
type conn struct {
	nc      net.Conn
	r       *bufio.Reader
	w       *bufio.Writer
	ext     map[string]string // LHLO keywords (upper case) and their parameters
	lhlo    string            // the name we gave in LHLO
	server  string            // the name the server gave in its LHLO reply
	timeout time.Duration     // each command, each write
	broken  bool              // not to be used again

	mu        sync.Mutex
	cancelled bool // the delivery's context ended: every deadline is in the past
}

// Limits on what the server sends: RFC 5321 allows 512 bytes per reply
// line; Dovecot's are far shorter.
const (
	maxReplyLine  = 4096
	maxReplyLines = 100
)

// errProtocol is a reply that is not one.
var errProtocol = errors.New("lmtp: malformed reply")

// reply is one reply of the server.
type reply struct {
	code     int
	enhanced string // "2.1.5", or "" when the server gave none
	lines    []string
}

// String is the reply as the server sent it, on one line, for errors and
// logs.
func (r *reply) String() string {
	s := strconv.Itoa(r.code)
	if r.enhanced != "" {
		s += " " + r.enhanced
	}
	return s + " " + strings.Join(r.lines, " ")
}

// dial connects to network, address and greets the server as lhlo.
func dial(ctx context.Context, network, address, lhlo string, timeout time.Duration) (*conn, error) {
	d := net.Dialer{Timeout: timeout}
	nc, err := d.DialContext(ctx, network, address)
	if err != nil {
		return nil, err
	}
	c := &conn{nc: nc, lhlo: lhlo, timeout: timeout}
	c.r = bufio.NewReaderSize(nc, 4096)
	c.w = bufio.NewWriterSize(deadlineWriter{c}, 32<<10)
	release := c.bind(ctx)
	defer release()
	if err := c.greet(); err != nil {
		nc.Close()
		return nil, err
	}
	return c, nil
}

// greet reads the greeting and says LHLO.
func (c *conn) greet() error {
	r, err := c.readReply(c.timeout)
	if err != nil {
		return fmt.Errorf("greeting: %w", err)
	}
	if r.code != 220 {
		return fmt.Errorf("greeting: %s", r)
	}
	r, err = c.cmd("LHLO " + c.lhlo)
	if err != nil {
		return fmt.Errorf("LHLO: %w", err)
	}
	if r.code != 250 {
		return fmt.Errorf("LHLO: %s", r)
	}
	if name, _, _ := strings.Cut(r.lines[0], " "); validName(name) {
		c.server = strings.TrimSuffix(name, ".")
	}
	c.ext = map[string]string{}
	for _, l := range r.lines[1:] {
		kw, param, _ := strings.Cut(l, " ")
		c.ext[strings.ToUpper(kw)] = param
	}
	return nil
}

// has reports whether the server advertised the LHLO keyword ext.
func (c *conn) has(ext string) bool {
	_, ok := c.ext[ext]
	return ok
}

// bind makes the connection's every wait end when ctx does (its
// deadlines move to the past), until release is called. A connection
// whose context ended is broken.
func (c *conn) bind(ctx context.Context) (release func()) {
	stop := context.AfterFunc(ctx, func() {
		c.mu.Lock()
		defer c.mu.Unlock()
		c.cancelled = true
		c.nc.SetDeadline(time.Unix(1, 0))
	})
	return func() {
		if !stop() {
			c.mu.Lock()
			c.broken = c.broken || c.cancelled
			c.mu.Unlock()
		}
	}
}

// arm gives the connection a deadline d from now, or one in the past once
// the delivery's context ended.
func (c *conn) arm(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.cancelled {
		c.nc.SetDeadline(time.Unix(1, 0))
		return
	}
	c.nc.SetDeadline(time.Now().Add(d))
}

// deadlineWriter writes to the connection, each write within the
// command timeout: a stalled server cannot hold a delivery while the
// message is sent.
type deadlineWriter struct{ c *conn }

func (w deadlineWriter) Write(p []byte) (int, error) {
	w.c.arm(w.c.timeout)
	return w.c.nc.Write(p)
}

// cmd sends one command line and reads its reply. An error means the
// connection is broken.
func (c *conn) cmd(line string) (*reply, error) {
	if _, err := c.w.WriteString(line + "\r\n"); err != nil {
		c.broken = true
		return nil, err
	}
	if err := c.w.Flush(); err != nil {
		c.broken = true
		return nil, err
	}
	return c.readReply(c.timeout)
}

// readReply reads one reply, of one line or several, within timeout. An
// error means the connection is broken; a 421 reply (the server closes
// the connection) marks it broken too.
func (c *conn) readReply(timeout time.Duration) (*reply, error) {
	c.arm(timeout)
	r := &reply{}
	for n := 0; ; n++ {
		line, err := c.readLine()
		if err != nil {
			c.broken = true
			return nil, err
		}
		if len(line) < 3 || n == maxReplyLines || (len(line) > 3 && line[3] != ' ' && line[3] != '-') {
			c.broken = true
			return nil, errProtocol
		}
		code, err := strconv.Atoi(line[:3])
		if err != nil || code < 200 || code > 599 || (n > 0 && code != r.code) {
			c.broken = true
			return nil, errProtocol
		}
		r.code = code
		text := ""
		if len(line) > 4 {
			text = line[4:]
		}
		r.lines = append(r.lines, text)
		if len(line) == 3 || line[3] == ' ' {
			break
		}
	}
	if r.code == 421 {
		c.broken = true
	}
	r.splitEnhanced()
	return r, nil
}

// readLine reads one line without its line end.
func (c *conn) readLine() (string, error) {
	var b []byte
	for {
		chunk, isPrefix, err := c.r.ReadLine()
		if err != nil {
			return "", err
		}
		b = append(b, chunk...)
		if len(b) > maxReplyLine {
			return "", errProtocol
		}
		if !isPrefix {
			return string(b), nil
		}
	}
}

// splitEnhanced takes the enhanced status code (RFC 2034) off the
// reply's lines, where it leads each one whose class is the code's.
func (r *reply) splitEnhanced() {
	for i, l := range r.lines {
		ec, rest, _ := strings.Cut(l, " ")
		if !enhancedCode(ec, r.code/100) {
			continue
		}
		if i == 0 {
			r.enhanced = ec
		}
		r.lines[i] = rest
	}
}

// enhancedCode reports whether s is class.subject.detail with the given
// class (RFC 3463: 1 to 3 digits for subject and detail).
func enhancedCode(s string, class int) bool {
	parts := strings.Split(s, ".")
	if len(parts) != 3 || parts[0] != strconv.Itoa(class) {
		return false
	}
	for _, p := range parts[1:] {
		if len(p) < 1 || len(p) > 3 || strings.Trim(p, "0123456789") != "" {
			return false
		}
	}
	return true
}

// sessionReply is the server's reply as ours, for the client or the
// queue: its code, enhanced code and text (sanitized) kept. A 421 (the
// server closing the connection) becomes 451, keeping the rest: passed
// on as such it would close the client's session.
func (r *reply) sessionReply() *session.Reply {
	out := &session.Reply{Code: r.code, Enhanced: r.enhanced}
	if r.code == 421 {
		out.Code = 451
	}
	for i, l := range r.lines {
		if i == 8 {
			break
		}
		out.Lines = append(out.Lines, session.Sanitize(strings.TrimSpace(l), 400))
	}
	if len(out.Lines) == 1 && out.Lines[0] == "" {
		out.Lines = nil
	}
	return out
}

// quit ends the connection politely, within the command timeout.
func (c *conn) quit() {
	c.cmd("QUIT")
	c.nc.Close()
}

// close drops the connection at once: used when it is broken, or in the
// middle of DATA, where the server must see the message end without its
// final dot and discard it.
func (c *conn) close() {
	c.broken = true
	c.nc.Close()
}

// dotWriter writes a message as DATA's content (RFC 5321 4.5.2, which
// LMTP keeps): CRLF line ends (a bare CR or LF becomes CRLF, so the server
// never reads a line end, let alone an end of data, that we did not
// write) and a dot doubled at the start of a line. Close ends it with the
// final dot.
type dotWriter struct {
	w   *bufio.Writer
	bol bool // at the beginning of a line
	cr  bool // the last byte was a CR whose LF may come next
}

func newDotWriter(w *bufio.Writer) *dotWriter { return &dotWriter{w: w, bol: true} }

// Write writes p; it returns the first error writing to the server.
func (d *dotWriter) Write(p []byte) error {
	w := d.w
	for len(p) > 0 {
		if d.cr {
			d.cr = false
			w.WriteString("\r\n")
			d.bol = true
			if p[0] == '\n' {
				p = p[1:]
				continue
			}
		}
		if d.bol && p[0] == '.' {
			w.WriteByte('.')
		}
		// The run up to the next line end goes as it is.
		i := 0
		for i < len(p) && p[i] != '\r' && p[i] != '\n' {
			i++
		}
		w.Write(p[:i])
		if i > 0 {
			d.bol = false
		}
		if i == len(p) {
			break
		}
		if p[i] == '\r' {
			d.cr = true
		} else {
			w.WriteString("\r\n")
			d.bol = true
		}
		p = p[i+1:]
	}
	_, err := w.Write(nil) // the buffered writer's first error, which it keeps
	return err
}

// Close ends the last line, when the message did not, writes the final
// dot and sends it all.
func (d *dotWriter) Close() error {
	if d.cr {
		d.cr = false
		d.w.WriteString("\r\n")
		d.bol = true
	}
	if !d.bol {
		d.w.WriteString("\r\n")
	}
	d.w.WriteString(".\r\n")
	return d.w.Flush()
}
