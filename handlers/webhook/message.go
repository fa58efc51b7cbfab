package webhook

import (
	"context"
	"errors"
	"net/http"
	"strconv"

	"go.uber.org/zap"

	spoolfile "github.com/caddy-esmtp/caddy-esmtp/internal/spool"
	"github.com/caddy-esmtp/caddy-esmtp/session"
)

// Header starts the spool on the first field (the Received: field) and
// writes each field.
func (w *Webhook) Header(_ context.Context, s *session.Session, h session.HeaderField) error {
	sp := spoolfile.Get[*spool](s, w)
	if sp == nil {
		var err error
		if sp, err = w.start(s); err != nil {
			w.logger.Error("creating the spool file", zap.String("queue_id", s.Transaction().ID), zap.String("dir", w.TempDir), zap.Error(err))
			return spoolfile.ErrReply
		}
		spoolfile.Set(s, w, sp)
	}
	if w.json {
		sp.header(h)
	} else {
		sp.write(h.Raw)
	}
	return w.check(s, sp)
}

// EndOfHeaders writes the blank line that ended the header section (raw),
// or ends the header list and starts the body string (json).
func (w *Webhook) EndOfHeaders(_ context.Context, s *session.Session, raw []byte) error {
	sp := spoolfile.Get[*spool](s, w)
	if sp == nil {
		return nil
	}
	if w.json {
		sp.writeString(`],"body":"`)
	} else {
		sp.write(raw)
	}
	return w.check(s, sp)
}

// Body writes a body chunk.
func (w *Webhook) Body(_ context.Context, s *session.Session, chunk []byte) error {
	sp := spoolfile.Get[*spool](s, w)
	if sp == nil {
		return nil
	}
	if w.json {
		sp.text(chunk)
	} else {
		sp.write(chunk)
	}
	return w.check(s, sp)
}

func (w *Webhook) check(s *session.Session, sp *spool) error {
	if sp.err != nil {
		w.logger.Error("writing the spool file", zap.String("queue_id", s.Transaction().ID), zap.Error(sp.err))
		return spoolfile.ErrReply
	}
	return nil
}

// EndOfMessage POSTs the message, retrying as configured; it returns nil
// once the receiver answered 2xx, so later sub-handlers are asked too.
func (w *Webhook) EndOfMessage(ctx context.Context, s *session.Session) (*session.Reply, error) {
	txn := s.Transaction()
	sp := spoolfile.Get[*spool](s, w)
	if sp == nil {
		return nil, errors.New("webhook: no message data was streamed")
	}
	spoolfile.Set(s, w, nil)
	defer sp.Close()
	if w.json {
		sp.flushText()
		sp.writeString(`"}`)
	}
	if err := sp.finish(); err != nil {
		w.logger.Error("writing the spool file", zap.String("queue_id", txn.ID), zap.Error(err))
		return spoolfile.ErrReply, nil
	}
	res := w.deliver(ctx, s, sp)
	txn.AddLogField(zap.Int("webhook_attempts", res.attempts))
	if res.status != 0 {
		txn.AddLogField(zap.Int("webhook_status", res.status))
	}
	if res.err != nil {
		txn.AddLogField(zap.String("webhook_error", res.err.Error()))
	}
	switch {
	case res.ok:
		return nil, nil
	case res.permanent:
		w.logger.Warn("message rejected by webhook", zap.String("queue_id", txn.ID), zap.String("url", w.url),
			zap.Int("status", res.status), zap.String("response", res.snippet))
		return session.NewReply(554, "5.6.0", "Rejected by webhook: "+statusName(res.status)), nil
	default:
		w.logger.Error("webhook delivery failed", zap.String("queue_id", txn.ID), zap.String("url", w.url),
			zap.Int("attempts", res.attempts), zap.Int("status", res.status), zap.String("response", res.snippet), zap.Error(res.err))
		if res.status != 0 {
			return session.NewReply(451, "4.3.0", "Delivery failed: webhook answered "+statusName(res.status)+"; try again later"), nil
		}
		return session.NewReply(451, "4.3.0", "Delivery failed; try again later"), nil
	}
}

// statusName is an HTTP status as the client is told it: the code and its
// standard text ("404 Not Found"), never the receiver's own reason phrase.
func statusName(code int) string {
	if text := http.StatusText(code); text != "" {
		return strconv.Itoa(code) + " " + text
	}
	return strconv.Itoa(code)
}

// Abort closes the spool of a transaction that ended without delivery.
func (w *Webhook) Abort(s *session.Session, _ error) {
	spoolfile.Abort[*spool](s, w)
}
