package relay

import (
	"bytes"
	"context"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/emersion/go-smtp"

	"github.com/caddy-esmtp/caddy-esmtp/internal/smtptest"
	"github.com/caddy-esmtp/caddy-esmtp/session"
)

// otherDelivery is a second delivery that keeps what it gets, or fails
// with fail.
type otherDelivery struct {
	fail *session.Reply
	mu   sync.Mutex
	msgs [][]byte
}

func (o *otherDelivery) Deliver(_ context.Context, _ *session.Session, d *session.Delivery) error {
	if o.fail != nil {
		return o.fail
	}
	b, err := d.Message.Bytes()
	if err != nil {
		return err
	}
	o.mu.Lock()
	o.msgs = append(o.msgs, b)
	o.mu.Unlock()
	return nil
}

func (o *otherDelivery) count() int {
	o.mu.Lock()
	defer o.mu.Unlock()
	return len(o.msgs)
}

// TestJudgeEditsReachUpstream checks that what the upstream gets is the
// final message: a judge's header edits and replaced body are in it, and
// the rest is byte for byte what the client sent (dots stuffed again on
// the way out).
func TestJudgeEditsReachUpstream(t *testing.T) {
	for _, tc := range []struct {
		name string
		edit func(txn *session.Transaction)
		top  string // above our Received: field
		want string // after it
	}{
		{"header edits", func(txn *session.Transaction) {
			txn.PrependHeader("Authentication-Results", "mx.example.test; spf=pass")
			txn.ChangeHeader("Subject", 1, "edited")
			txn.AppendHeader("X-Judge", "yes")
		}, "Authentication-Results: mx.example.test; spf=pass\r\n",
			strings.Replace(strings.Replace(message, "Subject: relay test\r\n", "Subject: edited\r\n", 1),
				"\r\n\r\n", "\r\nX-Judge: yes\r\n\r\n", 1)},
		{"body replaced", func(txn *session.Transaction) {
			txn.ReplaceBody(strings.NewReader("New body.\r\n.dot again\r\n"))
		}, "", message[:strings.Index(message, "\r\n\r\n")+4] + "New body.\r\n.dot again\r\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			up := startUpstream(t, upstreamOpts{})
			r := provisioned(t, &Relay{To: "smtp://" + up.addr, RequireTLS: &off})
			j := smtptest.Judge(func(s *session.Session) { tc.edit(s.Transaction()) })
			c, _ := dial(t, serve(t, session.Config{}, authAs("alice"), j, r))
			if got := send(t, c, "a@client.example", "b@example.test"); !strings.HasPrefix(got, "250 2.0.0") {
				t.Fatalf("end of data: %q", got)
			}
			msgs := up.messages()
			if len(msgs) != 1 {
				t.Fatalf("upstream got %d messages, want 1", len(msgs))
			}
			data := msgs[0].data
			if !bytes.HasPrefix(data, []byte(tc.top)) {
				t.Fatalf("upstream data does not start with %q: %q", tc.top, data)
			}
			splitReceived(t, data[len(tc.top):], tc.want)
			checkCRLF(t, up.rawBytes())
		})
	}
}

// TestJudgeChangesEnvelope checks that the upstream gets exactly the final
// envelope when a judge changed it after RCPT: a removed recipient is not
// sent to, an added one is, a changed sender is the one the upstream sees;
// the upstream transaction is reset and sent again (RSET, MAIL, RCPT) on
// the same connection, and only then. A recipient the upstream refuses
// when sent again fails the message with its reply; an added recipient the
// relay may not relay for fails it with 554 5.7.1.
func TestJudgeChangesEnvelope(t *testing.T) {
	up := startUpstream(t, upstreamOpts{rejectRcpt: map[string]*smtp.SMTPError{
		"refused@example.test": {Code: 550, EnhancedCode: smtp.EnhancedCode{5, 1, 1}, Message: "No such user"},
	}})
	r := provisioned(t, &Relay{To: "smtp://" + up.addr, RequireTLS: &off, Domains: []string{"example.test"}, MaxIdle: -1})
	j := smtptest.Judge(func(s *session.Session) {
		txn := s.Transaction()
		switch txn.From.Mailbox {
		case "swap@client.example":
			txn.RemoveRecipient("b@example.test")
			txn.AddRecipient(session.Path{Mailbox: "d@example.test", Local: "d", Domain: "example.test"}, nil)
		case "sender@client.example":
			txn.SetSender(session.Path{Mailbox: "bounces@client.example", Local: "bounces", Domain: "client.example"}, txn.MailParams)
		case "refused@client.example":
			txn.AddRecipient(session.Path{Mailbox: "refused@example.test", Local: "refused", Domain: "example.test"}, nil)
		case "foreign@client.example":
			txn.AddRecipient(session.Path{Mailbox: "x@foreign.test", Local: "x", Domain: "foreign.test"}, nil)
		}
	})
	srv := serve(t, session.Config{}, j, r)

	for _, tc := range []struct {
		from      string
		eom       string // the reply to the end of data
		wantFrom  string
		wantRcpts []string // nil: no message upstream
	}{
		{"same@client.example", "250 2.0.0", "same@client.example", []string{"b@example.test", "c@example.test"}},
		{"swap@client.example", "250 2.0.0", "swap@client.example", []string{"c@example.test", "d@example.test"}},
		{"sender@client.example", "250 2.0.0", "bounces@client.example", []string{"b@example.test", "c@example.test"}},
		{"refused@client.example", "550 5.1.1 No such user", "", nil},
		{"foreign@client.example", "554 5.7.1 Relay access denied", "", nil},
	} {
		t.Run(tc.from, func(t *testing.T) {
			before, conns := len(up.messages()), up.connections()
			c, _ := dial(t, srv)
			got := send(t, c, tc.from, "b@example.test", "c@example.test")
			c.Cmd("QUIT", "221 ")
			if !strings.HasPrefix(got, tc.eom) {
				t.Fatalf("end of data: %q, want %q", got, tc.eom)
			}
			waitFor(t, "the upstream connection to end", func() bool { return up.closed() == up.connections() })
			if n := up.connections() - conns; n != 1 {
				t.Errorf("%d upstream connections, want 1", n)
			}
			msgs := up.messages()[before:]
			if tc.wantRcpts == nil {
				if len(msgs) != 0 {
					t.Fatalf("upstream got %+v", msgs)
				}
				return
			}
			if len(msgs) != 1 || msgs[0].from != tc.wantFrom || !slices.Equal(msgs[0].rcpts, tc.wantRcpts) {
				t.Fatalf("upstream got %+v, want from %s to %q", msgs, tc.wantFrom, tc.wantRcpts)
			}
			splitReceived(t, msgs[0].data, message)
		})
	}
	// RSET only where the envelope changed: swap, sender and refused.
	if n := bytes.Count(up.rawBytes(), []byte("RSET\r\n")); n != 3 {
		t.Errorf("%d RSETs upstream, want 3", n)
	}
}

// TestRelayBeforeAnotherDelivery checks that the relay need not be last:
// placed before another delivery it sends the message once, at delivery;
// when the other delivery fails with 451, the client gets 451, and the
// relayed copy stays upstream (it cannot be taken back).
func TestRelayBeforeAnotherDelivery(t *testing.T) {
	up := startUpstream(t, upstreamOpts{})
	r := provisioned(t, &Relay{To: "smtp://" + up.addr, RequireTLS: &off})
	other := &otherDelivery{}
	c, _ := dial(t, serve(t, session.Config{}, authAs("alice"), r, other))
	if got := send(t, c, "a@client.example", "b@example.test"); !strings.HasPrefix(got, "250 2.0.0") {
		t.Fatalf("end of data: %q", got)
	}
	msgs := up.messages()
	if len(msgs) != 1 || other.count() != 1 {
		t.Fatalf("upstream got %d messages, the other delivery %d; want 1 and 1", len(msgs), other.count())
	}
	if !bytes.Equal(msgs[0].data, other.msgs[0]) {
		t.Errorf("the upstream and the other delivery got different messages:\n%q\n%q", msgs[0].data, other.msgs[0])
	}
	if n := bytes.Count(up.rawBytes(), []byte("DATA\r\n")); n != 1 {
		t.Errorf("%d DATA upstream, want 1", n)
	}

	failing := &otherDelivery{fail: session.NewReply(451, "4.3.0", "Other delivery failed")}
	c, _ = dial(t, serve(t, session.Config{}, authAs("alice"), r, failing))
	if got := send(t, c, "a@client.example", "c@example.test"); got != "451 4.3.0 Other delivery failed" {
		t.Fatalf("end of data: %q, want the other delivery's 451", got)
	}
	msgs = up.messages()
	if len(msgs) != 2 || !slices.Equal(msgs[1].rcpts, []string{"c@example.test"}) {
		t.Fatalf("upstream got %+v; want the relayed copy kept", msgs)
	}
	// The session and the upstream connection go on.
	if got := send(t, c, "a@client.example", "d@example.test"); got != "451 4.3.0 Other delivery failed" {
		t.Fatalf("next message: %q", got)
	}
	if n := up.connections(); n != 1 {
		t.Errorf("%d upstream connections, want 1", n)
	}
}

// TestHeldConnectionLost checks that an upstream connection held since
// RCPT that the upstream closed while the client sent the message (its
// idle timeout) is replaced at delivery, with the envelope sent again.
func TestHeldConnectionLost(t *testing.T) {
	up := startUpstream(t, upstreamOpts{})
	r := provisioned(t, &Relay{To: "smtp://" + up.addr, RequireTLS: &off})
	cut := smtptest.Judge(func(s *session.Session) {
		if st, _ := s.Value(key{r}).(*txnState); st != nil && st.up != nil {
			st.up.uc.Conn.Close()
		}
	})
	c, _ := dial(t, serve(t, session.Config{}, authAs("alice"), cut, r))
	if got := send(t, c, "a@client.example", "b@example.test", "c@example.test"); !strings.HasPrefix(got, "250 2.0.0") {
		t.Fatalf("end of data: %q", got)
	}
	msgs := up.messages()
	if len(msgs) != 1 || !slices.Equal(msgs[0].rcpts, []string{"b@example.test", "c@example.test"}) {
		t.Fatalf("upstream got %+v", msgs)
	}
	if n := up.connections(); n != 2 {
		t.Errorf("%d upstream connections, want 2", n)
	}
}

// remoteOnly is a matcher that takes the recipients of remote.test.
type remoteOnly struct{}

func (remoteOnly) MatchSession(*session.Session) bool              { return true }
func (remoteOnly) MatchSender(*session.Session, session.Path) bool { return true }
func (remoteOnly) MatchRecipient(_ *session.Session, p session.Path) bool {
	return p.Domain == "remote.test"
}

// TestUnusedTransactionLetGo checks that an upstream transaction the
// engine never asks to deliver (a judge removed every recipient of the
// relay, the message went elsewhere) is let go: at the session's end, and
// not reused as the next transaction's.
func TestUnusedTransactionLetGo(t *testing.T) {
	up := startUpstream(t, upstreamOpts{})
	r := provisioned(t, &Relay{To: "smtp://" + up.addr, RequireTLS: &off, MaxIdle: -1})
	local := &otherDelivery{}
	j := smtptest.Judge(func(s *session.Session) {
		if s.Transaction().From.Mailbox == "drop@client.example" {
			s.Transaction().RemoveRecipient("b@remote.test")
		}
	})
	cfg := session.Config{Hostname: "mx.example.test", Handlers: []session.SubHandler{
		{Name: "auth", Handler: authAs("alice")},
		{Name: "judge", Handler: j},
		{Name: "relay", Handler: r, Match: remoteOnly{}},
		{Name: "local", Handler: local, Match: notRemote{}},
	}}
	srv := smtptest.NewServer(t, cfg)
	// Let go at the next RCPT of the relay.
	c, _ := dial(t, srv)
	if got := send(t, c, "drop@client.example", "b@remote.test", "l@local.test"); !strings.HasPrefix(got, "250 2.0.0") {
		t.Fatalf("end of data: %q", got)
	}
	if got := send(t, c, "a@client.example", "c@remote.test"); !strings.HasPrefix(got, "250 2.0.0") {
		t.Fatalf("second message: %q", got)
	}
	waitFor(t, "both upstream connections to end", func() bool { return up.closed() == 2 })
	msgs := up.messages()
	if len(msgs) != 1 || !slices.Equal(msgs[0].rcpts, []string{"c@remote.test"}) || local.count() != 1 {
		t.Fatalf("upstream got %+v, local %d", msgs, local.count())
	}
	// Let go at the end of the session.
	c, _ = dial(t, srv)
	if got := send(t, c, "drop@client.example", "b@remote.test", "l@local.test"); !strings.HasPrefix(got, "250 2.0.0") {
		t.Fatalf("end of data: %q", got)
	}
	c.Cmd("QUIT", "221 ")
	waitFor(t, "the unused upstream connection to end", func() bool { return up.closed() == 3 })
	if n := len(up.messages()); n != 1 {
		t.Fatalf("upstream got %d messages, want 1", n)
	}
}

// notRemote is a matcher that takes the recipients outside remote.test.
type notRemote struct{}

func (notRemote) MatchSession(*session.Session) bool              { return true }
func (notRemote) MatchSender(*session.Session, session.Path) bool { return true }
func (notRemote) MatchRecipient(_ *session.Session, p session.Path) bool {
	return p.Domain != "remote.test"
}
