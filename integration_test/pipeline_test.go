package integration_test

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"sort"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"

	"github.com/caddy-esmtp/caddy-esmtp/session"
)

func init() { caddy.RegisterModule(editor{}) }

// editor is a judge, esmtp.handlers.test_edit, that makes the edits its
// options name at end of data: the milter action set as a test drives it.
type editor struct {
	Prepend  []string `json:"prepend,omitempty"` // "Name: value"
	Subject  string   `json:"subject,omitempty"`
	Body     string   `json:"body,omitempty"`
	AddRcpt  string   `json:"add_rcpt,omitempty"`
	DropRcpt string   `json:"drop_rcpt,omitempty"`
}

func (editor) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{ID: "esmtp.handlers.test_edit", New: func() caddy.Module { return new(editor) }}
}

func (e *editor) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next()
	for n := d.Nesting(); d.NextBlock(n); {
		opt := d.Val()
		if !d.NextArg() {
			return d.ArgErr()
		}
		switch opt {
		case "prepend":
			e.Prepend = append(e.Prepend, d.Val())
		case "subject":
			e.Subject = d.Val()
		case "body":
			e.Body = strings.ReplaceAll(d.Val(), `\n`, "\r\n")
		case "add_rcpt":
			e.AddRcpt = d.Val()
		case "drop_rcpt":
			e.DropRcpt = d.Val()
		default:
			return d.Errf("test_edit: unknown option %q", opt)
		}
	}
	return nil
}

func (e *editor) EndOfMessage(_ context.Context, s *session.Session) (*session.Reply, error) {
	txn := s.Transaction()
	for _, p := range e.Prepend {
		name, value, _ := strings.Cut(p, ": ")
		txn.PrependHeader(name, value)
	}
	if e.Subject != "" {
		txn.ChangeHeader("Subject", 1, e.Subject)
	}
	if e.Body != "" {
		if err := txn.ReplaceBody(strings.NewReader(e.Body)); err != nil {
			return nil, err
		}
	}
	if e.AddRcpt != "" {
		to, _, err := session.ParsePathArg("<"+e.AddRcpt+">", false, false)
		if err != nil {
			return nil, err
		}
		txn.AddRecipient(to, nil)
	}
	if e.DropRcpt != "" {
		txn.RemoveRecipient(e.DropRcpt)
	}
	return nil, nil
}

// pipelineSetup starts Caddy with the judge (its options in judge) in
// front of three deliveries: maildir, webhook to a local HTTP server, exec
// writing stdin and arguments to files. It returns the SMTP address, the
// Maildir, the receiver and the exec output directory.
func pipelineSetup(t *testing.T, judge string, webhookStatus int) (string, string, *webhookReceiver, string) {
	t.Helper()
	if runtime.GOOS == "windows" {
		t.Skip("needs /bin/sh")
	}
	rc := newWebhookReceiver(t, func(_ int, w http.ResponseWriter, _ *http.Request) { w.WriteHeader(webhookStatus) })
	dir := t.TempDir()
	out := filepath.Join(dir, "out")
	if err := os.Mkdir(out, 0o700); err != nil {
		t.Fatal(err)
	}
	sh := filepath.Join(dir, "deliver")
	if err := os.WriteFile(sh, []byte("#!/bin/sh\nout=$1; id=$2; shift 2\ncat > \"$out/$id\"\nprintf '%s\\n' \"$@\" > \"$out/$id.args\"\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	addr, maildir := startCaddyfile(t, esmtpCaddyfile(`
					`+judge+`
					maildir %MAIL%
					webhook `+rc.URL+`/mail {
						retries 0
					}
					exec `+sh+` `+out+` {esmtp.queue_id} {esmtp.from} {esmtp.rcpt}
`))
	return addr, maildir, rc, out
}

// TestJudgeEditsReachEveryDelivery: a judge adds header fields at end of
// data; maildir, webhook and exec all get the message with them, byte for
// byte the same, and otherwise what the client sent. A judge that changes
// the Subject, replaces the body, adds a recipient and drops one is obeyed
// by every delivery.
func TestJudgeEditsReachEveryDelivery(t *testing.T) {
	check := func(t *testing.T, judge string, rcpts []string, wantTop, wantRest string, wantRcpts string) {
		addr, maildir, rc, out := pipelineSetup(t, judge, http.StatusNoContent)
		reply := sendMessage(t, addr, rcpts...)
		if !strings.HasPrefix(reply, "250 2.0.0 ") {
			t.Fatalf("end of data: %q", reply)
		}
		queueID := strings.Fields(reply)[2]
		files := delivered(t, maildir)
		bodies, _ := rc.got()
		stdin, err := os.ReadFile(filepath.Join(out, queueID))
		if err != nil {
			t.Fatal(err)
		}
		if len(files) != 1 || len(bodies) != 1 {
			t.Fatalf("%d Maildir files, %d webhook requests; want 1 each", len(files), len(bodies))
		}
		if string(files[0]) != string(bodies[0]) || string(files[0]) != string(stdin) {
			t.Fatalf("the deliveries got different messages:\nmaildir %q\nwebhook %q\nexec    %q", files[0], bodies[0], stdin)
		}
		if !strings.HasPrefix(string(files[0]), wantTop) {
			t.Fatalf("delivered message does not start with %q: %q", wantTop, files[0])
		}
		splitReceived(t, files[0][len(wantTop):], "mx.example.test", []byte(wantRest))
		args, _ := os.ReadFile(filepath.Join(out, queueID+".args"))
		if string(args) != wantRcpts {
			t.Fatalf("exec's envelope %q, want %q", args, wantRcpts)
		}
	}
	t.Run("header added", func(t *testing.T) {
		check(t, `test_edit {
						prepend "Authentication-Results: mx.example.test; spf=pass"
						prepend "X-Spam-Score: 0.1"
					}`, []string{"one@example.test"},
			"X-Spam-Score: 0.1\r\nAuthentication-Results: mx.example.test; spf=pass\r\n", message,
			"a@client.test\none@example.test\n")
	})
	t.Run("subject, body and recipients changed", func(t *testing.T) {
		// The folded Subject is replaced whole.
		want := strings.Replace(message, "Subject: a folded\r\n subject\r\n", "Subject: [checked] hello\r\n", 1)
		want = want[:strings.Index(want, "\r\n\r\n")+4] + "replaced body\r\n"
		check(t, `test_edit {
						subject "[checked] hello"
						body "replaced body\n"
						add_rcpt three@example.test
						drop_rcpt one@example.test
					}`, []string{"one@example.test", "two@example.test"}, "", want,
			"a@client.test\ntwo@example.test\nthree@example.test\n")
	})
}

// TestFailingDeliveryLeavesNoMaildirCopy: maildir then a webhook that
// fails: the client gets the webhook's reply (4xx: try again; 5xx:
// refused), and no file is in new/ (nor left in tmp/): maildir commits only
// after every other delivery succeeded.
func TestFailingDeliveryLeavesNoMaildirCopy(t *testing.T) {
	for _, tc := range []struct {
		status int
		want   string
	}{
		{http.StatusServiceUnavailable, "451 "},
		{http.StatusUnauthorized, "451 "},
	} {
		t.Run(fmt.Sprint(tc.status), func(t *testing.T) {
			addr, maildir, rc, _ := pipelineSetup(t, "", tc.status)
			reply := sendMessage(t, addr, "one@example.test")
			if !strings.HasPrefix(reply, tc.want) {
				t.Fatalf("end of data: %q, want %s", reply, tc.want)
			}
			if files := delivered(t, maildir); len(files) != 0 {
				t.Fatalf("%d files in new/ for a message the client was told to send again", len(files))
			}
			if bodies, _ := rc.got(); len(bodies) != 1 {
				t.Fatalf("%d webhook requests", len(bodies))
			}
		})
	}
	t.Run("permanent", func(t *testing.T) {
		rc := newWebhookReceiver(t, func(_ int, w http.ResponseWriter, _ *http.Request) { w.WriteHeader(http.StatusUnprocessableEntity) })
		addr, maildir := startCaddyfile(t, esmtpCaddyfile(`
					maildir %MAIL%
					webhook `+rc.URL+`/mail {
						retries 0
						permanent_statuses 422
					}
`))
		reply := sendMessage(t, addr, "one@example.test")
		if !strings.HasPrefix(reply, "554 ") {
			t.Fatalf("end of data: %q, want the webhook's permanent 554", reply)
		}
		if files := delivered(t, maildir); len(files) != 0 {
			t.Fatalf("%d files in new/ for a refused message", len(files))
		}
		entries, _ := os.ReadDir(filepath.Join(maildir, "tmp"))
		var names []string
		for _, e := range entries {
			names = append(names, e.Name())
		}
		sort.Strings(names)
		if len(names) != 0 {
			t.Fatalf("left in tmp/: %v", names)
		}
	})
}

// TestRecipientWithoutDeliveryRefused: a recipient that no delivery takes
// (given the matchers) is refused at RCPT, never accepted into nowhere;
// discard takes what it is given explicitly.
func TestRecipientWithoutDeliveryRefused(t *testing.T) {
	addr, _ := startCaddyfile(t, esmtpCaddyfile(`
					@local rcpt example.test
					@trap rcpt trap.test
					maildir @local %MAIL%
					discard @trap
`))
	c := dial(t, addr)
	c.expect("220 ")
	c.send("EHLO client.test\r\nMAIL FROM:<a@client.test>\r\n")
	c.expect("250 ")
	c.expect("250 2.1.0")
	c.send("RCPT TO:<b@example.test>\r\n")
	c.expect("250 2.1.5")
	c.send("RCPT TO:<b@elsewhere.test>\r\n")
	c.expect("550 5.1.1 Recipient address rejected: no delivery")
	c.send("RCPT TO:<x@trap.test>\r\n")
	c.expect("250 2.1.5")
}
