package lmtp

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/caddy-esmtp/caddy-esmtp/session"
)

// Replies of the lmtp sub-handler itself. Failures to talk to the server
// are temporary: the message is sent again later and nothing is lost.
var (
	replyUnreachable = session.NewReply(451, "4.4.1", "Local mail store (LMTP) not reachable; try again later")
	replyConnLost    = session.NewReply(451, "4.4.2", "Connection to the local mail store (LMTP) lost; try again later")
	replyNeedUTF8    = session.NewReply(553, "5.6.7", "Non-ASCII address, and the local mail store (LMTP) does not offer SMTPUTF8")
	replyNeed8Bit    = session.NewReply(554, "5.6.3", "8-bit message, and the local mail store (LMTP) does not offer 8BITMIME")
)

var errNoMessage = errors.New("lmtp: no message to send (the engine spooled none)")

// Deliver hands the message to the LMTP server: MAIL, one RCPT per
// recipient, DATA with the final message, then one reply per recipient
// the server accepted. Each recipient's outcome is given with
// d.SetReply; it returns nil once the exchange took place, and an error
// (451 4.4.x) when the connection failed before any outcome.
func (l *LMTP) Deliver(ctx context.Context, s *session.Session, d *session.Delivery) error {
	if d.Message == nil {
		return errNoMessage
	}
	lhlo := l.LHLOName
	if lhlo == "" {
		lhlo = s.Hostname()
	}
	c := l.take(ctx, lhlo)
	if c == nil {
		var err error
		if c, err = dial(ctx, l.network, l.addr, lhlo, l.timeout(ctx)); err != nil {
			l.logger.Warn("LMTP server not reachable", zap.String("session", s.ID()), zap.String("lmtp", l.Address), zap.Error(err))
			return replyUnreachable
		}
	}
	release := c.bind(ctx)
	x := &exchange{l: l, c: c, s: s, d: d}
	err := x.run(ctx)
	release()
	if c.broken {
		c.close()
	} else if l.pool != nil {
		l.pool.Put(c.lhlo, c)
	} else {
		go c.quit()
	}
	if txn := s.Transaction(); txn != nil {
		txn.AddLogField(zap.String("lmtp", l.Address))
		txn.AddLogField(zap.Int("lmtp_delivered", x.delivered))
	}
	return err // a *session.Reply, or reading the message failed (451 4.3.0)
}

// take returns an idle connection from the pool, or nil.
func (l *LMTP) take(ctx context.Context, lhlo string) *conn {
	if l.pool == nil {
		return nil
	}
	timeout := l.timeout(ctx)
	c, _ := l.pool.Get(lhlo, func(c *conn) bool {
		c.timeout = timeout
		if r, err := c.cmd("RSET"); err != nil || r.code != 250 { // does it still answer?
			c.close()
			return false
		}
		return true
	})
	return c
}

// timeout is the command timeout, never past the hook's deadline.
func (l *LMTP) timeout(ctx context.Context) time.Duration {
	return within(ctx, time.Duration(l.Timeout))
}

func within(ctx context.Context, d time.Duration) time.Duration {
	if dl, ok := ctx.Deadline(); ok {
		if left := time.Until(dl); left < d {
			d = max(left, time.Millisecond)
		}
	}
	return d
}

// exchange is one LMTP transaction of a delivery.
type exchange struct {
	l         *LMTP
	c         *conn
	s         *session.Session
	d         *session.Delivery
	delivered int // recipients the server stored the message for
}

// run sends the envelope and the message and gives each recipient its
// outcome. It leaves the connection between transactions, or broken.
func (x *exchange) run(ctx context.Context) error {
	c, d := x.c, x.d
	utf8 := has(d.MailParams, "SMTPUTF8")
	sendUTF8 := utf8 && c.has("SMTPUTF8")
	if utf8 && !sendUTF8 && d.From.UTF8 {
		return replyNeedUTF8
	}
	mail := "MAIL FROM:<" + d.From.Mailbox + ">"
	if body, _ := d.MailParams.Get("BODY"); strings.EqualFold(body, "8BITMIME") {
		if !c.has("8BITMIME") {
			return replyNeed8Bit
		}
		mail += " BODY=8BITMIME"
	}
	if c.has("SIZE") {
		mail += " SIZE=" + strconv.FormatInt(d.Message.Size(), 10)
	}
	if sendUTF8 {
		mail += " SMTPUTF8"
	}
	r, err := c.cmd(mail)
	if err != nil {
		return x.lost("MAIL", err)
	}
	if r.code != 250 {
		return x.remote(r)
	}
	var accepted []int // the recipients accepted at RCPT, in order
	for i, rc := range d.Recipients {
		if rc.Path.UTF8 && !sendUTF8 {
			d.SetReply(i, replyNeedUTF8)
			continue
		}
		r, err := c.cmd("RCPT TO:<" + rc.Path.Mailbox + ">")
		if err != nil {
			return x.lost("RCPT", err)
		}
		if r.code/100 == 2 {
			accepted = append(accepted, i)
			continue
		}
		d.SetReply(i, x.remote(r))
		if r.code == 421 {
			return x.remote(r)
		}
	}
	if len(accepted) == 0 {
		if r, err := c.cmd("RSET"); err != nil || r.code != 250 {
			c.broken = true
		}
		return nil
	}
	r, err = c.cmd("DATA")
	if err != nil {
		return x.lost("DATA", err)
	}
	if r.code != 354 {
		if r.code != 421 {
			if r, err := c.cmd("RSET"); err != nil || r.code != 250 {
				c.broken = true
			}
		}
		return x.remote(r)
	}
	if err := x.send(); err != nil {
		return err
	}
	// One reply per accepted recipient, in order (RFC 2033 4.2).
	for k, i := range accepted {
		r, err := c.readReply(within(ctx, time.Duration(x.l.DataTimeout)))
		if err != nil {
			if k == 0 {
				return x.lost("end of data", err)
			}
			x.l.logger.Warn("LMTP server failed after the end of data", zap.String("session", x.s.ID()),
				zap.String("lmtp", x.l.Address), zap.Int("answered", k), zap.Int("accepted", len(accepted)), zap.Error(err))
			for _, j := range accepted[k:] {
				d.SetReply(j, replyConnLost)
			}
			return nil
		}
		if r.code/100 == 2 {
			x.delivered++
		}
		d.SetReply(i, x.remote(r))
		if r.code == 421 {
			// The server is closing the connection: the recipients it
			// has not answered are tried again.
			for _, j := range accepted[k+1:] {
				d.SetReply(j, replyConnLost)
			}
			return nil
		}
	}
	return nil
}

// remote is the server's reply r as ours, naming the server (the name
// it gave in LHLO) as the DSN's Remote-MTA.
func (x *exchange) remote(r *reply) *session.Reply {
	rep := r.sessionReply()
	rep.RemoteMTA = x.c.server
	return rep
}

// lost logs a connection that failed at step and returns the reply for
// it.
func (x *exchange) lost(step string, err error) error {
	x.c.broken = true
	x.l.logger.Warn("LMTP connection failed", zap.String("session", x.s.ID()), zap.String("lmtp", x.l.Address),
		zap.String("at", step), zap.Error(err))
	return replyConnLost
}

var copyBuffers = sync.Pool{New: func() any { return new([32 << 10]byte) }}

// send streams the message after DATA's 354 and the final dot. On a
// failure the connection is cut without the final dot, so the server
// discards what it got.
func (x *exchange) send() error {
	buf := copyBuffers.Get().(*[32 << 10]byte)
	defer copyBuffers.Put(buf)
	dw := newDotWriter(x.c.w)
	rd := x.d.Message.Reader()
	for {
		n, rerr := rd.Read(buf[:])
		if n > 0 {
			if err := dw.Write(buf[:n]); err != nil {
				return x.lost("data", err)
			}
		}
		if rerr == io.EOF {
			break
		}
		if rerr != nil {
			x.c.broken = true
			return fmt.Errorf("lmtp: reading the message: %w", rerr)
		}
	}
	if err := dw.Close(); err != nil {
		return x.lost("data", err)
	}
	return nil
}

// has reports whether the parameter key is present.
func has(ps session.Params, key string) bool {
	_, ok := ps.Get(key)
	return ok
}
