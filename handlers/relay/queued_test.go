package relay

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-smtp"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"

	"github.com/caddy-esmtp/caddy-esmtp/internal/dnstest"
	"github.com/caddy-esmtp/caddy-esmtp/internal/smtptest"
	"github.com/caddy-esmtp/caddy-esmtp/session"
)

// memQueue is a queue that keeps the messages in memory, with the bytes
// of each.
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

// only returns the one message queued, over a fresh Message on its bytes
// as a queue would read it back, and the bytes.
func (q *memQueue) only(t *testing.T) (*session.Queued, []byte) {
	t.Helper()
	q.mu.Lock()
	defer q.mu.Unlock()
	if len(q.got) != 1 {
		t.Fatalf("%d messages queued, want 1", len(q.got))
	}
	m, b := *q.got[0], q.msgs[0]
	m.Message = session.NewMessage(bytes.NewReader(b), int64(len(b)))
	return &m, b
}

// queueServer runs the engine with a memQueue and the sub-handlers on
// loopback TCP until the test ends; it returns the server (for
// DeliverQueued), its address and the queue.
func queueServer(t *testing.T, handlers ...any) (*session.Server, string, *memQueue) {
	t.Helper()
	q := &memQueue{}
	cfg := smtptest.Config(handlers...)
	cfg.Queue = q
	srv, err := session.NewServer(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Go(func() {
				defer c.Close()
				c.SetDeadline(time.Now().Add(hangGuard))
				srv.Serve(context.Background(), c, session.ConnInfo{})
			})
		}
	})
	t.Cleanup(func() {
		ln.Close()
		wg.Wait()
	})
	return srv, ln.Addr().String(), q
}

// queueClient connects to addr with an SMTP client, says EHLO and
// sends MAIL FROM from.
func queueClient(t *testing.T, addr, from string, opts *smtp.MailOptions) *smtp.Client {
	t.Helper()
	c, err := smtp.Dial(addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	c.CommandTimeout, c.SubmissionTimeout = hangGuard, hangGuard
	if err := c.Hello(smtptest.Helo); err != nil {
		t.Fatal(err)
	}
	if err := c.Mail(from, opts); err != nil {
		t.Fatalf("MAIL: %v", err)
	}
	return c
}

// queueData sends the message and checks that the server queued it.
func queueData(t *testing.T, c *smtp.Client) {
	t.Helper()
	w, err := c.Data()
	if err != nil {
		t.Fatalf("DATA: %v", err)
	}
	if _, err := w.Write([]byte(message)); err != nil {
		t.Fatal(err)
	}
	resp, err := w.CloseWithResponse()
	if err != nil || !strings.HasSuffix(resp.StatusText, "Message queued") {
		t.Fatalf("end of data: %v %+v", err, resp)
	}
	if err := c.Quit(); err != nil {
		t.Fatal(err)
	}
}

// rcptReply returns the reply to RCPT TO:<to>: "250", or "code
// enhanced text" for a refusal.
func rcptReply(t *testing.T, c *smtp.Client, to string, opts *smtp.RcptOptions) string {
	t.Helper()
	err := c.Rcpt(to, opts)
	if err == nil {
		return "250"
	}
	var se *smtp.SMTPError
	if !errors.As(err, &se) {
		t.Fatalf("RCPT TO:<%s>: %v", to, err)
	}
	ec := se.EnhancedCode
	return fmt.Sprintf("%d %d.%d.%d %s", se.Code, ec[0], ec[1], ec[2], se.Message)
}

// checkReplies checks the reply of each recipient of m against want
// (recipient -> prefix of the reply's Error()).
func checkReplies(t *testing.T, m *session.Queued, replies []*session.Reply, want map[string]string) {
	t.Helper()
	if len(replies) != len(m.Recipients) {
		t.Fatalf("%d replies for %d recipients", len(replies), len(m.Recipients))
	}
	for i, rc := range m.Recipients {
		w, ok := want[rc.Path.Mailbox]
		if !ok {
			t.Errorf("recipient %s not expected", rc.Path.Mailbox)
			continue
		}
		if got := replies[i].Error(); !strings.HasPrefix(got, w) {
			t.Errorf("%s: %q, want %s", rc.Path.Mailbox, got, w)
		}
	}
}

// TestQueuedMX relays a queued message to the mail servers of several
// domains: at RCPT no upstream is contacted (only the relay policy
// refuses), and from the queue each recipient gets its own outcome: the
// upstream's refusal of its RCPT, the reply to the end of data of its
// domain's transaction (250, or the upstream's 452), 4xx when its mail
// server is down or closed the connection with 421, 5xx for a null MX or
// no such domain. Domains with the same mail servers share a transaction,
// and every upstream gets exactly the queued message.
func TestQueuedMX(t *testing.T) {
	a := startUpstream(t, upstreamOpts{rejectRcpt: map[string]*smtp.SMTPError{
		"refused@a.test": {Code: 550, EnhancedCode: smtp.EnhancedCode{5, 1, 1}, Message: "No such user here"},
		"d421@d.test":    {Code: 421, EnhancedCode: smtp.EnhancedCode{4, 3, 2}, Message: "Shutting down"},
	}})
	p := port(a.addr)
	b := startUpstream(t, upstreamOpts{addr: "127.0.0.3:" + p})
	full := startUpstream(t, upstreamOpts{addr: "127.0.0.5:" + p,
		rejectData: &smtp.SMTPError{Code: 452, EnhancedCode: smtp.EnhancedCode{4, 3, 1}, Message: "Insufficient system storage"}})
	ds := dnstest.Start(t,
		"a.test. 60 IN MX 10 mx.a.test.",
		"mx.a.test. 60 IN A 127.0.0.1",
		"b.test. 60 IN MX 10 mx.b.test.",
		"c.test. 60 IN MX 10 mx.b.test.", // b.test's mail server: one transaction for both
		"mx.b.test. 60 IN A 127.0.0.3",
		"d.test. 60 IN MX 10 mx.d.test.",
		"mx.d.test. 60 IN A 127.0.0.1", // a's upstream, which closes d's transaction with 421
		"down.test. 60 IN MX 10 mx.down.test.",
		"mx.down.test. 60 IN A 127.0.0.4", // nothing listens there
		"full.test. 60 IN MX 10 mx.full.test.",
		"mx.full.test. 60 IN A 127.0.0.5",
		"null.test. 60 IN MX 0 .",
	)
	r := provisioned(t, &Relay{To: "mx", Resolver: ds.Addr, MXPort: mustPort(t, a.addr),
		Domains: []string{"a.test", "b.test", "c.test", "d.test", "down.test", "full.test", "null.test", "none.test"}})
	core, logs := observer.New(zap.InfoLevel)
	r.logger = zap.New(core)
	srv, addr, q := queueServer(t, r)

	c := queueClient(t, addr, "a@client.example", nil)
	rcpts := []string{"one@a.test", "refused@a.test", "x@b.test", "y@c.test", "two@a.test", "d1@d.test", "d421@d.test",
		"d3@d.test", "p@down.test", "f1@full.test", "f2@full.test", "n@null.test", "z@none.test"}
	for _, to := range rcpts {
		if got := rcptReply(t, c, to, nil); got != "250" {
			t.Errorf("RCPT TO:<%s>: %s, want 250", to, got)
		}
	}
	// The relay policy applies all the same.
	if got := rcptReply(t, c, "other@elsewhere.test", nil); !strings.HasPrefix(got, "554 5.7.1") {
		t.Errorf("RCPT TO:<other@elsewhere.test>: %s, want 554 5.7.1", got)
	}
	queueData(t, c)
	for _, u := range []*upstreamServer{a, b, full} {
		if n := u.connections(); n != 0 {
			t.Fatalf("upstream %s got %d connections before the queue delivered", u.addr, n)
		}
	}

	m, msg := q.only(t)
	if !slices.EqualFunc(m.Recipients, rcpts, func(rc session.Recipient, s string) bool { return rc.Path.Mailbox == s }) {
		t.Fatalf("queued recipients %+v", m.Recipients)
	}
	replies := srv.DeliverQueued(context.Background(), m)
	checkReplies(t, m, replies, map[string]string{
		"one@a.test":     "250 2.0.0",
		"refused@a.test": "550 5.1.1 No such user here",
		"x@b.test":       "250 2.0.0",
		"y@c.test":       "250 2.0.0",
		"two@a.test":     "250 2.0.0",
		"d1@d.test":      "451 4.4.2",
		"d421@d.test":    "451 4.4.2",
		"d3@d.test":      "451 4.4.2",
		"p@down.test":    "451 4.4.1",
		"f1@full.test":   "452 4.3.1 Insufficient system storage",
		"f2@full.test":   "452 4.3.1 Insufficient system storage",
		"n@null.test":    "556 5.1.10",
		"z@none.test":    "550 5.1.2",
	})
	// The upstream's replies name it (the DSN's Remote-MTA); ours do not.
	for i, rc := range m.Recipients {
		want := map[string]string{"refused@a.test": "mx.a.test", "x@b.test": "mx.b.test", "f1@full.test": "mx.full.test",
			"p@down.test": "", "n@null.test": ""}
		if w, ok := want[rc.Path.Mailbox]; ok && replies[i].RemoteMTA != w {
			t.Errorf("%s: RemoteMTA %q, want %q", rc.Path.Mailbox, replies[i].RemoteMTA, w)
		}
	}

	got := a.messages()
	if len(got) != 1 || !slices.Equal(got[0].rcpts, []string{"one@a.test", "two@a.test"}) || got[0].from != "a@client.example" {
		t.Fatalf("a.test's upstream got %+v", got)
	}
	if !bytes.Equal(got[0].data, msg) {
		t.Errorf("a.test's upstream got\n%q\nqueued\n%q", got[0].data, msg)
	}
	got = b.messages()
	if len(got) != 1 || !slices.Equal(got[0].rcpts, []string{"x@b.test", "y@c.test"}) {
		t.Fatalf("b.test's upstream got %+v", got)
	}
	if !bytes.Equal(got[0].data, msg) {
		t.Errorf("b.test's upstream got\n%q\nqueued\n%q", got[0].data, msg)
	}
	if n := b.connections(); n != 1 {
		t.Errorf("b.test's upstream got %d connections, want 1 (c.test shares it)", n)
	}
	if n := len(full.messages()); n != 0 {
		t.Errorf("full.test's upstream kept %d messages", n)
	}

	// The log says where each transaction went.
	var upstreams []string
	for _, e := range logs.FilterMessage("queued message relayed").All() {
		f := e.ContextMap()
		if f["queue_id"] != m.ID {
			t.Errorf("log line for queue id %v, want %s", f["queue_id"], m.ID)
		}
		upstreams = append(upstreams, f["domain"].(string)+" "+f["relay_mx"].(string)+" "+f["relay_upstream"].(string))
	}
	slices.Sort(upstreams)
	want := []string{"a.test mx.a.test " + a.addr, "b.test,c.test mx.b.test " + b.addr, "d.test mx.d.test " + a.addr,
		"full.test mx.full.test " + full.addr}
	if !slices.Equal(upstreams, want) {
		t.Errorf("logged upstreams\n%q\nwant\n%q", upstreams, want)
	}
}

// TestQueuedSmartHost relays a queued message to a smart host in one
// transaction: the client's DSN parameters go upstream, a recipient the
// smart host refuses gets its reply and the others are delivered, with
// the queued message; the session's authentication (kept by the queue)
// is what lets it relay. Delivering again (a retry) sends the message
// again, read anew.
func TestQueuedSmartHost(t *testing.T) {
	up := startUpstream(t, upstreamOpts{dsn: true, rejectRcpt: map[string]*smtp.SMTPError{
		"bad@y.test": {Code: 550, EnhancedCode: smtp.EnhancedCode{5, 1, 1}, Message: "No such user here"},
	}})
	r := provisioned(t, &Relay{To: "smtp://" + up.addr, RequireTLS: &off})
	srv, addr, q := queueServer(t, authAs("alice"), r)

	c := queueClient(t, addr, "a@client.example", &smtp.MailOptions{Return: smtp.DSNReturnHeaders, EnvelopeID: "QQ314"})
	notify := &smtp.RcptOptions{Notify: []smtp.DSNNotify{smtp.DSNNotifySuccess, smtp.DSNNotifyFailure},
		OriginalRecipientType: smtp.DSNAddressTypeRFC822, OriginalRecipient: "orig@x.test"}
	for _, to := range []string{"x@x.test", "bad@y.test", "z@y.test"} {
		o := notify
		if to != "x@x.test" {
			o = nil
		}
		if got := rcptReply(t, c, to, o); got != "250" {
			t.Errorf("RCPT TO:<%s>: %s, want 250", to, got)
		}
	}
	queueData(t, c)
	if n := up.connections(); n != 0 {
		t.Fatalf("the smart host got %d connections before the queue delivered", n)
	}

	m, msg := q.only(t)
	if m.Client.AuthUser != "alice" {
		t.Fatalf("queued client %+v", m.Client)
	}
	want := map[string]string{"x@x.test": "250 2.0.0", "bad@y.test": "550 5.1.1 No such user here", "z@y.test": "250 2.0.0"}
	checkReplies(t, m, srv.DeliverQueued(context.Background(), m), want)
	checkReplies(t, m, srv.DeliverQueued(context.Background(), m), want)

	got := up.messages()
	if len(got) != 2 {
		t.Fatalf("the smart host got %d messages, want 2", len(got))
	}
	for _, g := range got {
		if !slices.Equal(g.rcpts, []string{"x@x.test", "z@y.test"}) || !bytes.Equal(g.data, msg) {
			t.Errorf("the smart host got %+v\n%q\nqueued\n%q", g, g.data, msg)
		}
		if g.mailOpts.Return != smtp.DSNReturnHeaders || g.mailOpts.EnvelopeID != "QQ314" {
			t.Errorf("MAIL options upstream %+v", g.mailOpts)
		}
		if o := g.rcptOpts[0]; !slices.Equal(o.Notify, notify.Notify) || o.OriginalRecipient != "orig@x.test" ||
			o.OriginalRecipientType != smtp.DSNAddressTypeRFC822 {
			t.Errorf("RCPT options upstream %+v", o)
		}
	}
}

// TestDeliveredReply checks the outcome of a delivered recipient made of
// the upstream's reply to the end of data: its enhanced code when it has
// a valid one (taken off every line), 2.0.0 otherwise, and its text.
func TestDeliveredReply(t *testing.T) {
	for _, c := range []struct{ text, want string }{
		{"2.0.0 OK: queued as 4F2", "250 2.0.0 OK: queued as 4F2"},
		{"2.6.0 queued\n2.6.0 as 4F2", "250 2.6.0 queued as 4F2"},
		{"Ok", "250 2.0.0 Ok"},
		{"5.0.0 wrong class", "250 2.0.0 5.0.0 wrong class"},
		{"", "250 2.0.0 Delivered"},
	} {
		if got := deliveredReply(c.text).Error(); got != c.want {
			t.Errorf("%q: %q, want %q", c.text, got, c.want)
		}
	}
}

// TestQueuedSMTPUTF8 checks that a queued SMTPUTF8 message (the flag kept
// in its MAIL parameters) goes to an upstream without SMTPUTF8 as ASCII
// where it can: a domain as A-labels, a recipient whose local part is not
// ASCII failed with 553 5.6.7 alone; and that a header that is not ASCII
// fails every recipient with 550 5.6.9, the upstream getting no DATA.
func TestQueuedSMTPUTF8(t *testing.T) {
	up := startUpstream(t, upstreamOpts{})
	r := provisioned(t, &Relay{To: "smtp://" + up.addr, RequireTLS: &off, Domains: []string{"bücher.example"}})
	srv, addr, q := queueServer(t, r)

	c := queueClient(t, addr, "a@client.example", &smtp.MailOptions{UTF8: true})
	for _, to := range []string{"user@bücher.example", "ü@bücher.example"} {
		if got := rcptReply(t, c, to, nil); got != "250" {
			t.Fatalf("RCPT TO:<%s>: %s, want 250", to, got)
		}
	}
	queueData(t, c)
	m, _ := q.only(t)
	checkReplies(t, m, srv.DeliverQueued(context.Background(), m), map[string]string{
		"user@bücher.example": "250 2.0.0", "ü@bücher.example": "553 5.6.7"})
	got := up.messages()
	if len(got) != 1 || got[0].mailOpts.UTF8 || !slices.Equal(got[0].rcpts, []string{"user@xn--bcher-kva.example"}) {
		t.Fatalf("upstream got %+v", got)
	}

	// The same message with a header that needs SMTPUTF8.
	b := []byte("Subject: Grüße\r\n\r\nHallo\r\n")
	m.Message = session.NewMessage(bytes.NewReader(b), int64(len(b)))
	checkReplies(t, m, srv.DeliverQueued(context.Background(), m), map[string]string{
		"user@bücher.example": "550 5.6.9", "ü@bücher.example": "550 5.6.9"})
	if n := len(up.messages()); n != 1 {
		t.Errorf("upstream got %d messages, want 1", n)
	}
}
