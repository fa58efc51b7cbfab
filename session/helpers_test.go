package session

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"
)

// hangGuard bounds every wait of the test client so that a broken engine
// fails a test instead of hanging it. It is not a timing assertion.
const hangGuard = 60 * time.Second

// smtpReply is one parsed (possibly multi-line) SMTP reply.
type smtpReply struct {
	code  int
	enh   string   // enhanced status code of the first line, "" when none
	texts []string // each line's text after the code and the enhanced code
	raw   string   // the reply as received, CRLFs included
}

func (r smtpReply) String() string { return strings.TrimRight(r.raw, "\r\n") }

var (
	replyLineRE = regexp.MustCompile(`^([2-5][0-9][0-9])([ -])([\x20-\x7e]*)$`)
	enhancedRE  = regexp.MustCompile(`^([245]\.[0-9]{1,3}\.[0-9]{1,3})(?: |$)`)
)

// testClient is the client side of a session: it reads in a goroutine (so
// the engine never blocks on a write to net.Pipe) and parses replies.
type testClient struct {
	t       testing.TB
	conn    net.Conn
	chunks  chan []byte // each Read's bytes, in order
	pending []byte
	eof     bool
}

func newTestClient(t testing.TB, conn net.Conn) *testClient {
	c := &testClient{t: t, conn: conn, chunks: make(chan []byte, 1<<14)}
	go func() {
		defer close(c.chunks)
		buf := make([]byte, 1<<16)
		for {
			n, err := conn.Read(buf)
			if n > 0 {
				c.chunks <- bytes.Clone(buf[:n])
			}
			if err != nil {
				return
			}
		}
	}()
	return c
}

// nextChunk returns the bytes of the next Read, or nil at EOF.
func (c *testClient) nextChunk() []byte {
	c.t.Helper()
	select {
	case b, ok := <-c.chunks:
		if !ok {
			c.eof = true
			return nil
		}
		return b
	case <-time.After(hangGuard):
		c.t.Fatalf("no reply from the server (pending %q)", c.pending)
		return nil
	}
}

// readLine returns the next line with its CRLF, or io.EOF.
func (c *testClient) readLine() (string, error) {
	c.t.Helper()
	for {
		if i := bytes.IndexByte(c.pending, '\n'); i >= 0 {
			line := string(c.pending[:i+1])
			c.pending = c.pending[i+1:]
			return line, nil
		}
		if c.eof {
			if len(c.pending) > 0 {
				return "", fmt.Errorf("unterminated line %q at EOF", c.pending)
			}
			return "", io.EOF
		}
		if b := c.nextChunk(); b != nil {
			c.pending = append(c.pending, b...)
		}
	}
}

// readReply reads one reply and checks that it is well formed.
func (c *testClient) readReply() smtpReply {
	c.t.Helper()
	r, err := c.tryReadReply()
	if err != nil {
		c.t.Fatalf("reading reply: %v", err)
	}
	return r
}

func (c *testClient) tryReadReply() (smtpReply, error) {
	c.t.Helper()
	var r smtpReply
	for i := 0; ; i++ {
		line, err := c.readLine()
		if err != nil {
			if i > 0 {
				return r, fmt.Errorf("reply %q cut short: %w", r.raw, err)
			}
			return r, err
		}
		r.raw += line
		if !strings.HasSuffix(line, "\r\n") {
			return r, fmt.Errorf("reply line %q does not end with CRLF", line)
		}
		m := replyLineRE.FindStringSubmatch(line[:len(line)-2])
		if m == nil {
			return r, fmt.Errorf("malformed reply line %q", line)
		}
		code := int(m[1][0]-'0')*100 + int(m[1][1]-'0')*10 + int(m[1][2]-'0')
		text := m[3]
		enh := ""
		if e := enhancedRE.FindStringSubmatch(text); e != nil {
			enh = e[1]
			text = strings.TrimPrefix(text[len(enh):], " ")
		}
		if i == 0 {
			r.code, r.enh = code, enh
		} else if code != r.code {
			return r, fmt.Errorf("multi-line reply %q changes code", r.raw)
		} else if enh != r.enh {
			return r, fmt.Errorf("multi-line reply %q changes enhanced code", r.raw)
		}
		if enh != "" && enh[0] != m[1][0] {
			return r, fmt.Errorf("reply %q: enhanced code class differs from the code", line)
		}
		r.texts = append(r.texts, text)
		if m[2] == " " {
			return r, nil
		}
	}
}

// expect reads a reply and checks its code and enhanced code ("" means the
// reply must carry none).
func (c *testClient) expect(code int, enh string) smtpReply {
	c.t.Helper()
	r := c.readReply()
	if r.code != code || r.enh != enh {
		c.t.Fatalf("got reply %q, want %d %s", r.raw, code, enh)
	}
	return r
}

// send writes the lines, each followed by CRLF, in one write.
func (c *testClient) send(lines ...string) {
	c.t.Helper()
	var b strings.Builder
	for _, l := range lines {
		b.WriteString(l)
		b.WriteString("\r\n")
	}
	c.sendRaw(b.String())
}

// sendRaw writes s as it is, in one write.
func (c *testClient) sendRaw(s string) {
	c.t.Helper()
	c.conn.SetWriteDeadline(time.Now().Add(hangGuard))
	if _, err := io.WriteString(c.conn, s); err != nil {
		c.t.Fatalf("write: %v", err)
	}
}

// cmd sends one command line and checks its reply.
func (c *testClient) cmd(line string, code int, enh string) smtpReply {
	c.t.Helper()
	c.send(line)
	return c.expect(code, enh)
}

// expectClosed checks that the server sends nothing more and closes.
func (c *testClient) expectClosed() {
	c.t.Helper()
	line, err := c.readLine()
	if err == nil {
		c.t.Fatalf("got %q, want the connection closed", line)
	}
	if !errors.Is(err, io.EOF) {
		c.t.Fatalf("want EOF, got %v", err)
	}
}

// testSession is a session served over net.Pipe.
type testSession struct {
	*testClient
	srv  *Server
	sess *Session
	done chan error
	err  error
	over bool
}

// start runs a session on a new Server made from cfg and reads its greeting.
func start(t testing.TB, cfg Config) *testSession {
	t.Helper()
	srv, err := newServer(cfg)
	if err != nil {
		t.Fatalf("NewServer: %v", err)
	}
	return startOn(t, srv, ConnInfo{})
}

// startOn runs one more session on srv and reads its greeting.
func startOn(t testing.TB, srv *Server, info ConnInfo) *testSession {
	t.Helper()
	ts := startRaw(t, srv, info)
	g := ts.expect(220, "")
	if !strings.HasPrefix(g.texts[0], srv.cfg.Hostname+" ESMTP") {
		t.Fatalf("greeting %q does not start with the hostname", g.raw)
	}
	ts.sess = sessionOf(t, srv)
	return ts
}

// startRaw runs a session on srv without reading anything.
func startRaw(t testing.TB, srv *Server, info ConnInfo) *testSession {
	t.Helper()
	sc, cc := net.Pipe()
	ts := &testSession{testClient: newTestClient(t, cc), srv: srv, done: make(chan error, 1)}
	go func() {
		err := srv.Serve(context.Background(), sc, info)
		sc.Close()
		ts.done <- err
	}()
	t.Cleanup(func() {
		cc.Close()
		ts.wait()
	})
	return ts
}

// sessionOf returns the one session srv runs (its greeting has been read,
// so it is tracked).
func sessionOf(t testing.TB, srv *Server) *Session {
	srv.mu.Lock()
	defer srv.mu.Unlock()
	var last *Session
	for s := range srv.sessions {
		if last == nil || s.start.After(last.start) {
			last = s
		}
	}
	return last
}

// wait waits for Serve to return and gives its error.
func (ts *testSession) wait() error {
	ts.t.Helper()
	if ts.over {
		return ts.err
	}
	select {
	case ts.err = <-ts.done:
		ts.over = true
	case <-time.After(hangGuard):
		ts.t.Fatalf("session did not end")
	}
	return ts.err
}

// ehlo greets and checks the EHLO reply.
func (ts *testSession) ehlo() {
	ts.t.Helper()
	ts.cmd("EHLO client.example", 250, "")
}

// mailTo opens a transaction for the recipients.
func (ts *testSession) mailTo(rcpts ...string) {
	ts.t.Helper()
	ts.cmd("MAIL FROM:<sender@client.example>", 250, "2.1.0")
	for _, r := range rcpts {
		ts.cmd("RCPT TO:<"+r+">", 250, "2.1.5")
	}
}

// stuff dot-stuffs msg (which must end with CRLF or be empty) and appends
// the end of data.
func stuff(msg string) string {
	var b strings.Builder
	for line := range strings.SplitAfterSeq(msg, "\r\n") {
		if strings.HasPrefix(line, ".") {
			b.WriteByte('.')
		}
		b.WriteString(line)
	}
	b.WriteString(".\r\n")
	return b.String()
}

// event is one hook call seen by a recorder.
type event struct {
	kind   string // connect helo mail rcpt data header eoh body eom abort close verb
	arg    string // helo name, mailbox, "cmd arg", header name
	value  string // header value
	raw    []byte // header raw, eoh raw, body chunk
	reason error  // abort reason
}

// recorder is a sub-handler implementing every hook: it records the calls
// and lets a test choose what each returns.
type recorder struct {
	mu  sync.Mutex
	ev  []event
	act func(ctx context.Context, kind string) (*Reply, error)
}

func (r *recorder) do(ctx context.Context, e event) (*Reply, error) {
	r.mu.Lock()
	r.ev = append(r.ev, e)
	act := r.act
	r.mu.Unlock()
	if act != nil {
		return act(ctx, e.kind)
	}
	return nil, nil
}

func (r *recorder) events() []event {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]event(nil), r.ev...)
}

// kinds lists the event kinds, consecutive body events merged.
func (r *recorder) kinds() []string {
	var out []string
	for _, e := range r.events() {
		if e.kind == "body" && len(out) > 0 && out[len(out)-1] == "body" {
			continue
		}
		out = append(out, e.kind)
	}
	return out
}

func (r *recorder) count(kind string) int {
	n := 0
	for _, e := range r.events() {
		if e.kind == kind {
			n++
		}
	}
	return n
}

func (r *recorder) reset() {
	r.mu.Lock()
	r.ev = nil
	r.mu.Unlock()
}

func (r *recorder) Connect(ctx context.Context, s *Session) (*Reply, error) {
	return r.do(ctx, event{kind: "connect"})
}
func (r *recorder) Helo(ctx context.Context, s *Session, name string) (*Reply, error) {
	return r.do(ctx, event{kind: "helo", arg: name})
}
func (r *recorder) Mail(ctx context.Context, s *Session, from Path, params Params) (*Reply, error) {
	return r.do(ctx, event{kind: "mail", arg: from.Mailbox})
}
func (r *recorder) Rcpt(ctx context.Context, s *Session, to Path, params Params) (*Reply, error) {
	return r.do(ctx, event{kind: "rcpt", arg: to.Mailbox})
}
func (r *recorder) Data(ctx context.Context, s *Session) (*Reply, error) {
	return r.do(ctx, event{kind: "data"})
}
func (r *recorder) Header(ctx context.Context, s *Session, h HeaderField) error {
	_, err := r.do(ctx, event{kind: "header", arg: h.Name, value: h.Value, raw: bytes.Clone(h.Raw)})
	return err
}
func (r *recorder) EndOfHeaders(ctx context.Context, s *Session, raw []byte) error {
	_, err := r.do(ctx, event{kind: "eoh", raw: bytes.Clone(raw)})
	return err
}
func (r *recorder) Body(ctx context.Context, s *Session, chunk []byte) error {
	_, err := r.do(ctx, event{kind: "body", raw: bytes.Clone(chunk)})
	return err
}
func (r *recorder) EndOfMessage(ctx context.Context, s *Session) (*Reply, error) {
	return r.do(ctx, event{kind: "eom"})
}
func (r *recorder) Abort(s *Session, reason error) {
	r.do(context.Background(), event{kind: "abort", reason: reason})
}
func (r *recorder) Close(s *Session) {
	r.do(context.Background(), event{kind: "close"})
}
func (r *recorder) Verb(ctx context.Context, s *Session, cmd, arg string) (*Reply, error) {
	return r.do(ctx, event{kind: "verb", arg: cmd + " " + arg})
}

// content reassembles what the header, end-of-headers and body hooks saw.
func (r *recorder) content() []byte {
	var b []byte
	for _, e := range r.events() {
		switch e.kind {
		case "header", "eoh", "body":
			b = append(b, e.raw...)
		}
	}
	return b
}

// Single-hook sub-handlers made from functions.
type (
	connectFunc func(ctx context.Context, s *Session) (*Reply, error)
	heloFunc    func(ctx context.Context, s *Session, name string) (*Reply, error)
	mailFunc    func(ctx context.Context, s *Session, from Path, params Params) (*Reply, error)
	rcptFunc    func(ctx context.Context, s *Session, to Path, params Params) (*Reply, error)
	dataFunc    func(ctx context.Context, s *Session) (*Reply, error)
	headerFunc  func(ctx context.Context, s *Session, h HeaderField) error
	bodyFunc    func(ctx context.Context, s *Session, chunk []byte) error
	eomFunc     func(ctx context.Context, s *Session) (*Reply, error)
)

func (f connectFunc) Connect(ctx context.Context, s *Session) (*Reply, error) { return f(ctx, s) }
func (f heloFunc) Helo(ctx context.Context, s *Session, n string) (*Reply, error) {
	return f(ctx, s, n)
}
func (f mailFunc) Mail(ctx context.Context, s *Session, p Path, ps Params) (*Reply, error) {
	return f(ctx, s, p, ps)
}
func (f rcptFunc) Rcpt(ctx context.Context, s *Session, p Path, ps Params) (*Reply, error) {
	return f(ctx, s, p, ps)
}
func (f dataFunc) Data(ctx context.Context, s *Session) (*Reply, error) { return f(ctx, s) }
func (f headerFunc) Header(ctx context.Context, s *Session, h HeaderField) error {
	return f(ctx, s, h)
}
func (f bodyFunc) Body(ctx context.Context, s *Session, c []byte) error { return f(ctx, s, c) }
func (f eomFunc) EndOfMessage(ctx context.Context, s *Session) (*Reply, error) {
	return f(ctx, s)
}

// memConn is a net.Conn reading from r and writing to w, for fuzzing and
// benchmarks: no goroutine, deadlines ignored, EOF at the end of r.
type memConn struct {
	r io.Reader
	w io.Writer
}

type memAddr struct{}

func (memAddr) Network() string { return "mem" }
func (memAddr) String() string  { return "mem" }

func (c *memConn) Read(p []byte) (int, error)         { return c.r.Read(p) }
func (c *memConn) Write(p []byte) (int, error)        { return c.w.Write(p) }
func (c *memConn) Close() error                       { return nil }
func (c *memConn) LocalAddr() net.Addr                { return memAddr{} }
func (c *memConn) RemoteAddr() net.Addr               { return memAddr{} }
func (c *memConn) SetDeadline(t time.Time) error      { return nil }
func (c *memConn) SetReadDeadline(t time.Time) error  { return nil }
func (c *memConn) SetWriteDeadline(t time.Time) error { return nil }

// checkReplies checks that out is a sequence of well-formed replies and
// returns them.
func checkReplies(out []byte) ([]smtpReply, error) {
	if len(out) > 0 && !bytes.HasSuffix(out, []byte("\r\n")) {
		return nil, fmt.Errorf("output does not end with CRLF: %q", out)
	}
	var replies []smtpReply
	var cur *smtpReply
	for len(out) > 0 {
		i := bytes.Index(out, []byte("\r\n"))
		line := out[:i]
		out = out[i+2:]
		m := replyLineRE.FindSubmatch(line)
		if m == nil {
			return replies, fmt.Errorf("malformed reply line %q", line)
		}
		code := int(m[1][0]-'0')*100 + int(m[1][1]-'0')*10 + int(m[1][2]-'0')
		if cur == nil {
			replies = append(replies, smtpReply{code: code})
			cur = &replies[len(replies)-1]
		} else if cur.code != code {
			return replies, fmt.Errorf("multi-line reply changes code at %q", line)
		}
		cur.raw += string(line) + "\r\n"
		cur.texts = append(cur.texts, string(m[3]))
		if m[2][0] == ' ' {
			cur = nil
		}
	}
	if cur != nil {
		return replies, fmt.Errorf("last reply %q not finished", cur.raw)
	}
	return replies, nil
}

// sink is a delivery that takes every recipient and reads nothing: the
// engine refuses recipients that no delivery takes, and most tests are
// about something else.
type sink struct{}

func (sink) Deliver(context.Context, *Session, *Delivery) error { return nil }
func (sink) ReadsMessage() bool                                 { return false }

// newServer is NewServer with a sink delivery added when cfg has no
// delivery of its own.
func newServer(cfg Config) (*Server, error) {
	for _, h := range cfg.Handlers {
		_, d := h.Handler.(DeliverHook)
		_, p := h.Handler.(PrepareHook)
		if d || p {
			return NewServer(cfg)
		}
	}
	cfg.Handlers = append(append([]SubHandler(nil), cfg.Handlers...), SubHandler{Name: "sink", Handler: sink{}})
	return NewServer(cfg)
}
