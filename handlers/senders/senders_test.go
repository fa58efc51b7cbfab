package senders

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"

	"github.com/caddy-esmtp/caddy-esmtp/internal/smtptest"
	"github.com/caddy-esmtp/caddy-esmtp/session"
)

// TestMail runs the sub-handler in the engine: listed senders pass to the
// next sub-handler, others get 550 5.7.1, <> passes.
func TestMail(t *testing.T) {
	file := filepath.Join(t.TempDir(), "senders")
	os.WriteFile(file, []byte("# partners\nfromfile@partner.test\n"), 0o644)
	s := smtptest.Provisioned(t, &Senders{Allow: []string{"example.test", "boss@*.corp.test", "*.sub.test"}, Files: []string{file}})
	next := smtptest.MailFunc(func(from session.Path) *session.Reply {
		if strings.HasPrefix(from.Mailbox, "later@") {
			return session.NewReply(451, "4.7.1", "Try later")
		}
		return nil
	})
	c := smtptest.Serve(t, s, next).DialTCP().Hello(smtptest.Helo)
	for _, tc := range []struct{ from, want string }{
		{"<a@example.test>", "250 2.1.0"},
		{"<A@EXAMPLE.TEST>", "250 2.1.0"},
		{"<boss@eu.corp.test>", "250 2.1.0"},
		{"<BOSS@eu.Corp.test>", "250 2.1.0"},
		{"<fromfile@partner.test>", "250 2.1.0"},
		{"<x@a.b.sub.test>", "250 2.1.0"},
		{"<>", "250 2.1.0"},
		{"<intern@eu.corp.test>", "550 5.7.1 Sender not allowed"},
		{"<other@partner.test>", "550 5.7.1 Sender not allowed"},
		{"<spoof@example.test.evil.test>", "550 5.7.1 Sender not allowed"},
		{"<x@sub.test>", "550 5.7.1 Sender not allowed"},
		{"<later@example.test>", "451 4.7.1 Try later"},
	} {
		got := c.Cmd("MAIL FROM:"+tc.from, tc.want)
		if strings.HasPrefix(got, "250") {
			c.Cmd("RSET", "250 ")
		}
	}

	strict := smtptest.Provisioned(t, &Senders{Allow: []string{"example.test"}, RejectNullSender: true})
	c = smtptest.Serve(t, strict).DialTCP().Hello(smtptest.Helo)
	c.Cmd("MAIL FROM:<>", "550 5.7.1 Sender not allowed")
	c.Cmd("MAIL FROM:<a@example.test>", "250 2.1.0")
	c.Cmd("RCPT TO:<b@example.test>", "250 2.1.5")
}

func TestProvisionErrors(t *testing.T) {
	missing := filepath.Join(t.TempDir(), "nope")
	for _, tc := range []struct {
		s    *Senders
		want string
	}{
		{&Senders{RejectNullSender: true}, "senders: allow or files is required"},
		{&Senders{Allow: []string{"*"}}, "senders: allow[0]:"},
		{&Senders{Files: []string{missing}}, "senders: files[0]: open " + missing},
	} {
		err := smtptest.Provision(tc.s)
		if err == nil || !strings.HasPrefix(err.Error(), tc.want) {
			t.Errorf("%+v: got error %v, want %q...", tc.s, err, tc.want)
		}
	}
}

func TestCaddyfile(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{`senders example.test *@other.test`, `{"allow":["example.test","*@other.test"]}`},
		{"senders example.test {\n file /etc/mail/senders\n reject_null_sender\n}", `{"allow":["example.test"],"files":["/etc/mail/senders"],"reject_null_sender":true}`},
		{"senders {\n allow a.test\n allow b@c.test\n}", `{"allow":["a.test","b@c.test"]}`},
	} {
		var s Senders
		if err := s.UnmarshalCaddyfile(caddyfile.NewTestDispenser(tc.in)); err != nil {
			t.Errorf("%q: %v", tc.in, err)
			continue
		}
		got, _ := json.Marshal(&s)
		if string(got) != tc.want {
			t.Errorf("%q: got %s, want %s", tc.in, got, tc.want)
		}
	}
	for _, tc := range []struct{ in, want string }{
		{`senders`, "senders: no entries"},
		{"senders {\n reject_null_sender\n}", "senders: no entries"},
		{"senders a.test {\n reject_null_sender yes\n}", "wrong argument count"},
		{"senders a.test {\n deny x.test\n}", `unknown option "deny" (known: allow, file, reject_null_sender)`},
		{"senders *.*", "senders:"},
	} {
		var s Senders
		err := s.UnmarshalCaddyfile(caddyfile.NewTestDispenser(tc.in))
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%q: got error %v, want one containing %q", tc.in, err, tc.want)
		}
	}
}
