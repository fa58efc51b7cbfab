package session

import (
	"bytes"
	"net"
	"strings"
	"time"
	"unicode/utf8"

	"go.uber.org/zap"
)

// remoteString is the client address as log lines show it, made once per
// address (XCLIENT may change it).
func (s *Session) remoteString() string {
	if s.remoteOf != s.remote {
		s.remoteStr, s.remoteOf = addrString(s.remote), s.remote
	}
	return s.remoteStr
}

// heloString is the HELO/EHLO name as log lines show it, sanitised once
// per name.
func (s *Session) heloString() string {
	if s.heloLogOf != s.helo {
		s.heloLog, s.heloLogOf = Sanitize(s.helo, 255), s.helo
	}
	return s.heloLog
}

func addrString(a net.Addr) string {
	if a == nil {
		return ""
	}
	return a.String()
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
