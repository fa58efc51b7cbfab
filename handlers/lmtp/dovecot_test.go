package lmtp

import (
	"bytes"
	"context"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/caddy-esmtp/caddy-esmtp/internal/filtertest"
	"github.com/caddy-esmtp/caddy-esmtp/internal/smtptest"
	"github.com/caddy-esmtp/caddy-esmtp/session"
)

// The tests in this file deliver to a real Dovecot (filtertest.StartDovecot,
// one per test binary), through the engine over loopback TCP or from the
// queue side (Server.DeliverQueued).

// TestDovecotTwoRecipients: a message to two users of Dovecot, over its
// unix socket and over TCP, with a memory spool and with a file spool,
// reaches both Maildirs byte for byte (our Received: field first; lines
// that start with a dot, 8-bit text, and, in the large one, lines that
// cross the 32 KiB copy buffers); the client gets 250.
func TestDovecotTwoRecipients(t *testing.T) {
	dv := filtertest.StartDovecot(t)
	big := message("large") + strings.Repeat(".dotted line of some length, repeated until it is large\r\n", 40000)
	for _, tc := range []struct {
		name, addr string
		cfg        session.Config
		msg        string
	}{
		{"unix memory", "unix:" + dv.Socket, session.Config{}, message("unix memory")},
		{"tcp file", dv.Addr, session.Config{SpoolMemory: 1, SpoolDir: t.TempDir()}, message("tcp file")},
		{"unix file large", "unix:" + dv.Socket, session.Config{SpoolMemory: 1, SpoolDir: t.TempDir()}, big},
	} {
		t.Run(tc.name, func(t *testing.T) {
			l := provision(t, &LMTP{Address: tc.addr})
			srv := smtptest.ServeConfig(t, tc.cfg, l)
			alice, bob := user("alice"), user("bob")
			c := srv.DialTCPHello()
			if got := smtptest.Mail(c, tc.msg, alice, bob); !strings.HasPrefix(got, "250 ") {
				t.Fatalf("end of data: %q, want 250\nDovecot:\n%s", got, dv.Output())
			}
			c.Cmd("QUIT", "221")
			storedOnce(t, dv, alice, []byte(tc.msg))
			storedOnce(t, dv, bob, []byte(tc.msg))
		})
	}
}

// TestDovecotUnknownUser: a recipient Dovecot does not know gets
// Dovecot's own refusal, 550 5.1.1 with its text, and nothing is stored.
func TestDovecotUnknownUser(t *testing.T) {
	dv := filtertest.StartDovecot(t)
	l := provision(t, &LMTP{Address: "unix:" + dv.Socket})
	srv := smtptest.Serve(t, l)
	c := srv.DialTCPHello()
	got := smtptest.Mail(c, message("unknown"), filtertest.DovecotUnknownUser)
	if want := "550 5.1.1 <" + filtertest.DovecotUnknownUser + "> User doesn't exist"; !strings.HasPrefix(got, want) {
		t.Fatalf("end of data: %q, want %q...", got, want)
	}
	c.Cmd("QUIT", "221")
	if msgs := stored(t, dv, filtertest.DovecotUnknownUser); len(msgs) != 0 {
		t.Errorf("%d messages stored for the unknown user", len(msgs))
	}
}

// TestDovecotMixedInSession: in a session (no queue), a message to a
// known user, the unknown one and another known user: the client gets
// the first failure, Dovecot's 550 5.1.1, for the whole message, while
// the known users keep the copy Dovecot stored (at least once: the
// client's retry or bounce covers them too; the queue is what gives each
// recipient its own outcome).
func TestDovecotMixedInSession(t *testing.T) {
	dv := filtertest.StartDovecot(t)
	l := provision(t, &LMTP{Address: "unix:" + dv.Socket})
	srv := smtptest.Serve(t, l)
	alice, bob := user("alice"), user("bob")
	msg := message("mixed")
	c := srv.DialTCPHello()
	if got := smtptest.Mail(c, msg, alice, filtertest.DovecotUnknownUser, bob); !strings.HasPrefix(got, "550 5.1.1 <"+filtertest.DovecotUnknownUser+">") {
		t.Fatalf("end of data: %q, want Dovecot's 550 5.1.1", got)
	}
	c.Cmd("QUIT", "221")
	storedOnce(t, dv, alice, []byte(msg))
	storedOnce(t, dv, bob, []byte(msg))
}

// memQueue is a queue that keeps what the engine queues, in memory, as
// the durable queue will (session.Queue).
type memQueue struct {
	mu   sync.Mutex
	got  []*session.Queued
	msgs [][]byte
}

func (q *memQueue) Enqueue(_ context.Context, m *session.Queued) error {
	b, err := m.Message.Bytes()
	if err != nil {
		return err
	}
	q.mu.Lock()
	defer q.mu.Unlock()
	q.got = append(q.got, m)
	q.msgs = append(q.msgs, b)
	return nil
}

// queuedServer is an engine with a memory queue and l as its delivery,
// serving over loopback TCP.
func queuedServer(t *testing.T, l *LMTP) (*smtptest.Server, *memQueue) {
	q := &memQueue{}
	cfg := smtptest.Config(l)
	cfg.Queue = q
	return smtptest.NewServer(t, cfg), q
}

// TestDovecotFromTheQueue: with a queue, the client's 250 means queued;
// the queue then delivers through Server.DeliverQueued over a fresh
// Message (session.NewMessage over the stored bytes), as the durable
// queue will, and each recipient gets its own outcome: Dovecot's 250
// 2.0.0 "Saved" for the known users (each stored once), its 550 5.1.1
// for the unknown one, each naming Dovecot as the remote MTA.
func TestDovecotFromTheQueue(t *testing.T) {
	dv := filtertest.StartDovecot(t)
	l := provision(t, &LMTP{Address: dv.Addr})
	srv, q := queuedServer(t, l)
	alice, bob := user("alice"), user("bob")
	msg := message("queued")
	c := srv.DialTCPHello()
	if got := smtptest.Mail(c, msg, alice, filtertest.DovecotUnknownUser, bob); !strings.HasPrefix(got, "250 ") || !strings.Contains(got, "queued") {
		t.Fatalf("end of data: %q, want 250 ... queued", got)
	}
	c.Cmd("QUIT", "221")
	if n := len(stored(t, dv, alice)); n != 0 {
		t.Fatalf("delivered in the session (%d messages) although the server queues", n)
	}
	if len(q.got) != 1 {
		t.Fatalf("%d messages queued, want 1", len(q.got))
	}
	m, raw := q.got[0], q.msgs[0]
	m.Message = session.NewMessage(bytes.NewReader(raw), int64(len(raw)))
	replies := srv.Engine().DeliverQueued(context.Background(), m)
	want := []string{
		"250 2.0.0 <" + alice + ">",
		"550 5.1.1 <" + filtertest.DovecotUnknownUser + "> User doesn't exist",
		"250 2.0.0 <" + bob + ">",
	}
	if len(replies) != len(want) {
		t.Fatalf("%d replies, want %d", len(replies), len(want))
	}
	for i, r := range replies {
		if got := r.Error(); !strings.HasPrefix(got, want[i]) {
			t.Errorf("recipient %d: %q, want %q...", i, got, want[i])
		}
	}
	for i, r := range replies {
		// Dovecot's name, from its LHLO reply: the DSN's Remote-MTA.
		if r.RemoteMTA == "" || r.RemoteMTA != replies[0].RemoteMTA {
			t.Errorf("recipient %d: RemoteMTA %q", i, r.RemoteMTA)
		}
	}
	storedOnce(t, dv, alice, []byte(msg))
	storedOnce(t, dv, bob, []byte(msg))
}

// TestDovecotSMTPUTF8: Dovecot 2.3 does not offer SMTPUTF8. From the
// queue, a message sent with SMTPUTF8 to an ASCII and a non-ASCII
// address reaches the ASCII one (without the parameter) and fails the
// other with 553 5.6.7; a non-ASCII sender fails the whole message so.
func TestDovecotSMTPUTF8(t *testing.T) {
	dv := filtertest.StartDovecot(t)
	l := provision(t, &LMTP{Address: "unix:" + dv.Socket})
	srv, q := queuedServer(t, l)
	alice := user("alice")
	msg := message("utf8")
	c := srv.DialTCPHello()
	c.Cmd("MAIL FROM:<sender@example.test> SMTPUTF8", "250")
	c.Cmd("RCPT TO:<"+alice+">", "250")
	c.Cmd("RCPT TO:<jos\xc3\xa9@example.test>", "250")
	c.Cmd("DATA", "354")
	c.Send(smtptest.Stuff(msg) + ".\r\n")
	c.Expect("250 ")
	c.Cmd("MAIL FROM:<s\xc3\xa9nder@example.test> SMTPUTF8", "250")
	c.Cmd("RCPT TO:<"+alice+">", "250")
	c.Cmd("DATA", "354")
	c.Send(smtptest.Stuff(msg) + ".\r\n")
	c.Expect("250 ")
	c.Cmd("QUIT", "221")
	if len(q.got) != 2 {
		t.Fatalf("%d messages queued, want 2", len(q.got))
	}
	for i, want := range [][]string{{"250 2.0.0", "553 5.6.7"}, {"553 5.6.7"}} {
		m := q.got[i]
		m.Message = session.NewMessage(bytes.NewReader(q.msgs[i]), int64(len(q.msgs[i])))
		replies := srv.Engine().DeliverQueued(context.Background(), m)
		for k, r := range replies {
			if got := r.Error(); !strings.HasPrefix(got, want[k]) {
				t.Errorf("message %d, recipient %d: %q, want %s", i, k, got, want[k])
			}
		}
	}
	storedOnce(t, dv, alice, []byte(msg))
}

// TestDovecotConnectionReuse: consecutive messages share one connection
// to Dovecot (kept idle between them, RSET before the next), and each is
// stored; with max_idle -1 each message has its own.
func TestDovecotConnectionReuse(t *testing.T) {
	dv := filtertest.StartDovecot(t)
	for _, tc := range []struct {
		maxIdle, connects, idle int
	}{{0, 1, 1}, {-1, 3, 0}} {
		l := provision(t, &LMTP{Address: "unix:" + dv.Socket, MaxIdle: tc.maxIdle})
		srv := smtptest.Serve(t, l)
		alice := user("alice")
		before := strings.Count(dv.Output(), "Connect from local")
		c := srv.DialTCPHello()
		for i := range 3 {
			if got := smtptest.Mail(c, message("reuse"), alice); !strings.HasPrefix(got, "250 ") {
				t.Fatalf("max_idle %d, message %d: %q", tc.maxIdle, i, got)
			}
		}
		c.Cmd("QUIT", "221")
		if n := len(stored(t, dv, alice)); n != 3 {
			t.Errorf("max_idle %d: %d messages stored, want 3", tc.maxIdle, n)
		}
		if l.pool != nil && l.pool.Len() != tc.idle || l.pool == nil && tc.idle != 0 {
			t.Errorf("max_idle %d: idle connections differ from %d", tc.maxIdle, tc.idle)
		}
		if got := strings.Count(dv.Output(), "Connect from local") - before; got != tc.connects {
			t.Errorf("max_idle %d: %d connections to Dovecot, want %d", tc.maxIdle, got, tc.connects)
		}
	}
}

// TestDovecotDown: with nothing listening (no socket, a closed port), the
// client gets 451 4.4.1 and sends the message again later; from the
// queue, every recipient is to be tried again.
func TestDovecotDown(t *testing.T) {
	for _, addr := range []string{"unix:" + filepath.Join(t.TempDir(), "no-socket"), filtertest.FreePort(t)} {
		l := provision(t, &LMTP{Address: addr})
		srv := smtptest.Serve(t, l)
		c := srv.DialTCPHello()
		if got := smtptest.Mail(c, message("down"), user("alice"), user("bob")); !strings.HasPrefix(got, "451 4.4.1 ") {
			t.Errorf("%s: end of data: %q, want 451 4.4.1", addr, got)
		}
		c.Cmd("QUIT", "221")

		qsrv, _ := queuedServer(t, l)
		msg := []byte(message("down"))
		replies := qsrv.Engine().DeliverQueued(context.Background(), &session.Queued{
			ID:         "down1",
			From:       session.Path{Mailbox: "sender@example.test", Local: "sender", Domain: "example.test"},
			Recipients: []session.Recipient{{Path: session.Path{Mailbox: "a@example.test"}}, {Path: session.Path{Mailbox: "b@example.test"}}},
			Message:    session.NewMessage(bytes.NewReader(msg), int64(len(msg))),
		})
		for i, r := range replies {
			if !strings.HasPrefix(r.Error(), "451 4.4.1 ") {
				t.Errorf("%s: queued recipient %d: %q, want 451 4.4.1", addr, i, r.Error())
			}
		}
	}
}

// TestDovecotVerifyRecipients: with verify_recipients, Dovecot's refusal
// of an unknown user is the client's reply at RCPT (not a bounce later),
// a known user is accepted and gets the message, and a Dovecot that
// cannot be reached gives 451 4.4.1 at RCPT.
func TestDovecotVerifyRecipients(t *testing.T) {
	dv := filtertest.StartDovecot(t)
	l := provision(t, &LMTP{Address: "unix:" + dv.Socket, VerifyRecipients: true})
	srv := smtptest.Serve(t, l)
	c := srv.DialTCPHello()
	c.Cmd("MAIL FROM:<sender@example.test>", "250")
	if got := c.Cmd("RCPT TO:<"+filtertest.DovecotUnknownUser+">", "550"); !strings.HasPrefix(got, "550 5.1.1 ") || !strings.Contains(got, "User doesn't exist") {
		t.Errorf("unknown user at RCPT: %q, want Dovecot's 550 5.1.1", got)
	}
	alice := user("alice-verify")
	c.Cmd("RCPT TO:<"+alice+">", "250")
	c.Cmd("DATA", "354")
	msg := message("verified")
	c.Send(strings.ReplaceAll(msg, "\r\n.", "\r\n..") + ".\r\n")
	c.Expect("250 ")
	c.Cmd("QUIT", "221")
	storedOnce(t, dv, alice, []byte(msg))

	down := provision(t, &LMTP{Address: "unix:" + filepath.Join(t.TempDir(), "no-socket"), VerifyRecipients: true})
	c = smtptest.Serve(t, down).DialTCPHello()
	c.Cmd("MAIL FROM:<sender@example.test>", "250")
	c.Cmd("RCPT TO:<"+alice+">", "451 4.4.1")
	c.Cmd("QUIT", "221")
}
