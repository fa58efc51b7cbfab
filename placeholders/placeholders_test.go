package placeholders

import (
	"context"
	"net"
	"strings"
	"testing"

	"github.com/caddy-esmtp/caddy-esmtp/internal/smtptest"
	"github.com/caddy-esmtp/caddy-esmtp/session"
)

// expander replaces a template at end of message and records the result.
type expander struct {
	tmpl string
	got  chan string
}

func (e *expander) EndOfMessage(_ context.Context, s *session.Session) (*session.Reply, error) {
	e.got <- New(s).ReplaceAll(e.tmpl, "-")
	return nil, nil
}

func TestPlaceholders(t *testing.T) {
	e := &expander{
		tmpl: "{esmtp.remote_ip}|{esmtp.remote}|{esmtp.helo}|{esmtp.tls}|{esmtp.auth_user}|{esmtp.from}|{esmtp.rcpt}|{esmtp.rcpt.local}|{esmtp.rcpt.domain}|{esmtp.queue_id}",
		got:  make(chan string, 1),
	}
	srv := smtptest.NewServer(t, session.Config{Handlers: []session.SubHandler{{Name: "x", Handler: e}}})
	remote := &net.TCPAddr{IP: net.ParseIP("192.0.2.7"), Port: 4321}
	c := srv.Pipe(session.ConnInfo{RemoteAddr: remote})
	var last string
	read := func() { last = c.ReadReply().Last() }
	read()
	for _, l := range []string{"EHLO client.example", "MAIL FROM:<a@sender.test>", "RCPT TO:<Bob@Example.TEST>", "DATA"} {
		c.Send(l + "\r\n")
		read()
	}
	c.Send("Subject: x\r\n\r\nhi\r\n.\r\n")
	read()
	got := <-e.got
	fields := strings.Split(got, "|")
	want := []string{"192.0.2.7", "192.0.2.7:4321", "client.example", "false", "-" /* empty: ReplaceAll's default */, "a@sender.test", "Bob@Example.TEST", "Bob", "example.test"}
	for i, w := range want {
		if fields[i] != w {
			t.Errorf("placeholder %d = %q, want %q (all: %q)", i, fields[i], w, got)
		}
	}
	if id := fields[9]; id == "" || !strings.Contains(last, id) {
		t.Errorf("queue id %q is not the one in the reply %q", id, last)
	}
}
