package lmtp

import (
	"context"

	"go.uber.org/zap"

	"github.com/caddy-esmtp/caddy-esmtp/session"
)

var replyVerifyUnavailable = session.NewReply(451, "4.4.1", "Recipient cannot be verified now; try again later")

// Rcpt verifies the recipient with the LMTP server when VerifyRecipients
// is set: MAIL FROM (the transaction's sender) and RCPT TO, then RSET, on
// a pooled or new connection. The server's 4xx or 5xx to the RCPT is the
// client's reply; its 250 is no opinion (the next sub-handlers decide).
// A recipient the server could only take with SMTPUTF8, which it does
// not offer, is left to the delivery, which refuses it with 553 5.6.7.
func (l *LMTP) Rcpt(ctx context.Context, s *session.Session, to session.Path, _ session.Params) (*session.Reply, error) {
	if !l.VerifyRecipients {
		return nil, nil
	}
	lhlo := l.LHLOName
	if lhlo == "" {
		lhlo = s.Hostname()
	}
	c := l.take(ctx, lhlo)
	if c == nil {
		var err error
		if c, err = dial(ctx, l.network, l.addr, lhlo, l.timeout(ctx)); err != nil {
			l.logger.Warn("LMTP server not reachable to verify a recipient", zap.String("session", s.ID()),
				zap.String("lmtp", l.Address), zap.Error(err))
			return replyVerifyUnavailable, nil
		}
	}
	release := c.bind(ctx)
	r, err := l.verify(c, s, to)
	release()
	if err != nil || c.broken {
		c.close()
	} else if l.pool != nil {
		l.pool.Put(c.lhlo, c)
	} else {
		go c.quit()
	}
	if err != nil {
		l.logger.Warn("LMTP server failed verifying a recipient", zap.String("session", s.ID()),
			zap.String("lmtp", l.Address), zap.Error(err))
		return replyVerifyUnavailable, nil
	}
	return r, nil
}

// verify runs MAIL, RCPT and RSET on c: the RCPT's refusal, or nil.
func (l *LMTP) verify(c *conn, s *session.Session, to session.Path) (*session.Reply, error) {
	utf8 := c.has("SMTPUTF8")
	if to.UTF8 && !utf8 {
		return nil, nil
	}
	mail := "MAIL FROM:<>"
	if txn := s.Transaction(); txn != nil && (!txn.From.UTF8 || utf8) {
		mail = "MAIL FROM:<" + txn.From.Mailbox + ">"
	}
	if utf8 && to.UTF8 {
		mail += " SMTPUTF8"
	}
	r, err := c.cmd(mail)
	if err != nil {
		c.broken = true
		return nil, err
	}
	var refusal *session.Reply
	if r.code == 250 {
		rr, err := c.cmd("RCPT TO:<" + to.Mailbox + ">")
		if err != nil {
			c.broken = true
			return nil, err
		}
		if rr.code >= 400 {
			refusal = rr.sessionReply()
			if rr.code == 421 {
				c.broken = true
				return nil, &rcptError{rr}
			}
		}
	}
	if rs, err := c.cmd("RSET"); err != nil || rs.code != 250 {
		c.broken = true
	}
	return refusal, nil
}

// rcptError is a 421 to the verifying RCPT: the server is going away.
type rcptError struct{ r *reply }

func (e *rcptError) Error() string { return "RCPT: " + e.r.String() }
