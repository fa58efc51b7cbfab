package session

import (
	"bytes"
	"context"
	"errors"
	"strconv"
	"time"

	"go.uber.org/zap"
)

// dataAllowed checks the state for DATA or BDAT.
func (s *Session) dataAllowed() *Reply {
	switch {
	case s.txn == nil:
		return replyNeedMail
	case len(s.txn.Recipients) == 0 && s.txn.refused > 0:
		return replyNoValidRcpts // RFC 5321 3.3: every RCPT was refused
	case len(s.txn.Recipients) == 0:
		return replyNeedRcpt
	}
	return nil
}

// askData runs the DataHooks; a rejection aborts the transaction.
func (s *Session) askData() *Reply {
	r := askMessage(s, "data", s.srv.hooks.data, func(ctx context.Context, h DataHook) (*Reply, error) {
		return h.Data(ctx, s)
	})
	if r != nil && r.Code >= 400 {
		s.abort(errRejected)
	}
	return r
}

func (s *Session) cmdData(hasArg bool) *Reply {
	if hasArg {
		return replyNoArgs
	}
	if r := s.dataAllowed(); r != nil {
		return r
	}
	if s.txn.chunking {
		return replyDataAfterBdat
	}
	r := s.askData()
	if r != nil && r.Code >= 400 {
		return r
	}
	if s.r.Buffered() > 0 {
		// RFC 2920: DATA ends a pipelined group; the client must wait for
		// the 354. Bytes already here are a synchronisation error.
		s.abort(errRejected)
		return replyEarlyData
	}
	if r == nil || r.Code != 354 {
		r = replyData
	}
	s.writeReply(r, false)
	if err := s.flush(); err != nil {
		s.closing = true
		return nil
	}
	s.startMessage(true)
	for {
		if s.r.Buffered() == 0 {
			if err := s.fill(); err != nil {
				s.dataReadFailed(err)
				return nil
			}
		}
		buf, _ := s.r.Peek(s.r.Buffered())
		n, end := s.dec.decode(buf, &s.asm)
		s.r.Discard(n)
		if end {
			break
		}
	}
	s.endMessage()
	return nil
}

// fill waits for more bytes from the client, within DataTimeout and
// within what is left of the data phase's budget (see spendData).
func (s *Session) fill() error {
	s.setDeadline(s.dataWait(s.cfg.DataTimeout))
	s.useDataReader()
	start := time.Now()
	for {
		_, err := s.r.Peek(1)
		if err != nil && s.drainRetry(err, true) {
			continue
		}
		s.spendData(time.Since(start), s.r.Buffered())
		return err
	}
}

// The data phase (DATA up to its end, or every BDAT of a message, their
// command lines included) is bounded as a whole, the way Postfix bounds it
// with smtpd_min_data_rate and per-request deadlines: it starts with a
// budget of DataTimeout; each read spends the time it waited and earns
// the time its bytes are worth at MinDataRate, never above DataTimeout. A
// client that keeps the data flowing at MinDataRate or faster never runs
// out; one that drips bytes slower does, and gets 421 4.4.2. Time spent in
// sub-handlers is not the client's and is not counted.

// startDataBudget starts the data phase's budget.
func (s *Session) startDataBudget() {
	s.dataBudget = s.cfg.DataTimeout
	s.dataCut = false
}

// dataWait is the read deadline for the next read of the data phase: at
// most limit, and no more than the budget left.
func (s *Session) dataWait(limit time.Duration) time.Duration {
	if s.dataBudget < limit {
		s.dataCut = true // a timeout now is the budget's, not limit's
		return max(s.dataBudget, time.Nanosecond)
	}
	s.dataCut = false
	return limit
}

// spendData charges a read that waited took and brought n bytes.
func (s *Session) spendData(took time.Duration, n int) {
	earned := time.Duration(float64(n) / float64(s.cfg.MinDataRate) * float64(time.Second))
	s.dataBudget = min(s.dataBudget-took+earned, s.cfg.DataTimeout)
}

// dataReadFailed ends the session after a read error inside message data.
func (s *Session) dataReadFailed(err error) {
	s.closing = true
	if s.txn != nil {
		s.abort(errConnectionEnded)
	}
	s.readFailed(err)
}

// isBdat reports whether a command line, well formed or not, is a BDAT:
// its verb is BDAT, followed by anything but a letter or digit. A refused
// BDAT line closes the session, since the chunk that follows could not be
// skipped and must never be read as commands.
func isBdat(line []byte) bool {
	if len(line) < 4 || !bytes.EqualFold(line[:4], []byte("BDAT")) {
		return false
	}
	if len(line) == 4 {
		return true
	}
	c := line[4] | 0x20
	return !(c >= 'a' && c <= 'z') && !(line[4] >= '0' && line[4] <= '9')
}

// parseBdat parses "<size> [LAST]".
func parseBdat(arg []byte) (size int64, last bool, ok bool) {
	num, rest, _ := bytes.Cut(arg, []byte{' '})
	if len(num) == 0 || len(num) > 18 {
		return 0, false, false
	}
	for _, c := range num {
		if c < '0' || c > '9' {
			return 0, false, false
		}
		size = size*10 + int64(c-'0')
	}
	rest = bytes.Trim(rest, " ")
	switch {
	case len(rest) == 0:
		return size, false, true
	case bytes.EqualFold(rest, []byte("LAST")):
		return size, true, true
	}
	return 0, false, false
}

func (s *Session) cmdBdat(arg []byte) *Reply {
	size, last, ok := parseBdat(arg)
	if !ok {
		// Without a size the chunk cannot be skipped safely.
		return replyBdatSyntax
	}
	fail := s.dataAllowed()
	if !s.extended {
		fail = replyNeedEhlo
	}
	if fail == nil && !s.txn.chunking {
		if r := s.askData(); r != nil && r.Code >= 400 {
			fail = r
		} else {
			s.txn.chunking = true
			s.startMessage(false)
		}
	}
	if fail == nil && size > s.cfg.MaxMessageSize-s.asm.size {
		fail = replyTooBig
	}
	if err := s.chunk(size, fail == nil); err != nil {
		s.dataReadFailed(err)
		return nil
	}
	if fail != nil {
		if s.txn != nil {
			s.abort(errRejected)
		}
		return fail
	}
	if !last {
		return NewReply(250, "2.0.0", strconv.FormatInt(size, 10)+" octets received")
	}
	s.dec.finishChunks(&s.asm)
	s.endMessage()
	return nil
}

// chunk reads size bytes of BDAT data, decoding them when keep is true and
// discarding them otherwise (a failed BDAT must still consume its data, or
// it would be read as commands).
func (s *Session) chunk(size int64, keep bool) error {
	for size > 0 {
		if s.r.Buffered() == 0 {
			if err := s.fill(); err != nil {
				return err
			}
		}
		n := int(min(int64(s.r.Buffered()), size))
		if keep {
			buf, _ := s.r.Peek(n)
			s.dec.decode(buf, &s.asm)
		}
		s.r.Discard(n)
		size -= int64(n)
	}
	return nil
}

// startMessage prepares the decoder and the assembler for message data and
// gives the sub-handlers the Received: field and any added fields.
func (s *Session) startMessage(dot bool) {
	s.dec.reset(dot, s.cfg.BareLineEndings == BareNormalize, s.cfg.MaxLineLength)
	if s.srv.hooks.spools {
		s.txn.sp = newSpool(s.srv)
	}
	s.asm.reset(s, s.ctx, s.txn.sp)
	s.startDataBudget()
	if !s.asm.stream {
		return
	}
	s.asm.addedField(s.receivedField())
	for _, h := range s.txn.added {
		s.asm.addedField(h)
	}
}

// endMessage decides the reply at end of data and sends it.
func (s *Session) endMessage() {
	s.asm.finish()
	txn := s.txn
	txn.Size = s.asm.size
	var r *Reply
	switch {
	case s.dec.problem == problemNUL:
		r = replyNUL
	case s.dec.problem == problemLongLine:
		r = replyLongLine
	case s.dec.problem != problemNone:
		r = replyBareCRLF
	case s.asm.tooBig:
		r = replyTooBig
	case s.asm.failure != nil:
		r = replyFromError(s.asm.failure)
	case txn.sp != nil && txn.sp.failure() != nil:
		s.log.Error("spooling the message failed", zap.String("session", s.id), zap.String("queue_id", txn.ID),
			zap.Error(txn.sp.err))
		r = errSpoolReply
	default:
		r = s.judgeAndDeliver()
	}
	if r.Code >= 400 {
		s.abort(errRejected)
	} else {
		s.messages++
		s.strikes = 0 // a client that delivers mail is not misbehaving
		s.endTransaction()
	}
	s.logMessage(txn, r)
	s.cfg.Observer.Message(r.Code, txn.Size, len(txn.Recipients))
	s.reply(r)
	if r.Close {
		s.closing = true
	}
}

func replyFromError(err error) *Reply {
	var r *Reply
	if errors.As(err, &r) && r.valid() && r.Code >= 400 {
		return r
	}
	return replyHandlerFailed
}
