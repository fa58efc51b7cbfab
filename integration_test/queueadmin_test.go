package integration_test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"
)

// queueEntry is the part of the admin API's JSON entry the tests check.
type queueEntry struct {
	ID          string    `json:"id"`
	Dir         string    `json:"dir"`
	From        string    `json:"from"`
	Size        int64     `json:"size"`
	Arrival     time.Time `json:"arrival"`
	AgeSeconds  *int64    `json:"age_seconds"`
	Attempts    int       `json:"attempts"`
	NextAttempt time.Time `json:"next_attempt"`
	Recipients  []struct {
		Addr        string    `json:"addr"`
		State       string    `json:"state"`
		Attempts    int       `json:"attempts"`
		LastAttempt time.Time `json:"last_attempt"`
		Reply       *struct {
			Code     int    `json:"code"`
			Enhanced string `json:"enhanced"`
			Text     string `json:"text"`
		} `json:"reply"`
	} `json:"recipients"`
}

// adminCall makes a request to the admin endpoint and returns the status
// and body.
func adminCall(t *testing.T, admin, method, path string) (int, []byte) {
	t.Helper()
	req, err := http.NewRequest(method, "http://"+admin+path, nil)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, body
}

// queueList is GET /esmtp/queue, by id.
func queueList(t *testing.T, admin string) map[string]queueEntry {
	t.Helper()
	code, body := adminCall(t, admin, "GET", "/esmtp/queue")
	if code != 200 {
		t.Fatalf("GET /esmtp/queue: %d %s", code, body)
	}
	var list []queueEntry
	if err := json.Unmarshal(body, &list); err != nil {
		t.Fatalf("GET /esmtp/queue: %v\n%s", err, body)
	}
	m := map[string]queueEntry{}
	for _, e := range list {
		m[e.ID] = e
	}
	return m
}

// waitQueue polls the listing until ok accepts it.
func waitQueue(t *testing.T, admin, what string, ok func(map[string]queueEntry) bool) map[string]queueEntry {
	t.Helper()
	for end := time.Now().Add(30 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		m := queueList(t, admin)
		if ok(m) {
			return m
		}
		if time.Now().After(end) {
			t.Fatalf("waiting for %s; the queue: %+v", what, m)
		}
	}
}

// scrape returns the lines of Caddy's /metrics that name the queue
// metrics, without the comments.
func scrapeQueue(t *testing.T, admin string) string {
	t.Helper()
	code, body := adminCall(t, admin, "GET", "/metrics")
	if code != 200 {
		t.Fatalf("GET /metrics: %d", code)
	}
	var b strings.Builder
	for l := range strings.Lines(string(body)) {
		if strings.HasPrefix(l, "caddy_esmtp_queue_") {
			b.WriteString(l)
		}
	}
	return b.String()
}

// sendQueued sends one message and returns its queue id.
func sendQueued(t *testing.T, addr string, rcpts ...string) string {
	t.Helper()
	c := dial(t, addr)
	c.expect("220 ")
	c.send("EHLO client.test\r\n")
	c.expect("250 ")
	c.send("MAIL FROM:<a@client.test>\r\n")
	c.expect("250 2.1.0")
	for _, r := range rcpts {
		c.send("RCPT TO:<" + r + ">\r\n")
		c.expect("250 2.1.5")
	}
	c.send("DATA\r\n")
	c.expect("354 ")
	c.send(stuffed(message) + ".\r\nQUIT\r\n")
	ok := c.expect("250 2.0.0")
	c.expect("221 ")
	return strings.Fields(ok[len(ok)-1])[2]
}

// TestQueueAdmin operates a real Caddy's queue through its admin endpoint
// and through `caddy esmtp queue` (the real binary): two messages whose
// delivery defers (an exec that exits EX_TEMPFAIL: 451 4.3.0) stay
// queued with a retry an hour away; the listing has their fields; retry
// and flush make the next attempt at once (attempts go up); a delete with
// a bounce sends the sender a DSN (delivered to its Maildir through the
// queue), one without removes the message silently; unknown ids are 404.
// The queue metrics on /metrics count all of it.
func TestQueueAdmin(t *testing.T) {
	qdir := filepath.Join(t.TempDir(), "queue")
	script := filepath.Join(t.TempDir(), "tempfail.sh")
	if err := os.WriteFile(script, []byte("#!/bin/sh\ncat >/dev/null\nexit 75\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	adminPort := freePort(t)
	admin := fmt.Sprintf("127.0.0.1:%d", adminPort)
	caddyfile := strings.Replace(esmtpCaddyfile(`
					queue `+qdir+` {
						retry_interval 1h
					}
					@local rcpt client.test
					@defer rcpt defer.test
					maildir @local %MAIL%
					exec @defer `+script+`
`), "admin off", "admin "+admin, 1)
	addr, maildir := startCaddyfile(t, caddyfile)

	id1 := sendQueued(t, addr, "x@defer.test", "y@defer.test")
	id2 := sendQueued(t, addr, "z@defer.test")
	attempts := func(want1, want2 int) func(map[string]queueEntry) bool {
		return func(m map[string]queueEntry) bool {
			for id, want := range map[string]int{id1: want1, id2: want2} {
				e, ok := m[id]
				if !ok || e.Attempts != want {
					return false
				}
				for _, r := range e.Recipients {
					if r.State != "deferred" || r.Attempts != want {
						return false
					}
				}
			}
			return true
		}
	}
	m := waitQueue(t, admin, "the first attempts", attempts(1, 1))

	// The listing.
	e := m[id1]
	absQ, _ := filepath.Abs(qdir)
	if e.Dir != absQ || e.From != "a@client.test" || e.Size < int64(len(message)) || time.Since(e.Arrival) > time.Minute ||
		e.AgeSeconds == nil || *e.AgeSeconds < 0 || *e.AgeSeconds > 60 ||
		time.Until(e.NextAttempt) < 50*time.Minute || len(e.Recipients) != 2 {
		t.Fatalf("entry %s: %+v", id1, e)
	}
	for i, want := range []string{"x@defer.test", "y@defer.test"} {
		r := e.Recipients[i]
		if r.Addr != want || r.LastAttempt.IsZero() || r.Reply == nil || r.Reply.Code != 451 || r.Reply.Enhanced != "4.3.0" ||
			!strings.Contains(r.Reply.Text, "EX_TEMPFAIL") {
			t.Errorf("recipient %d of %s: %+v (reply %+v)", i, id1, r, r.Reply)
		}
	}
	code, body := adminCall(t, admin, "GET", "/esmtp/queue/"+id2)
	if code != 200 || !bytes.Contains(body, []byte(`"z@defer.test"`)) {
		t.Errorf("GET /esmtp/queue/%s: %d %s", id2, code, body)
	}
	code, body = adminCall(t, admin, "GET", "/esmtp/queue?dir="+qdir)
	if code != 200 || !bytes.Contains(body, []byte(id1)) || !bytes.Contains(body, []byte(id2)) {
		t.Errorf("GET ?dir=: %d %s", code, body)
	}
	for _, c := range []struct {
		method, path string
		code         int
	}{
		{"GET", "/esmtp/queue/NOSUCHID", 404},
		{"POST", "/esmtp/queue/NOSUCHID/retry", 404},
		{"DELETE", "/esmtp/queue/NOSUCHID", 404},
		{"DELETE", "/esmtp/queue/" + id1 + "?bounce=perhaps", 400},
		{"GET", "/esmtp/queue/bad.id", 400},
		{"POST", "/esmtp/queue", 405},
		{"GET", "/esmtp/queue/flush", 405},
	} {
		code, body := adminCall(t, admin, c.method, c.path)
		if code != c.code || !bytes.Contains(body, []byte(`"error"`)) {
			t.Errorf("%s %s: %d %s, want %d and an error", c.method, c.path, code, body, c.code)
		}
	}
	metrics := scrapeQueue(t, admin)
	for _, want := range []string{
		fmt.Sprintf(`caddy_esmtp_queue_length{dir=%q} 2`, absQ),
		fmt.Sprintf(`caddy_esmtp_queue_deliveries_total{dir=%q,outcome="deferred"} 3`, absQ),
		fmt.Sprintf(`caddy_esmtp_queue_retries_total{dir=%q} 0`, absQ),
		fmt.Sprintf(`caddy_esmtp_queue_oldest_age_seconds{dir=%q} `, absQ),
	} {
		if !strings.Contains(metrics, want) {
			t.Errorf("/metrics lacks %q:\n%s", want, metrics)
		}
	}

	// The command: a table by default, the API's JSON with --json, the
	// admin address from --address or from the Caddyfile of --config.
	caddyBin := caddyBinary(t)
	cli := func(args ...string) string {
		t.Helper()
		cmd := exec.Command(caddyBin, append([]string{"esmtp", "queue"}, args...)...)
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		out, err := cmd.Output()
		if err != nil {
			t.Fatalf("caddy esmtp queue %s: %v\n%s%s", strings.Join(args, " "), err, out, stderr.Bytes())
		}
		return string(out)
	}
	table := cli("list", "--address", admin)
	t.Logf("caddy esmtp queue list:\n%s", table)
	for _, re := range []string{
		`(?m)^QUEUE ID +SIZE +ARRIVAL +AGE +SENDER/RECIPIENT +STATE +TRIES +NEXT/LAST REPLY$`,
		`(?m)^` + id1 + ` +\d+ +\d{4}-\d\d-\d\d \d\d:\d\d:\d\d +\d+s +a@client\.test +1 +next in (59|60)m$`,
		`(?m)^ +x@defer\.test +deferred +1 +\(451 4\.3\.0 .*EX_TEMPFAIL.*\)$`,
		`(?m)^ +y@defer\.test +deferred +1 `,
		`(?m)^` + id2 + ` `,
		`(?m)^ +z@defer\.test +deferred +1 `,
		`(?m)^-- \d+ (bytes|KiB) in 2 messages\.$`,
	} {
		if !regexp.MustCompile(re).MatchString(table) {
			t.Errorf("the table does not match %s", re)
		}
	}
	cfgFile := filepath.Join(t.TempDir(), "Caddyfile")
	if err := os.WriteFile(cfgFile, []byte(caddyfile), 0o600); err != nil {
		t.Fatal(err)
	}
	var list []queueEntry
	if err := json.Unmarshal([]byte(cli("list", "--json", "--config", cfgFile)), &list); err != nil || len(list) != 2 ||
		list[0].ID != id1 || list[1].ID != id2 || list[0].Recipients[0].Reply.Code != 451 {
		t.Errorf("list --json: %v %+v", err, list)
	}

	// Retry one (the API), then flush all (the command).
	if code, body := adminCall(t, admin, "POST", "/esmtp/queue/"+id1+"/retry"); code != 200 {
		t.Fatalf("retry: %d %s", code, body)
	}
	waitQueue(t, admin, "the retry of "+id1, attempts(2, 1))
	if out := cli("flush", "--address", admin); out != "2 messages to be tried now\n" {
		t.Errorf("flush: %q", out)
	}
	waitQueue(t, admin, "the flush", attempts(3, 2))

	// Delete with a bounce (the API): the DSN reaches the sender's Maildir.
	code, body = adminCall(t, admin, "DELETE", "/esmtp/queue/"+id1+"?bounce=true")
	if code != 200 || !bytes.Contains(body, []byte(`"bounce": true`)) {
		t.Fatalf("delete with bounce: %d %s", code, body)
	}
	var files [][]byte
	for end := time.Now().Add(30 * time.Second); len(files) == 0 && time.Now().Before(end); time.Sleep(50 * time.Millisecond) {
		files = delivered(t, maildir)
	}
	if len(files) != 1 {
		t.Fatalf("%d messages in the sender's Maildir, want the DSN", len(files))
	}
	for _, want := range []string{"report-type=delivery-status", "Final-Recipient: rfc822; x@defer.test",
		"Final-Recipient: rfc822; y@defer.test", "Action: failed"} {
		if !bytes.Contains(files[0], []byte(want)) {
			t.Errorf("the DSN lacks %q:\n%s", want, files[0])
		}
	}
	// Delete without (the command): gone, nobody told.
	if out := cli("delete", id2, "--address", admin); out != id2+": deleted\n" {
		t.Errorf("delete: %q", out)
	}
	waitQueue(t, admin, "an empty queue", func(m map[string]queueEntry) bool { return len(m) == 0 })
	if out := cli("list", "--address", admin); out != "Mail queue is empty\n" {
		t.Errorf("list of the empty queue: %q", out)
	}
	cmd := exec.Command(caddyBin, "esmtp", "queue", "retry", id2, "--address", admin)
	if out, err := cmd.CombinedOutput(); err == nil || !strings.Contains(string(out), "404") {
		t.Errorf("retry of a deleted id: %v\n%s", err, out)
	}
	time.Sleep(200 * time.Millisecond)
	if n := len(delivered(t, maildir)); n != 1 {
		t.Errorf("%d messages in the sender's Maildir after a delete without bounce, want 1", n)
	}

	// deferred: 2+1 first attempts, 2 at the retry, 2+1 at the flush;
	// retries: all but the first 3; failed: the 2 deleted with a bounce;
	// delivered: the DSN.
	metrics = scrapeQueue(t, admin)
	for _, want := range []string{
		fmt.Sprintf(`caddy_esmtp_queue_length{dir=%q} 0`, absQ),
		fmt.Sprintf(`caddy_esmtp_queue_oldest_age_seconds{dir=%q} 0`, absQ),
		fmt.Sprintf(`caddy_esmtp_queue_deliveries_total{dir=%q,outcome="deferred"} 8`, absQ),
		fmt.Sprintf(`caddy_esmtp_queue_deliveries_total{dir=%q,outcome="failed"} 2`, absQ),
		fmt.Sprintf(`caddy_esmtp_queue_deliveries_total{dir=%q,outcome="delivered"} 1`, absQ),
		fmt.Sprintf(`caddy_esmtp_queue_retries_total{dir=%q} 5`, absQ),
		fmt.Sprintf(`caddy_esmtp_queue_bounces_total{dir=%q} 1`, absQ),
	} {
		if !strings.Contains(metrics, want) {
			t.Errorf("/metrics lacks %q:\n%s", want, metrics)
		}
	}
}
