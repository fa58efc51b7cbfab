package webhook

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
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
func (w *Webhook) deliver(ctx context.Context, s *session.Session, sp *spool) result {
	var deadline time.Time
	if dl, ok := ctx.Deadline(); ok {
		// Keep a little time to answer before the engine's
		// handler_timeout fails the hook on its own.
		left := time.Until(dl)
		deadline = dl.Add(-min(left/10, time.Second))
	}
	header := w.requestHeader(s, sp)
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
		w.attempt(ctx, timeout, header, sp, &res)
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
func (w *Webhook) attempt(ctx context.Context, timeout time.Duration, header http.Header, sp *spool, res *result) {
	actx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(actx, http.MethodPost, w.url, sp.reader())
	if err != nil {
		res.err = err
		return
	}
	req.ContentLength = sp.size
	req.GetBody = func() (io.ReadCloser, error) { return sp.reader(), nil }
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
