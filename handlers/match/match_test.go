package match

import (
	"context"
	"strings"
	"sync"
	"testing"

	"github.com/caddy-esmtp/caddy-esmtp/internal/smtptest"
	"github.com/caddy-esmtp/caddy-esmtp/session"
)

// probe records which events reach it and the recipients it sees.
type probe struct {
	mu     sync.Mutex
	events []string
}

func (p *probe) add(e string) { p.mu.Lock(); p.events = append(p.events, e); p.mu.Unlock() }

func (p *probe) Mail(_ context.Context, _ *session.Session, from session.Path, _ session.Params) (*session.Reply, error) {
	p.add("mail " + from.Mailbox)
	return nil, nil
}

func (p *probe) Rcpt(_ context.Context, _ *session.Session, to session.Path, _ session.Params) (*session.Reply, error) {
	p.add("rcpt " + to.Mailbox)
	return nil, nil
}

func (p *probe) EndOfMessage(_ context.Context, s *session.Session) (*session.Reply, error) {
	var rs []string
	for _, r := range s.Transaction().Recipients {
		rs = append(rs, r.Path.Mailbox)
	}
	p.add("eom " + strings.Join(rs, ","))
	return nil, nil
}

// run sends one transaction from the client address remote and returns
// what the probe behind m saw.
func run(t *testing.T, m *Match, remote string, from string, rcpts ...string) []string {
	t.Helper()
	if err := m.parseConditions(); err != nil {
		t.Fatal(err)
	}
	p := &probe{}
	m.inner = []any{p}
	srv := smtptest.NewServer(t, session.Config{Handlers: m.SubHandlers()})
	c := srv.PipeFrom(remote)
	c.Expect("220")
	c.Cmd("EHLO c.test", "250")
	c.Cmd("MAIL FROM:<"+from+">", "250")
	for _, rc := range rcpts {
		c.Cmd("RCPT TO:<"+rc+">", "250")
	}
	c.Cmd("DATA", "354")
	c.Cmd("Subject: x\r\n\r\nhi\r\n.", "250")
	c.Cmd("QUIT", "221")
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.events
}

func TestConditions(t *testing.T) {
	yes, no := true, false
	for _, tc := range []struct {
		name   string
		m      Match
		remote string
		from   string
		want   string
	}{
		{"rcpt splits", Match{Recipients: []string{"one.test"}}, "192.0.2.1:1", "a@x.test",
			"mail a@x.test|rcpt b@one.test|eom b@one.test"},
		{"not_rcpt: the rest", Match{NotRecipients: []string{"one.test"}}, "192.0.2.1:1", "a@x.test",
			"mail a@x.test|rcpt c@two.test|eom c@two.test"},
		{"rcpt and not_rcpt", Match{Recipients: []string{"one.test", "two.test"}, NotRecipients: []string{"c@two.test"}}, "192.0.2.1:1", "a@x.test",
			"mail a@x.test|rcpt b@one.test|eom b@one.test"},
		{"sender miss", Match{Senders: []string{"*@x.test"}}, "192.0.2.1:1", "a@y.test", ""},
		{"sender hit", Match{Senders: []string{"*@x.test"}}, "192.0.2.1:1", "a@x.test",
			"mail a@x.test|rcpt b@one.test|rcpt c@two.test|eom b@one.test,c@two.test"},
		{"null sender", Match{Senders: []string{"<>"}}, "192.0.2.1:1", "",
			"mail |rcpt b@one.test|rcpt c@two.test|eom b@one.test,c@two.test"},
		{"remote_ip miss", Match{RemoteIP: []string{"10.0.0.0/8"}}, "192.0.2.1:1", "a@x.test", ""},
		{"remote_ip hit", Match{RemoteIP: []string{"192.0.2.0/24"}}, "192.0.2.1:1", "a@x.test",
			"mail a@x.test|rcpt b@one.test|rcpt c@two.test|eom b@one.test,c@two.test"},
		{"tls required", Match{TLS: &yes}, "192.0.2.1:1", "a@x.test", ""},
		{"not authenticated", Match{Authenticated: &no}, "192.0.2.1:1", "a@x.test",
			"mail a@x.test|rcpt b@one.test|rcpt c@two.test|eom b@one.test,c@two.test"},
		{"authenticated required", Match{Authenticated: &yes}, "192.0.2.1:1", "a@x.test", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := strings.Join(run(t, &tc.m, tc.remote, tc.from, "b@one.test", "c@two.test"), "|")
			if got != tc.want {
				t.Fatalf("events %q, want %q", got, tc.want)
			}
		})
	}
}

func TestBadConditions(t *testing.T) {
	for _, m := range []*Match{
		{RemoteIP: []string{"not-an-ip"}},
		{NotRecipients: []string{"*"}},
		{Recipients: []string{"bad entry with spaces"}},
	} {
		if err := m.parseConditions(); err == nil {
			t.Errorf("%+v: no error", m)
		}
	}
}
