package iprev

import (
	"strings"
	"sync"
	"testing"

	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/miekg/dns"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"

	"github.com/caddy-esmtp/caddy-esmtp/authresults"
	"github.com/caddy-esmtp/caddy-esmtp/dnscache"
	"github.com/caddy-esmtp/caddy-esmtp/internal/dnstest"
	"github.com/caddy-esmtp/caddy-esmtp/internal/smtptest"
	"github.com/caddy-esmtp/caddy-esmtp/session"
)

// zone: 192.0.2.1 and 2001:db8::1 confirmed; 192.0.2.2's name points
// elsewhere; 192.0.2.3's PTR lookup fails; 192.0.2.4 has no PTR;
// 192.0.2.5's only name fails to resolve; 192.0.2.6 has two names, the
// second confirmed.
var zone = []string{
	"1.2.0.192.in-addr.arpa. 60 IN PTR mail.a.test.",
	"mail.a.test. 60 IN A 192.0.2.1",
	"2.2.0.192.in-addr.arpa. 60 IN PTR liar.a.test.",
	"liar.a.test. 60 IN A 192.0.2.99",
	"5.2.0.192.in-addr.arpa. 60 IN PTR broken.a.test.",
	"6.2.0.192.in-addr.arpa. 60 IN PTR gone.a.test.",
	"6.2.0.192.in-addr.arpa. 60 IN PTR mx.a.test.",
	"mx.a.test. 60 IN AAAA 2001:db8::6",
	"mx.a.test. 60 IN A 192.0.2.6",
	"1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.ip6.arpa. 60 IN PTR v6.a.test.",
	"v6.a.test. 60 IN AAAA 2001:db8::1",
}

// results records the Authentication-Results of each message, by client.
type results struct {
	mu  sync.Mutex
	got map[string][]authresults.Result
}

func (r *results) judge() smtptest.Judge {
	return func(s *session.Session) {
		r.mu.Lock()
		r.got[s.RemoteIP().String()] = authresults.Of(s)
		r.mu.Unlock()
	}
}

func start(t *testing.T, v *IPRev) (*smtptest.Server, *dnstest.Server, *results, *observer.ObservedLogs) {
	t.Helper()
	ds := dnstest.Start(t, zone...)
	ds.ServFail("3.2.0.192.in-addr.arpa")
	ds.ServFail("broken.a.test")
	cache, err := dnscache.New([]string{ds.Addr}, dnscache.Options{})
	if err != nil {
		t.Fatal(err)
	}
	rec := &results{got: map[string][]authresults.Result{}}
	core, logs := observer.New(zap.InfoLevel)
	cfg := smtptest.Config(smtptest.Provisioned(t, v), rec.judge())
	cfg.Resolver = cache
	cfg.Logger = zap.New(core)
	return smtptest.NewServer(t, cfg), ds, rec, logs
}

// TestRecord checks each result, recorded in Authentication-Results and
// the log line, the client never refused.
func TestRecord(t *testing.T) {
	srv, ds, rec, logs := start(t, &IPRev{})
	cases := map[string]string{
		"192.0.2.1":   Pass,
		"2001:db8::1": Pass,
		"192.0.2.6":   Pass,
		"192.0.2.2":   Fail,
		"192.0.2.3":   TempError,
		"192.0.2.5":   TempError,
		"192.0.2.4":   PermError,
	}
	for ip, want := range cases {
		c := srv.Dial(netipPort(ip))
		for range 2 { // two messages, one lookup
			if r := smtptest.Mail(c, "Subject: x\r\n\r\nbody\r\n", "b@example.test"); !strings.HasPrefix(r, "250 ") {
				t.Fatalf("%s: end of data: %q", ip, r)
			}
			rec.mu.Lock()
			got := rec.got[ip]
			rec.mu.Unlock()
			if len(got) != 1 || got[0].Method != "iprev" || got[0].Value != want ||
				len(got[0].Props) != 1 || got[0].Props[0] != (authresults.Prop{Type: "policy", Name: "iprev", Value: ip}) {
				t.Errorf("%s: results %+v, want iprev=%s policy.iprev=%s", ip, got, want, ip)
			}
		}
	}
	if n := ds.Queries("1.2.0.192.in-addr.arpa", dns.TypePTR); n != 1 {
		t.Errorf("PTR of 192.0.2.1 asked %d times, want 1", n)
	}
	var passName string
	for _, e := range logs.All() {
		f := e.ContextMap()
		if f["iprev"] == nil {
			continue
		}
		if f["queue_id"] == nil && f["iprev"] != nil {
			t.Errorf("iprev logged outside the message line: %v", f)
		}
		if n, ok := f["iprev_name"].(string); ok && n == "mail.a.test" {
			passName = n
		}
	}
	if passName == "" {
		t.Error("no per-message log line with iprev_name mail.a.test")
	}
}

func netipPort(ip string) string {
	if strings.Contains(ip, ":") {
		return "[" + ip + "]:1234"
	}
	return ip + ":1234"
}

// TestRejectFail refuses MAIL: 550 5.7.25 on fail and permerror, 450
// 4.7.25 on temperror; pass goes on.
func TestRejectFail(t *testing.T) {
	srv, _, _, _ := start(t, &IPRev{RejectFail: true})
	for ip, want := range map[string]string{
		"192.0.2.1": "250 ",
		"192.0.2.2": "550 5.7.25 Client host rejected: cannot find your hostname, [192.0.2.2]",
		"192.0.2.4": "550 5.7.25 ",
		"192.0.2.3": "450 4.7.25 Client host rejected: cannot find your hostname, [192.0.2.3]",
	} {
		srv.Dial(netipPort(ip)).Cmd("MAIL FROM:<a@example.test>", want)
	}
}

// TestCaddyfile parses the forms of the directive.
func TestCaddyfile(t *testing.T) {
	for in, want := range map[string]IPRev{
		"iprev":                                 {},
		"iprev reject_fail":                     {RejectFail: true},
		"iprev {\n reject_fail\n timeout 3s\n}": {RejectFail: true, Timeout: 3e9},
		"iprev {\n timeout 1m\n}":               {Timeout: 60e9},
	} {
		var v IPRev
		if err := v.UnmarshalCaddyfile(caddyfile.NewTestDispenser(in)); err != nil {
			t.Errorf("%q: %v", in, err)
			continue
		}
		if v.RejectFail != want.RejectFail || v.Timeout != want.Timeout {
			t.Errorf("%q: got %+v, want %+v", in, v, want)
		}
	}
	for in, errWant := range map[string]string{
		"iprev always":                         "unknown argument",
		"iprev {\n timeout soon\n}":            "timeout must be a positive duration",
		"iprev {\n reject\n}":                  "unknown option",
		"iprev {\n timeout 1s\n timeout 2s\n}": "timeout: given twice",
	} {
		var v IPRev
		err := v.UnmarshalCaddyfile(caddyfile.NewTestDispenser(in))
		if err == nil || !strings.Contains(err.Error(), errWant) {
			t.Errorf("%q: error %v, want %q", in, err, errWant)
		}
	}
}
