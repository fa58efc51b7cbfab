package session

import (
	"bytes"
	"context"
	"errors"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"go.uber.org/zap"
)

// command parses and runs one command line (CRLF removed). It returns the
// reply to send, or nil when the command sent its replies itself.
func (s *Session) command(line []byte) *Reply {
	if bytes.IndexAny(line, "\r\n\x00") >= 0 {
		if isBdat(line) {
			return replyBdatSyntax // its chunk follows and cannot be skipped
		}
		return replyBadChars
	}
	verbBytes, argBytes, _ := bytes.Cut(line, []byte{' '})
	argBytes = bytes.Trim(argBytes, " ")
	switch {
	case bytes.EqualFold(verbBytes, []byte("STARTTLS")):
		return s.cmdStartTLS(len(argBytes) > 0)
	case bytes.EqualFold(verbBytes, []byte("XCLIENT")):
		return s.cmdXClient(string(argBytes))
	}
	var v [4]byte
	if len(verbBytes) == 4 {
		for i, c := range verbBytes {
			if c >= 'a' && c <= 'z' {
				c -= 'a' - 'A'
			}
			v[i] = c
		}
	}
	verb := string(v[:]) // no allocation: v does not escape
	limit := maxCommandLine
	switch verb {
	case "MAIL", "RCPT":
		limit = maxMailRcptLine
	case "AUTH":
		limit = maxAuthLine
	}
	if len(line)+2 > limit {
		if verb == "BDAT" {
			return replyBdatSyntax // its chunk follows and cannot be skipped
		}
		return replyLineTooLong
	}
	switch verb {
	case "HELO":
		return s.cmdHelo(string(argBytes), false)
	case "EHLO":
		return s.cmdHelo(string(argBytes), true)
	case "MAIL":
		return s.cmdMail(string(argBytes))
	case "RCPT":
		return s.cmdRcpt(string(argBytes))
	case "DATA":
		return s.cmdData(len(argBytes) > 0)
	case "BDAT":
		return s.cmdBdat(argBytes)
	case "RSET":
		if len(argBytes) > 0 {
			return replyNoArgs
		}
		if s.txn != nil {
			s.abort(errReset)
		}
		return s.verb("RSET", "", replyOK)
	case "NOOP":
		return s.verb("NOOP", string(argBytes), replyOK)
	case "HELP":
		return s.verb("HELP", string(argBytes), replyHelp)
	case "VRFY":
		if len(argBytes) == 0 {
			return replyNeedArg
		}
		return s.verb("VRFY", string(argBytes), replyVrfy)
	case "EXPN":
		if len(argBytes) == 0 {
			return replyNeedArg
		}
		return s.verb("EXPN", string(argBytes), replyExpn)
	case "QUIT":
		if len(argBytes) > 0 {
			return replyNoArgs
		}
		r := s.verb("QUIT", "", nil)
		if r == nil {
			r = s.srv.quitReply
		}
		s.closing = true
		return r
	case "AUTH":
		return s.cmdAuth(argBytes)
	case "TURN", "ETRN", "ATRN", "SEND", "SOML", "SAML":
		// RFC commands this engine does not implement.
		// (A copy, so that verb, which hooks would keep, stays on the stack.)
		return s.verb(strings.Clone(verb), string(argBytes), replyNotImpl)
	}
	if isBdat(line) { // "BDAT\t12": not a BDAT we can parse, but a chunk may follow
		return replyBdatSyntax
	}
	return s.verb(Sanitize(strings.ToUpper(string(verbBytes)), 64), string(argBytes), replyUnknown)
}

// verb asks the VerbHooks about a simple command, falling back to def.
func (s *Session) verb(cmd, arg string, def *Reply) *Reply {
	if r := ask(s, "verb", s.srv.hooks.verb, func(ctx context.Context, h VerbHook) (*Reply, error) {
		return h.Verb(ctx, s, cmd, arg)
	}); r != nil {
		return r
	}
	return def
}

func (s *Session) cmdHelo(arg string, extended bool) *Reply {
	if arg == "" || strings.IndexByte(arg, ' ') >= 0 {
		if extended {
			return replyEhloSyntax
		}
		return replyHeloSyntax
	}
	if s.txn != nil {
		s.abort(errReset)
	}
	prevHelo, prevExt := s.helo, s.extended
	s.helo, s.extended = arg, extended
	r := ask(s, "helo", s.srv.hooks.helo, func(ctx context.Context, h HeloHook) (*Reply, error) {
		return h.Helo(ctx, s, arg)
	})
	if r != nil && r.Code >= 400 {
		s.helo, s.extended = prevHelo, prevExt
		return r
	}
	first := s.cfg.Hostname
	if r != nil && len(r.Lines) > 0 {
		first = r.Lines[0]
	}
	if !extended {
		if r == nil || len(r.Lines) == 0 {
			return s.srv.heloReply
		}
		return &Reply{Code: 250, Lines: []string{first}, plain: true}
	}
	lines := append(make([]string, 0, len(s.srv.ehloKeywords)+4), first)
	lines = append(lines, s.srv.ehloKeywords...)
	if s.startTLSOffered() {
		lines = append(lines, startTLSEHLOKeyword)
	}
	if _, mechs := s.authHookFor(); len(mechs) > 0 && s.AuthUser() == "" {
		lines = append(lines, "AUTH "+strings.Join(mechs, " "))
	}
	if s.xclientAllowed() {
		lines = append(lines, xclientEHLOKeyword)
	}
	lines = append(lines, s.extensions()...)
	return &Reply{Code: 250, Lines: lines, plain: true}
}

func (s *Session) cmdMail(arg string) *Reply {
	if s.helo == "" {
		return replyNeedHelo
	}
	if s.txn != nil {
		return replyNestedMail
	}
	if s.cfg.RequireTLS && s.tls == nil {
		return replyTLSRequired
	}
	if len(arg) < 5 || !strings.EqualFold(arg[:5], "FROM:") {
		return replyMailSyntax
	}
	path, params, err := ParsePathArg(arg[5:], true, false)
	if errors.Is(err, errParamSyntax) {
		return replyParamSyntax
	} else if err != nil {
		return replyBadSender
	}
	txn := &Transaction{From: path, MailParams: params}
	txn.Recipients = txn.firstRecipients[:0]
	if len(params) > 0 && !s.extended {
		return replyParamsNeedEhlo
	}
	var dsn uint8
	authParam := -1
	for i, p := range params {
		switch p.Key {
		case "SIZE":
			n, err := strconv.ParseInt(p.Value, 10, 64)
			if err != nil || n < 0 || !p.HasValue {
				return replyBadSize
			}
			if n > s.cfg.MaxMessageSize {
				return replyTooBig
			}
		case "BODY":
			v := strings.ToUpper(p.Value)
			if v != "7BIT" && v != "8BITMIME" {
				return replyBadBody
			}
			txn.Body = v
		case "SMTPUTF8":
			if p.HasValue {
				return replyBadParam
			}
			txn.UTF8 = true
		case "AUTH":
			if !s.authAdvertised() {
				return replyBadParam
			}
			if authParam >= 0 || !p.HasValue || !validAuthParam(p.Value) {
				return replyBadAuthParam
			}
			authParam = i
		default:
			if r := s.dsnParam(p, true, &dsn); r != nil {
				return r
			}
		}
	}
	if path.UTF8 && !txn.UTF8 {
		return replyNeedUTF8
	}
	if authParam >= 0 {
		if r := s.keepAuthParam(params, authParam, txn.UTF8); r != nil {
			return r
		}
	}
	txn.Start = time.Now()
	txn.ID = newID(txn.Start)
	s.txn = txn
	r := askIn(s, "mail", s.srv.hooks.mail, scopeSender, path, func(ctx context.Context, h MailHook) (*Reply, error) {
		return h.Mail(ctx, s, path, params)
	})
	if r != nil && r.Code >= 400 {
		s.abort(errRejected)
		return r
	}
	if r != nil {
		return r
	}
	return replyMailOK
}

func (s *Session) cmdRcpt(arg string) *Reply {
	if s.txn == nil {
		return replyNeedMail
	}
	if len(arg) < 3 || !strings.EqualFold(arg[:3], "TO:") {
		return replyRcptSyntax
	}
	path, params, err := ParsePathArg(arg[3:], false, true)
	if errors.Is(err, errParamSyntax) {
		return replyParamSyntax
	} else if err != nil {
		return replyBadRcpt
	}
	if len(params) > 0 {
		if !s.extended {
			return replyParamsNeedEhlo
		}
		var dsn uint8
		for _, p := range params {
			if r := s.dsnParam(p, false, &dsn); r != nil {
				return r
			}
		}
	}
	if path.UTF8 && !s.txn.UTF8 {
		return replyNeedUTF8
	}
	if len(s.txn.Recipients) >= s.cfg.MaxRecipients {
		return replyTooManyRcpts
	}
	r := askIn(s, "rcpt", s.srv.hooks.rcpt, scopeRecipient, path, func(ctx context.Context, h RcptHook) (*Reply, error) {
		return h.Rcpt(ctx, s, path, params)
	})
	if r == nil || r.Code < 400 {
		if !s.delivered(path) {
			r = replyNoDelivery
		}
	}
	if r != nil && r.Code >= 400 {
		s.txn.refused++
		return r
	}
	s.txn.Recipients = append(s.txn.Recipients, Recipient{Path: path, Params: params})
	if r != nil {
		return r
	}
	return replyRcptOK
}

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

// logMessage writes the one info line per message.
func (s *Session) logMessage(txn *Transaction, r *Reply) {
	if !s.log.Core().Enabled(zap.InfoLevel) {
		return
	}
	rcpts := make([]string, len(txn.Recipients))
	for i, rc := range txn.Recipients {
		rcpts[i] = logSafe(rc.Path.Mailbox)
	}
	fields := append([]zap.Field{
		zap.String("queue_id", txn.ID),
		zap.String("session", s.id),
		zap.String("remote", s.remoteString()),
		zap.String("helo", s.heloString()),
		zap.String("from", logSafe(txn.From.Mailbox)),
		zap.Strings("rcpts", rcpts),
		zap.Int64("size", txn.Size),
		zap.Duration("duration", time.Since(txn.Start)),
		zap.Bool("tls", s.tls != nil),
		zap.String("auth", logSafe(s.AuthUser())),
		zap.Int("code", r.Code),
		zap.String("reply", r.Error()),
	}, txn.logFields...)
	s.log.Info("message", fields...)
}

// logSafe keeps UTF-8 (addresses may be internationalised) but replaces
// control characters and invalid bytes, so a log line cannot be forged.
func logSafe(v string) string {
	return strings.Map(func(r rune) rune {
		if r < 0x20 || r == 0x7f || r == utf8.RuneError {
			return '?'
		}
		return r
	}, v)
}

// redactLine hides credentials from the debug transcript.
func redactLine(line []byte) string {
	if len(line) >= 5 && bytes.EqualFold(line[:5], []byte("AUTH ")) {
		mech, _, _ := bytes.Cut(line[5:], []byte{' '})
		return "AUTH " + Sanitize(string(bytes.TrimRight(mech, "\r\n")), 32) + " <redacted>"
	}
	return Sanitize(strings.TrimRight(string(line), "\r\n"), 1024)
}
