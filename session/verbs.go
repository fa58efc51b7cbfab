package session

import (
	"bytes"
	"context"
	"errors"
	"slices"
	"strconv"
	"strings"
	"time"
)

// command parses and runs one command line (CRLF removed). It returns the
// reply to send, or nil when the command sent its replies itself.
func (s *Session) command(line []byte) *Reply {
	if bytes.ContainsAny(line, "\r\n\x00") {
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
	if s.tls != nil {
		// RFC 8689: offered only where the client's message comes over TLS.
		lines = append(lines, requireTLSKeyword)
	}
	if s.startTLSOffered() {
		lines = append(lines, startTLSEHLOKeyword)
	}
	if _, mechs := s.authHookFor(); len(mechs) > 0 && s.AuthUser() == "" {
		lines = append(lines, "AUTH "+strings.Join(mechs, " "))
	}
	if s.xclientAllowed() {
		lines = append(lines, xclientEHLOKeyword)
	}
	for _, e := range s.extensions() {
		if !slices.Contains(s.srv.ehloKeywords, e) { // the engine's own (DSN with a queue) once
			lines = append(lines, e)
		}
	}
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
	requireTLS := false
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
		case "REQUIRETLS":
			// RFC 8689 3: only on a TLS session, where it is advertised;
			// kept in MailParams for the queue and the relay.
			if s.tls == nil || p.HasValue || requireTLS {
				return replyBadParam
			}
			requireTLS = true
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
