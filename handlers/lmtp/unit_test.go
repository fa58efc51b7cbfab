package lmtp

import (
	"bufio"
	"bytes"
	"context"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"

	"github.com/caddy-esmtp/caddy-esmtp/internal/smtptest"
	"github.com/caddy-esmtp/caddy-esmtp/session"
)

// fake is a scripted LMTP server on loopback, for what a real Dovecot
// will not do on demand: lack an extension, fail in the middle, stall.
type fake struct {
	// ext are the LHLO keywords it offers.
	ext []string
	// afterDot answers after the final dot, given the recipients it
	// accepted; by default 250 for each.
	afterDot func(c net.Conn, rcpts []string)

	mu   sync.Mutex
	cmds []string // the commands it got
	data []byte   // the last DATA content, as sent (stuffed, final dot included)
}

func (f *fake) start(t *testing.T) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			t.Cleanup(func() { c.Close() })
			go f.serve(c)
		}
	}()
	return ln.Addr().String()
}

func (f *fake) serve(c net.Conn) {
	defer c.Close()
	r := bufio.NewReader(c)
	c.Write([]byte("220 fake LMTP\r\n"))
	var rcpts []string
	for {
		line, err := r.ReadString('\n')
		if err != nil {
			return
		}
		line = strings.TrimRight(line, "\r\n")
		f.mu.Lock()
		f.cmds = append(f.cmds, line)
		f.mu.Unlock()
		verb, _, _ := strings.Cut(strings.ToUpper(line), " ")
		switch verb {
		case "LHLO":
			out := "250-fake\r\n"
			for _, e := range f.ext {
				out += "250-" + e + "\r\n"
			}
			c.Write([]byte(out + "250 ENHANCEDSTATUSCODES\r\n"))
		case "MAIL":
			rcpts = nil
			c.Write([]byte("250 2.1.0 OK\r\n"))
		case "RCPT":
			switch {
			case strings.Contains(line, "refused"):
				c.Write([]byte("550 5.1.1 <refused> not here\r\n"))
			case strings.Contains(line, "closing"):
				c.Write([]byte("421 4.3.2 Shutting down\r\n"))
				return
			default:
				rcpts = append(rcpts, line)
				c.Write([]byte("250 2.1.5 OK\r\n"))
			}
		case "DATA":
			c.Write([]byte("354 go on\r\n"))
			var data []byte
			for {
				l, err := r.ReadString('\n')
				if err != nil {
					return
				}
				data = append(data, l...)
				if l == ".\r\n" {
					break
				}
			}
			f.mu.Lock()
			f.data = data
			f.mu.Unlock()
			if f.afterDot != nil {
				f.afterDot(c, rcpts)
				continue
			}
			for range rcpts {
				c.Write([]byte("250 2.0.0 Saved\r\n"))
			}
		case "RSET":
			c.Write([]byte("250 2.0.0 OK\r\n"))
		case "QUIT":
			c.Write([]byte("221 2.0.0 Bye\r\n"))
			return
		default:
			c.Write([]byte("500 5.5.1 what\r\n"))
		}
	}
}

func (f *fake) commands() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.cmds...)
}

// deliverQueued delivers msg to rcpts through l as the queue does and
// returns the recipients' replies.
func deliverQueued(t *testing.T, l *LMTP, params session.Params, msg string, rcpts ...string) []string {
	t.Helper()
	srv := smtptest.Serve(t, l)
	m := &session.Queued{ID: "q1", From: session.Path{Mailbox: "sender@example.test", Local: "sender", Domain: "example.test"},
		MailParams: params, Message: session.NewMessage(strings.NewReader(msg), int64(len(msg)))}
	for _, r := range rcpts {
		m.Recipients = append(m.Recipients, session.Recipient{Path: session.Path{Mailbox: r}})
	}
	var out []string
	for _, r := range srv.Engine().DeliverQueued(context.Background(), m) {
		out = append(out, r.Error())
	}
	return out
}

func checkReplies(t *testing.T, got []string, want ...string) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("replies %q, want %q", got, want)
	}
	for i := range got {
		if !strings.HasPrefix(got[i], want[i]) {
			t.Errorf("recipient %d: %q, want %q...", i, got[i], want[i])
		}
	}
}

// TestMailParameters: MAIL carries BODY=8BITMIME when the message was
// sent with it and SIZE when the server offers it; without 8BITMIME on
// the server, such a message fails with 554 5.6.3 and nothing is sent.
func TestMailParameters(t *testing.T) {
	eight := session.Params{{Key: "BODY", Value: "8BITMIME", HasValue: true}}
	msg := "Subject: x\r\n\r\nhi\r\n"

	f := &fake{ext: []string{"8BITMIME", "SIZE 1000000"}}
	l := provision(t, &LMTP{Address: f.start(t)})
	checkReplies(t, deliverQueued(t, l, eight, msg, "a@example.test"), "250 2.0.0 Saved")
	if !containsLine(f.commands(), "MAIL FROM:<sender@example.test> BODY=8BITMIME SIZE=18") {
		t.Errorf("commands %q: no MAIL with BODY=8BITMIME SIZE=18", f.commands())
	}

	f = &fake{}
	l = provision(t, &LMTP{Address: f.start(t)})
	checkReplies(t, deliverQueued(t, l, eight, msg, "a@example.test", "b@example.test"), "554 5.6.3", "554 5.6.3")
	checkReplies(t, deliverQueued(t, l, nil, msg, "a@example.test"), "250 2.0.0 Saved")
	for _, c := range f.commands() {
		if strings.Contains(c, "BODY=") || strings.Contains(c, "SIZE=") {
			t.Errorf("%q sent to a server that offers neither 8BITMIME nor SIZE", c)
		}
	}
}

func containsLine(lines []string, want string) bool {
	for _, l := range lines {
		if l == want {
			return true
		}
	}
	return false
}

// TestFailures: what the recipients get when the server refuses some or
// fails on the way.
func TestFailures(t *testing.T) {
	msg := "Subject: x\r\n\r\nhi\r\n"
	for _, tc := range []struct {
		name     string
		afterDot func(c net.Conn, rcpts []string)
		rcpts    []string
		want     []string
	}{
		{"refused at RCPT", nil, []string{"a@example.test", "refused@example.test"},
			[]string{"250 2.0.0 Saved", "550 5.1.1 <refused> not here"}},
		{"all refused at RCPT", nil, []string{"refused@example.test", "refused2@example.test"},
			[]string{"550 5.1.1", "550 5.1.1"}},
		{"one reply each", func(c net.Conn, _ []string) {
			c.Write([]byte("250 2.0.0 Saved\r\n452 4.2.2 Mailbox full\r\n"))
		}, []string{"a@example.test", "b@example.test"},
			[]string{"250 2.0.0 Saved", "452 4.2.2 Mailbox full"}},
		{"closed after the dot", func(c net.Conn, _ []string) { c.Close() },
			[]string{"a@example.test", "b@example.test"},
			[]string{"451 4.4.2", "451 4.4.2"}},
		{"closed after one reply", func(c net.Conn, _ []string) {
			c.Write([]byte("250 2.0.0 Saved\r\n"))
			c.Close()
		}, []string{"a@example.test", "b@example.test"},
			[]string{"250 2.0.0 Saved", "451 4.4.2"}},
		{"421 after the dot", func(c net.Conn, _ []string) {
			c.Write([]byte("550 5.2.0 No\r\n421 4.3.2 Shutting down\r\n"))
			c.Close()
		}, []string{"a@example.test", "b@example.test", "c@example.test"},
			[]string{"550 5.2.0 No", "451 4.3.2 Shutting down", "451 4.4.2"}},
		{"421 at RCPT", nil, []string{"a@example.test", "closing@example.test"},
			[]string{"451 4.3.2 Shutting down", "451 4.3.2 Shutting down"}},
		{"silent after the dot", func(net.Conn, []string) { select {} },
			[]string{"a@example.test"}, []string{"451 4.4.2"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := &fake{afterDot: tc.afterDot}
			l := provision(t, &LMTP{Address: f.start(t), DataTimeout: caddy.Duration(200 * time.Millisecond)})
			checkReplies(t, deliverQueued(t, l, nil, msg, tc.rcpts...), tc.want...)
		})
	}
}

// TestInSession: in a session, the client gets the first failure among
// the recipients, or the failure of the exchange.
func TestInSession(t *testing.T) {
	f := &fake{afterDot: func(c net.Conn, _ []string) {
		c.Write([]byte("250 2.0.0 Saved\r\n452 4.2.2 Mailbox full\r\n"))
	}}
	l := provision(t, &LMTP{Address: f.start(t)})
	srv := smtptest.Serve(t, l)
	c := srv.DialTCPHello()
	if got := smtptest.Mail(c, "Subject: x\r\n\r\nhi\r\n", "a@example.test", "b@example.test"); !strings.HasPrefix(got, "452 4.2.2 Mailbox full") {
		t.Errorf("end of data: %q, want the second recipient's 452 4.2.2", got)
	}
	c.Cmd("QUIT", "221")
}

// TestDotWriter: line ends become CRLF (bare CR and LF included, split
// across writes), a dot that starts a line is doubled, and the final
// dot follows a last line with or without its CRLF.
func TestDotWriter(t *testing.T) {
	for _, tc := range []struct {
		in   []string
		want string
	}{
		{[]string{"a\r\nb\r\n"}, "a\r\nb\r\n.\r\n"},
		{[]string{".a\r\n..b\r\n.\r\n"}, "..a\r\n...b\r\n..\r\n.\r\n"},
		{[]string{"a\r", "\n.b\r", "\n"}, "a\r\n..b\r\n.\r\n"},
		{[]string{"a\nb\rc\r\n"}, "a\r\nb\r\nc\r\n.\r\n"},
		{[]string{"a\r", ".b"}, "a\r\n..b\r\n.\r\n"},
		{[]string{"no end"}, "no end\r\n.\r\n"},
		{[]string{"cr end\r"}, "cr end\r\n.\r\n"},
		{[]string{"x\r\n", "", ".", "y\r\n"}, "x\r\n..y\r\n.\r\n"},
		{nil, ".\r\n"},
	} {
		var b bytes.Buffer
		w := bufio.NewWriter(&b)
		dw := newDotWriter(w)
		for _, s := range tc.in {
			if err := dw.Write([]byte(s)); err != nil {
				t.Fatal(err)
			}
		}
		if err := dw.Close(); err != nil {
			t.Fatal(err)
		}
		if b.String() != tc.want {
			t.Errorf("%q: %q, want %q", tc.in, b.String(), tc.want)
		}
	}
}

// TestReplyParsing: enhanced codes are taken off every line that has
// one; a 421 becomes 451 for the client.
func TestReplyParsing(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"250 2.0.0 <a@b> id Saved\r\n", "250 2.0.0 <a@b> id Saved"},
		{"550-5.1.1 first\r\n550 5.1.1 second\r\n", "550 5.1.1 first second"},
		{"452 no enhanced code\r\n", "452 no enhanced code"},
		{"550 4.1.1 wrong class\r\n", "550 4.1.1 wrong class"},
		{"421 4.3.2 bye\r\n", "451 4.3.2 bye"},
		{"250\r\n", "250"},
	} {
		c := &conn{r: bufio.NewReader(strings.NewReader(tc.in)), nc: nopConn{}}
		r, err := c.readReply(time.Minute)
		if err != nil {
			t.Errorf("%q: %v", tc.in, err)
			continue
		}
		if got := r.sessionReply().Error(); got != tc.want {
			t.Errorf("%q: %q, want %q", tc.in, got, tc.want)
		}
	}
	for _, bad := range []string{"25\r\n", "250-a\r\n251 b\r\n", "abc x\r\n", "250x\r\n", "199 x\r\n", ""} {
		c := &conn{r: bufio.NewReader(strings.NewReader(bad)), nc: nopConn{}}
		if r, err := c.readReply(time.Minute); err == nil {
			t.Errorf("%q read as %v", bad, r)
		}
	}
}

// nopConn is a net.Conn for readReply's deadlines.
type nopConn struct{ net.Conn }

func (nopConn) SetDeadline(time.Time) error { return nil }

// TestAddress: the forms of the address option.
func TestAddress(t *testing.T) {
	for in, want := range map[string]string{
		"unix:/run/dovecot/lmtp": "unix /run/dovecot/lmtp",
		"unix:rel/sock":          "unix rel/sock",
		"mail.example":           "tcp mail.example:24",
		"mail.example:2424":      "tcp mail.example:2424",
		"127.0.0.1":              "tcp 127.0.0.1:24",
		"[::1]":                  "tcp [::1]:24",
		"[::1]:25":               "tcp [::1]:25",
		"::1":                    "tcp [::1]:24",
	} {
		n, a, err := parseAddress(in)
		if err != nil || n+" "+a != want {
			t.Errorf("%q: %s %s %v, want %s", in, n, a, err, want)
		}
	}
	for _, bad := range []string{"unix:", "lmtp://host", "/run/dovecot/lmtp", "host:0", "host:x", ":24", "[::1", "[mail.example]"} {
		if n, a, err := parseAddress(bad); err == nil {
			t.Errorf("%q accepted as %s %s", bad, n, a)
		}
	}
}

// TestCaddyfile: the syntax, and errors that name the field.
func TestCaddyfile(t *testing.T) {
	var l LMTP
	err := l.UnmarshalCaddyfile(caddyfile.NewTestDispenser(`lmtp unix:/run/dovecot/lmtp {
		timeout 30s
		data_timeout 5m
		lhlo_name mx.example.test
		max_idle -1
		idle_timeout 10s
	}`))
	if err != nil {
		t.Fatal(err)
	}
	want := LMTP{Address: "unix:/run/dovecot/lmtp", Timeout: caddy.Duration(30 * time.Second), DataTimeout: caddy.Duration(5 * time.Minute),
		LHLOName: "mx.example.test", MaxIdle: -1, IdleTimeout: caddy.Duration(10 * time.Second)}
	if l.Address != want.Address || l.Timeout != want.Timeout || l.DataTimeout != want.DataTimeout || l.LHLOName != want.LHLOName ||
		l.MaxIdle != want.MaxIdle || l.IdleTimeout != want.IdleTimeout {
		t.Errorf("got %+v, want %+v", l, want)
	}
	for in, msg := range map[string]string{
		`lmtp`:                            "lmtp: address is required",
		`lmtp { timeout 1s }`:             "lmtp: address is required",
		`lmtp a:24 { address b:24 }`:      "lmtp: address: given twice",
		`lmtp { timeout 1s; timeout 2s }`: "lmtp: timeout: given twice",
		`lmtp a:24 { timeout soon }`:      "lmtp: timeout: must be a positive duration",
		`lmtp a:24 { data_timeout -1s }`:  "lmtp: data_timeout: must be a positive duration",
		`lmtp a:24 { max_idle -2 }`:       "lmtp: max_idle: must be -1",
		`lmtp a:24 { lhlo_name "a b" }`:   "lmtp: lhlo_name:",
		`lmtp a:24 { address lmtp://x }`:  "lmtp: address:",
		`lmtp a:24 { retries 3 }`:         `lmtp: unknown option "retries"`,
		`lmtp a:24 b:24`:                  "wrong argument count",
		`lmtp a:24 { timeout }`:           "wrong argument count",
	} {
		var l LMTP
		err := l.UnmarshalCaddyfile(caddyfile.NewTestDispenser(strings.NewReplacer("; ", "\n", "{ ", "{\n", " }", "\n}").Replace(in)))
		if err == nil || !strings.Contains(err.Error(), msg) {
			t.Errorf("%s: %v, want %q", in, err, msg)
		}
	}
}

// TestProvisionErrors: configurations that do not load name their field.
func TestProvisionErrors(t *testing.T) {
	for _, tc := range []struct {
		l   LMTP
		msg string
	}{
		{LMTP{}, "lmtp: address is required"},
		{LMTP{Address: "lmtp://x"}, "lmtp: address:"},
		{LMTP{Address: "x", LHLOName: "a b"}, "lmtp: lhlo_name:"},
		{LMTP{Address: "x", Timeout: -1}, "lmtp: timeout:"},
		{LMTP{Address: "x", DataTimeout: -1}, "lmtp: data_timeout:"},
		{LMTP{Address: "x", IdleTimeout: -1}, "lmtp: idle_timeout:"},
		{LMTP{Address: "x", MaxIdle: -2}, "lmtp: max_idle:"},
	} {
		if err := smtptest.Provision(&tc.l); err == nil || !strings.Contains(err.Error(), tc.msg) {
			t.Errorf("%+v: %v, want %q", tc.l, err, tc.msg)
		}
	}
}
