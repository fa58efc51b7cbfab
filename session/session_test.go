package session

import (
	"context"
	"net"
	"strconv"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"
)

func TestGreeting(t *testing.T) {
	// start checks the 220, the hostname and that there is no enhanced code
	ts := start(t, Config{Hostname: "mx.example.org", Greeting: "ready"})
	ts.send("QUIT")
	ts.expect(221, "2.0.0")
	ts.expectClosed()

	srv, _ := newServer(Config{Hostname: "mx.example.org", Greeting: "hello there"})
	raw := startRaw(t, srv, ConnInfo{})
	line, err := raw.readLine()
	if err != nil || line != "220 mx.example.org ESMTP hello there\r\n" {
		t.Fatalf("greeting %q, %v", line, err)
	}
	srv2, _ := newServer(Config{Hostname: "mx.example.org"})
	raw2 := startRaw(t, srv2, ConnInfo{})
	if line, _ := raw2.readLine(); line != "220 mx.example.org ESMTP\r\n" {
		t.Fatalf("greeting without text %q", line)
	}
}

func TestHeloEhlo(t *testing.T) {
	ts := start(t, Config{Hostname: "mx.example.org", MaxMessageSize: 12345})
	r := ts.cmd("HELO client.example", 250, "")
	if len(r.texts) != 1 || r.texts[0] != "mx.example.org" {
		t.Fatalf("HELO reply %q", r.raw)
	}
	r = ts.cmd("EHLO client.example", 250, "")
	want := []string{"mx.example.org", "PIPELINING", "SIZE 12345", "8BITMIME", "SMTPUTF8",
		"ENHANCEDSTATUSCODES", "CHUNKING", "HELP"}
	if strings.Join(r.texts, "|") != strings.Join(want, "|") {
		t.Fatalf("EHLO reply %q, want lines %q", r.raw, want)
	}
	for _, l := range strings.Split(strings.TrimRight(r.raw, "\r\n"), "\r\n") {
		if enhancedRE.MatchString(l[4:]) {
			t.Fatalf("EHLO line %q has an enhanced code", l)
		}
	}
	ts.cmd("HELO", 501, "5.5.4")
	ts.cmd("EHLO", 501, "5.5.4")
	ts.cmd("EHLO   ", 501, "5.5.4")
	ts.cmd("helo a b", 501, "5.5.4")
	ts.cmd("ehlo lower.example", 250, "")
}

func TestDefaultReplies(t *testing.T) {
	rec := &recorder{}
	ts := start(t, Config{Hostname: "mx.example.org", Handlers: []SubHandler{{Name: "rec", Handler: rec}}})
	ts.ehlo()
	ts.cmd("MAIL FROM:<a@example.com>", 250, "2.1.0")
	ts.cmd("RCPT TO:<b@example.com>", 250, "2.1.5")
	ts.send("DATA")
	r := ts.expect(354, "")
	if r.texts[0] != "End data with <CR><LF>.<CR><LF>" {
		t.Fatalf("354 text %q", r.raw)
	}
	ts.sendRaw(stuff("Subject: x\r\n\r\nhi\r\n"))
	r = ts.expect(250, "2.0.0")
	id := strings.Fields(r.texts[0])[0]
	if len(id) != 16 || !strings.Contains(r.texts[0], "Message accepted for delivery") {
		t.Fatalf("end of message reply %q", r.raw)
	}
	var rcv string
	for _, e := range rec.events() {
		if e.kind == "header" && e.arg == "Received" {
			rcv = e.value
		}
	}
	if !strings.Contains(rcv, "id "+id) {
		t.Fatalf("queue id %s not in Received: %q", id, rcv)
	}
	r = ts.cmd("VRFY postmaster", 252, "2.5.0")
	if r.texts[0] != "Cannot VRFY user; try RCPT to attempt delivery" {
		t.Fatalf("VRFY %q", r.raw)
	}
	r = ts.cmd("EXPN list", 502, "5.5.1")
	if r.texts[0] != "Sorry we don't allow this operation" {
		t.Fatalf("EXPN %q", r.raw)
	}
	ts.cmd("VRFY", 501, "5.5.4")
	ts.cmd("NOOP", 250, "2.0.0")
	ts.cmd("NOOP anything", 250, "2.0.0")
	ts.cmd("RSET", 250, "2.0.0")
	ts.cmd("RSET x", 501, "5.5.4")
	r = ts.cmd("HELP", 214, "2.0.0")
	if len(r.texts) < 1 || !strings.Contains(r.raw, "MAIL") {
		t.Fatalf("HELP %q", r.raw)
	}
	ts.cmd("HELP MAIL", 214, "2.0.0")
	ts.cmd("QUIT now", 501, "5.5.4")
	ts.send("QUIT")
	ts.expect(221, "2.0.0")
	ts.expectClosed()
	if err := ts.wait(); err != nil {
		t.Fatalf("Serve: %v", err)
	}
}

// TestStartTLSNotConfigured: STARTTLS without a TLS config is not offered
// and is answered 502 5.5.1.
func TestStartTLSNotConfigured(t *testing.T) {
	ts := start(t, Config{})
	r := ts.cmd("EHLO client.test", 250, "")
	if strings.Contains(r.raw, "STARTTLS") {
		t.Fatalf("STARTTLS advertised without a TLS config: %q", r.raw)
	}
	ts.cmd("STARTTLS", 502, "5.5.1")
}

func TestUnknownCommandNotEchoed(t *testing.T) {
	rec := &recorder{}
	ts := start(t, Config{Handlers: []SubHandler{{Name: "rec", Handler: rec}}})
	for _, l := range []string{
		"XYZZY <script>alert(1)</script>",
		"FOO\x7f\xff\xfe bar",
		"",
		"MAILFROM:<a@b>",
		"LONGVERBLONGVERB arg",
	} {
		r := ts.cmd(l, 500, "5.5.2")
		if r.raw != "500 5.5.2 Command unrecognized\r\n" {
			t.Fatalf("%q: reply %q", l, r.raw)
		}
	}
	// the verb hook sees a sanitised, upper-case verb
	for _, e := range rec.events() {
		verb, _, _ := strings.Cut(e.arg, " ")
		if e.kind == "verb" && (Sanitize(verb, 0) != verb || strings.ToUpper(verb) != verb) {
			t.Fatalf("verb hook got %q", e.arg)
		}
	}
	ts.cmd("TURN", 502, "5.5.1")
	ts.cmd("NOOP", 250, "2.0.0")
}

func TestStateErrors(t *testing.T) {
	ts := start(t, Config{})
	ts.cmd("MAIL FROM:<a@example.com>", 503, "5.5.1")
	ts.cmd("RCPT TO:<b@example.com>", 503, "5.5.1")
	ts.cmd("DATA", 503, "5.5.1")
	ts.ehlo()
	ts.cmd("RCPT TO:<b@example.com>", 503, "5.5.1")
	ts.cmd("DATA", 503, "5.5.1")
	ts.cmd("MAIL FROM:<a@example.com>", 250, "2.1.0")
	ts.cmd("MAIL FROM:<a@example.com>", 503, "5.5.1")
	ts.cmd("DATA", 503, "5.5.1")
	ts.cmd("DATA now", 501, "5.5.4")
	ts.cmd("RCPT TO:<b@example.com>", 250, "2.1.5")
	ts.cmd("RSET", 250, "2.0.0")
	ts.cmd("RCPT TO:<b@example.com>", 503, "5.5.1")
	// EHLO resets the transaction too
	ts.cmd("MAIL FROM:<a@example.com>", 250, "2.1.0")
	ts.ehlo()
	ts.cmd("RCPT TO:<b@example.com>", 503, "5.5.1")
}

func TestBdatBeforeMailConsumesChunk(t *testing.T) {
	ts := start(t, Config{})
	ts.ehlo()
	// the chunk looks like commands; none of them may be answered
	chunk := "NOOP\r\nMAIL FROM:<evil@example.com>\r\nQUIT\r\n"
	ts.sendRaw("BDAT " + itoa(len(chunk)) + "\r\n" + chunk)
	ts.expect(503, "5.5.1")
	ts.sendRaw("BDAT " + itoa(len(chunk)) + " LAST\r\n" + chunk)
	ts.expect(503, "5.5.1")
	ts.cmd("NOOP", 250, "2.0.0")
	// before EHLO (HELO only) likewise
	ts.cmd("HELO client.example", 250, "")
	ts.cmd("MAIL FROM:<a@example.com>", 250, "2.1.0")
	ts.cmd("RCPT TO:<b@example.com>", 250, "2.1.5")
	ts.sendRaw("BDAT " + itoa(len(chunk)) + " LAST\r\n" + chunk)
	ts.expect(503, "5.5.1")
	ts.cmd("NOOP", 250, "2.0.0")
}

func itoa(n int) string { return strconv.Itoa(n) }

func TestAddressSyntax(t *testing.T) {
	ts := start(t, Config{MaxMessageSize: 1000, MaxErrors: 1000})
	ts.ehlo()
	for _, c := range []struct {
		line string
		code int
		enh  string
	}{
		{"MAIL FROM:<>", 250, "2.1.0"},
		{"RCPT TO:<Postmaster>", 250, "2.1.5"},
		{"RCPT TO:<postmaster>", 250, "2.1.5"},
		{"RCPT TO:<@hop1.example,@hop2.example:user@example.com>", 250, "2.1.5"},
		{"RCPT TO:<user@[192.0.2.1]>", 250, "2.1.5"},
		{"RCPT TO:<user@[IPv6:2001:db8::1]>", 250, "2.1.5"},
		{"RCPT TO:<\"quoted local\"@example.com>", 250, "2.1.5"},
		{"RCPT TO: <space@example.com>", 250, "2.1.5"},
		{"RCPT TO:<>", 501, "5.1.3"},
		{"RCPT TO:user@example.com", 501, "5.1.3"},
		{"RCPT TO:<user@example.com", 501, "5.1.3"},
		{"RCPT TO:<user>", 501, "5.1.3"},
		{"RCPT TO:<@example.com>", 501, "5.1.3"},
		{"RCPT TO:<user@>", 501, "5.1.3"},
		{"RCPT TO:<us..er@example.com>", 501, "5.1.3"},
		{"RCPT TO:<user@-bad.example>", 501, "5.1.3"},
		{"RCPT TO:<user@[300.0.0.1]>", 501, "5.1.3"},
		{"RCPT TO:<" + strings.Repeat("l", 65) + "@example.com>", 501, "5.1.3"},
		{"RCPT TO:<user@example.com>x", 501, "5.1.3"},
		{"RCPT TO:<user@example.com> NOTIFY=NEVER", 555, "5.5.4"},
		{"RCPT <user@example.com>", 501, "5.5.4"},
		{"RCPT TO:<ü@example.com>", 553, "5.6.7"},
		{"RSET", 250, "2.0.0"},
		{"MAIL FROM:a@example.com", 501, "5.1.7"},
		{"MAIL FROM:<a@example.com", 501, "5.1.7"},
		{"MAIL FROM:<a@>", 501, "5.1.7"},
		{"MAIL FROM:<a b@example.com>", 501, "5.1.7"},
		{"MAIL FROM:<a@example.com> SIZE=1001", 552, "5.3.4"},
		{"MAIL FROM:<a@example.com> SIZE=abc", 501, "5.5.4"},
		{"MAIL FROM:<a@example.com> SIZE", 501, "5.5.4"},
		{"MAIL FROM:<a@example.com> FOO=BAR", 555, "5.5.4"},
		{"MAIL FROM:<a@example.com> BODY=BINARYMIME", 555, "5.5.4"},
		{"MAIL FROM:<a@example.com> =x", 501, "5.5.4"},
		{"MAIL FROM:<ü@example.com>", 553, "5.6.7"},
		{"MAIL TO:<a@example.com>", 501, "5.5.4"},
		{"MAIL FROM:<a@example.com> SIZE=1000 BODY=8BITMIME", 250, "2.1.0"},
		{"RSET", 250, "2.0.0"},
		{"MAIL FROM:<a@example.com> body=8bitmime size=10", 250, "2.1.0"},
		{"RSET", 250, "2.0.0"},
		{"MAIL FROM:<ü@exämple.com> SMTPUTF8", 250, "2.1.0"},
		{"RCPT TO:<ö@exämple.com>", 250, "2.1.5"},
		{"RSET", 250, "2.0.0"},
		{"MAIL FROM:<a@example.com> SMTPUTF8=yes", 555, "5.5.4"},
		{"mail from:<@hop.example:a@example.com>", 250, "2.1.0"},
	} {
		ts.cmd(c.line, c.code, c.enh)
	}
}

func TestParamsAfterHelo(t *testing.T) {
	ts := start(t, Config{})
	ts.cmd("HELO client.example", 250, "")
	ts.cmd("MAIL FROM:<a@example.com> SIZE=10", 555, "5.5.4")
	ts.cmd("MAIL FROM:<a@example.com> BODY=8BITMIME", 555, "5.5.4")
	ts.cmd("MAIL FROM:<a@example.com>", 250, "2.1.0")
	ts.cmd("RCPT TO:<b@example.com> FOO", 555, "5.5.4")
	ts.cmd("RCPT TO:<b@example.com>", 250, "2.1.5")
}

func TestCommandLineLimits(t *testing.T) {
	ts := start(t, Config{})
	ts.ehlo()
	// 512 octets with CRLF is the limit for ordinary commands
	ts.cmd("NOOP "+strings.Repeat("x", 512-2-5), 250, "2.0.0")
	ts.cmd("NOOP "+strings.Repeat("x", 512-2-5+1), 500, "5.5.2")
	ts.cmd("NOOP", 250, "2.0.0")
	// a command line longer than the reader's buffer
	ts.cmd("NOOP "+strings.Repeat("y", 6000), 500, "5.5.2")
	ts.cmd("NOOP "+strings.Repeat("z", 20000), 500, "5.5.2")
	ts.cmd("NOOP", 250, "2.0.0")
	// MAIL of 1000 octets with parameters
	domain := strings.Repeat("d", 60) + "." + strings.Repeat("e", 60) + "." + strings.Repeat("f", 60) + ".example"
	line := "MAIL FROM:<" + strings.Repeat("l", 60) + "@" + domain + "> BODY=8BITMIME SIZE="
	line += strings.Repeat("0", 1000-2-len(line)-4) + "1000"
	if len(line)+2 != 1000 {
		t.Fatalf("test line is %d octets", len(line)+2)
	}
	ts.cmd(line, 250, "2.1.0")
	ts.cmd("RCPT TO:<b@example.com>", 250, "2.1.5")
}

func TestEndlessLine(t *testing.T) {
	ts := start(t, Config{})
	ts.ehlo()
	errc := make(chan error, 1)
	go func() {
		big := strings.Repeat("A", 2<<20)
		_, err := ts.conn.Write([]byte("NOOP " + big))
		errc <- err
	}()
	ts.expect(500, "5.5.2")
	ts.expectClosed()
	ts.wait()
	<-errc // the write fails once the server closes; that is fine
	if c := cap(ts.sess.lineBuf); c > 13<<10 {
		t.Fatalf("lineBuf grew to %d bytes, want <= 13 KiB", c)
	}
	if ts.sess.errors != 1 {
		t.Fatalf("errors = %d", ts.sess.errors)
	}
}

func TestLongLineMemoryBounded(t *testing.T) {
	// Lines up to the AUTH limit are kept; the buffer must stay near it.
	ts := start(t, Config{})
	ts.ehlo()
	for _, n := range []int{5000, 9000, 12000, 12300, 13000, 16000, 100000} {
		ts.cmd("NOOP "+strings.Repeat("x", n), 500, "5.5.2")
		// the NOOP round trip orders the read of lineBuf after the
		// session's writes; the session then waits for a command
		ts.cmd("NOOP", 250, "2.0.0")
		if c := cap(ts.sess.lineBuf); c > 13<<10 {
			t.Fatalf("after a %d-octet line lineBuf cap is %d, want <= 13 KiB", n, c)
		}
	}
}

func TestBadLineEndings(t *testing.T) {
	ts := start(t, Config{})
	ts.ehlo()
	ts.sendRaw("NOOP\n")
	ts.expect(501, "5.5.2")
	ts.sendRaw("NO\rOP\r\n")
	ts.expect(501, "5.5.2")
	ts.sendRaw("NOOP\x00\r\n")
	ts.expect(501, "5.5.2")
	ts.sendRaw("MAIL FROM:<a@example.com>\x00\r\n")
	ts.expect(501, "5.5.2")
	ts.sendRaw("\n")
	ts.expect(501, "5.5.2")
	// a bare LF never ends a command: "RSET\nNOOP" is one bad line
	ts.sendRaw("MAIL FROM:<a@example.com>\r\n")
	ts.expect(250, "2.1.0")
	ts.sendRaw("NOOP\rRSET\r\n")
	ts.expect(501, "5.5.2")
	ts.cmd("RCPT TO:<b@example.com>", 250, "2.1.5")
}

func TestMaxRecipients(t *testing.T) {
	ts := start(t, Config{MaxRecipients: 3})
	ts.ehlo()
	ts.mailTo("a@example.com", "b@example.com", "c@example.com")
	ts.cmd("RCPT TO:<d@example.com>", 452, "4.5.3")
	ts.cmd("RCPT TO:<e@example.com>", 452, "4.5.3")
	ts.send("DATA")
	ts.expect(354, "")
	ts.sendRaw(stuff("\r\nx\r\n"))
	ts.expect(250, "2.0.0")
	// a new transaction has room again
	ts.mailTo("a@example.com", "b@example.com", "c@example.com")
	ts.cmd("RCPT TO:<d@example.com>", 452, "4.5.3")
	ts.cmd("NOOP", 250, "2.0.0") // orders the read below after the session's writes
	if n := len(ts.sess.txn.Recipients); n != 3 {
		t.Fatalf("recipients %d", n)
	}
}

func TestMaxErrors(t *testing.T) {
	rec := &recorder{}
	ts := start(t, Config{MaxErrors: 3, Handlers: []SubHandler{{Name: "rec", Handler: rec}}})
	ts.ehlo()
	ts.cmd("BOGUS", 500, "5.5.2")
	ts.cmd("MAIL FROM:bad", 501, "5.1.7")
	ts.cmd("NOOP", 250, "2.0.0")
	ts.cmd("RCPT TO:<a@example.com>", 503, "5.5.1")
	ts.cmd("BOGUS", 421, "4.7.0")
	ts.expectClosed()
	if err := ts.wait(); err != nil {
		t.Fatalf("Serve: %v", err)
	}
	if rec.count("close") != 1 {
		t.Fatalf("close hook called %d times", rec.count("close"))
	}
}

func TestCommandTimeout(t *testing.T) {
	t.Parallel()
	rec := &recorder{}
	ts := start(t, Config{CommandTimeout: 200 * time.Millisecond, Handlers: []SubHandler{{Name: "rec", Handler: rec}}})
	// pipelined, so that no client round trip runs inside a timeout
	ts.send("EHLO client.example", "MAIL FROM:<a@example.com>", "RCPT TO:<b@example.com>")
	ts.expect(250, "")
	ts.expect(250, "2.1.0")
	ts.expect(250, "2.1.5")
	ts.expect(421, "4.4.2")
	ts.expectClosed()
	if err := ts.wait(); err != nil {
		t.Fatalf("Serve: %v", err)
	}
	if rec.count("abort") != 1 || rec.count("close") != 1 {
		t.Fatalf("events %v", rec.kinds())
	}
	// a partial line does not extend the timeout
	ts2 := startRaw(t, mustServer(t, Config{CommandTimeout: 200 * time.Millisecond}), ConnInfo{})
	ts2.sendRaw("NOO")
	ts2.expect(220, "")
	ts2.expect(421, "4.4.2")
	ts2.expectClosed()
}

func mustServer(t testing.TB, cfg Config) *Server {
	t.Helper()
	srv, err := newServer(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return srv
}

// sendLate writes s ignoring errors: the server may already have given up.
func (c *testClient) sendLate(s string) {
	c.conn.SetWriteDeadline(time.Now().Add(hangGuard))
	c.conn.Write([]byte(s))
}

func TestDataTimeout(t *testing.T) {
	t.Parallel()
	rec := &recorder{}
	ts := start(t, Config{DataTimeout: 200 * time.Millisecond, Handlers: []SubHandler{{Name: "rec", Handler: rec}}})
	ts.send("EHLO client.example", "MAIL FROM:<a@example.com>", "RCPT TO:<b@example.com>", "DATA")
	ts.expect(250, "")
	ts.expect(250, "2.1.0")
	ts.expect(250, "2.1.5")
	ts.expect(354, "")
	ts.sendLate("Subject: slow\r\n\r\npart")
	ts.expect(421, "4.4.2")
	ts.expectClosed()
	ts.wait()
	if rec.count("eom") != 0 || rec.count("abort") != 1 {
		t.Fatalf("events %v", rec.kinds())
	}
	// BDAT chunk data likewise
	rec2 := &recorder{}
	ts2 := start(t, Config{DataTimeout: 200 * time.Millisecond, Handlers: []SubHandler{{Name: "rec", Handler: rec2}}})
	ts2.send("EHLO client.example", "MAIL FROM:<a@example.com>", "RCPT TO:<b@example.com>", "BDAT 100 LAST")
	ts2.sendLate("only some")
	ts2.expect(250, "")
	ts2.expect(250, "2.1.0")
	ts2.expect(250, "2.1.5")
	ts2.expect(421, "4.4.2")
	ts2.expectClosed()
	ts2.wait()
	if rec2.count("eom") != 0 || rec2.count("abort") != 1 {
		t.Fatalf("events %v", rec2.kinds())
	}
}

func TestConfigValidation(t *testing.T) {
	for _, c := range []struct {
		cfg   Config
		field string
	}{
		{Config{ChunkSize: 100}, "chunk_size"},
		{Config{ChunkSize: 32 << 20}, "chunk_size"},
		{Config{MaxMessageSize: -1}, "max_message_size"},
		{Config{MaxRecipients: -1}, "max_recipients"},
		{Config{MaxErrors: -3}, "max_errors"},
		{Config{CommandTimeout: -time.Second}, "command_timeout"},
		{Config{DataTimeout: -time.Second}, "data_timeout"},
		{Config{MaxLineLength: 100}, "max_line_length"},
		{Config{MaxHeaderSize: 10}, "max_header_size"},
		{Config{HandlerTimeout: -1}, "handler_timeout"},
		{Config{GracePeriod: -1}, "grace_period"},
		{Config{BareLineEndings: "keep"}, "bare_line_endings"},
		{Config{Hostname: "bad host"}, "hostname"},
		{Config{Hostname: "a\r\nb"}, "hostname"},
		{Config{Handlers: []SubHandler{{Name: "x"}}}, "handlers[0]"},
	} {
		_, err := newServer(c.cfg)
		if err == nil || !strings.Contains(err.Error(), c.field) {
			t.Errorf("%+v: error %v does not name %s", c.cfg, err, c.field)
		}
	}
	srv, err := newServer(Config{})
	if err != nil {
		t.Fatal(err)
	}
	cfg := srv.Config()
	if cfg.Hostname != "localhost" || cfg.ChunkSize != DefaultChunkSize || cfg.BareLineEndings != BareReject {
		t.Fatalf("defaults %+v", cfg)
	}
	// several errors are all reported
	_, err = newServer(Config{ChunkSize: 1, MaxErrors: -1})
	if err == nil || !strings.Contains(err.Error(), "chunk_size") || !strings.Contains(err.Error(), "max_errors") {
		t.Fatalf("joined error %v", err)
	}
	if _, err := newServer(Config{Hostname: "[192.0.2.1]"}); err != nil {
		t.Fatalf("address literal hostname: %v", err)
	}
}

func TestConnectHookRejects(t *testing.T) {
	srv, _ := newServer(Config{Handlers: []SubHandler{{Name: "c", Handler: connectFunc(func(ctx context.Context, s *Session) (*Reply, error) {
		return NewReply(554, "5.7.1", "go away"), nil
	})}}})
	ts := startRaw(t, srv, ConnInfo{})
	r := ts.readReply()
	if r.code != 554 || r.texts[0] != "go away" {
		t.Fatalf("reply %q", r.raw)
	}
	ts.expectClosed()
}

// TestOverlongBdatCloses: a BDAT line too long to be parsed cannot have its
// chunk skipped, so the session is closed rather than reading the chunk as
// commands.
func TestOverlongBdatCloses(t *testing.T) {
	for _, pad := range []int{600, 20000} {
		ts := start(t, Config{})
		ts.ehlo()
		ts.sendRaw("BDAT 6" + strings.Repeat(" ", pad) + "\r\n")
		ts.expect(501, "5.5.4")
		ts.expectClosed()
	}
}

// TestMaxConnections: sessions over MaxConnections, and over
// MaxConnectionsPerIP from one address, get 421 4.7.0 at connect.
func TestMaxConnections(t *testing.T) {
	srv, err := newServer(Config{MaxConnections: 2})
	if err != nil {
		t.Fatal(err)
	}
	startOn(t, srv, ConnInfo{})
	startOn(t, srv, ConnInfo{})
	third := startRaw(t, srv, ConnInfo{})
	third.expect(421, "4.7.0")
	third.expectClosed()

	srv, err = newServer(Config{MaxConnectionsPerIP: 1})
	if err != nil {
		t.Fatal(err)
	}
	a := &net.TCPAddr{IP: net.ParseIP("192.0.2.1"), Port: 1000}
	b := &net.TCPAddr{IP: net.ParseIP("192.0.2.2"), Port: 1000}
	first := startOn(t, srv, ConnInfo{RemoteAddr: a})
	again := startRaw(t, srv, ConnInfo{RemoteAddr: a})
	again.expect(421, "4.7.0")
	again.expectClosed()
	startOn(t, srv, ConnInfo{RemoteAddr: b}) // another address is fine
	first.cmd("QUIT", 221, "2.0.0")
	first.expectClosed()
	first.wait()
	startOn(t, srv, ConnInfo{RemoteAddr: a}) // the slot is free again
}

// TestRejectEarlyTalkers: a client that sends before the greeting gets
// 554 5.5.0 and is closed; one that waits is greeted.
func TestRejectEarlyTalkers(t *testing.T) {
	srv, err := newServer(Config{RejectEarlyTalkers: true, GreetDelay: 300 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	early := startRaw(t, srv, ConnInfo{})
	early.sendRaw("EHLO spammer.test\r\n")
	early.expect(554, "5.5.0")
	early.expectClosed()

	polite := startOn(t, srv, ConnInfo{})
	polite.cmd("EHLO client.test", 250, "")
}

// TestSessionLogLevel: a session that carried messages and ended cleanly
// is told by its message lines, so its own line is at debug; any other
// session's line is at info.
func TestSessionLogLevel(t *testing.T) {
	for _, tc := range []struct {
		name  string
		run   func(ts *testSession)
		level zapcore.Level
	}{
		{"one message", func(ts *testSession) {
			ts.ehlo()
			sendMessage(t, ts.testClient)
			ts.cmd("QUIT", 221, "2.0.0")
		}, zapcore.DebugLevel},
		{"no message", func(ts *testSession) {
			ts.ehlo()
			ts.cmd("QUIT", 221, "2.0.0")
		}, zapcore.InfoLevel},
		{"message and an error", func(ts *testSession) {
			ts.ehlo()
			sendMessage(t, ts.testClient)
			ts.cmd("RCPT TO:<x@example.org>", 503, "5.5.1")
			ts.cmd("QUIT", 221, "2.0.0")
		}, zapcore.InfoLevel},
	} {
		t.Run(tc.name, func(t *testing.T) {
			core, logs := observer.New(zap.DebugLevel)
			ts := start(t, Config{Logger: zap.New(core)})
			tc.run(ts)
			ts.wait()
			lines := logs.FilterMessage("session closed").All()
			if len(lines) != 1 {
				t.Fatalf("%d session lines, want 1", len(lines))
			}
			if lines[0].Level != tc.level {
				t.Errorf("session line at %v, want %v", lines[0].Level, tc.level)
			}
			if got := lines[0].ContextMap()["helo"]; got != "client.example" {
				t.Errorf("session line helo %v", got)
			}
		})
	}
}
