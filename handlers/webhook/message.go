package webhook

import (
	"context"
	"errors"
	"net/http"
	"strconv"

	"go.uber.org/zap"

	"github.com/caddy-esmtp/caddy-esmtp/session"
)

// errNoMessage is a delivery without a message: the engine spools every
// message a DeliverHook is given, so this is a bug, answered 451 4.3.0.
var errNoMessage = errors.New("webhook: the engine gave no message to deliver")

// Deliver POSTs the final message of d, retrying as configured; it
// returns nil once the receiver answered 2xx, a 554 5.6.0 reply for a
// status listed in PermanentStatuses, and a 451 4.3.0 reply otherwise.
func (w *Webhook) Deliver(ctx context.Context, s *session.Session, d *session.Delivery) error {
	txn := s.Transaction()
	if d.Message == nil {
		return errNoMessage
	}
	p, err := w.payload(s, d)
	if err != nil {
		w.logger.Error("reading the message", zap.String("queue_id", txn.ID), zap.Error(err))
		return errors.Join(errReadReply, err)
	}
	res := w.deliver(ctx, s, w.requestHeader(s, d, p.signature), p)
	txn.AddLogField(zap.Int("webhook_attempts", res.attempts))
	if res.status != 0 {
		txn.AddLogField(zap.Int("webhook_status", res.status))
	}
	if res.err != nil {
		txn.AddLogField(zap.String("webhook_error", res.err.Error()))
	}
	switch {
	case res.ok:
		return nil
	case res.permanent:
		w.logger.Warn("message rejected by webhook", zap.String("queue_id", txn.ID), zap.String("url", w.url),
			zap.Int("status", res.status), zap.String("response", res.snippet))
		return session.NewReply(554, "5.6.0", "Rejected by webhook: "+statusName(res.status))
	default:
		w.logger.Error("webhook delivery failed", zap.String("queue_id", txn.ID), zap.String("url", w.url),
			zap.Int("attempts", res.attempts), zap.Int("status", res.status), zap.String("response", res.snippet), zap.Error(res.err))
		if res.status != 0 {
			return session.NewReply(451, "4.3.0", "Delivery failed: webhook answered "+statusName(res.status)+"; try again later")
		}
		return session.NewReply(451, "4.3.0", "Delivery failed; try again later")
	}
}

// errReadReply answers a message the webhook could not read from the
// engine's spool.
var errReadReply = session.NewReply(451, "4.3.0", "Local error in processing; try again later")

// statusName is an HTTP status as the client is told it: the code and its
// standard text ("404 Not Found"), never the receiver's own reason phrase.
func statusName(code int) string {
	if text := http.StatusText(code); text != "" {
		return strconv.Itoa(code) + " " + text
	}
	return strconv.Itoa(code)
}
