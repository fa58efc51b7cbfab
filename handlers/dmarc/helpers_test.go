package dmarc

import (
	"context"
	"net"
	"strings"
	"sync"
	"testing"

	"github.com/miekg/dns"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/caddy-esmtp/caddy-esmtp/authresults"
	"github.com/caddy-esmtp/caddy-esmtp/internal/smtptest"
	"github.com/caddy-esmtp/caddy-esmtp/session"
)

// zone is what the test DNS server answers: TXT records per name
// (without the final dot); a name in servfail gets SERVFAIL; any other
// name NXDOMAIN.
type zone struct {
	txt      map[string][]string
	servfail map[string]bool
}

// startDNS serves z on loopback UDP until the test ends and returns a
// resolver that asks only it.
func startDNS(t testing.TB, z zone) *net.Resolver {
	t.Helper()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &dns.Server{PacketConn: pc, Handler: dns.HandlerFunc(func(w dns.ResponseWriter, req *dns.Msg) {
		q := req.Question[0]
		name := strings.TrimSuffix(strings.ToLower(q.Name), ".")
		m := new(dns.Msg)
		m.SetReply(req)
		m.Authoritative = true
		txts, ok := z.txt[name]
		switch {
		case z.servfail[name]:
			m.Rcode = dns.RcodeServerFailure
		case !ok:
			m.Rcode = dns.RcodeNameError
		case q.Qtype == dns.TypeTXT:
			for _, t := range txts {
				m.Answer = append(m.Answer, &dns.TXT{
					Hdr: dns.RR_Header{Name: q.Name, Rrtype: dns.TypeTXT, Class: dns.ClassINET, Ttl: 60},
					Txt: split(t),
				})
			}
		}
		w.WriteMsg(m)
	})}
	started := make(chan struct{})
	srv.NotifyStartedFunc = func() { close(started) }
	go srv.ActivateAndServe()
	<-started
	t.Cleanup(func() { srv.Shutdown() })
	addr := pc.LocalAddr().String()
	var d net.Dialer
	return &net.Resolver{PreferGo: true, Dial: func(ctx context.Context, network, _ string) (net.Conn, error) {
		return d.DialContext(ctx, "udp", addr)
	}}
}

// split cuts a TXT record into strings of at most 255 bytes, as a zone
// file does; the resolver joins them again.
func split(s string) []string {
	var out []string
	for len(s) > 100 {
		out = append(out, s[:100])
		s = s[100:]
	}
	return append(out, s)
}

// keep is a delivery that keeps the messages it gets.
type keep struct {
	mu  sync.Mutex
	got []string
}

func (k *keep) Deliver(_ context.Context, _ *session.Session, d *session.Delivery) error {
	b, err := d.Message.Bytes()
	k.mu.Lock()
	k.got = append(k.got, string(b))
	k.mu.Unlock()
	return err
}

func (k *keep) messages() []string {
	k.mu.Lock()
	defer k.mu.Unlock()
	return append([]string(nil), k.got...)
}

// outcome is what one message sent through [auth judge, dmarc, probe,
// keep] came to.
type outcome struct {
	reply       string            // the last line of the end-of-data reply
	delivered   string            // the delivered message, "" when none
	disposition string            // Disposition(s) as the judge after dmarc saw it
	log         map[string]string // the string fields of the message log line
}

// send runs one message: a judge that records auth (the spf and dkim
// sub-handlers' results) before h, and a delivery that keeps the message.
func send(t *testing.T, z zone, h *DMARC, auth []authresults.Result, msg string) outcome {
	t.Helper()
	if h.intn == nil {
		h = smtptest.Provisioned(t, h)
	}
	core, logs := observer.New(zapcore.InfoLevel)
	k := &keep{}
	var out outcome
	var mu sync.Mutex
	authJudge := smtptest.Judge(func(s *session.Session) {
		for _, r := range auth {
			authresults.Add(s, r)
		}
	})
	probe := smtptest.Judge(func(s *session.Session) {
		mu.Lock()
		out.disposition = Disposition(s)
		mu.Unlock()
	})
	srv := smtptest.ServeConfig(t, session.Config{Resolver: startDNS(t, z), Logger: zap.New(core)}, authJudge, h, probe, k)
	c := srv.DialTCPHello()
	out.reply = smtptest.Mail(c, msg, "rcpt@example.test")
	c.Cmd("QUIT", "221")
	srv.Close()
	if got := k.messages(); len(got) == 1 {
		out.delivered = got[0]
	} else if len(got) > 1 {
		t.Fatalf("%d deliveries", len(got))
	}
	out.log = map[string]string{}
	for _, e := range logs.FilterMessage("message").All() {
		for _, f := range e.Context {
			if f.Type == zapcore.StringType {
				out.log[f.Key] = f.String
			}
		}
	}
	return out
}

// spf is an SPF result as the spf sub-handler records it.
func spf(value, mailfrom string) authresults.Result {
	return authresults.Result{Method: "spf", Value: value, Props: []authresults.Prop{{Type: "smtp", Name: "mailfrom", Value: mailfrom}}}
}

// dkim is a DKIM result as the dkim sub-handler records it.
func dkim(value, d string) authresults.Result {
	return authresults.Result{Method: "dkim", Value: value, Props: []authresults.Prop{
		{Type: "header", Name: "d", Value: d}, {Type: "header", Name: "s", Value: "sel"}, {Type: "header", Name: "a", Value: "rsa-sha256"}}}
}

// fromMsg is a message from the From: value from.
func fromMsg(from string) string {
	return "From: " + from + "\r\nTo: rcpt@example.test\r\nSubject: test\r\n\r\nHello.\r\n"
}
