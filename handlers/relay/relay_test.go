package relay

import (
	"bytes"
	"fmt"
	"net"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/emersion/go-smtp"

	"github.com/caddy-esmtp/caddy-esmtp/internal/smtptest"
	"github.com/caddy-esmtp/caddy-esmtp/session"
)

// message has lines that start with a dot and a line that is a lone dot:
// the relay must stuff them again on the way out.
const message = "From: a@client.example\r\nTo: b@example.test\r\nSubject: relay test\r\n\r\n" +
	"Hello.\r\n.leading dot\r\n..two dots\r\n.\r\nlast line\r\n"

var off = false

// send runs one transaction and returns the reply to the end of data.
func send(t *testing.T, c *smtptest.Client, from string, rcpts ...string) string {
	t.Helper()
	c.Cmd("MAIL FROM:<"+from+">", "250 ")
	for _, r := range rcpts {
		c.Cmd("RCPT TO:<"+r+">", "250 ")
	}
	c.Cmd("DATA", "354 ")
	c.Send(stuff(message))
	return c.ReadReply().Last()
}

func TestSmartHostSTARTTLSAuthDSN(t *testing.T) {
	up := startUpstream(t, upstreamOpts{tls: true, user: "relayuser", pass: "s3cret", dsn: true})
	t.Setenv("RELAY_TEST_PASSWORD", "s3cret")
	r := provisioned(t, &Relay{
		To:            "smtp://" + up.addr,
		TLSCA:         certs(t).caFile,
		TLSServerName: "mx.test",
		AuthUser:      "relayuser",
		AuthPassword:  "{env.RELAY_TEST_PASSWORD}",
	})
	srv := serve(t, session.Config{}, authAs("alice"), r)
	c, ehlo := dial(t, srv)
	if !slices.Contains(ehlo, "250-DSN") && !slices.Contains(ehlo, "250 DSN") {
		t.Errorf("EHLO does not advertise DSN: %q", ehlo)
	}
	c.Cmd("MAIL FROM:<a@client.example> RET=HDRS ENVID=id+2B1", "250 2.1.0")
	c.Cmd("RCPT TO:<b@example.test> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;b+40example.test", "250 2.1.5")
	c.Cmd("RCPT TO:<c@elsewhere.test> NOTIFY=NEVER", "250 2.1.5")
	c.Cmd("DATA", "354 ")
	c.Send(stuff(message))
	c.Expect("250 2.0.0")
	c.Cmd("QUIT", "221 ")

	msgs := up.messages()
	if len(msgs) != 1 {
		t.Fatalf("upstream got %d messages, want 1", len(msgs))
	}
	m := msgs[0]
	if !m.tls || m.auth != "relayuser" {
		t.Errorf("upstream transaction: tls %v, auth %q; want TLS and relayuser", m.tls, m.auth)
	}
	if m.from != "a@client.example" || !slices.Equal(m.rcpts, []string{"b@example.test", "c@elsewhere.test"}) {
		t.Errorf("envelope: from %q to %q", m.from, m.rcpts)
	}
	if m.mailOpts.Return != smtp.DSNReturnHeaders || m.mailOpts.EnvelopeID != "id+1" {
		t.Errorf("MAIL DSN options: RET %q ENVID %q", m.mailOpts.Return, m.mailOpts.EnvelopeID)
	}
	if o := m.rcptOpts[0]; !slices.Equal(o.Notify, []smtp.DSNNotify{"SUCCESS", "FAILURE"}) ||
		o.OriginalRecipientType != smtp.DSNAddressTypeRFC822 || o.OriginalRecipient != "b@example.test" {
		t.Errorf("RCPT DSN options: %+v", o)
	}
	if o := m.rcptOpts[1]; !slices.Equal(o.Notify, []smtp.DSNNotify{"NEVER"}) || o.OriginalRecipient != "" {
		t.Errorf("RCPT DSN options: %+v", o)
	}
	splitReceived(t, m.data, message)
}

// TestNoDSNUpstream checks that DSN parameters are dropped for an upstream
// that does not offer DSN, and that the message still goes through.
func TestNoDSNUpstream(t *testing.T) {
	up := startUpstream(t, upstreamOpts{tls: true})
	r := provisioned(t, &Relay{To: "smtp://127.0.0.1:" + port(up.addr), TLSCA: certs(t).caFile})
	srv := serve(t, session.Config{}, authAs("alice"), r)
	c, _ := dial(t, srv)
	c.Cmd("MAIL FROM:<a@client.example> RET=FULL", "250 ")
	c.Cmd("RCPT TO:<b@example.test> NOTIFY=DELAY", "250 2.1.5")
	c.Cmd("DATA", "354 ")
	c.Send(stuff(message))
	c.Expect("250 2.0.0")
	msgs := up.messages()
	if len(msgs) != 1 {
		t.Fatalf("upstream got %d messages, want 1", len(msgs))
	}
	if msgs[0].mailOpts.Return != "" || len(msgs[0].rcptOpts[0].Notify) != 0 {
		t.Errorf("DSN options sent to an upstream without DSN: %+v %+v", msgs[0].mailOpts, msgs[0].rcptOpts[0])
	}
	if !msgs[0].tls {
		t.Error("no TLS (certificate verified by IP address)")
	}
}

func caddyDuration(d time.Duration) caddy.Duration { return caddy.Duration(d) }

func port(addr string) string {
	_, p, _ := net.SplitHostPort(addr)
	return p
}

func TestPerRecipientReplies(t *testing.T) {
	up := startUpstream(t, upstreamOpts{rejectRcpt: map[string]*smtp.SMTPError{
		"nobody@example.test": {Code: 550, EnhancedCode: smtp.EnhancedCode{5, 1, 1}, Message: "No such user here"},
		"busy@example.test":   {Code: 451, EnhancedCode: smtp.EnhancedCode{4, 2, 1}, Message: "Mailbox busy"},
		"plain@example.test":  {Code: 553, EnhancedCode: smtp.NoEnhancedCode, Message: "Not \x01 here"},
	}})
	r := provisioned(t, &Relay{To: "smtp://" + up.addr, RequireTLS: &off, Domains: []string{"example.test"}})
	srv := serve(t, session.Config{}, r)
	c, _ := dial(t, srv)
	c.Cmd("MAIL FROM:<a@client.example>", "250 2.1.0")
	for _, tc := range []struct{ rcpt, want string }{
		{"nobody@example.test", "550 5.1.1 No such user here"},
		{"b@example.test", "250 2.1.5 Recipient OK"},
		{"busy@example.test", "451 4.2.1 Mailbox busy"},
		{"plain@example.test", "553 5.0.0 Not ? here"},
		{"c@example.test", "250 2.1.5 Recipient OK"},
	} {
		if got := c.Cmd("RCPT TO:<"+tc.rcpt+">", ""); got != tc.want {
			t.Errorf("RCPT %s: got %q, want %q", tc.rcpt, got, tc.want)
		}
	}
	c.Cmd("DATA", "354 ")
	c.Send(stuff(message))
	c.Expect("250 2.0.0")
	msgs := up.messages()
	if len(msgs) != 1 || !slices.Equal(msgs[0].rcpts, []string{"b@example.test", "c@example.test"}) {
		t.Fatalf("upstream got %+v", msgs)
	}
}

func TestUpstreamRefusals(t *testing.T) {
	for _, tc := range []struct {
		name string
		opts upstreamOpts
		rcpt string // the reply to RCPT
		eom  string // the reply to the end of data, when RCPT was accepted
	}{
		{"data refused", upstreamOpts{rejectData: &smtp.SMTPError{Code: 554, EnhancedCode: smtp.EnhancedCode{5, 7, 1}, Message: "Spam"}},
			"250 2.1.5 Recipient OK", "554 5.7.1 Spam"},
		{"data deferred", upstreamOpts{rejectData: &smtp.SMTPError{Code: 452, EnhancedCode: smtp.EnhancedCode{4, 3, 1}, Message: "Disk full"}},
			"250 2.1.5 Recipient OK", "452 4.3.1 Disk full"},
		{"sender refused", upstreamOpts{rejectMail: &smtp.SMTPError{Code: 553, EnhancedCode: smtp.EnhancedCode{5, 7, 1}, Message: "Sender denied"}},
			"553 5.7.1 Sender denied", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			up := startUpstream(t, tc.opts)
			r := provisioned(t, &Relay{To: "smtp://" + up.addr, RequireTLS: &off, Domains: []string{"example.test"}})
			srv := serve(t, session.Config{}, r)
			c, _ := dial(t, srv)
			c.Cmd("MAIL FROM:<a@client.example>", "250 2.1.0")
			if got := c.Cmd("RCPT TO:<b@example.test>", ""); got != tc.rcpt {
				t.Fatalf("RCPT: got %q, want %q", got, tc.rcpt)
			}
			// The failure of the destination holds for the transaction.
			if got := c.Cmd("RCPT TO:<c@example.test>", ""); got != tc.rcpt {
				t.Fatalf("second RCPT: got %q, want %q", got, tc.rcpt)
			}
			if tc.eom == "" {
				c.Cmd("DATA", "554 5.5.1 ") // no valid recipients
				return
			}
			c.Cmd("DATA", "354 ")
			c.Send(stuff(message))
			if got := c.ReadReply().Last(); got != tc.eom {
				t.Fatalf("end of data: got %q, want %q", got, tc.eom)
			}
			if n := len(up.messages()); n != 0 {
				t.Fatalf("upstream kept %d messages", n)
			}
			// The session goes on.
			c.Cmd("MAIL FROM:<a@client.example>", "250 2.1.0")
		})
	}
}

// TestNoOpenRelay checks every way a recipient may be relayed, and that
// without one of them it is refused: a relay with only an upstream
// configured refuses a foreign recipient and never connects.
func TestNoOpenRelay(t *testing.T) {
	up := startUpstream(t, upstreamOpts{})
	to := "smtp://" + up.addr
	for _, tc := range []struct {
		name    string
		relay   *Relay
		auth    bool
		allowed []string
		denied  []string
	}{
		{"only an upstream", &Relay{To: to, RequireTLS: &off}, false,
			nil, []string{"b@foreign.test", "Postmaster", "b@example.test"}},
		{"domains", &Relay{To: to, RequireTLS: &off, Domains: []string{"example.test", "*.sub.test"}}, false,
			[]string{"b@example.test", "B@EXAMPLE.TEST", "x@a.sub.test"}, []string{"b@foreign.test", "b@sub.test", "b@example.test.evil"}},
		{"other networks", &Relay{To: to, RequireTLS: &off, RelayNetworks: []string{"10.0.0.0/8", "::1"}}, false,
			nil, []string{"b@foreign.test"}},
		{"relay_networks", &Relay{To: to, RequireTLS: &off, RelayNetworks: []string{"127.0.0.0/8"}}, false,
			[]string{"b@foreign.test", "c@example.test"}, nil},
		{"authenticated", &Relay{To: to, RequireTLS: &off}, true,
			[]string{"b@foreign.test"}, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := up.connections()
			handlers := []any{provisioned(t, tc.relay)}
			if tc.auth {
				handlers = append([]any{authAs("alice")}, handlers...)
			}
			c, _ := dial(t, serve(t, session.Config{}, handlers...))
			c.Cmd("MAIL FROM:<a@client.example>", "250 2.1.0")
			for _, rc := range tc.denied {
				c.Cmd("RCPT TO:<"+rc+">", "554 5.7.1 Relay access denied")
			}
			if len(tc.allowed) == 0 {
				c.Cmd("DATA", "554 5.5.1 ") // no valid recipients
				if up.connections() != before {
					t.Fatal("the relay connected upstream without a recipient to relay")
				}
				return
			}
			for _, rc := range tc.allowed {
				c.Cmd("RCPT TO:<"+rc+">", "250 2.1.5")
			}
			c.Cmd("DATA", "354 ")
			c.Send(stuff(message))
			c.Expect("250 2.0.0")
			msgs := up.messages()
			if last := msgs[len(msgs)-1]; !slices.Equal(last.rcpts, tc.allowed) {
				t.Fatalf("upstream recipients %q, want %q", last.rcpts, tc.allowed)
			}
		})
	}
}

func TestProvisionErrors(t *testing.T) {
	t.Setenv("RELAY_TEST_EMPTY", "")
	for _, tc := range []struct {
		relay Relay
		want  string
	}{
		{Relay{}, "to is required"},
		{Relay{To: "http://example.test"}, "scheme"},
		{Relay{To: "smtp://"}, "no host"},
		{Relay{To: "smtp://u:p@example.test"}, "auth_user"},
		{Relay{To: "smtp://example.test:0"}, "bad port"},
		{Relay{To: "smtp://example.test/x"}, "only scheme"},
		{Relay{To: "mx", RelayNetworks: []string{"0.0.0.0/0"}}, "open relay"},
		{Relay{To: "mx", RelayNetworks: []string{"::/0"}}, "open relay"},
		{Relay{To: "mx", RelayNetworks: []string{"::ffff:0.0.0.0/96"}}, "open relay"}, // every IPv4 client
		{Relay{To: "mx", RelayNetworks: []string{"nonsense"}}, "relay_networks[0]"},
		{Relay{To: "mx", Domains: []string{"*"}}, "domains"},
		{Relay{To: "mx", Domains: []string{"*@*"}}, "domains"},
		{Relay{To: "mx", Domains: []string{"example.test", "*.bü_cher.example"}}, "domains[1]"},
		{Relay{To: "mx", AuthUser: "u", AuthPassword: "p"}, "not with to mx"},
		{Relay{To: "smtp://example.test", AuthPassword: "p"}, "set auth_user"},
		{Relay{To: "smtp://example.test", AuthUser: "u", AuthPassword: "{env.RELAY_TEST_EMPTY}"}, "auth_password"},
		{Relay{To: "smtp://example.test", AuthUser: "u", AuthPassword: "p", RequireTLS: &off}, "only over TLS"},
		{Relay{To: "smtp://example.test", Resolver: "127.0.0.1:53"}, "only with to mx"},
		{Relay{To: "smtp://example.test", TLSCA: "/nonexistent/ca.pem"}, "tls_ca"},
		{Relay{To: "mx", MXPort: 70000}, "mx_port"},
		{Relay{To: "mx", Timeout: -1}, "timeout"},
	} {
		err := smtptest.Provision(&tc.relay)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%+v: got %v, want an error with %q", tc.relay, err, tc.want)
		}
	}
	// smtps with AUTH is TLS from the start: fine without require_tls.
	if err := smtptest.Provision(&Relay{To: "smtps://example.test", AuthUser: "u", AuthPassword: "p", RequireTLS: &off}); err != nil {
		t.Errorf("smtps with AUTH: %v", err)
	}
}

func TestRequireTLS(t *testing.T) {
	up := startUpstream(t, upstreamOpts{})
	r := provisioned(t, &Relay{To: "smtp://" + up.addr})
	c, _ := dial(t, serve(t, session.Config{}, authAs("alice"), r))
	c.Cmd("MAIL FROM:<a@client.example>", "250 2.1.0")
	c.Cmd("RCPT TO:<b@example.test>", "451 4.7.4 ")
	if n := len(up.messages()); n != 0 {
		t.Fatalf("%d messages sent in the clear", n)
	}
}

func TestCertificateVerified(t *testing.T) {
	up := startUpstream(t, upstreamOpts{tls: true})
	// Not trusted by the system roots.
	r := provisioned(t, &Relay{To: "smtp://" + up.addr})
	c, _ := dial(t, serve(t, session.Config{}, authAs("alice"), r))
	c.Cmd("MAIL FROM:<a@client.example>", "250 2.1.0")
	c.Cmd("RCPT TO:<b@example.test>", "451 4.7.5 ")
	// Trusted CA, wrong name.
	r = provisioned(t, &Relay{To: "smtp://" + up.addr, TLSCA: certs(t).caFile, TLSServerName: "other.test"})
	c, _ = dial(t, serve(t, session.Config{}, authAs("alice"), r))
	c.Cmd("MAIL FROM:<a@client.example>", "250 2.1.0")
	c.Cmd("RCPT TO:<b@example.test>", "451 4.7.5 ")
	// Verification off: encrypted all the same.
	r = provisioned(t, &Relay{To: "smtp://" + up.addr, TLSInsecureSkipVerify: true})
	c, _ = dial(t, serve(t, session.Config{}, authAs("alice"), r))
	if got := send(t, c, "a@client.example", "b@example.test"); !strings.HasPrefix(got, "250 2.0.0") {
		t.Fatalf("end of data: %q", got)
	}
	if msgs := up.messages(); len(msgs) != 1 || !msgs[0].tls {
		t.Fatalf("upstream got %+v", msgs)
	}
}

func TestImplicitTLS(t *testing.T) {
	// Braces that are no placeholder stay in the password.
	up := startUpstream(t, upstreamOpts{implicit: true, user: "u", pass: "p{not.a.placeholder}"})
	r := provisioned(t, &Relay{To: "smtps://" + up.addr, TLSCA: certs(t).caFile, AuthUser: "u", AuthPassword: "p{not.a.placeholder}"})
	c, _ := dial(t, serve(t, session.Config{}, authAs("alice"), r))
	if got := send(t, c, "a@client.example", "b@example.test"); !strings.HasPrefix(got, "250 2.0.0") {
		t.Fatalf("end of data: %q", got)
	}
	msgs := up.messages()
	if len(msgs) != 1 || !msgs[0].tls || msgs[0].auth != "u" {
		t.Fatalf("upstream got %+v", msgs)
	}
	splitReceived(t, msgs[0].data, message)
}

func TestUpstreamAuthFails(t *testing.T) {
	up := startUpstream(t, upstreamOpts{tls: true, user: "u", pass: "right"})
	r := provisioned(t, &Relay{To: "smtp://" + up.addr, TLSCA: certs(t).caFile, AuthUser: "u", AuthPassword: "wrong"})
	c, _ := dial(t, serve(t, session.Config{}, authAs("alice"), r))
	c.Cmd("MAIL FROM:<a@client.example>", "250 2.1.0")
	c.Cmd("RCPT TO:<b@example.test>", "451 4.7.0 ")
}

func TestUpstreamDown(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close() // nothing listens there now
	r := provisioned(t, &Relay{To: "smtp://" + addr, RequireTLS: &off})
	c, _ := dial(t, serve(t, session.Config{}, authAs("alice"), r))
	c.Cmd("MAIL FROM:<a@client.example>", "250 2.1.0")
	c.Cmd("RCPT TO:<b@example.test>", "451 4.4.1 ")
	c.Cmd("RCPT TO:<c@example.test>", "451 4.4.1 ")
	c.Cmd("DATA", "554 5.5.1 ") // no valid recipients (RFC 5321 3.3)
}

// TestSMTPUTF8NeedsUpstreamSupport checks that an SMTPUTF8 transaction
// goes to an upstream without SMTPUTF8 only when it needs none: an ASCII
// envelope and header go, without the SMTPUTF8 parameter; a non-ASCII
// address gets 553 5.6.7 (RFC 6531) and a non-ASCII header 550 5.6.9,
// checked on the final message (a judge's non-ASCII field counts too). An
// upstream with SMTPUTF8 gets it all as it came.
func TestSMTPUTF8NeedsUpstreamSupport(t *testing.T) {
	plain := startUpstream(t, upstreamOpts{})
	r := provisioned(t, &Relay{To: "smtp://" + plain.addr, RequireTLS: &off})
	c, _ := dial(t, serve(t, session.Config{}, authAs("alice"), r))
	c.Cmd("MAIL FROM:<ä@client.example> SMTPUTF8", "250 2.1.0")
	c.Cmd("RCPT TO:<b@example.test>", "553 5.6.7 ")
	c.Cmd("RSET", "250 ")
	c.Cmd("MAIL FROM:<a@client.example> SMTPUTF8", "250 2.1.0")
	c.Cmd("RCPT TO:<ö@example.test>", "553 5.6.7 ")
	c.Cmd("RCPT TO:<b@example.test>", "250 2.1.5")
	c.Cmd("DATA", "354 ")
	c.Send(stuff(message))
	c.Expect("250 2.0.0")
	if msgs := plain.messages(); len(msgs) != 1 || msgs[0].mailOpts.UTF8 || !slices.Equal(msgs[0].rcpts, []string{"b@example.test"}) {
		t.Fatalf("upstream without SMTPUTF8 got %+v", msgs)
	}
	c.Cmd("MAIL FROM:<a@client.example> SMTPUTF8", "250 2.1.0")
	c.Cmd("RCPT TO:<b@example.test>", "250 2.1.5")
	c.Cmd("DATA", "354 ")
	c.Send(stuff("From: ä@client.example\r\n\r\nHallo\r\n"))
	c.Expect("550 5.6.9 ")
	if n := len(plain.messages()); n != 1 {
		t.Fatalf("upstream without SMTPUTF8 got a message with a UTF-8 header")
	}
	// The check is on the final message: a judge's non-ASCII field fails
	// it too, and a non-ASCII body is no header.
	r = provisioned(t, &Relay{To: "smtp://" + plain.addr, RequireTLS: &off})
	note := smtptest.Judge(func(s *session.Session) {
		if s.Transaction().Recipients[0].Path.Local == "note" {
			s.Transaction().AppendHeader("X-Note", "grün")
		}
	})
	c, _ = dial(t, serve(t, session.Config{}, authAs("alice"), note, r))
	c.Cmd("MAIL FROM:<a@client.example> SMTPUTF8", "250 2.1.0")
	c.Cmd("RCPT TO:<note@example.test>", "250 2.1.5")
	c.Cmd("DATA", "354 ")
	c.Send(stuff(message))
	c.Expect("550 5.6.9 ")
	c.Cmd("MAIL FROM:<a@client.example> SMTPUTF8", "250 2.1.0")
	c.Cmd("RCPT TO:<b@example.test>", "250 2.1.5")
	c.Cmd("DATA", "354 ")
	c.Send(stuff("Subject: body\r\n\r\nHallo ä\r\n"))
	c.Expect("250 2.0.0")
	if msgs := plain.messages(); len(msgs) != 2 || !strings.HasSuffix(string(msgs[1].data), "\r\n\r\nHallo ä\r\n") {
		t.Fatalf("upstream without SMTPUTF8 got %+v", msgs)
	}

	utf := startUpstream(t, upstreamOpts{utf8: true})
	r = provisioned(t, &Relay{To: "smtp://" + utf.addr, RequireTLS: &off})
	c, _ = dial(t, serve(t, session.Config{}, authAs("alice"), r))
	c.Cmd("MAIL FROM:<ä@client.example> SMTPUTF8", "250 2.1.0")
	c.Cmd("RCPT TO:<ö@exämple.test>", "250 2.1.5")
	c.Cmd("DATA", "354 ")
	c.Send(stuff(message))
	c.Expect("250 2.0.0")
	if msgs := utf.messages(); len(msgs) != 1 || msgs[0].from != "ä@client.example" || !msgs[0].mailOpts.UTF8 {
		t.Fatalf("upstream got %+v", msgs)
	}
}

// TestConnectionReuse checks that the connection to the smart host is kept
// for the next message, with RSET between them, and that Cleanup lets it go.
func TestConnectionReuse(t *testing.T) {
	up := startUpstream(t, upstreamOpts{})
	r := provisioned(t, &Relay{To: "smtp://" + up.addr, RequireTLS: &off})
	srv := serve(t, session.Config{}, authAs("alice"), r)
	for i := range 3 {
		c, _ := dial(t, srv)
		if got := send(t, c, "a@client.example", fmt.Sprintf("b%d@example.test", i)); !strings.HasPrefix(got, "250 2.0.0") {
			t.Fatalf("message %d: %q", i, got)
		}
		c.Cmd("QUIT", "221 ")
	}
	if n := len(up.messages()); n != 3 {
		t.Fatalf("upstream got %d messages, want 3", n)
	}
	if n := up.connections(); n != 1 {
		t.Errorf("%d connections to the upstream, want 1", n)
	}
	if n := bytes.Count(up.rawBytes(), []byte("RSET\r\n")); n != 2 {
		t.Errorf("%d RSETs upstream, want 2 (one before each reused transaction)", n)
	}
	if n := r.pool.Len(); n != 1 {
		t.Errorf("%d idle connections, want 1", n)
	}
	r.Cleanup()
	if n := r.pool.Len(); n != 0 {
		t.Errorf("%d idle connections after Cleanup", n)
	}

	// max_idle -1: a connection per message.
	up2 := startUpstream(t, upstreamOpts{})
	r2 := provisioned(t, &Relay{To: "smtp://" + up2.addr, RequireTLS: &off, MaxIdle: -1})
	srv2 := serve(t, session.Config{}, authAs("alice"), r2)
	for i := range 2 {
		c, _ := dial(t, srv2)
		send(t, c, "a@client.example", fmt.Sprintf("b%d@example.test", i))
	}
	if n := up2.connections(); n != 2 {
		t.Errorf("max_idle -1: %d connections, want 2", n)
	}
}

// TestIdleTimeout checks that an idle connection is quit once idle_timeout
// has passed, and not reused.
func TestIdleTimeout(t *testing.T) {
	up := startUpstream(t, upstreamOpts{})
	r := provisioned(t, &Relay{To: "smtp://" + up.addr, RequireTLS: &off, IdleTimeout: caddyDuration(time.Millisecond)})
	srv := serve(t, session.Config{}, authAs("alice"), r)
	c, _ := dial(t, srv)
	send(t, c, "a@client.example", "b@example.test")
	waitFor(t, "the idle connection to be quit", func() bool { return r.pool.Len() == 0 && up.closed() == 1 })
	c, _ = dial(t, srv)
	if got := send(t, c, "a@client.example", "c@example.test"); !strings.HasPrefix(got, "250 2.0.0") {
		t.Fatalf("second message: %q", got)
	}
	if n := up.connections(); n != 2 {
		t.Errorf("%d connections, want 2", n)
	}
	if !bytes.Contains(up.rawBytes(), []byte("QUIT\r\n")) {
		t.Error("the idle connection was dropped without QUIT")
	}
}

// TestStaleConnection checks that an idle connection the upstream closed
// is noticed (RSET fails) and replaced.
func TestStaleConnection(t *testing.T) {
	up := startUpstream(t, upstreamOpts{})
	r := provisioned(t, &Relay{To: "smtp://" + up.addr, RequireTLS: &off})
	srv := serve(t, session.Config{}, authAs("alice"), r)
	c, _ := dial(t, srv)
	send(t, c, "a@client.example", "b@example.test")
	// Cut the idle connection under the pool.
	r.pool.Each(func(up *upstream) { up.uc.Conn.Close() })
	c, _ = dial(t, srv)
	if got := send(t, c, "a@client.example", "c@example.test"); !strings.HasPrefix(got, "250 2.0.0") {
		t.Fatalf("after a stale connection: %q", got)
	}
	if n := up.connections(); n != 2 {
		t.Errorf("%d connections, want 2", n)
	}
}

// TestAbortResetsUpstream checks that RSET and a refused message leave no
// message upstream, and that the upstream connection stays usable.
func TestAbortResetsUpstream(t *testing.T) {
	up := startUpstream(t, upstreamOpts{})
	r := provisioned(t, &Relay{To: "smtp://" + up.addr, RequireTLS: &off})
	c, _ := dial(t, serve(t, session.Config{}, authAs("alice"), r))
	c.Cmd("MAIL FROM:<a@client.example>", "250 2.1.0")
	c.Cmd("RCPT TO:<b@example.test>", "250 2.1.5")
	c.Cmd("RSET", "250 ")
	// A bare LF is refused by the engine (the default) at end of data,
	// before any delivery: the upstream must not get it.
	c.Cmd("MAIL FROM:<a@client.example>", "250 2.1.0")
	c.Cmd("RCPT TO:<b@example.test>", "250 2.1.5")
	c.Cmd("DATA", "354 ")
	c.Send("Subject: x\r\n\r\nbare\nLF\r\n.\r\n")
	c.Expect("550 5.5.2")
	if got := send(t, c, "a@client.example", "c@example.test"); !strings.HasPrefix(got, "250 2.0.0") {
		t.Fatalf("after the aborts: %q", got)
	}
	msgs := up.messages()
	if len(msgs) != 1 || !slices.Equal(msgs[0].rcpts, []string{"c@example.test"}) {
		t.Fatalf("upstream got %+v", msgs)
	}
}

// TestClientDropsMidData checks that a message cut short by the client
// never reaches the upstream: the message goes at Deliver only, so the
// upstream never even gets DATA, and its transaction is let go.
func TestClientDropsMidData(t *testing.T) {
	up := startUpstream(t, upstreamOpts{})
	r := provisioned(t, &Relay{To: "smtp://" + up.addr, RequireTLS: &off, MaxIdle: -1})
	c, _ := dial(t, serve(t, session.Config{}, authAs("alice"), r))
	c.Cmd("MAIL FROM:<a@client.example>", "250 2.1.0")
	c.Cmd("RCPT TO:<b@example.test>", "250 2.1.5")
	c.Cmd("DATA", "354 ")
	c.Send("Subject: cut\r\n\r\n" + strings.Repeat("some text\r\n", 20000))
	c.Conn.Close()
	waitFor(t, "the upstream connection to end", func() bool { return up.closed() >= 1 })
	if n := len(up.messages()); n != 0 {
		t.Fatalf("upstream accepted %d messages cut short", n)
	}
	if raw := up.rawBytes(); bytes.Contains(raw, []byte("DATA\r\n")) {
		t.Fatalf("the upstream got DATA for a message cut short: %q", raw)
	}
}

// waitFor polls cond until it holds (bounded by hangGuard).
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(hangGuard)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestNoBareLineEndingsLeave sends a message with bare CR, bare LF and a
// smuggling attempt ("\n.\r\n") through an engine that normalizes bare
// line endings: the upstream must read CRLF line ends only, dots stuffed,
// one message, and no smuggled command.
func TestNoBareLineEndingsLeave(t *testing.T) {
	up := startUpstream(t, upstreamOpts{})
	r := provisioned(t, &Relay{To: "smtp://" + up.addr, RequireTLS: &off})
	c, _ := dial(t, serve(t, session.Config{BareLineEndings: session.BareNormalize}, authAs("alice"), r))
	c.Cmd("MAIL FROM:<a@client.example>", "250 2.1.0")
	c.Cmd("RCPT TO:<b@example.test>", "250 2.1.5")
	c.Cmd("DATA", "354 ")
	c.Send("Subject: smuggle\r\n\r\nline1\nline2\rline3\r\nx\n.\r\nMAIL FROM:<evil@evil.test>\r\n..dot\r\nend\r\n.\r\n")
	c.Expect("250 2.0.0")
	want := "Subject: smuggle\r\n\r\nline1\r\nline2\r\nline3\r\nx\r\n.\r\nMAIL FROM:<evil@evil.test>\r\n.dot\r\nend\r\n"
	msgs := up.messages()
	if len(msgs) != 1 || msgs[0].from != "a@client.example" {
		t.Fatalf("upstream got %+v", msgs)
	}
	splitReceived(t, msgs[0].data, want)

	// On the wire: the data section between DATA and the end of data.
	raw := up.rawBytes()
	i := bytes.Index(raw, []byte("DATA\r\n"))
	j := bytes.Index(raw, []byte("\r\n.\r\n"))
	if i < 0 || j < i {
		t.Fatalf("no data section in %q", raw)
	}
	wire := raw[i+len("DATA\r\n") : j+2]
	checkCRLF(t, wire)
	if !bytes.HasSuffix(wire, []byte("x\r\n..\r\nMAIL FROM:<evil@evil.test>\r\n..dot\r\nend\r\n")) {
		t.Errorf("data on the wire is not dot-stuffed as expected: %q", wire)
	}
	if n := bytes.Count(raw, []byte("MAIL FROM:")); n != 2 {
		t.Errorf("%d MAIL FROM on the wire, want 2 (one command, one in the data)", n)
	}
}

// TestBdatLastLineWithoutCRLF checks a BDAT message whose last line has no
// CRLF: the upstream gets it with CRLF added, ended properly.
func TestBdatLastLineWithoutCRLF(t *testing.T) {
	up := startUpstream(t, upstreamOpts{})
	r := provisioned(t, &Relay{To: "smtp://" + up.addr, RequireTLS: &off})
	c, _ := dial(t, serve(t, session.Config{}, authAs("alice"), r))
	c.Cmd("MAIL FROM:<a@client.example>", "250 2.1.0")
	c.Cmd("RCPT TO:<b@example.test>", "250 2.1.5")
	body := "Subject: bdat\r\n\r\n.dot first\r\nno end"
	c.Send(fmt.Sprintf("BDAT %d LAST\r\n%s", len(body), body))
	c.Expect("250 2.0.0")
	msgs := up.messages()
	if len(msgs) != 1 {
		t.Fatalf("upstream got %+v", msgs)
	}
	splitReceived(t, msgs[0].data, body+"\r\n")
	checkCRLF(t, up.rawBytes())
}

// checkCRLF fails when b has a CR not followed by LF or an LF not preceded
// by CR.
func checkCRLF(t *testing.T, b []byte) {
	t.Helper()
	for k := range b {
		if b[k] == '\r' && (k+1 == len(b) || b[k+1] != '\n') || b[k] == '\n' && (k == 0 || b[k-1] != '\r') {
			t.Fatalf("bare line ending at %d: %q", k, b[max(0, k-20):min(len(b), k+20)])
		}
	}
}

func TestCanonWriter(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"plain", "plain"},
		{"a\r\nb\r\n", "a\r\nb\r\n"},
		{"a\nb\n", "a\r\nb\r\n"},
		{"a\rb\r", "a\r\nb\r\n"},
		{"a\r\r\nb", "a\r\n\r\nb"},
		{"\n\r\r\n\n", "\r\n\r\n\r\n\r\n"},
		{"x\n.\r\ny", "x\r\n.\r\ny"},
	} {
		// Every way of cutting the input in two writes.
		for cut := 0; cut <= len(tc.in); cut++ {
			var out bytes.Buffer
			w := canonWriter{w: &out}
			w.Write([]byte(tc.in[:cut]))
			w.Write([]byte(tc.in[cut:]))
			w.Flush()
			if out.String() != tc.want {
				t.Errorf("%q cut at %d: got %q, want %q", tc.in, cut, out.String(), tc.want)
			}
		}
	}
}

func TestCaddyfile(t *testing.T) {
	d := caddyfile.NewTestDispenser(`relay smtp://smtp.example.com:587 {
		domains example.com *.example.org
		domains example.net
		relay_networks 10.0.0.0/8 192.0.2.1
		auth_user me
		auth_password {env.RELAY_PASSWORD}
		require_tls off
		tls_server_name mail.example.com
		tls_ca /etc/ca.pem
		tls_insecure_skip_verify
		connect_timeout 5s
		timeout 30s
		data_timeout 2m
		max_idle 2
		idle_timeout 1m
	}`)
	var r Relay
	if err := r.UnmarshalCaddyfile(d); err != nil {
		t.Fatal(err)
	}
	if r.To != "smtp://smtp.example.com:587" || !slices.Equal(r.Domains, []string{"example.com", "*.example.org", "example.net"}) ||
		!slices.Equal(r.RelayNetworks, []string{"10.0.0.0/8", "192.0.2.1"}) || r.AuthUser != "me" ||
		r.AuthPassword != "{env.RELAY_PASSWORD}" || r.RequireTLS == nil || *r.RequireTLS || r.TLSServerName != "mail.example.com" ||
		r.TLSCA != "/etc/ca.pem" || !r.TLSInsecureSkipVerify || time.Duration(r.ConnectTimeout) != 5*time.Second ||
		time.Duration(r.Timeout) != 30*time.Second || time.Duration(r.DataTimeout) != 2*time.Minute || r.MaxIdle != 2 ||
		time.Duration(r.IdleTimeout) != time.Minute {
		t.Errorf("parsed %+v", r)
	}
	d = caddyfile.NewTestDispenser(`relay {
		to mx
		resolver 127.0.0.1:5353
		mx_port 2525
	}`)
	r = Relay{}
	if err := r.UnmarshalCaddyfile(d); err != nil {
		t.Fatal(err)
	}
	if r.To != "mx" || r.Resolver != "127.0.0.1:5353" || r.MXPort != 2525 {
		t.Errorf("parsed %+v", r)
	}
	for _, bad := range []string{
		"relay",
		"relay a b",
		"relay mx {\n bogus\n}",
		"relay mx {\n require_tls maybe\n}",
		"relay mx {\n domains\n}",
		"relay mx {\n mx_port x\n}",
		"relay mx {\n timeout forever\n}",
	} {
		r = Relay{}
		if err := r.UnmarshalCaddyfile(caddyfile.NewTestDispenser(bad)); err == nil {
			t.Errorf("%q: no error", bad)
		}
	}
}

// TestAuthParamPassedOn checks RFC 4954 section 5: the AUTH= parameter of
// MAIL FROM goes on to an upstream that offers AUTH, with the mailbox the
// client gave when the client authenticated, and as AUTH=<> when it did not
// (or gave no mailbox); none is sent when the client gave none, nor to an
// upstream without AUTH. The parameter is put in MailParams by a
// sub-handler, as the engine does when it accepts AUTH= on MAIL.
func TestAuthParamPassedOn(t *testing.T) {
	params := mailParam{
		"a@client.example":    {Key: "AUTH", Value: "a+2Bsub@client.example", HasValue: true},
		"null@client.example": {Key: "AUTH", Value: "<>", HasValue: true},
		"bad@client.example":  {Key: "AUTH", Value: "x+0D+0AQUIT", HasValue: true},
	}
	up := startUpstream(t, upstreamOpts{tls: true, user: "relayuser", pass: "pw"})
	r := provisioned(t, &Relay{To: "smtp://" + up.addr, TLSCA: certs(t).caFile, TLSServerName: "mx.test",
		AuthUser: "relayuser", AuthPassword: "pw", RelayNetworks: []string{"127.0.0.0/8"}})
	c, _ := dial(t, serve(t, session.Config{}, authAs("alice"), params, r))
	for _, from := range []string{"a@client.example", "null@client.example", "bad@client.example", "none@client.example"} {
		if got := send(t, c, from, "b@example.test"); !strings.HasPrefix(got, "250 2.0.0") {
			t.Fatalf("from %s: end of data: %q", from, got)
		}
	}
	// Not authenticated (relayed for its address): the mailbox it claims
	// is not vouched for.
	c, _ = dial(t, serve(t, session.Config{}, params, r))
	if got := send(t, c, "a@client.example", "b@example.test"); !strings.HasPrefix(got, "250 2.0.0") {
		t.Fatalf("unauthenticated: end of data: %q", got)
	}
	msgs := up.messages()
	if len(msgs) != 5 {
		t.Fatalf("upstream got %d messages, want 5", len(msgs))
	}
	for i, want := range []string{"a+sub@client.example", "", "", "(none)", ""} {
		got := "(none)"
		if a := msgs[i].mailOpts.Auth; a != nil {
			got = *a
		}
		if got != want {
			t.Errorf("message %d from %s: upstream AUTH= %q, want %q", i, msgs[i].from, got, want)
		}
	}

	// An upstream without AUTH gets no AUTH= parameter.
	plain := startUpstream(t, upstreamOpts{})
	r = provisioned(t, &Relay{To: "smtp://" + plain.addr, RequireTLS: &off})
	c, _ = dial(t, serve(t, session.Config{}, authAs("alice"), params, r))
	if got := send(t, c, "a@client.example", "b@example.test"); !strings.HasPrefix(got, "250 2.0.0") {
		t.Fatalf("upstream without AUTH: end of data: %q", got)
	}
	if raw := plain.rawBytes(); bytes.Contains(raw, []byte("AUTH=")) {
		t.Errorf("AUTH= sent to an upstream that does not offer AUTH: %q", raw)
	}
}

// TestUpstream421 checks that an upstream's 421 (it is closing the
// connection) reaches the client as 451 4.4.2, not as a 421 that tells the
// client our session ends; that the connection is dropped, not reused; and
// that the client's session goes on.
func TestUpstream421(t *testing.T) {
	bye := &smtp.SMTPError{Code: 421, EnhancedCode: smtp.EnhancedCode{4, 3, 2}, Message: "Shutting down"}
	for _, at := range []string{"rcpt", "end of data"} {
		t.Run(at, func(t *testing.T) {
			refuse := map[string]*smtp.SMTPError{"gone@example.test": bye}
			opts := upstreamOpts{rejectRcpt: refuse}
			if at == "end of data" {
				opts = upstreamOpts{rejectDataTo: refuse}
			}
			up := startUpstream(t, opts)
			r := provisioned(t, &Relay{To: "smtp://" + up.addr, RequireTLS: &off})
			c, _ := dial(t, serve(t, session.Config{}, authAs("alice"), r))
			c.Cmd("MAIL FROM:<a@client.example>", "250 2.1.0")
			var got string
			if at == "rcpt" {
				got = c.Cmd("RCPT TO:<gone@example.test>", "")
				c.Cmd("RSET", "250 ")
			} else {
				c.Cmd("RCPT TO:<gone@example.test>", "250 2.1.5")
				c.Cmd("DATA", "354 ")
				c.Send(stuff(message))
				got = c.ReadReply().Last()
			}
			if !strings.HasPrefix(got, "451 4.4.2 ") || !strings.Contains(got, "closed") {
				t.Fatalf("upstream 421 at %s: client got %q, want 451 4.4.2 (upstream closed)", at, got)
			}
			waitFor(t, "the connection that got 421 to be dropped", func() bool { return up.closed() == 1 })
			// The session goes on, over a new connection.
			if got := send(t, c, "a@client.example", "b@example.test"); !strings.HasPrefix(got, "250 2.0.0") {
				t.Fatalf("next message: %q", got)
			}
			if n := up.connections(); n != 2 {
				t.Errorf("%d connections to the upstream, want 2 (the one that got 421 is not reused)", n)
			}
			if msgs := up.messages(); len(msgs) != 1 || !slices.Equal(msgs[0].rcpts, []string{"b@example.test"}) {
				t.Errorf("upstream got %+v", msgs)
			}
		})
	}
}
