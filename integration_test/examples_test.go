package integration_test

import (
	"bytes"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
)

// TestExamplesFormatAndValidate: every Caddyfile under examples/ is as
// `caddy fmt` would write it, adapts, and passes `caddy validate` (which
// provisions every module), with its file system paths moved into a temp
// dir.
func TestExamplesFormatAndValidate(t *testing.T) {
	t.Setenv("MAIL_WEBHOOK_SECRET", "example-secret")
	t.Setenv("RELAY_PASSWORD", "example-password")
	files, _ := filepath.Glob("../examples/*Caddyfile")
	if len(files) < 4 {
		t.Fatalf("found only %v", files)
	}
	for _, f := range files {
		t.Run(filepath.Base(f), func(t *testing.T) {
			src, err := os.ReadFile(f)
			if err != nil {
				t.Fatal(err)
			}
			if formatted := caddyfile.Format(src); !bytes.Equal(formatted, src) {
				t.Errorf("caddy fmt would change %s:\n%s", f, formatted)
			}
			cf, _ := localized(t, string(src), "127.0.0.1:0")
			cfg := adapt(t, cf)
			if err := caddy.Validate(&caddy.Config{AppsRaw: rawApps(t, cfg)}); err != nil {
				t.Fatalf("caddy validate: %v", err)
			}
		})
	}
}

// localized rewrites an example for a test: its listener on listen, its
// Maildirs and queue in a temp dir, Caddy's internal CA instead of ACME,
// no admin.
func localized(t *testing.T, src, listen string) (string, string) {
	dir := t.TempDir()
	for _, l := range []string{":25 {", ":2525 {", "127.0.0.1:2525 {", "127.0.0.1:1025 {", ":587 {", ":465 {"} {
		src = strings.Replace(src, l, listen+" {", 1)
	}
	src = strings.NewReplacer("/var/mail", dir, "/var/spool/esmtp", dir+"/queue", "./caught", dir+"/caught", "./mail", dir+"/mail",
		"allow 10.0.0.0/8", "allow 127.0.0.0/8").Replace(src)
	return strings.Replace(src, "{\n", "{\n\tadmin off\n\tpersist_config off\n\tlocal_certs\n\tskip_install_trust\n", 1), dir
}

func rawApps(t *testing.T, cfg []byte) caddy.ModuleMap {
	var c struct {
		Apps caddy.ModuleMap `json:"apps"`
	}
	if err := json.Unmarshal(cfg, &c); err != nil {
		t.Fatal(err)
	}
	return c.Apps
}

// TestExamplesServe runs each example for real and sends it a message.
func TestExamplesServe(t *testing.T) {
	for _, tc := range []struct {
		file, rcpt, proxyHeader string
		delivered               func(base string) string // the Maildir the message must land in
	}{
		{"inbound-mx.Caddyfile", "user@example.com", "", func(b string) string { return filepath.Join(b, "example.com", "user") }},
		{"mail-catcher.Caddyfile", "anyone@anywhere.test", "", func(b string) string { return filepath.Join(b, "caught") }},
		{"proxy-protocol.Caddyfile", "user@example.com", "PROXY TCP4 198.51.100.9 127.0.0.1 5555 2525\r\n", func(b string) string { return filepath.Join(b, "inbound") }},
	} {
		t.Run(tc.file, func(t *testing.T) {
			src, err := os.ReadFile("../examples/" + tc.file)
			if err != nil {
				t.Fatal(err)
			}
			cf, base := localized(t, string(src), "127.0.0.1:%PORT%")
			addr, _ := startCaddyfile(t, cf)
			c := dial(t, addr)
			if tc.proxyHeader != "" {
				c.send(tc.proxyHeader)
			}
			c.expect("220 ")
			c.send("EHLO client.test\r\n")
			c.expect("250 ")
			c.send("MAIL FROM:<a@client.test>\r\n")
			c.expect("250 ")
			c.send("RCPT TO:<" + tc.rcpt + ">\r\n")
			c.expect("250 ")
			c.send("DATA\r\n")
			c.expect("354 ")
			c.send(stuffed(message) + ".\r\nQUIT\r\n")
			c.expect("250 2.0.0")
			c.expect("221 ")
			files := delivered(t, tc.delivered(base))
			if len(files) != 1 {
				t.Fatalf("%d messages in %s, want 1", len(files), tc.delivered(base))
			}
			rcv := splitReceived(t, files[0], strings.Fields(strings.SplitN(cf, "hostname ", 2)[1])[0], []byte(message))
			if tc.proxyHeader != "" && !strings.Contains(rcv, "[198.51.100.9]") {
				t.Errorf("Received: field does not show the client behind the proxy: %q", rcv)
			}
		})
	}
}

// TestExampleInboundWebhook runs examples/inbound-webhook.Caddyfile against
// a local HTTP receiver standing in for the app: the message arrives as
// JSON, signed with the secret from the environment.
func TestExampleInboundWebhook(t *testing.T) {
	const secret = "example-secret"
	t.Setenv("MAIL_WEBHOOK_SECRET", secret)
	type post struct {
		body []byte
		sig  string
	}
	got := make(chan post, 1)
	app := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		got <- post{b, r.Header.Get("X-Esmtp-Signature")}
	}))
	defer app.Close()
	src, err := os.ReadFile("../examples/inbound-webhook.Caddyfile")
	if err != nil {
		t.Fatal(err)
	}
	cf, _ := localized(t, string(src), "127.0.0.1:%PORT%")
	cf = strings.Replace(cf, "https://app.example.com/inbound-mail", app.URL+"/inbound-mail", 1)
	addr, _ := startCaddyfile(t, cf)
	c := dial(t, addr)
	c.expect("220 ")
	c.send("EHLO client.test\r\nMAIL FROM:<a@client.test>\r\nRCPT TO:<ticket-42@in.example.com>\r\nDATA\r\n")
	c.expect("250 ")
	c.expect("250 ")
	c.expect("250 ")
	c.expect("354 ")
	c.send(stuffed(message) + ".\r\nQUIT\r\n")
	c.expect("250 2.0.0")
	c.expect("221 ")
	p := <-got
	mac := hmac.New(sha256.New, []byte(secret))
	mac.Write(p.body)
	if want := "sha256=" + hex.EncodeToString(mac.Sum(nil)); p.sig != want {
		t.Errorf("signature %q, want %q", p.sig, want)
	}
	var doc struct {
		Envelope struct {
			From       string   `json:"from"`
			Recipients []string `json:"recipients"`
		} `json:"envelope"`
		Body string `json:"body"`
	}
	if err := json.Unmarshal(p.body, &doc); err != nil {
		t.Fatalf("not JSON: %v\n%s", err, p.body)
	}
	if doc.Envelope.From != "a@client.test" || len(doc.Envelope.Recipients) != 1 || doc.Envelope.Recipients[0] != "ticket-42@in.example.com" {
		t.Errorf("envelope %+v", doc.Envelope)
	}
	if !strings.Contains(doc.Body, ".a line that starts with a dot") {
		t.Errorf("body %q lacks the message body", doc.Body)
	}
}
