package authresults

import (
	"context"
	"strings"
	"sync"
	"testing"

	"github.com/caddy-esmtp/caddy-esmtp/internal/smtptest"
	"github.com/caddy-esmtp/caddy-esmtp/session"
)

// keep is a delivery that keeps the message.
type keep struct {
	mu  sync.Mutex
	got string
}

func (k *keep) Deliver(_ context.Context, _ *session.Session, d *session.Delivery) error {
	b, err := d.Message.Bytes()
	k.mu.Lock()
	k.got = string(b)
	k.mu.Unlock()
	return err
}

// mailHook records an SPF result at MAIL, as an SPF check does.
type mailHook struct{}

func (mailHook) Mail(_ context.Context, s *session.Session, from session.Path, _ session.Params) (*session.Reply, error) {
	Add(s, Result{Method: "spf", Value: "pass", Props: []Prop{{"smtp", "mailfrom", from.Mailbox}}})
	return nil, nil
}

// TestOneFieldForEveryResult: results recorded at MAIL and at end of data
// end up in one Authentication-Results field on top of the delivered
// message; incoming fields that claim our authserv-id are removed, others
// kept.
func TestOneFieldForEveryResult(t *testing.T) {
	k := &keep{}
	judge := smtptest.Judge(func(s *session.Session) {
		Add(s, Result{Method: "dkim", Value: "fail", Reason: `signature "bad"`,
			Props: []Prop{{"header", "d", "example.org"}, {"header", "s", "sel 1"}, {"header", "a", "rsa-sha256"}}})
		if got := Of(s); len(got) != 2 || got[0].Method != "spf" {
			t.Errorf("Of gives %v", got)
		}
	})
	srv := smtptest.ServeConfig(t, session.Config{Hostname: "mx.example.test"}, mailHook{}, judge, k)
	c := srv.DialTCPHello()
	msg := "Authentication-Results: MX.example.test; spf=pass smtp.mailfrom=forged@x\r\n" +
		"Authentication-Results: other.example; dkim=pass\r\n" +
		"Authentication-Results: mx.example.test 1;\r\n dmarc=pass\r\n" +
		"Subject: x\r\n\r\nbody\r\n"
	if r := smtptest.Mail(c, msg, "b@example.test"); !strings.HasPrefix(r, "250 ") {
		t.Fatalf("end of data: %q", r)
	}
	k.mu.Lock()
	got := k.got
	k.mu.Unlock()
	want := "Authentication-Results: mx.example.test;\r\n\tspf=pass smtp.mailfrom=sender@example.test;\r\n" +
		"\tdkim=fail reason=\"signature \\\"bad\\\"\" header.d=example.org header.s=\"sel 1\" header.a=rsa-sha256\r\n"
	if !strings.HasPrefix(got, want) {
		t.Fatalf("delivered message starts\n%q\nwant\n%q", got[:min(len(got), len(want)+40)], want)
	}
	if strings.Count(got, "Authentication-Results:") != 2 || !strings.Contains(got, "Authentication-Results: other.example; dkim=pass\r\n") {
		t.Fatalf("forged fields kept or the foreign one lost:\n%s", got)
	}
}
