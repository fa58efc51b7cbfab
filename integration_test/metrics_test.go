package integration_test

import (
	"fmt"
	"io"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestMetrics scrapes Caddy's admin /metrics after a session with one
// accepted message, one refused RCPT and one refused message.
func TestMetrics(t *testing.T) {
	adminPort, smtpPort := freePort(t), freePort(t)
	load(t, []byte(fmt.Sprintf(`{
		"admin": {"listen": "127.0.0.1:%d", "config": {"persist": false}},
		"apps": {"layer4": {"servers": {"smtp": {
			"listen": ["127.0.0.1:%d"],
			"routes": [{"handle": [{
				"handler": "esmtp",
				"hostname": "metrics.example.test",
				"handlers": [{"handler": "maildir", "path": %q}]
			}]}]
		}}}}
	}`, adminPort, smtpPort, filepath.Join(t.TempDir(), "mail"))))
	addr := fmt.Sprintf("127.0.0.1:%d", smtpPort)
	waitListening(t, addr)

	c := dial(t, addr)
	c.expect("220 ")
	c.send("EHLO client.test\r\nMAIL FROM:<a@client.test>\r\nRCPT TO:<b@example.test>\r\nRCPT TO:<c@example.test>\r\nDATA\r\n")
	c.expect("250 ")
	c.expect("250 ")
	c.expect("250 ")
	c.expect("250 ")
	c.expect("354 ")
	c.send(stuffed(message) + ".\r\n")
	c.expect("250 2.0.0")
	c.send("MAIL FROM:<a@client.test>\r\nRCPT TO:<b@example.test>\r\nDATA\r\n")
	c.expect("250 ")
	c.expect("250 ")
	c.expect("354 ")
	c.send("Subject: bare LF\n\r\n.\r\nQUIT\r\n")
	c.expect("550 5.5.2")
	c.expect("221 ")

	c.c.Close()
	// The session's goroutine ends just after the 221: scrape until it has.
	var body []byte
	for i := 0; i < 100; i++ {
		resp, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d/metrics", adminPort))
		if err != nil {
			t.Fatal(err)
		}
		body, _ = io.ReadAll(resp.Body)
		resp.Body.Close()
		if strings.Contains(string(body), "caddy_esmtp_sessions_open 0") {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	for _, want := range []string{
		`caddy_esmtp_sessions_total 2`, // waitListening's probe and ours
		`caddy_esmtp_sessions_open 0`,
		`caddy_esmtp_messages_total{code_class="2xx"} 1`,
		`caddy_esmtp_messages_total{code_class="5xx"} 1`,
		`caddy_esmtp_recipients_total 2`,
		fmt.Sprintf(`caddy_esmtp_message_bytes_total %d`, len(message)),
		`caddy_esmtp_handler_duration_seconds_count{event="prepare",handler="maildir"} 1`,
		`caddy_esmtp_handler_duration_seconds_count{event="commit",handler="maildir"} 1`,
	} {
		if !strings.Contains(string(body), want) {
			t.Errorf("/metrics lacks %q", want)
		}
	}
	if t.Failed() {
		var ours []string
		for _, l := range strings.Split(string(body), "\n") {
			if strings.HasPrefix(l, "caddy_esmtp") {
				ours = append(ours, l)
			}
		}
		t.Logf("esmtp metrics:\n%s", strings.Join(ours, "\n"))
	}
}
