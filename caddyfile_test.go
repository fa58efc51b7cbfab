package esmtp

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
	_ "github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	_ "github.com/mholt/caddy-l4/layer4"
)

// TestCaddyfileAdaptToJSON adapts each testdata/caddyfile_adapt/*.caddytest
// (a Caddyfile, a line of dashes, the expected JSON) as caddy-l4 does.
func TestCaddyfileAdaptToJSON(t *testing.T) {
	files, err := filepath.Glob("testdata/caddyfile_adapt/*.caddytest")
	if err != nil || len(files) == 0 {
		t.Fatalf("no .caddytest files: %v", err)
	}
	for _, f := range files {
		t.Run(filepath.Base(f), func(t *testing.T) {
			data, err := os.ReadFile(f)
			if err != nil {
				t.Fatal(err)
			}
			in, want, ok := strings.Cut(string(data), "\n----------\n")
			if !ok {
				t.Fatal("no ---------- separator")
			}
			got := adaptCaddyfile(t, in)
			if !jsonEqual(t, got, []byte(want)) {
				var pretty bytes.Buffer
				json.Indent(&pretty, got, "", "\t")
				t.Errorf("adapted JSON differs\n got: %s\nwant: %s", pretty.String(), want)
			}
		})
	}
}

func adaptCaddyfile(t *testing.T, in string) []byte {
	t.Helper()
	out, _, err := caddyconfig.GetAdapter("caddyfile").Adapt([]byte(in), nil)
	if err != nil {
		t.Fatalf("adapt: %v", err)
	}
	return out
}

func jsonEqual(t *testing.T, a, b []byte) bool {
	t.Helper()
	var x, y any
	if err := json.Unmarshal(a, &x); err != nil {
		t.Fatalf("got invalid JSON: %v", err)
	}
	if err := json.Unmarshal(b, &y); err != nil {
		t.Fatalf("want invalid JSON: %v", err)
	}
	xa, _ := json.Marshal(x)
	ya, _ := json.Marshal(y)
	return bytes.Equal(xa, ya)
}

// TestCaddyfileErrorsNameTheField checks that bad Caddyfile input fails
// with a message naming the option and what it allows.
func TestCaddyfileErrorsNameTheField(t *testing.T) {
	for _, tc := range []struct{ body, want string }{
		{"max_message_size lots", "max_message_size: must be a positive size"},
		{"max_recipients -3", "max_recipients: must be a positive integer"},
		{"command_timeout soon", "command_timeout: must be a positive duration"},
		{"bare_line_endings maybe", "bare_line_endings: must be reject or normalize"},
		{"hostname", "wrong argument count"},
		{"resolvers 127.0.0.1 1.2.3.4:99999", `resolvers: "1.2.3.4:99999": bad port`},
		{"resolvers", "wrong argument count"},
		{"no_such_thing 1", `unknown esmtp option or sub-handler "no_such_thing"`},
		{"maildir", "maildir: path is required"},
		{"queue", "queue: want one directory"},
		{"queue /q {\n retry_interval soon\n }", "queue: retry_interval: want a positive duration"},
		{"queue /q {\n workers 0\n }", "queue: workers: want a positive number"},
		{"queue /q {\n max_age 1d\n max_age 2d\n }", "queue: max_age given twice"},
		{"queue /q {\n hold 1\n }", `queue: unknown option "hold"`},
	} {
		cf := "{\n layer4 {\n  :2525 {\n   route {\n    esmtp {\n     " + tc.body + "\n    }\n   }\n  }\n }\n}\n"
		_, _, err := caddyconfig.GetAdapter("caddyfile").Adapt([]byte(cf), nil)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%q: got error %v, want one containing %q", tc.body, err, tc.want)
		}
	}
}

// TestProvisionErrorsNameTheField checks that a bad JSON config fails at
// provision time with the field's name.
func TestProvisionErrorsNameTheField(t *testing.T) {
	for _, tc := range []struct{ field, want string }{
		{`"chunk_size": 10`, "chunk_size: must be between"},
		{`"bare_line_endings": "keep"`, "bare_line_endings: must be"},
		{`"hostname": "bad host name"`, "hostname:"},
		{`"resolvers": ["127.0.0.1", "[::1"]`, "resolvers[1]: "},
		{`"handlers": [{"handler": "nonexistent"}]`, "esmtp.handlers.nonexistent"},
		{`"handlers": [{"handler": "maildir"}]`, "maildir: path is required"},
		{`"queue": {}`, "queue: dir is required"},
		{`"queue": {"dir": "/tmp/q", "workers": -1}`, "queue: workers must not be negative"},
	} {
		ctx, cancel := caddy.NewContext(caddy.Context{Context: t.Context()})
		h := new(Handler)
		if err := json.Unmarshal([]byte("{"+tc.field+"}"), h); err != nil {
			t.Fatal(err)
		}
		err := h.Provision(ctx)
		cancel()
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: got error %v, want one containing %q", tc.field, err, tc.want)
		}
	}
}

// adaptBody adapts a Caddyfile whose esmtp block holds body.
func adaptBody(body string) ([]byte, error) {
	cf := "{\n layer4 {\n  :2525 {\n   route {\n    esmtp {\n     " + body + "\n    }\n   }\n  }\n }\n}\n"
	out, _, err := caddyconfig.GetAdapter("caddyfile").Adapt([]byte(cf), nil)
	return out, err
}

// TestCaddyfileOptionGivenTwice checks that an option of the esmtp block or
// of a sub-handler given twice is refused, as caddy-l4's modules refuse
// theirs, instead of the second silently replacing the first.
func TestCaddyfileOptionGivenTwice(t *testing.T) {
	for _, tc := range []struct{ body, want string }{
		{"hostname a.example\n hostname b.example", "hostname: given twice"},
		{"max_message_size 10MiB\n max_message_size 20MiB", "max_message_size: given twice"},
		{"command_timeout 1m\n command_timeout 2m", "command_timeout: given twice"},
		{"max_connections 10\n max_connections unlimited", "max_connections: given twice"},
		{"require_tls\n require_tls", "require_tls: given twice"},
		{"reject_early_talkers\n reject_early_talkers 2s", "reject_early_talkers: given twice"},
		{"starttls\n starttls", "starttls: given twice"},
		{"relay smtp://a.example {\n timeout 1s\n timeout 2s\n }", "relay: timeout: given twice"},
		{"relay smtp://a.example {\n to smtp://b.example\n }", "relay: to: given twice"},
		{"relay smtp://a.example {\n require_tls\n require_tls off\n }", "relay: require_tls: given twice"},
		{"webhook http://a.example {\n url http://b.example\n }", "webhook: url: given twice"},
		{"webhook http://a.example {\n format json\n format raw\n }", "webhook: format: given twice"},
		{"webhook http://a.example {\n retries 1\n retries 2\n }", "webhook: retries: given twice"},
		{"dnsbl zen.example {\n at rcpt\n at connect\n }", "dnsbl: at: given twice"},
		{"dnsbl zen.example {\n resolver 127.0.0.1:53\n resolver 127.0.0.2:53\n }", "dnsbl: resolver: given twice"},
		{"exec /bin/true {\n timeout 1s\n timeout 2s\n }", "exec: timeout: given twice"},
		{"greylist {\n delay 1m\n delay 2m\n }", "greylist: delay: given twice"},
		{"rate_limit {\n connections 5 1m\n connections 9 1m\n }", "rate_limit: connections: given twice"},
		{"maildir ./mail {\n keep_case\n keep_case\n }", "maildir: keep_case: given twice"},
		{"maildir {\n path ./a\n path ./b\n }", "maildir: path: given twice"},
		{"auth {\n allow_insecure_auth\n allow_insecure_auth\n }", "auth: allow_insecure_auth: given twice"},
		{"reply connect 554 {\n close\n close\n }", "reply: close given twice"},
		{"senders a@example.com {\n reject_null_sender\n reject_null_sender\n }", "senders: reject_null_sender: given twice"},
	} {
		_, err := adaptBody(tc.body)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%q: got error %v, want one containing %q", tc.body, err, tc.want)
		}
	}
}

// TestCaddyfileRepeatedListsAccumulate checks that the options meant to
// repeat still accumulate, and that sub-handlers and matcher conditions may
// repeat.
func TestCaddyfileRepeatedListsAccumulate(t *testing.T) {
	for _, tc := range []struct {
		body string
		want []string // in the adapted JSON
	}{
		{"xclient_networks 192.0.2.0/24\n xclient_networks 2001:db8::/32", []string{`"192.0.2.0/24"`, `"2001:db8::/32"`}},
		{"relay mx {\n domains a.example\n domains b.example\n relay_networks 192.0.2.1\n relay_networks 192.0.2.2\n }",
			[]string{`"a.example"`, `"b.example"`, `"192.0.2.1"`, `"192.0.2.2"`}},
		{"webhook http://a.example {\n header X-A 1\n header X-A 2\n permanent_statuses 400\n permanent_statuses 413\n }",
			[]string{`["1","2"]`, `[400,413]`}},
		{"dnsbl {\n zone a.example\n zone b.example\n }", []string{`"a.example"`, `"b.example"`}},
		{"greylist {\n exempt 192.0.2.1\n exempt 192.0.2.2\n }", []string{`"192.0.2.1"`, `"192.0.2.2"`}},
		{"rate_limit {\n messages 5 1m\n exempt 192.0.2.1\n exempt 192.0.2.2\n }", []string{`"192.0.2.1"`, `"192.0.2.2"`}},
		{"recipients {\n allow a@example.com\n allow b@example.com\n }", []string{`"a@example.com"`, `"b@example.com"`}},
		{"reply connect 554 {\n line one\n line two\n }", []string{`"one"`, `"two"`}},
		{"maildir ./a\n maildir ./b", []string{`"./a"`, `"./b"`}},
		{"@m {\n rcpt a@example.com\n rcpt b@example.com\n }\n maildir @m ./a", []string{`"a@example.com"`, `"b@example.com"`}},
	} {
		out, err := adaptBody(tc.body)
		if err != nil {
			t.Errorf("%q: %v", tc.body, err)
			continue
		}
		for _, w := range tc.want {
			if !bytes.Contains(out, []byte(w)) {
				t.Errorf("%q: adapted JSON %s has no %s", tc.body, out, w)
			}
		}
	}
}
