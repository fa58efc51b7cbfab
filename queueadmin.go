package esmtp

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2"

	"github.com/caddy-esmtp/caddy-esmtp/queue"
)

func init() {
	caddy.RegisterModule(QueueAdmin{})
}

// QueueAdmin is the admin API module admin.api.esmtp_queue: the open
// queues of this process (every esmtp handler's `queue`) on Caddy's admin
// endpoint. Caddy mounts it by itself; it has no configuration.
//
//	GET    /esmtp/queue[?dir=<dir>]          every entry, as a JSON array of QueueEntry
//	GET    /esmtp/queue/<id>[?dir=<dir>]     one entry
//	POST   /esmtp/queue/flush[?dir=<dir>]    every entry's next attempt now
//	POST   /esmtp/queue/<id>/retry           the entry's next attempt now
//	DELETE /esmtp/queue/<id>[?bounce=true]   remove the entry (with a DSN to the sender)
//
// `caddy esmtp queue` is the same from the command line.
type QueueAdmin struct{}

// CaddyModule returns the Caddy module information.
func (QueueAdmin) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "admin.api.esmtp_queue",
		New: func() caddy.Module { return new(QueueAdmin) },
	}
}

// queueAPIPath is where the routes of QueueAdmin start.
const queueAPIPath = "/esmtp/queue"

// Routes returns the routes of /esmtp/queue.
func (a *QueueAdmin) Routes() []caddy.AdminRoute {
	h := caddy.AdminHandlerFunc(a.serveHTTP)
	return []caddy.AdminRoute{
		{Pattern: queueAPIPath, Handler: h},
		{Pattern: queueAPIPath + "/", Handler: h},
	}
}

// QueueEntry is one queued message as the admin API and `caddy esmtp
// queue list --json` show it.
type QueueEntry struct {
	// ID is the queue id (also in the 250 reply, the log and Received:).
	ID string `json:"id"`
	// Dir is the absolute directory of the queue that holds the entry.
	Dir string `json:"dir"`
	// From is the envelope sender, "" for the null sender (a bounce).
	From string `json:"from"`
	// Size is the message's size in bytes.
	Size int64 `json:"size"`
	// Arrival is when the message was accepted.
	Arrival time.Time `json:"arrival"`
	// AgeSeconds is the time since Arrival, in whole seconds.
	AgeSeconds int64 `json:"age_seconds"`
	// Attempts counts the delivery passes over the message so far.
	Attempts int `json:"attempts"`
	// NextAttempt is when the next pass is due; absent when none is
	// scheduled.
	NextAttempt time.Time `json:"next_attempt,omitzero"`
	// EnvID is MAIL's ENVID=, if any.
	EnvID string `json:"envid,omitempty"`
	// Client is the session that sent the message.
	Client queue.Client `json:"client,omitzero"`
	// Recipients are the message's recipients with their states.
	Recipients []QueueRecipient `json:"recipients"`
}

// QueueRecipient is one recipient of a QueueEntry.
type QueueRecipient struct {
	// Addr is the recipient's mailbox.
	Addr string `json:"addr"`
	// State is "pending" (not tried yet), "deferred" (the last attempt
	// failed temporarily), "delivered" or "failed".
	State string `json:"state"`
	// Attempts counts the delivery attempts for this recipient.
	Attempts int `json:"attempts"`
	// LastAttempt is when the last attempt ended; absent before any.
	LastAttempt time.Time `json:"last_attempt,omitzero"`
	// Reply is the last attempt's reply; absent before any.
	Reply *QueueReply `json:"reply,omitempty"`
	// Reason says why a failed recipient failed without a 5xx reply:
	// "expired" (too old) or "deleted" (deleted with a bounce).
	Reason string `json:"reason,omitempty"`
	// Notify is RCPT's NOTIFY= as sent, if any.
	Notify string `json:"notify,omitempty"`
}

// QueueReply is the reply of a recipient's last delivery attempt.
type QueueReply struct {
	// Code is the SMTP reply code (4xx: retried; 5xx: failed).
	Code int `json:"code"`
	// Enhanced is the enhanced status code ("4.3.0"), if any.
	Enhanced string `json:"enhanced,omitempty"`
	// Text is the reply's text, lines joined by a space.
	Text string `json:"text,omitempty"`
	// RemoteMTA is the host that gave the reply, absent for a local one.
	RemoteMTA string `json:"remote_mta,omitempty"`
	// TLSPolicy is the TLS policy the relay applied toward RemoteMTA
	// ("dane", "opportunistic"), if any.
	TLSPolicy string `json:"tls_policy,omitempty"`
}

// QueueAction is the answer to a flush, retry or delete.
type QueueAction struct {
	// Action is "flush", "retry" or "delete".
	Action string `json:"action"`
	// ID is the entry acted on (retry, delete).
	ID string `json:"id,omitempty"`
	// Dir is the queue directory of the entry (retry, delete).
	Dir string `json:"dir,omitempty"`
	// Entries counts the entries flushed (flush).
	Entries int `json:"entries,omitempty"`
	// Bounce is true for a delete that failed the recipients not yet
	// delivered and notified the sender (delete).
	Bounce bool `json:"bounce,omitempty"`
}

// queueEntryOf is the API's form of e, a queue entry of dir.
func queueEntryOf(dir string, e *queue.Entry, now time.Time) QueueEntry {
	qe := QueueEntry{ID: e.ID, Dir: dir, From: e.From, Size: e.Size, Arrival: e.Arrival,
		AgeSeconds: int64(max(now.Sub(e.Arrival), 0) / time.Second), Attempts: e.Attempts,
		NextAttempt: e.NextAttempt, EnvID: e.EnvID, Client: e.Client,
		Recipients: make([]QueueRecipient, 0, len(e.Recipients))}
	for _, r := range e.Recipients {
		qr := QueueRecipient{Addr: r.Addr, State: string(r.State), Attempts: r.Attempts,
			LastAttempt: r.LastAttempt, Reason: r.Reason, Notify: r.Notify}
		if r.Reply != nil {
			qr.Reply = &QueueReply{Code: r.Reply.Code, Enhanced: r.Reply.Enhanced, Text: r.Reply.Text, RemoteMTA: r.Reply.RemoteMTA, TLSPolicy: r.Reply.TLSPolicy}
		}
		qe.Recipients = append(qe.Recipients, qr)
	}
	return qe
}

// openQueues returns the queues open in this process, by directory.
func openQueues() []*runningQueue {
	var out []*runningQueue
	queues.Range(func(_, v any) bool {
		if rq, ok := v.(*runningQueue); ok && rq != nil && rq.q != nil {
			out = append(out, rq)
		}
		return true
	})
	slices.SortFunc(out, func(a, b *runningQueue) int { return cmp.Compare(a.dir, b.dir) })
	return out
}

// selectQueues returns the open queues, or the one of the request's dir
// parameter.
func selectQueues(r *http.Request) ([]*runningQueue, error) {
	all := openQueues()
	dir := r.URL.Query().Get("dir")
	if dir == "" {
		return all, nil
	}
	abs, err := filepath.Abs(dir)
	if err != nil {
		return nil, caddy.APIError{HTTPStatus: http.StatusBadRequest, Err: fmt.Errorf("dir: %v", err)}
	}
	for _, rq := range all {
		if rq.dir == abs {
			return []*runningQueue{rq}, nil
		}
	}
	return nil, caddy.APIError{HTTPStatus: http.StatusNotFound, Err: fmt.Errorf("no open queue in %s", abs)}
}

// findEntry returns the queue that holds entry id (with its entry).
func findEntry(r *http.Request, id string) (*runningQueue, *queue.Entry, error) {
	if !queue.ValidID(id) {
		return nil, nil, caddy.APIError{HTTPStatus: http.StatusBadRequest, Err: fmt.Errorf("invalid queue id %q", id)}
	}
	qs, err := selectQueues(r)
	if err != nil {
		return nil, nil, err
	}
	var found *runningQueue
	var entry *queue.Entry
	for _, rq := range qs {
		e, err := rq.q.Get(id)
		if err != nil {
			continue
		}
		if found != nil {
			return nil, nil, caddy.APIError{HTTPStatus: http.StatusConflict,
				Err: fmt.Errorf("queue id %s is in %s and in %s: choose one with ?dir=", id, found.dir, rq.dir)}
		}
		found, entry = rq, e
	}
	if found == nil {
		return nil, nil, caddy.APIError{HTTPStatus: http.StatusNotFound, Err: fmt.Errorf("queue id %s not found", id)}
	}
	return found, entry, nil
}

func (a *QueueAdmin) serveHTTP(w http.ResponseWriter, r *http.Request) error {
	rest, ok := strings.CutPrefix(r.URL.Path, queueAPIPath)
	if !ok {
		return caddy.APIError{HTTPStatus: http.StatusNotFound, Err: errors.New("not found")}
	}
	parts := strings.Split(strings.Trim(rest, "/"), "/")
	switch {
	case rest == "" || rest == "/":
		if err := allow(w, r, http.MethodGet); err != nil {
			return err
		}
		return a.list(w, r)
	case len(parts) == 1 && parts[0] == "flush":
		if err := allow(w, r, http.MethodPost); err != nil {
			return err
		}
		return a.flush(w, r)
	case len(parts) == 1:
		if err := allow(w, r, http.MethodGet, http.MethodDelete); err != nil {
			return err
		}
		if r.Method == http.MethodDelete {
			return a.delete(w, r, parts[0])
		}
		rq, e, err := findEntry(r, parts[0])
		if err != nil {
			return err
		}
		return writeJSON(w, queueEntryOf(rq.dir, e, time.Now()))
	case len(parts) == 2 && parts[1] == "retry":
		if err := allow(w, r, http.MethodPost); err != nil {
			return err
		}
		return a.retry(w, r, parts[0])
	}
	return caddy.APIError{HTTPStatus: http.StatusNotFound, Err: fmt.Errorf("no such resource: %s", r.URL.Path)}
}

// allow answers 405 (with Allow) to a method not among methods.
func allow(w http.ResponseWriter, r *http.Request, methods ...string) error {
	if slices.Contains(methods, r.Method) {
		return nil
	}
	w.Header().Set("Allow", strings.Join(methods, ", "))
	return caddy.APIError{HTTPStatus: http.StatusMethodNotAllowed, Err: fmt.Errorf("method %s not allowed on %s", r.Method, r.URL.Path)}
}

func (a *QueueAdmin) list(w http.ResponseWriter, r *http.Request) error {
	qs, err := selectQueues(r)
	if err != nil {
		return err
	}
	now := time.Now()
	out := []QueueEntry{}
	for _, rq := range qs {
		for _, e := range rq.q.List() {
			out = append(out, queueEntryOf(rq.dir, e, now))
		}
	}
	return writeJSON(w, out)
}

func (a *QueueAdmin) flush(w http.ResponseWriter, r *http.Request) error {
	qs, err := selectQueues(r)
	if err != nil {
		return err
	}
	n := 0
	for _, rq := range qs {
		n += rq.q.Stats().Length
		rq.q.Flush()
	}
	return writeJSON(w, QueueAction{Action: "flush", Entries: n})
}

func (a *QueueAdmin) retry(w http.ResponseWriter, r *http.Request, id string) error {
	rq, _, err := findEntry(r, id)
	if err != nil {
		return err
	}
	if err := rq.q.Retry(id); err != nil {
		return queueError(id, err)
	}
	return writeJSON(w, QueueAction{Action: "retry", ID: id, Dir: rq.dir})
}

func (a *QueueAdmin) delete(w http.ResponseWriter, r *http.Request, id string) error {
	bounce := false
	if v := r.URL.Query().Get("bounce"); v != "" {
		b, err := strconv.ParseBool(v)
		if err != nil {
			return caddy.APIError{HTTPStatus: http.StatusBadRequest, Err: fmt.Errorf("bounce: %q is not true or false", v)}
		}
		bounce = b
	}
	rq, _, err := findEntry(r, id)
	if err != nil {
		return err
	}
	// Delete waits for a delivery pass under way over the entry.
	ctx, cancel := context.WithTimeout(r.Context(), 30*time.Second)
	defer cancel()
	if err := rq.q.Delete(ctx, id, bounce); err != nil {
		return queueError(id, err)
	}
	return writeJSON(w, QueueAction{Action: "delete", ID: id, Dir: rq.dir, Bounce: bounce})
}

// queueError is the API error of a queue operation on entry id.
func queueError(id string, err error) error {
	if errors.Is(err, queue.ErrNotFound) {
		return caddy.APIError{HTTPStatus: http.StatusNotFound, Err: fmt.Errorf("queue id %s not found", id)}
	}
	return caddy.APIError{HTTPStatus: http.StatusInternalServerError, Err: fmt.Errorf("queue id %s: %v", id, err)}
}

func writeJSON(w http.ResponseWriter, v any) error {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return caddy.APIError{HTTPStatus: http.StatusInternalServerError, Err: err}
	}
	w.Header().Set("Content-Type", "application/json")
	_, err = w.Write(append(b, '\n'))
	return err
}

// Interface guards
var _ caddy.AdminRouter = (*QueueAdmin)(nil)
