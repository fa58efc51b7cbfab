package session

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net"
	"sync"
	"syscall"
	"time"

	"go.uber.org/zap"
)

// Read and write buffers are pooled: a session holds its reader for its
// life, and its writer only between a command and the flush of its replies,
// so an idle session costs one 4 KiB buffer.
//
// While message data streams in, the session reads through a larger reader
// instead (dataReaderSize), so a message costs a few reads rather than one
// per 4 KiB; it swaps only when the buffer it leaves is empty, so no byte
// is lost, and swaps back at the next command.
var (
	readerPool     = sync.Pool{New: func() any { return bufio.NewReaderSize(nil, 4096) }}
	dataReaderPool = sync.Pool{New: func() any { return bufio.NewReaderSize(nil, dataReaderSize) }}
	writerPool     = sync.Pool{New: func() any { return bufio.NewWriterSize(nil, 4096) }}
)

// dataReaderSize is the read buffer while message data streams in.
const dataReaderSize = 32 << 10

func getReader(conn net.Conn) *bufio.Reader {
	r := readerPool.Get().(*bufio.Reader)
	r.Reset(conn)
	return r
}

// useDataReader switches to the large reader for message data. The
// current reader must be empty.
func (s *Session) useDataReader() {
	if s.inDataReader() || s.r.Buffered() > 0 {
		return
	}
	r := dataReaderPool.Get().(*bufio.Reader)
	r.Reset(s.conn)
	s.putReader()
	s.r = r
}

// useCommandReader switches back to the small reader once the large one
// is empty.
func (s *Session) useCommandReader() {
	if !s.inDataReader() || s.r.Buffered() > 0 {
		return
	}
	r := getReader(s.conn)
	s.putReader()
	s.r = r
}

// inDataReader reports whether the session reads through the large reader.
func (s *Session) inDataReader() bool { return s.r.Size() == dataReaderSize }

// putReader gives the session's reader back to its pool.
func (s *Session) putReader() {
	pool := &readerPool
	if s.inDataReader() {
		pool = &dataReaderPool
	}
	s.r.Reset(nil)
	pool.Put(s.r)
	s.r = nil
}

// release returns the session's buffers to their pools at its end.
func (s *Session) release() {
	s.flush()
	if s.asm.s != nil {
		s.asm.releaseChunk()
	}
	s.putReader()
}

// flush sends the queued replies and gives the writer back to its pool.
func (s *Session) flush() error {
	if s.w == nil {
		return nil
	}
	err := s.w.Flush()
	s.w.Reset(nil)
	writerPool.Put(s.w)
	s.w = nil
	return err
}

// deadlineWriter gives each write to the client a fresh CommandTimeout
// deadline, so a client that stops reading cannot hold the session, and
// time spent idle or in hooks never eats into the time to send a reply.
type deadlineWriter struct{ s *Session }

func (w deadlineWriter) Write(p []byte) (int, error) {
	d := time.Now().Add(w.s.cfg.CommandTimeout)
	if w.s.draining.Load() {
		if g := time.Unix(0, w.s.srv.graceEnd.Load()).Add(lastWordTime); g.Before(d) {
			d = g // once draining, no write outlives the grace period
		}
	}
	w.s.raw.SetWriteDeadline(d)
	return w.s.conn.Write(p)
}

// interrupt wakes a session blocked in a read so it notices the drain.
func (s *Session) interrupt() {
	s.draining.Store(true)
	s.raw.SetReadDeadline(time.Now())
}

// cut ends a session that outlived the grace period (see
// Server.cutSessions). It may run while the session runs.
func (s *Session) cut() {
	s.cancel()
	s.raw.SetDeadline(time.Now())
}

// run carries the conversation until it ends.
func (s *Session) run() (err error) {
	defer func() {
		if s.streamCancel != nil {
			s.streamCancel()
		}
	}()
	defer func() {
		if s.txn != nil {
			s.abort(errConnectionEnded)
		}
		for _, h := range s.srv.hooks.close {
			s.callClose(h)
		}
		s.flush()
		// A session that carried messages and ended cleanly is told by
		// their lines; its own line is for the others (probes, refused
		// or failed sessions), and for debug.
		level := zap.InfoLevel
		if s.messages > 0 && s.errors == 0 && err == nil {
			level = zap.DebugLevel
		}
		if ce := s.log.Check(level, "session closed"); ce != nil {
			ce.Write(
				zap.String("session", s.id),
				zap.String("remote", s.remoteString()),
				zap.String("helo", s.heloString()),
				zap.Int("messages", s.messages),
				zap.Int("errors", s.errors),
				zap.Duration("duration", time.Since(s.start)),
				zap.NamedError("error", err))
		}
	}()

	if s.cfg.RejectEarlyTalkers && s.talkedEarly() {
		s.reply(replyEarlyTalker)
		return s.flush()
	}
	greeting := ask(s, "connect", s.srv.hooks.connect, connectCall(s))
	if greeting == nil {
		greeting = s.defaultGreeting()
	}
	s.writeReply(greeting, false)
	if greeting.Code >= 400 || greeting.Close {
		return s.flush()
	}

	for {
		if s.draining.Load() && s.txn == nil {
			s.reply(replyShuttingDown)
			return s.flush()
		}
		line, status, err := s.readCommand()
		if err != nil {
			return s.readFailed(err)
		}
		var r *Reply
		switch status {
		case lineEndless:
			s.errors++
			s.reply(replyLineEndless)
			return s.flush()
		case lineTooLong:
			r = replyLineTooLong
			if isBdat(line) {
				r = replyBdatSyntax
			}
		case lineBadEnding:
			r = replyBadLineEnding
			if isBdat(line) {
				r = replyBdatSyntax
			}
		default:
			r = s.command(line)
		}
		if r == nil { // the command sent its own reply (DATA, BDAT)
			if s.closing {
				return s.flush()
			}
			continue
		}
		if protocolError(r) {
			s.errors++
			if s.strikes++; s.strikes > s.cfg.MaxErrors {
				s.reply(replyTooManyErrors)
				return s.flush()
			}
		}
		s.reply(r)
		if r.Close || s.closing {
			return s.flush()
		}
	}
}

// protocolError reports whether a reply answers a client's protocol error,
// which counts toward MaxErrors as Postfix's smtpd_hard_error_limit counts
// them: a syntax error (500, 501, 555), an unknown or unimplemented command
// (500, 502, 504), a command out of sequence (503), a command before the
// STARTTLS it needs (530), failed authentication (535). A refusal on policy
// grounds (550-554 at MAIL or RCPT: unknown user, a blocklist, a refused
// message) or any 4xx does not: it is a verdict on the mail, not a client
// that misspeaks, and a real MTA reusing its connection gets many of them.
func protocolError(r *Reply) bool {
	switch r.Code {
	case 500, 501, 502, 503, 504, 530, 535, 555:
		return true
	}
	return false
}

// talkedEarly waits GreetDelay for the client to send something before
// the greeting, which an SMTP client must never do (RFC 5321 3.1): spam
// software that does not wait is caught this way.
func (s *Session) talkedEarly() bool {
	s.raw.SetReadDeadline(time.Now().Add(s.cfg.GreetDelay))
	_, err := s.r.Peek(1)
	s.raw.SetReadDeadline(time.Time{})
	return err == nil
}

// connectCall asks a ConnectHook about this session.
func connectCall(s *Session) func(context.Context, ConnectHook) (*Reply, error) {
	return func(ctx context.Context, h ConnectHook) (*Reply, error) { return h.Connect(ctx, s) }
}

// defaultGreeting is "220 <hostname> ESMTP [<greeting>]".
func (s *Session) defaultGreeting() *Reply {
	text := s.cfg.Hostname + " ESMTP"
	if s.cfg.Greeting != "" {
		text += " " + s.cfg.Greeting
	}
	return &Reply{Code: 220, Lines: []string{text}}
}

// readFailed turns a read error into the session's end.
func (s *Session) readFailed(err error) error {
	var ne net.Error
	switch {
	case errors.As(err, &ne) && ne.Timeout():
		switch {
		case s.draining.Load():
			s.reply(replyShuttingDown)
		case s.dataCut:
			s.reply(replyDataTooSlow)
		default:
			s.reply(replyTimeout)
		}
		s.flush()
		return nil
	case clientGone(err):
		return nil
	}
	return err
}

// lineStatus says what readCommand found.
type lineStatus uint8

const (
	lineOK        lineStatus = iota
	lineTooLong              // over the limit; discarded up to its end
	lineBadEnding            // ended in a bare LF; the line is returned as read
	lineEndless              // over maxEndlessLine with no end: the session is closed
)

// Command line limits: RFC 5321 4.5.3.1.4 gives 512 octets; MAIL and RCPT
// may be longer by their parameters (RFC 1869), AUTH by its initial response
// (12288 octets, RFC 4954).
const (
	maxCommandLine  = 512
	maxMailRcptLine = 4096
	maxAuthLine     = 12288 + 64
	maxEndlessLine  = 1 << 20
)

// readCommand reads one command line within CommandTimeout, flushing pending
// replies first when the client has nothing more buffered (so a pipelined
// batch is answered in one write). The line is returned without its CRLF
// and is valid until the next read.
//
// Between the BDAT chunks of a message the data phase's budget bounds the
// command lines too (see spendData), so a drip-fed BDAT is cut as a
// drip-fed DATA is.
func (s *Session) readCommand() ([]byte, lineStatus, error) {
	chunking := s.txn != nil && s.txn.chunking
	wait := s.cfg.CommandTimeout
	if chunking {
		wait = s.dataWait(wait)
	} else {
		s.dataCut = false
	}
	s.setDeadline(wait)
	if s.r.Buffered() == 0 {
		s.useCommandReader()
		if err := s.flush(); err != nil {
			return nil, 0, err
		}
	}
	start := time.Now()
	for {
		line, status, err := s.readLine()
		if err != nil && s.drainRetry(err, s.txn != nil || len(s.lineBuf) > 0) {
			continue
		}
		if chunking {
			s.spendData(time.Since(start), len(line)+2)
		}
		return line, status, err
	}
}

// setDeadline sets the read deadline d from now, and the write deadline d
// from now (a client that stops reading cannot hold the session either).
// Once draining, the read is woken at once and drainRetry bounds it by the
// grace end if the session has work in progress. draining is checked after
// the deadline is set, so a concurrent interrupt is never overwritten.
func (s *Session) setDeadline(d time.Duration) {
	s.deadline = time.Now().Add(d)
	s.raw.SetReadDeadline(s.deadline)
	if s.draining.Load() {
		s.raw.SetReadDeadline(time.Now())
	}
}

// drainRetry reports whether a read that failed with err should be tried
// again: it was interrupted by Shutdown, the session has work in progress
// (busy) and the grace period is not over.
func (s *Session) drainRetry(err error, busy bool) bool {
	var ne net.Error
	if !s.draining.Load() || !busy || !errors.As(err, &ne) || !ne.Timeout() {
		return false
	}
	now := time.Now()
	g := time.Unix(0, s.srv.graceEnd.Load())
	if !now.Before(g) || !now.Before(s.deadline) {
		return false
	}
	if g.After(s.deadline) {
		g = s.deadline
	}
	s.raw.SetReadDeadline(g)
	return true
}

func (s *Session) readLine() ([]byte, lineStatus, error) {
	for {
		frag, err := s.r.ReadSlice('\n')
		if err == nil && len(s.lineBuf) == 0 && !s.lineOverflow {
			return s.lineDone(frag)
		}
		if !s.lineOverflow && len(s.lineBuf)+len(frag) <= maxAuthLine {
			if s.lineBuf == nil && len(frag) > 0 {
				// Sized once: growing by append would round the
				// capacity up past the limit (16 KiB).
				s.lineBuf = make([]byte, 0, maxAuthLine)
			}
			s.lineBuf = append(s.lineBuf, frag...)
		} else {
			s.lineOverflow = true
			s.lineSkipped += len(frag)
			if s.lineSkipped > maxEndlessLine {
				s.lineBuf, s.lineOverflow, s.lineSkipped = s.lineBuf[:0], false, 0
				return nil, lineEndless, nil
			}
		}
		switch err {
		case nil:
			if s.lineOverflow {
				// The start of the line is returned so that an over-long
				// BDAT can be told apart (its chunk cannot be skipped).
				start := s.lineBuf[:min(len(s.lineBuf), 5)]
				s.lineBuf, s.lineOverflow, s.lineSkipped = s.lineBuf[:0], false, 0
				return start, lineTooLong, nil
			}
			line := s.lineBuf
			s.lineBuf = s.lineBuf[:0]
			return s.lineDone(line)
		case bufio.ErrBufferFull:
			continue
		default:
			return nil, 0, err
		}
	}
}

// lineDone checks the line ending and strips it.
func (s *Session) lineDone(line []byte) ([]byte, lineStatus, error) {
	if s.debug {
		if s.secret {
			s.log.Debug("C: <redacted>")
		} else {
			s.log.Debug("C: " + redactLine(line))
		}
	}
	if len(line) < 2 || line[len(line)-2] != '\r' {
		return line, lineBadEnding, nil // returned so that a BDAT can be told apart
	}
	return line[:len(line)-2], lineOK, nil
}

// reply queues r for sending with an enhanced status code.
func (s *Session) reply(r *Reply) { s.writeReply(r, true) }

func (s *Session) writeReply(r *Reply, enhanced bool) {
	if s.w == nil {
		s.w = writerPool.Get().(*bufio.Writer)
		s.w.Reset(deadlineWriter{s})
	}
	s.out = appendReply(s.out[:0], r, enhanced)
	if s.debug {
		s.log.Debug("S: " + string(s.out[:len(s.out)-2]))
	}
	s.w.Write(s.out)
}

// abort ends the transaction in progress without delivery.
func (s *Session) abort(reason error) {
	for _, h := range s.srv.hooks.abort {
		s.callAbort(h, reason)
	}
	s.endTransaction()
}

// endTransaction forgets the transaction and frees its spools.
func (s *Session) endTransaction() {
	if t := s.txn; t != nil {
		if t.sp != nil {
			t.sp.release()
		}
		if t.body != nil {
			t.body.release()
		}
	}
	s.txn = nil
}

func (s *Session) callAbort(h hooked[AbortHook], reason error) {
	s.safely("abort", h.name, func() { h.h.Abort(s, reason) })
}

func (s *Session) callClose(h hooked[CloseHook]) {
	s.safely("close", h.name, func() { h.h.Close(s) })
}

// clientGone reports whether err is an ordinary end of the connection by
// the client (closed, reset, broken pipe), not a server fault.
func clientGone(err error) bool {
	return errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, net.ErrClosed) ||
		errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE)
}

var (
	errConnectionEnded = errors.New("connection ended")
	errReset           = errors.New("transaction reset")
	errRejected        = errors.New("transaction rejected")
)
