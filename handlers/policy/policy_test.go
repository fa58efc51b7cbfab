package policy

import (
	"fmt"
	"net"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"

	"github.com/caddy-esmtp/caddy-esmtp/internal/smtptest"
	"github.com/caddy-esmtp/caddy-esmtp/session"
)

// TestRcptActions: each access(5) action a server may answer at RCPT,
// and what the client gets; "bad@" recipients are refused by a
// sub-handler after policy, which shows whether the chain went on.
func TestRcptActions(t *testing.T) {
	for _, tc := range []struct {
		action string
		rcpt   string
		want   string
	}{
		{"OK", "bad@example.test", "250 2.1.5 Recipient ok"}, // OK: later sub-handlers not asked
		{"ok", "u@example.test", "250 2.1.5 Recipient ok"},
		{"12345", "bad@example.test", "250 2.1.5 Recipient ok"}, // all-numerical is OK
		{"DUNNO", "u@example.test", "250 2.1.5"},
		{"DUNNO", "bad@example.test", "550 5.1.1 later sub-handler refuses"},
		{"REJECT", "u@example.test", "554 5.7.1 Access denied"},
		{"REJECT no thanks", "u@example.test", "554 5.7.1 no thanks"},
		{"reject 5.7.9 go away", "u@example.test", "554 5.7.9 go away"},
		{"REJECT 4.7.9 wrong class", "u@example.test", "554 5.7.9 wrong class"},
		{"DEFER", "u@example.test", "450 4.7.1 Try again later"},
		{"DEFER 5.1.1 wrong class", "u@example.test", "450 4.1.1 wrong class"},
		{"DEFER_IF_PERMIT Greylisted", "u@example.test", "450 4.7.1 Greylisted"},
		{"DEFER_IF_PERMIT 4.2.0 Greylisted, see http://x/", "u@example.test", "450 4.2.0 Greylisted, see http://x/"},
		{"DEFER_IF_PERMIT Greylisted", "bad@example.test", "450 4.7.1 Greylisted"}, // later ones not asked
		{"DEFER_IF_REJECT maybe", "u@example.test", "250 2.1.5"},
		{"DEFER_IF_REJECT maybe", "bad@example.test", "550 5.1.1 later sub-handler refuses"},
		{"451 4.7.1 Greylisted", "u@example.test", "451 4.7.1 Greylisted"},
		{"450 try later", "u@example.test", "450 4.7.1 try later"},
		{"550 no such user", "u@example.test", "550 5.7.1 no such user"},
		{"521 5.3.2 go away", "u@example.test", "521 5.3.2 go away"},
		{"WARN careful", "u@example.test", "250 2.1.5"},
		{"INFO noted", "bad@example.test", "550 5.1.1"},
		{"PREPEND X-Policy: yes", "u@example.test", "250 2.1.5"},
		{"FILTER smtp:[192.0.2.1]", "u@example.test", "250 2.1.5"},
		{"REDIRECT x@example.test", "bad@example.test", "550 5.1.1"},
		{"BCC x@example.test", "u@example.test", "250 2.1.5"},
		{"permit_mynetworks", "u@example.test", "250 2.1.5"},
		{"garbage", "u@example.test", "451 4.3.0 Policy service unavailable"},
		{"250 ok", "u@example.test", "451 4.3.0"},
	} {
		t.Run(tc.action+" "+tc.rcpt, func(t *testing.T) {
			ps := startServer(t, answering(tc.action))
			p := provisioned(t, &Policy{Address: ps.addr})
			srv := smtptest.Serve(t, p, refuseBad)
			c := srv.Dial(clientAddr)
			c.Cmd("MAIL FROM:<s@example.test>", "250")
			c.Cmd("RCPT TO:<"+tc.rcpt+">", tc.want)
		})
	}
}

// Test421Closes: a 421 answer closes the connection after the reply.
func Test421Closes(t *testing.T) {
	ps := startServer(t, answering("421 4.7.0 bye"))
	srv := smtptest.Serve(t, provisioned(t, &Policy{Address: ps.addr}))
	c := srv.Dial(clientAddr)
	c.Cmd("MAIL FROM:<s@example.test>", "250")
	c.Cmd("RCPT TO:<u@example.test>", "421 4.7.0 bye")
	c.ExpectClosed()
}

// TestMessageActions: PREPEND, HOLD and DISCARD at RCPT act on the
// message; REJECT at end of data refuses it after the data.
func TestMessageActions(t *testing.T) {
	t.Run("PREPEND at rcpt", func(t *testing.T) {
		ps := startServer(t, answering("PREPEND X-Greylist: delayed 1 seconds"))
		k := &keep{}
		srv := smtptest.Serve(t, provisioned(t, &Policy{Address: ps.addr}), k)
		if got := smtptest.Mail(srv.Dial(clientAddr), message, "u@example.test"); !strings.HasPrefix(got, "250 ") {
			t.Fatalf("end of data: %q", got)
		}
		msgs := k.messages()
		if len(msgs) != 1 || !strings.HasPrefix(msgs[0], "X-Greylist: delayed 1 seconds\r\nReceived: ") {
			t.Fatalf("delivered %q", msgs)
		}
	})
	t.Run("PREPEND without a field", func(t *testing.T) {
		ps := startServer(t, answering("PREPEND no field here"))
		k := &keep{}
		srv := smtptest.Serve(t, provisioned(t, &Policy{Address: ps.addr}), k)
		smtptest.Mail(srv.Dial(clientAddr), message, "u@example.test")
		if msgs := k.messages(); len(msgs) != 1 || !strings.HasPrefix(msgs[0], "Received: ") {
			t.Fatalf("delivered %q", msgs)
		}
	})
	t.Run("HOLD", func(t *testing.T) {
		ps := startServer(t, answering("HOLD review me"))
		k := &keep{}
		srv := smtptest.Serve(t, provisioned(t, &Policy{Address: ps.addr}), k)
		smtptest.Mail(srv.Dial(clientAddr), message, "u@example.test")
		want := session.QuarantineField + ": policy: review me\r\nReceived: "
		if msgs := k.messages(); len(msgs) != 1 || !strings.HasPrefix(msgs[0], want) {
			t.Fatalf("delivered %q, want it to start %q", msgs, want)
		}
	})
	t.Run("DISCARD", func(t *testing.T) {
		ps := startServer(t, answering("DISCARD spam"))
		k := &keep{}
		srv := smtptest.Serve(t, provisioned(t, &Policy{Address: ps.addr}), refuseBad, k)
		c := srv.Dial(clientAddr)
		c.Cmd("MAIL FROM:<s@example.test>", "250")
		c.Cmd("RCPT TO:<bad@example.test>", "250 2.1.5") // DISCARD ends the RCPT as OK does
		c.Cmd("DATA", "354")
		c.Send(message + ".\r\n")
		c.Expect("250 2.0.0")
		if msgs := k.messages(); len(msgs) != 0 {
			t.Fatalf("a discarded message was delivered: %q", msgs)
		}
	})
	t.Run("REJECT at end_of_data", func(t *testing.T) {
		ps := startServer(t, func(req map[string]string) string {
			if req["protocol_state"] != "END-OF-MESSAGE" {
				return "action=REJECT wrong state " + req["protocol_state"] + "\n\n"
			}
			return "action=REJECT 5.7.1 too big: " + req["size"] + "\n\n"
		})
		k := &keep{}
		srv := smtptest.Serve(t, provisioned(t, &Policy{Address: ps.addr, At: atEndOfData}), k)
		got := smtptest.Mail(srv.Dial(clientAddr), message, "u@example.test")
		if want := "554 5.7.1 too big: " + strconv.Itoa(len(message)); got != want {
			t.Fatalf("end of data: %q, want %q", got, want)
		}
		if msgs := k.messages(); len(msgs) != 0 {
			t.Fatalf("a refused message was delivered: %q", msgs)
		}
	})
	t.Run("DEFER at mail", func(t *testing.T) {
		ps := startServer(t, answering("DEFER 4.7.1 not now"))
		srv := smtptest.Serve(t, provisioned(t, &Policy{Address: ps.addr, At: atMail}))
		c := srv.Dial(clientAddr)
		c.Cmd("MAIL FROM:<s@example.test>", "450 4.7.1 not now")
		c.Cmd("RCPT TO:<u@example.test>", "503") // no transaction
	})
	t.Run("DEFER_IF_PERMIT at data", func(t *testing.T) {
		ps := startServer(t, answering("DEFER_IF_PERMIT later"))
		srv := smtptest.Serve(t, provisioned(t, &Policy{Address: ps.addr, At: atData}))
		c := srv.Dial(clientAddr)
		c.Cmd("MAIL FROM:<s@example.test>", "250")
		c.Cmd("RCPT TO:<u@example.test>", "250")
		c.Cmd("DATA", "450 4.7.1 later")
	})
}

// TestRequest: the attributes sent at each stage.
func TestRequest(t *testing.T) {
	ps := startServer(t, answering("DUNNO"))
	rcpt := provisioned(t, &Policy{Address: ps.addr, PolicyContext: "mx"})
	mail := provisioned(t, &Policy{Address: ps.addr, At: atMail})
	data := provisioned(t, &Policy{Address: ps.addr, At: atData})
	eod := provisioned(t, &Policy{Address: ps.addr, At: atEndOfData})
	srv := smtptest.Serve(t, smtptest.LoginAs{}, mail, rcpt, data, eod)
	c := srv.DialHelo(clientAddr, "bob.auth")
	c.Cmd("MAIL FROM:<s@example.test> SIZE=1234 AUTH=s+2Bx@example.test", "250")
	c.Cmd("RCPT TO:<u@example.test>", "250")
	c.Cmd("RCPT TO:<Postmaster>", "250")
	c.Cmd("DATA", "354")
	c.Send(message + ".\r\n")
	c.Expect("250 2.0.0")
	c.Cmd("MAIL FROM:<>", "250")
	reqs := ps.requests()
	if len(reqs) != 6 {
		t.Fatalf("%d requests, want 6: %v", len(reqs), reqs)
	}
	qid := reqs[0]["queue_id"]
	if qid == "" {
		t.Fatalf("no queue_id in %v", reqs[0])
	}
	common := map[string]string{
		"request": "smtpd_access_policy", "protocol_name": "ESMTP", "helo_name": "bob.auth",
		"queue_id": qid, "instance": qid, "sender": "s@example.test",
		"client_address": "192.0.2.10", "client_port": "4000", "client_name": "unknown",
		"reverse_client_name": "unknown", "sasl_username": "bob", "sasl_sender": "s+x@example.test",
		"sasl_method": "", "etrn_domain": "", "encryption_protocol": "", "ccert_subject": "",
	}
	for i, want := range []map[string]string{
		{"protocol_state": "MAIL", "recipient": "", "recipient_count": "0", "size": "1234", "policy_context": ""},
		{"protocol_state": "RCPT", "recipient": "u@example.test", "recipient_count": "0", "size": "1234", "policy_context": "mx"},
		{"protocol_state": "RCPT", "recipient": "Postmaster", "recipient_count": "0"},
		{"protocol_state": "DATA", "recipient": "", "recipient_count": "2", "size": "1234"},
		{"protocol_state": "END-OF-MESSAGE", "recipient": "", "recipient_count": "2", "size": strconv.Itoa(len(message))},
	} {
		for k, v := range common {
			if got, ok := reqs[i][k]; !ok || got != v {
				t.Errorf("request %d: %s=%q (sent: %v), want %q", i, k, got, ok, v)
			}
		}
		for k, v := range want {
			if got, ok := reqs[i][k]; !ok || got != v {
				t.Errorf("request %d: %s=%q (sent: %v), want %q", i, k, got, ok, v)
			}
		}
	}
	for _, k := range []string{"ccert_issuer", "ccert_fingerprint", "ccert_pubkey_fingerprint", "encryption_cipher",
		"encryption_keysize", "stress", "server_address", "server_port", "policy_context"} {
		if _, ok := reqs[0][k]; !ok {
			t.Errorf("request 0 has no %s", k)
		}
	}
	// The next message is another instance; <> is the empty sender.
	if next := reqs[5]; next["instance"] == qid || next["instance"] == "" || next["sender"] != "" {
		t.Errorf("next message: instance %q (first %q), sender %q", next["instance"], qid, next["sender"])
	}
}

// TestOneRecipientAtData: at DATA with one recipient, recipient is it.
func TestOneRecipientAtData(t *testing.T) {
	ps := startServer(t, answering("DUNNO"))
	srv := smtptest.Serve(t, provisioned(t, &Policy{Address: ps.addr, At: atData}))
	c := srv.Dial(clientAddr)
	c.Cmd("MAIL FROM:<s@example.test>", "250")
	c.Cmd("RCPT TO:<u@example.test>", "250")
	c.Cmd("DATA", "354")
	reqs := ps.requests()
	if len(reqs) != 1 || reqs[0]["recipient"] != "u@example.test" || reqs[0]["recipient_count"] != "1" || reqs[0]["protocol_name"] != "ESMTP" {
		t.Fatalf("requests %v", reqs)
	}
}

// TestValuesSanitised: no value can end its line or the request.
func TestValuesSanitised(t *testing.T) {
	got := string(appendValue(nil, "a\r\nrecipient=evil\n\x00b\x7fé"))
	if got != "a??recipient=evil??b?é" {
		t.Errorf("appendValue: %q", got)
	}
	if got := appendValue(nil, strings.Repeat("x", 5000)); len(got) != maxValue {
		t.Errorf("a long value is %d bytes, want %d", len(got), maxValue)
	}
}

// TestErrors: every way the exchange can fail goes to on_error:
// tempfail (default) 451 4.3.0, accept (fail open), reject 554 5.7.0.
func TestErrors(t *testing.T) {
	long := "action=DUNNO " + strings.Repeat("x", maxAnswerLine) + "\n\n"
	many := strings.Repeat("x=y\n", maxAnswerLines+1) + "action=DUNNO\n\n"
	for _, tc := range []struct {
		name   string
		answer string
	}{
		{"empty answer", "\n"},
		{"no action", "foo=bar\n\n"},
		{"empty action", "action=\n\n"},
		{"two actions", "action=DUNNO\naction=OK\n\n"},
		{"not name=value", "DUNNO\n\n"},
		{"control character", "action=DUNNO\x01\n\n"},
		{"unknown action", "action=MAYBE\n\n"},
		{"line too long", long},
		{"too many lines", many},
		{"hang up", hangUp},
		{"half an answer", "action=DUNNO\n"}, // then the server hangs: a timeout
		{"hang", hang},
	} {
		for _, onError := range []string{"", onErrorAccept, onErrorReject} {
			t.Run(tc.name+" "+onError, func(t *testing.T) {
				answer := tc.answer
				ps := startServer(t, func(map[string]string) string { return answer })
				p := provisioned(t, &Policy{Address: ps.addr, OnError: onError, Timeout: caddy.Duration(300 * time.Millisecond)})
				srv := smtptest.Serve(t, p, refuseBad)
				c := srv.Dial(clientAddr)
				c.Cmd("MAIL FROM:<s@example.test>", "250")
				want := map[string]string{"": "451 4.3.0 Policy service unavailable",
					onErrorAccept: "250 2.1.5", onErrorReject: "554 5.7.0 Policy service unavailable"}[onError]
				c.Cmd("RCPT TO:<u@example.test>", want)
				if onError == onErrorAccept {
					// Fail open is DUNNO: the later sub-handlers decide.
					c.Cmd("RCPT TO:<bad@example.test>", "550 5.1.1")
				}
				if n := p.client.idleCount(); n != 0 {
					t.Errorf("%d connections pooled after an error, want 0", n)
				}
			})
		}
	}
}

// TestServerGone: a server that is not there (connection refused) and a
// server that dies between requests: 451 4.3.0, then the same sub-handler
// works again once a server is back.
func TestServerGone(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	p := provisioned(t, &Policy{Address: addr})
	srv := smtptest.Serve(t, p)
	c := srv.Dial(clientAddr)
	c.Cmd("MAIL FROM:<s@example.test>", "250")
	c.Cmd("RCPT TO:<u@example.test>", "451 4.3.0")

	ln, err = net.Listen("tcp", addr)
	if err != nil {
		t.Skipf("the port was taken meanwhile: %v", err)
	}
	ps := serveOn(t, ln, addr, answering("DUNNO"))
	c.Cmd("RCPT TO:<u@example.test>", "250")
	ps.stop() // the server dies with our idle connection
	c.Cmd("RCPT TO:<v@example.test>", "451 4.3.0")
}

// TestReuse: one connection serves every request of several sessions
// in turn; a server that closes idle connections costs a retry on a new
// connection, never an error; max_idle -1 opens one per request.
func TestReuse(t *testing.T) {
	t.Run("pooled", func(t *testing.T) {
		ps := startServer(t, answering("DUNNO"))
		srv := smtptest.Serve(t, provisioned(t, &Policy{Address: ps.addr}))
		for range 3 {
			c := srv.Dial(clientAddr)
			c.Cmd("MAIL FROM:<s@example.test>", "250")
			for i := range 3 {
				c.Cmd("RCPT TO:<u"+strconv.Itoa(i)+"@example.test>", "250")
			}
			c.Cmd("QUIT", "221")
		}
		if n, reqs := ps.accepted.Load(), len(ps.requests()); n != 1 || reqs != 9 {
			t.Fatalf("%d connections for %d requests, want 1 for 9", n, reqs)
		}
	})
	t.Run("server closes idle connections", func(t *testing.T) {
		var n atomic.Int32
		ps := startServer(t, func(map[string]string) string {
			n.Add(1)
			return closeIdle
		})
		p := provisioned(t, &Policy{Address: ps.addr})
		srv := smtptest.Serve(t, p)
		c := srv.Dial(clientAddr)
		c.Cmd("MAIL FROM:<s@example.test>", "250")
		for i := range 3 {
			// The pooled connection is closed by now, or is being closed:
			// either way the request is sent again on a new one.
			c.Cmd("RCPT TO:<u"+strconv.Itoa(i)+"@example.test>", "250")
		}
		if got := ps.accepted.Load(); got != 3 {
			t.Fatalf("%d connections, want 3 (one per request)", got)
		}
	})
	t.Run("max_idle -1", func(t *testing.T) {
		ps := startServer(t, answering("DUNNO"))
		srv := smtptest.Serve(t, provisioned(t, &Policy{Address: ps.addr, MaxIdle: -1}))
		c := srv.Dial(clientAddr)
		c.Cmd("MAIL FROM:<s@example.test>", "250")
		for i := range 3 {
			c.Cmd("RCPT TO:<u"+strconv.Itoa(i)+"@example.test>", "250")
		}
		if n := ps.accepted.Load(); n != 3 {
			t.Fatalf("%d connections, want 3", n)
		}
	})
	// Concurrent sessions: one request at a time per connection, so
	// with max_idle 4 no more connections than the 4 sessions; never
	// more than max_idle kept.
	for _, maxIdle := range []int{4, 2} {
		t.Run("concurrent sessions max_idle "+strconv.Itoa(maxIdle), func(t *testing.T) {
			concurrent(t, maxIdle)
		})
	}
}

func concurrent(t *testing.T, maxIdle int) {
	{
		ps := startServer(t, answering("DUNNO"))
		p := provisioned(t, &Policy{Address: ps.addr, MaxIdle: maxIdle})
		srv := smtptest.Serve(t, p)
		var clients []*smtptest.Client
		for range 4 {
			c := srv.Dial(clientAddr)
			c.Cmd("MAIL FROM:<s@example.test>", "250")
			clients = append(clients, c)
		}
		done := make(chan struct{})
		for _, c := range clients {
			go func() {
				defer func() { done <- struct{}{} }()
				for i := range 5 {
					c.Send("RCPT TO:<u" + strconv.Itoa(i) + "@example.test>\r\n")
					if r := c.ReadReply(); r.Code != 250 {
						t.Errorf("RCPT: %v", r)
					}
				}
			}()
		}
		for range clients {
			<-done
		}
		if n := ps.accepted.Load(); maxIdle == 4 && n > 4 {
			t.Errorf("%d connections for 4 sessions with max_idle 4, want at most 4", n)
		}
		if n := p.client.idleCount(); n > maxIdle {
			t.Errorf("%d idle connections, want at most max_idle %d", n, maxIdle)
		}
	}
}

// TestUnixSocket: unix:/path reaches a server on a unix socket.
func TestUnixSocket(t *testing.T) {
	path := filepath.Join(t.TempDir(), "policy.sock")
	ln, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	serveOn(t, ln, "unix:"+path, answering("REJECT 5.7.1 from the socket"))
	srv := smtptest.Serve(t, provisioned(t, &Policy{Address: "unix:" + path}))
	c := srv.Dial(clientAddr)
	c.Cmd("MAIL FROM:<s@example.test>", "250")
	c.Cmd("RCPT TO:<u@example.test>", "554 5.7.1 from the socket")
}

// TestHandlerTimeout: the engine's handler_timeout bounds a request too,
// whatever timeout says: the hook's context ends the wait.
func TestHandlerTimeout(t *testing.T) {
	ps := startServer(t, func(map[string]string) string { return hang })
	p := provisioned(t, &Policy{Address: ps.addr, Timeout: caddy.Duration(time.Hour)})
	cfg := smtptest.Config(p)
	cfg.HandlerTimeout = 200 * time.Millisecond
	srv := smtptest.NewServer(t, cfg)
	c := srv.Dial(clientAddr)
	c.Cmd("MAIL FROM:<s@example.test>", "250")
	c.Cmd("RCPT TO:<u@example.test>", "451 4.3.0")
}

func TestCaddyfile(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want Policy
		err  string
	}{
		{in: "policy 127.0.0.1:10023", want: Policy{Address: "127.0.0.1:10023"}},
		{in: "policy unix:/run/postgrey.sock", want: Policy{Address: "unix:/run/postgrey.sock"}},
		{in: "policy inet:127.0.0.1:10023 {\n at end_of_data\n timeout 5s\n on_error accept\n max_idle 0\n idle_timeout 2m\n policy_context mx\n}",
			want: Policy{Address: "inet:127.0.0.1:10023", At: atEndOfData, Timeout: caddy.Duration(5 * time.Second), OnError: onErrorAccept,
				MaxIdle: -1, IdleTimeout: caddy.Duration(2 * time.Minute), PolicyContext: "mx"}},
		{in: "policy 127.0.0.1:10023 {\n max_idle 3\n}", want: Policy{Address: "127.0.0.1:10023", MaxIdle: 3}},
		{in: "policy", err: "address: required"},
		{in: "policy 127.0.0.1", err: "address: \"127.0.0.1\" is not host:port"},
		{in: "policy 127.0.0.1:99999", err: "bad port"},
		{in: "policy unix:", err: "no socket path"},
		{in: "policy a:1 b:2", err: "wrong argument count"},
		{in: "policy a:1 {\n at helo\n}", err: "at: \"helo\" is not"},
		{in: "policy a:1 {\n on_error ignore\n}", err: "on_error: \"ignore\""},
		{in: "policy a:1 {\n timeout -1s\n}", err: "timeout must be a positive duration"},
		{in: "policy a:1 {\n idle_timeout x\n}", err: "idle_timeout must be a positive duration"},
		{in: "policy a:1 {\n max_idle -2\n}", err: "max_idle must be"},
		{in: "policy a:1 {\n at rcpt\n at mail\n}", err: "policy: at: given twice"},
		{in: "policy a:1 {\n timeout\n}", err: "wrong argument count"},
		{in: "policy a:1 {\n bogus\n}", err: "unknown option \"bogus\""},
	} {
		var p Policy
		err := p.UnmarshalCaddyfile(caddyfile.NewTestDispenser(tc.in))
		switch {
		case tc.err != "" && (err == nil || !strings.Contains(err.Error(), tc.err)):
			t.Errorf("%q: error %v, want %q", tc.in, err, tc.err)
		case tc.err == "" && err != nil:
			t.Errorf("%q: %v", tc.in, err)
		case tc.err == "" && p != tc.want:
			t.Errorf("%q: got %+v, want %+v", tc.in, p, tc.want)
		}
	}
}

func TestProvision(t *testing.T) {
	p := provisioned(t, &Policy{Address: "127.0.0.1:10023"})
	if p.At != atRcpt || p.OnError != onErrorTempfail || time.Duration(p.Timeout) != DefaultTimeout ||
		time.Duration(p.IdleTimeout) != DefaultIdleTimeout || p.client.maxIdle != DefaultMaxIdle {
		t.Errorf("defaults: %+v, max idle %d", p, p.client.maxIdle)
	}
	for _, tc := range []struct {
		p   Policy
		err string
	}{
		{Policy{}, "policy: address: required"},
		{Policy{Address: "x"}, "policy: address:"},
		{Policy{Address: "a:1", At: "connect"}, "policy: at:"},
		{Policy{Address: "a:1", OnError: "pass"}, "policy: on_error:"},
		{Policy{Address: "a:1", Timeout: -1}, "policy: timeout"},
		{Policy{Address: "a:1", IdleTimeout: -1}, "policy: idle_timeout"},
		{Policy{Address: "a:1", MaxIdle: -2}, "policy: max_idle"},
		{Policy{Address: "a:1", PolicyContext: "a\nb"}, "policy: policy_context"},
	} {
		if err := smtptest.Provision(&tc.p); err == nil || !strings.Contains(err.Error(), tc.err) {
			t.Errorf("%+v: error %v, want %q", tc.p, err, tc.err)
		}
	}
}

// TestLogFields: the message's log line has the actions of its
// requests in order as policy_action, and a failure's reason as
// policy_error (here failing open).
func TestLogFields(t *testing.T) {
	var n atomic.Int32
	ps := startServer(t, func(map[string]string) string {
		switch n.Add(1) {
		case 1:
			return "action=PREPEND X-A: b\n\n"
		case 2:
			return "action=DUNNO\n\n"
		}
		return "nonsense\n\n"
	})
	p := provisioned(t, &Policy{Address: ps.addr, OnError: onErrorAccept})
	core, logs := observer.New(zap.InfoLevel)
	srv := smtptest.ServeConfig(t, session.Config{Logger: zap.New(core)}, p)
	c := srv.Dial(clientAddr)
	c.Cmd("MAIL FROM:<s@example.test>", "250")
	for _, r := range []string{"a", "b", "c"} {
		c.Cmd("RCPT TO:<"+r+"@example.test>", "250")
	}
	c.Cmd("DATA", "354")
	c.Send(message + ".\r\n")
	c.Expect("250 2.0.0")
	c.Cmd("QUIT", "221")
	srv.Close()
	lines := logs.FilterMessage("message").All()
	if len(lines) != 1 {
		t.Fatalf("%d message lines, want 1", len(lines))
	}
	m := lines[0].ContextMap()
	if m["policy_action"] != "PREPEND,DUNNO,error" || !strings.Contains(fmt.Sprint(m["policy_error"]), "not name=value") {
		t.Errorf("policy_action %q, policy_error %q", m["policy_action"], m["policy_error"])
	}
}
