package exec

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/caddy-esmtp/caddy-esmtp/internal/smtptest"
	"github.com/caddy-esmtp/caddy-esmtp/session"
)

// envelopeJudge changes the sender, removes b@example.test and adds
// added@example.test.
type envelopeJudge struct{}

// EndOfMessage edits the envelope and has no opinion.
func (envelopeJudge) EndOfMessage(_ context.Context, s *session.Session) (*session.Reply, error) {
	txn := s.Transaction()
	txn.SetSender(session.Path{Mailbox: "new@example.test", Local: "new", Domain: "example.test"}, nil)
	txn.RemoveRecipient("b@example.test")
	txn.AddRecipient(session.Path{Mailbox: "added@example.test", Local: "added", Domain: "example.test"}, nil)
	return nil, nil
}

// domainMatch is a Matcher that takes the recipients of one domain.
type domainMatch string

// MatchSession takes every session.
func (domainMatch) MatchSession(*session.Session) bool { return true }

// MatchSender takes every sender.
func (domainMatch) MatchSender(*session.Session, session.Path) bool { return true }

// MatchRecipient takes the recipients of the domain m.
func (m domainMatch) MatchRecipient(_ *session.Session, to session.Path) bool {
	return strings.EqualFold(to.Domain, string(m))
}

// TestJudgeEditsReachStdin: the command reads the message as the judges
// left it, and otherwise exactly as received.
func TestJudgeEditsReachStdin(t *testing.T) {
	for _, toFile := range []bool{false, true} {
		out := filepath.Join(t.TempDir(), "out")
		e := provision(t, &Exec{Command: script(t, `cat > "$1"`), Args: []string{out}})
		ts, spoolDir := serve(t, session.Config{}, toFile, smtptest.EditJudge, e)
		c := ts.DialTCPHello()
		msg := "From: a@example.test\r\nSubject: original\r\nSubject: second\r\n\r\n.body\r\n\r\n"
		if r := smtptest.Mail(c, msg, "rcpt@example.test"); !strings.HasPrefix(r, "250 2.0.0 ") {
			t.Fatalf("end of data: %q", r)
		}
		c.Cmd("QUIT", "221")
		ts.Close()
		got, err := os.ReadFile(out)
		if err != nil {
			t.Fatal(err)
		}
		rest, ok := bytes.CutPrefix(got, []byte("X-Judged: yes\r\n"))
		if !ok {
			t.Fatalf("stdin does not start with X-Judged: %q", got)
		}
		want := "From: a@example.test\r\nSubject: changed\r\nSubject: second\r\n\r\n.body\r\n\r\n"
		if body := smtptest.SplitReceived(t, rest); string(body) != want {
			t.Errorf("spool-file=%v: stdin\n got: %q\nwant: %q", toFile, body, want)
		}
		smtptest.AssertNoSpool(t, spoolDir)
	}
}

// TestEnvelopeOfDelivery: the placeholders give the final envelope (as
// the judges left it), and only the recipients the delivery's matcher
// takes.
func TestEnvelopeOfDelivery(t *testing.T) {
	sh := script(t, `out=$1; shift; printf '%s\n' "$@" > "$out"`)
	t.Run("judged", func(t *testing.T) {
		out := filepath.Join(t.TempDir(), "argv")
		e := provision(t, &Exec{Command: sh, Args: []string{out, "{esmtp.from}", "--", "{esmtp.rcpt}"}})
		ts := smtptest.ServeConfig(t, session.Config{}, envelopeJudge{}, e)
		c := ts.DialTCPHello()
		if r := smtptest.Mail(c, "Subject: x\r\n\r\nx\r\n", "a@example.test", "b@example.test"); !strings.HasPrefix(r, "250 ") {
			t.Fatalf("end of data: %q", r)
		}
		ts.Close()
		if got, _ := os.ReadFile(out); string(got) != "new@example.test\n--\na@example.test\nadded@example.test\n" {
			t.Errorf("argv %q", got)
		}
	})
	t.Run("matched", func(t *testing.T) {
		out := filepath.Join(t.TempDir(), "argv")
		e := provision(t, &Exec{Command: sh, Args: []string{out, "--to={esmtp.rcpt}", "{esmtp.rcpt.local}"}})
		ts := smtptest.NewServer(t, session.Config{Hostname: smtptest.Hostname, Handlers: []session.SubHandler{
			{Name: "exec", Handler: e, Match: domainMatch("one.test")},
			{Name: "sink", Handler: smtptest.Sink{}},
		}})
		c := ts.DialTCPHello()
		if r := smtptest.Mail(c, "Subject: x\r\n\r\nx\r\n", "a@one.test", "b@two.test", "c@ONE.test"); !strings.HasPrefix(r, "250 ") {
			t.Fatalf("end of data: %q", r)
		}
		ts.Close()
		if got, _ := os.ReadFile(out); string(got) != "--to=a@one.test\n--to=c@ONE.test\na\nc\n" {
			t.Errorf("argv %q", got)
		}
	})
}

// TestStdinNotRead: a command that exits without reading its standard
// input (bigger than a pipe holds) is judged by its exit status alone.
func TestStdinNotRead(t *testing.T) {
	big := "Subject: big\r\n\r\n" + strings.Repeat(strings.Repeat("x", 998)+"\r\n", 2000)
	for body, want := range map[string]string{"exit 0": "250 2.0.0 ", "exit 75": "451 4.3.0 ", "exit 67": "550 5.1.1 "} {
		e := provision(t, &Exec{Command: script(t, body)})
		ts, spoolDir := serve(t, session.Config{}, true, e)
		c := ts.DialTCPHello()
		if r := smtptest.Mail(c, big, "rcpt@example.test"); !strings.HasPrefix(r, want) {
			t.Errorf("%s: end of data: %q, want %q", body, r, want)
		}
		c.Cmd("QUIT", "221")
		ts.Close()
		smtptest.AssertNoSpool(t, spoolDir)
	}
}
