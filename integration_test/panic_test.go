package integration_test

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"

	"github.com/caddy-esmtp/caddy-esmtp/session"
)

func init() { caddy.RegisterModule(panicker{}) }

// panicker is a sub-handler, esmtp.handlers.test_panic, that panics in the
// call the client names in its HELO name ("panic-rcpt.test" panics at
// RCPT), or at connect with `test_panic connect`: a stand-in for a buggy
// third-party sub-handler.
type panicker struct {
	// AtConnect panics at every connect.
	AtConnect bool `json:"at_connect,omitempty"`
}

func (panicker) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{ID: "esmtp.handlers.test_panic", New: func() caddy.Module { return new(panicker) }}
}

func (p *panicker) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next()
	if d.NextArg() {
		p.AtConnect = d.Val() == "connect"
	}
	return nil
}

func (p panicker) maybe(s *session.Session, call string) {
	if s.Helo() == "panic-"+call+".test" {
		panic("test_panic: " + call)
	}
}

func (p panicker) Connect(context.Context, *session.Session) (*session.Reply, error) {
	if p.AtConnect {
		panic("test_panic: connect")
	}
	return nil, nil
}
func (p panicker) Helo(_ context.Context, s *session.Session, _ string) (*session.Reply, error) {
	p.maybe(s, "helo")
	return nil, nil
}
func (p panicker) Mail(_ context.Context, s *session.Session, _ session.Path, _ session.Params) (*session.Reply, error) {
	p.maybe(s, "mail")
	return nil, nil
}
func (p panicker) Rcpt(_ context.Context, s *session.Session, _ session.Path, _ session.Params) (*session.Reply, error) {
	p.maybe(s, "rcpt")
	return nil, nil
}
func (p panicker) Data(_ context.Context, s *session.Session) (*session.Reply, error) {
	p.maybe(s, "data")
	return nil, nil
}
func (p panicker) Header(_ context.Context, s *session.Session, _ session.HeaderField) error {
	p.maybe(s, "header")
	return nil
}
func (p panicker) EndOfHeaders(_ context.Context, s *session.Session, _ []byte) error {
	p.maybe(s, "eoh")
	return nil
}
func (p panicker) Body(_ context.Context, s *session.Session, _ []byte) error {
	p.maybe(s, "body")
	return nil
}
func (p panicker) EndOfMessage(_ context.Context, s *session.Session) (*session.Reply, error) {
	p.maybe(s, "eom")
	return nil, nil
}
func (p panicker) Abort(s *session.Session, _ error) { p.maybe(s, "abort") }
func (p panicker) Close(s *session.Session)          { p.maybe(s, "close") }
func (p panicker) Verb(_ context.Context, s *session.Session, _, _ string) (*session.Reply, error) {
	p.maybe(s, "verb")
	return nil, nil
}
func (p panicker) Extensions(s *session.Session) []string {
	p.maybe(s, "extensions")
	return []string{"XPANICKER"}
}
func (p panicker) AuthMechanisms(s *session.Session) []string {
	p.maybe(s, "mechanisms")
	return []string{"PLAIN"}
}
func (p panicker) Authenticate(_ context.Context, s *session.Session, _, _, _, _ string) (bool, error) {
	p.maybe(s, "auth")
	return true, nil
}

// TestSubhandlerPanicsNeverTakeCaddyDown: a sub-handler that panics in any
// of its calls fails that call closed (451 4.3.0, 454 for AUTH, a keyword
// left out of EHLO), and Caddy goes on serving the next SMTP session and
// its HTTP sites.
func TestSubhandlerPanicsNeverTakeCaddyDown(t *testing.T) {
	smtpPort, connectPort, httpPort := freePort(t), freePort(t), freePort(t)
	load(t, adapt(t, fmt.Sprintf(`{
	admin off
	persist_config off
	layer4 {
		127.0.0.1:%d {
			route {
				esmtp {
					hostname mx.example.test
					test_panic
					discard
				}
			}
		}
		127.0.0.1:%d {
			route {
				esmtp {
					hostname mx.example.test
					test_panic connect
					discard
				}
			}
		}
	}
}
http://127.0.0.1:%d {
	respond "alive"
}
`, smtpPort, connectPort, httpPort)))
	addr := fmt.Sprintf("127.0.0.1:%d", smtpPort)
	waitListening(t, addr)
	alive := func(after string) {
		t.Helper()
		c := dial(t, addr)
		c.expect("220 ")
		c.send("EHLO fine.test\r\n")
		c.expect("250 ")
		c.send("QUIT\r\n")
		c.expect("221 ")
		resp, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d/", httpPort))
		if err != nil {
			t.Fatalf("after a panic at %s, the HTTP site is gone: %v", after, err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 || string(body) != "alive" {
			t.Fatalf("after a panic at %s, HTTP answered %d %q", after, resp.StatusCode, body)
		}
	}
	alive("nothing")

	// Each case: the HELO name that arms the panic, then the client's
	// lines and the reply each must get.
	for _, tc := range []struct {
		call  string
		steps [][2]string // line sent, reply prefix expected
	}{
		{"helo", [][2]string{{"", "451 4.3.0"}}},
		{"mail", [][2]string{{"MAIL FROM:<a@b.test>", "451 4.3.0"}}},
		{"rcpt", [][2]string{{"MAIL FROM:<a@b.test>", "250 "}, {"RCPT TO:<c@d.test>", "451 4.3.0"}}},
		{"data", [][2]string{{"MAIL FROM:<a@b.test>", "250 "}, {"RCPT TO:<c@d.test>", "250 "}, {"DATA", "451 4.3.0"}}},
		{"header", [][2]string{{"MAIL FROM:<a@b.test>", "250 "}, {"RCPT TO:<c@d.test>", "250 "}, {"DATA", "354 "}, {"Subject: x\r\n\r\nbody\r\n.", "451 4.3.0"}}},
		{"eoh", [][2]string{{"MAIL FROM:<a@b.test>", "250 "}, {"RCPT TO:<c@d.test>", "250 "}, {"DATA", "354 "}, {"Subject: x\r\n\r\nbody\r\n.", "451 4.3.0"}}},
		{"body", [][2]string{{"MAIL FROM:<a@b.test>", "250 "}, {"RCPT TO:<c@d.test>", "250 "}, {"DATA", "354 "}, {"Subject: x\r\n\r\nbody\r\n.", "451 4.3.0"}}},
		{"eom", [][2]string{{"MAIL FROM:<a@b.test>", "250 "}, {"RCPT TO:<c@d.test>", "250 "}, {"DATA", "354 "}, {"Subject: x\r\n\r\nbody\r\n.", "451 4.3.0"}}},
		{"abort", [][2]string{{"MAIL FROM:<a@b.test>", "250 "}, {"RSET", "250 "}}},
		{"verb", [][2]string{{"NOOP", "451 4.3.0"}}},
		{"auth", [][2]string{{"AUTH PLAIN AGFsaWNlAHNlY3JldA==", "454 4.7.0"}}},
		{"close", [][2]string{{"NOOP", "250 "}}},
		{"extensions", nil},
		{"mechanisms", nil},
	} {
		t.Run(tc.call, func(t *testing.T) {
			c := dial(t, addr)
			c.expect("220 ")
			c.send("EHLO panic-" + tc.call + ".test\r\n")
			steps := tc.steps
			if len(steps) > 0 && steps[0][0] == "" {
				c.expect(steps[0][1])
				steps = steps[1:]
			} else {
				ehlo := strings.Join(c.expect("250 "), "\n")
				if tc.call == "extensions" && strings.Contains(ehlo, "XPANICKER") {
					t.Errorf("EHLO kept the keywords of a panicking Extensions: %q", ehlo)
				}
				if tc.call == "mechanisms" && strings.Contains(ehlo, "AUTH") {
					t.Errorf("EHLO offered AUTH from a panicking AuthMechanisms: %q", ehlo)
				}
			}
			for _, st := range steps {
				c.send(st[0] + "\r\n")
				c.expect(st[1])
			}
			c.send("QUIT\r\n")
			if tc.call == "verb" {
				c.expect("451 4.3.0") // QUIT asks the verb hook too; the session still ends
			} else {
				c.expect("221 ")
			}
			alive(tc.call)
		})
	}
	t.Run("connect", func(t *testing.T) {
		c := dial(t, fmt.Sprintf("127.0.0.1:%d", connectPort))
		c.expect("451 ") // no enhanced code on a greeting
		alive("connect")
	})
}
