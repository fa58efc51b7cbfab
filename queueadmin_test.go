package esmtp

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"

	"github.com/caddy-esmtp/caddy-esmtp/queue"
)

// testQueue opens a queue in a temporary directory, not started (nothing
// is delivered), and makes it one of the open queues until the test ends.
func testQueue(t *testing.T) *runningQueue {
	t.Helper()
	dir := t.TempDir()
	store, err := queue.OpenDir(dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	q, err := queue.New(store, queue.Options{Deliver: func(context.Context, *queue.Entry, []queue.Recipient, queue.Message) []queue.Outcome {
		panic("not started")
	}})
	if err != nil {
		t.Fatal(err)
	}
	rq := &runningQueue{dir: dir, store: store, q: q}
	if _, loaded := queues.LoadOrStore(dir, rq); loaded {
		t.Fatal("the directory is open already")
	}
	t.Cleanup(func() { queues.Delete(dir) })
	return rq
}

func enqueue(t *testing.T, rq *runningQueue, from string, rcpts ...string) string {
	t.Helper()
	env := queue.Envelope{From: from, Client: queue.Client{Addr: "192.0.2.1", Helo: "client.test"}}
	for _, r := range rcpts {
		env.Recipients = append(env.Recipients, queue.Recipient{Addr: r})
	}
	id, err := rq.q.Enqueue(context.Background(), env, strings.NewReader("Subject: x\r\n\r\nbody\r\n"))
	if err != nil {
		t.Fatal(err)
	}
	return id
}

// call runs a request through QueueAdmin as Caddy's admin server does:
// an APIError becomes its status and {"error": ...}.
func call(t *testing.T, method, target string) (int, http.Header, []byte) {
	t.Helper()
	w := httptest.NewRecorder()
	r := httptest.NewRequest(method, target, nil)
	err := new(QueueAdmin).serveHTTP(w, r)
	if err != nil {
		var ae caddy.APIError
		if !errors.As(err, &ae) {
			t.Fatalf("%s %s: not an APIError: %v", method, target, err)
		}
		return ae.HTTPStatus, w.Header(), []byte(ae.Error())
	}
	return w.Code, w.Header(), w.Body.Bytes()
}

// TestQueueAdminRoutes: the routes' answers and errors, over an
// unstarted queue (nothing moves but what the API does).
func TestQueueAdminRoutes(t *testing.T) {
	rq := testQueue(t)
	id1 := enqueue(t, rq, "a@client.test", "b@example.test", "c@example.test")
	id2 := enqueue(t, rq, "", "d@example.test")

	code, _, body := call(t, "GET", "/esmtp/queue")
	if code != 200 {
		t.Fatalf("GET list: %d %s", code, body)
	}
	var list []QueueEntry
	if err := json.Unmarshal(body, &list); err != nil {
		t.Fatal(err)
	}
	var e1 *QueueEntry
	for i := range list {
		if list[i].ID == id1 {
			e1 = &list[i]
		}
	}
	if e1 == nil || e1.Dir != rq.dir || e1.From != "a@client.test" || e1.Size != int64(len("Subject: x\r\n\r\nbody\r\n")) ||
		len(e1.Recipients) != 2 || e1.Recipients[1].Addr != "c@example.test" || e1.Recipients[1].State != "pending" ||
		e1.Client.Helo != "client.test" || time.Since(e1.Arrival) > time.Minute {
		t.Fatalf("entry %s in the list: %+v\n%s", id1, e1, body)
	}
	for _, field := range []string{`"id"`, `"dir"`, `"from"`, `"size"`, `"arrival"`, `"age_seconds"`, `"attempts"`, `"recipients"`, `"addr"`, `"state"`} {
		if !bytes.Contains(body, []byte(field)) {
			t.Errorf("the listing lacks %s", field)
		}
	}

	code, _, body = call(t, "GET", "/esmtp/queue?dir="+rq.dir)
	if code != 200 || !bytes.Contains(body, []byte(id2)) {
		t.Errorf("GET ?dir=: %d %s", code, body)
	}
	if code, _, body = call(t, "GET", "/esmtp/queue?dir="+filepath.Join(rq.dir, "nope")); code != 404 {
		t.Errorf("GET ?dir= of no queue: %d %s", code, body)
	}
	code, _, body = call(t, "GET", "/esmtp/queue/"+id2)
	var e2 QueueEntry
	if code != 200 || json.Unmarshal(body, &e2) != nil || e2.ID != id2 || e2.From != "" {
		t.Errorf("GET one: %d %s", code, body)
	}

	for _, c := range []struct {
		method, target string
		code           int
		allow          string
	}{
		{"GET", "/esmtp/queue/NOSUCHID", 404, ""},
		{"GET", "/esmtp/queue/bad.id", 400, ""},
		{"POST", "/esmtp/queue/NOSUCHID/retry", 404, ""},
		{"DELETE", "/esmtp/queue/NOSUCHID", 404, ""},
		{"DELETE", "/esmtp/queue/" + id1 + "?bounce=maybe", 400, ""},
		{"POST", "/esmtp/queue", 405, "GET"},
		{"GET", "/esmtp/queue/flush", 405, "POST"},
		{"GET", "/esmtp/queue/" + id1 + "/retry", 405, "POST"},
		{"PUT", "/esmtp/queue/" + id1, 405, "GET, DELETE"},
		{"GET", "/esmtp/queue/" + id1 + "/nonsense", 404, ""},
	} {
		code, h, body := call(t, c.method, c.target)
		if code != c.code || h.Get("Allow") != c.allow {
			t.Errorf("%s %s: %d (Allow %q) %s, want %d (Allow %q)", c.method, c.target, code, h.Get("Allow"), body, c.code, c.allow)
		}
	}

	if code, _, body = call(t, "POST", "/esmtp/queue/"+id1+"/retry"); code != 200 || !bytes.Contains(body, []byte(`"action": "retry"`)) {
		t.Errorf("retry: %d %s", code, body)
	}
	if code, _, body = call(t, "POST", "/esmtp/queue/flush"); code != 200 || !bytes.Contains(body, []byte(`"entries": 2`)) {
		t.Errorf("flush: %d %s", code, body)
	}

	// Delete without a bounce: gone, nothing queued in its place.
	if code, _, body = call(t, "DELETE", "/esmtp/queue/"+id2); code != 200 {
		t.Errorf("delete: %d %s", code, body)
	}
	if _, err := rq.q.Get(id2); !errors.Is(err, queue.ErrNotFound) {
		t.Errorf("deleted entry still there: %v", err)
	}
	if n := rq.q.Stats().Length; n != 1 {
		t.Errorf("%d entries after a delete without bounce, want 1", n)
	}
	// With a bounce: gone, and the DSN to a@client.test is queued.
	if code, _, body = call(t, "DELETE", "/esmtp/queue/"+id1+"?bounce=true"); code != 200 || !bytes.Contains(body, []byte(`"bounce": true`)) {
		t.Errorf("delete with bounce: %d %s", code, body)
	}
	left := rq.q.List()
	if len(left) != 1 || left[0].From != "" || left[0].Recipients[0].Addr != "a@client.test" {
		t.Errorf("after a delete with bounce the queue holds %+v, want the DSN", left)
	}
	if code, _, _ = call(t, "DELETE", "/esmtp/queue/"+id1); code != 404 {
		t.Errorf("second delete: %d", code)
	}
}

// TestQueueTable: the table of `caddy esmtp queue list`.
func TestQueueTable(t *testing.T) {
	now := time.Date(2026, 3, 3, 12, 0, 0, 0, time.Local)
	entries := []QueueEntry{{
		ID: "06H2K3ABCDEFGHIJ", Dir: "/var/spool/esmtp", From: "a@client.test", Size: 2048,
		Arrival: now.Add(-90 * time.Minute), AgeSeconds: 5400, Attempts: 2, NextAttempt: now.Add(10 * time.Minute),
		Recipients: []QueueRecipient{
			{Addr: "x@defer.test", State: "deferred", Attempts: 2, Reply: &QueueReply{Code: 451, Enhanced: "4.3.0", Text: "Delivery failed: temporary failure"}},
			{Addr: "b@example.test", State: "delivered", Attempts: 1, Reply: &QueueReply{Code: 250, Enhanced: "2.0.0", Text: "OK"}},
		},
	}, {
		ID: "06H2K3ZZZZZZZZZZ", Dir: "/var/spool/esmtp", Size: 100, Arrival: now, NextAttempt: now,
		Recipients: []QueueRecipient{{Addr: "a@client.test", State: "pending"}},
	}}
	var b bytes.Buffer
	writeQueueTable(&b, entries, now)
	out := b.String()
	t.Logf("\n%s", out)
	for _, want := range []string{
		"QUEUE ID", "06H2K3ABCDEFGHIJ  2048", "2026-03-03 10:30:00", "1h", "a@client.test", "next in 10m",
		"x@defer.test", "deferred", "(451 4.3.0 Delivery failed: temporary failure)", "<>", "next now",
		"-- 3 KiB in 2 messages.",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("table lacks %q", want)
		}
	}
	b.Reset()
	writeQueueTable(&b, nil, now)
	if b.String() != "Mail queue is empty\n" {
		t.Errorf("empty: %q", b.String())
	}
}
