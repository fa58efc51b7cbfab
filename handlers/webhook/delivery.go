package webhook

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/caddy-esmtp/caddy-esmtp/session"
)

// result is the outcome of a delivery.
type result struct {
	ok, permanent bool
	attempts      int
	status        int    // the last HTTP status, 0 for none
	statusText    string // "404 Not Found"
	snippet       string // the start of the last response body
	err           error  // the last transport error, or the status as an error
}

// deliver POSTs until success, a permanent failure, the last retry, or the
// end of the time the engine gives the hook.
func (w *Webhook) deliver(ctx context.Context, s *session.Session, header http.Header, p *payload) result {
	var deadline time.Time
	if dl, ok := ctx.Deadline(); ok {
		// Keep a little time to answer before the engine's
		// handler_timeout fails the hook on its own.
		left := time.Until(dl)
		deadline = dl.Add(-min(left/10, time.Second))
	}
	backoff := time.Duration(w.Backoff)
	var res result
	for {
		timeout := time.Duration(w.Timeout)
		if !deadline.IsZero() {
			timeout = min(timeout, time.Until(deadline))
		}
		if timeout <= 0 {
			if res.err == nil {
				res.err = context.DeadlineExceeded
			}
			return res
		}
		res.attempts++
		w.attempt(ctx, timeout, header, p, &res)
		if res.ok || res.permanent || res.attempts > w.retries {
			return res
		}
		if !deadline.IsZero() && time.Now().Add(backoff).After(deadline) {
			return res // no time left for another attempt
		}
		if w.logger.Core().Enabled(zap.DebugLevel) {
			w.logger.Debug("webhook attempt failed; retrying", zap.String("queue_id", s.Transaction().ID),
				zap.Int("attempt", res.attempts), zap.Int("status", res.status), zap.Error(res.err), zap.Duration("backoff", backoff))
		}
		t := time.NewTimer(backoff)
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			res.err = ctx.Err()
			return res
		}
		backoff *= 2
	}
}

// attempt makes one POST and records its outcome in res.
func (w *Webhook) attempt(ctx context.Context, timeout time.Duration, header http.Header, p *payload, res *result) {
	actx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var bodies attemptBodies
	defer bodies.end()
	req, err := http.NewRequestWithContext(actx, http.MethodPost, w.url, bodies.open(p))
	if err != nil {
		res.err = err
		return
	}
	req.ContentLength = p.size
	req.GetBody = func() (io.ReadCloser, error) { return bodies.open(p), nil }
	req.Header = header.Clone()
	if host := header.Get("Host"); host != "" {
		req.Host = host
		req.Header.Del("Host")
	}
	resp, err := w.client.Do(req)
	if err != nil {
		res.status, res.statusText, res.snippet = 0, "", ""
		res.err = err
		return
	}
	defer resp.Body.Close()
	var snippet [512]byte
	n, _ := io.ReadFull(resp.Body, snippet[:])
	io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10)) // to reuse the connection
	res.status = resp.StatusCode
	res.statusText = strings.TrimSpace(resp.Status)
	if res.statusText == "" || !strings.HasPrefix(res.statusText, strconv.Itoa(resp.StatusCode)) {
		res.statusText = fmt.Sprintf("%d %s", resp.StatusCode, http.StatusText(resp.StatusCode))
	}
	res.snippet = strings.ToValidUTF8(string(snippet[:n]), "\uFFFD")
	switch c := resp.StatusCode; {
	case c >= 200 && c < 300:
		res.ok, res.err = true, nil
	case w.permanent[c]:
		res.permanent, res.err = true, fmt.Errorf("status %s", res.statusText)
	default:
		res.err = fmt.Errorf("status %s", res.statusText)
	}
}

// attemptBodies are the request bodies of one attempt: the first and any
// the transport asks for again (GetBody). The transport may still read a
// body after Do returned (a receiver that answered before reading it all);
// end makes every body fail from then on, so nothing reads the message
// once the delivery is over and the engine frees its spool.
type attemptBodies struct {
	mu     sync.Mutex
	bodies []*body
}

// open returns a new body reading p from its start.
func (a *attemptBodies) open(p *payload) *body {
	b := &body{r: p.open()}
	a.mu.Lock()
	a.bodies = append(a.bodies, b)
	a.mu.Unlock()
	return b
}

// end closes every body, waiting for a read in progress to return.
func (a *attemptBodies) end() {
	a.mu.Lock()
	defer a.mu.Unlock()
	for _, b := range a.bodies {
		b.Close()
	}
}

// body is a request body that fails once closed.
type body struct {
	mu     sync.Mutex
	r      io.Reader
	closed bool
}

var errBodyClosed = errors.New("webhook: request body read after its attempt ended")

// Read reads from the message, or fails once the body is closed.
func (b *body) Read(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		return 0, errBodyClosed
	}
	return b.r.Read(p)
}

// Close makes later reads fail.
func (b *body) Close() error {
	b.mu.Lock()
	b.closed = true
	b.r = nil
	b.mu.Unlock()
	return nil
}
