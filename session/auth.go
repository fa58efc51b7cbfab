package session

import (
	"bytes"
	"context"
	"encoding/base64"
	"errors"
	"slices"
	"strings"

	"go.uber.org/zap"
)

// AuthHook verifies credentials for AUTH (RFC 4954). The engine carries the
// SASL exchange for the PLAIN and LOGIN mechanisms; the first AuthHook that
// offers mechanisms on a session verifies them.
type AuthHook interface {
	// AuthMechanisms returns the mechanisms offered on this session, such
	// as ["PLAIN", "LOGIN"], or nil when AUTH is not offered (for example
	// before TLS). Only PLAIN and LOGIN are implemented by the engine.
	AuthMechanisms(s *Session) []string
	// Authenticate checks a username and password. identity is the
	// authorization identity of PLAIN ("" when absent or for LOGIN). A
	// false result answers 535 5.7.8; an error answers 454 4.7.0.
	Authenticate(ctx context.Context, s *Session, mechanism, identity, username, password string) (bool, error)
}

var (
	errAuthSyntax   = errors.New("malformed SASL response")
	errHookPanicked = errors.New("sub-handler panicked")
)

// decodePlain splits a PLAIN response (RFC 4616): authzid NUL authcid NUL
// passwd, base64-encoded.
func decodePlain(b64 []byte) (identity, user, pass string, err error) {
	raw, err := decodeSASL(b64)
	if err != nil {
		return "", "", "", err
	}
	parts := bytes.Split(raw, []byte{0})
	if len(parts) != 3 || len(parts[1]) == 0 {
		return "", "", "", errAuthSyntax
	}
	return string(parts[0]), string(parts[1]), string(parts[2]), nil
}

// decodeSASL decodes one base64 SASL response; "=" is the empty response.
func decodeSASL(b64 []byte) ([]byte, error) {
	if len(b64) == 1 && b64[0] == '=' {
		return nil, nil
	}
	raw := make([]byte, base64.StdEncoding.DecodedLen(len(b64)))
	n, err := base64.StdEncoding.Decode(raw, b64)
	if err != nil {
		return nil, errAuthSyntax
	}
	return raw[:n], nil
}

// authHookFor returns the first AuthHook offering mechanisms on this
// session, with them (none when no hook offers any).
func (s *Session) authHookFor() (hooked[AuthHook], []string) {
	for _, hk := range s.srv.hooks.auth {
		if !s.matches(hk.match, scopeSession, Path{}) {
			continue
		}
		var m []string
		if s.safely("auth mechanisms", hk.name, func() { m = hk.h.AuthMechanisms(s) }) && len(m) > 0 {
			return hk, supportedMechanisms(m)
		}
	}
	return hooked[AuthHook]{}, nil
}

// supportedMechanisms keeps the mechanisms the engine implements.
func supportedMechanisms(m []string) []string {
	var out []string
	for _, x := range m {
		if x = strings.ToUpper(x); x == "PLAIN" || x == "LOGIN" {
			out = append(out, x)
		}
	}
	return out
}

var (
	replyAuthOK        = NewReply(235, "2.7.0", "Authentication successful")
	replyAuthFailed    = NewReply(535, "5.7.8", "Authentication credentials invalid")
	replyAuthTempFail  = NewReply(454, "4.7.0", "Temporary authentication failure")
	replyAuthCancelled = NewReply(501, "5.7.0", "Authentication cancelled")
	replyAuthSyntax    = NewReply(501, "5.5.2", "Malformed authentication response")
	replyAuthAgain     = NewReply(503, "5.5.1", "Already authenticated")
	replyAuthInTxn     = NewReply(503, "5.5.1", "AUTH not allowed during a mail transaction")
	replyAuthNeedsTLS  = NewReply(538, "5.7.11", "Encryption required for requested authentication mechanism")
	replyAuthMech      = NewReply(504, "5.5.4", "Unrecognized authentication type")
	replyAuthNotOn     = NewReply(502, "5.5.1", "AUTH not available")
	promptUsername     = &Reply{Code: 334, Lines: []string{"VXNlcm5hbWU6"}} // "Username:"
	promptPassword     = &Reply{Code: 334, Lines: []string{"UGFzc3dvcmQ6"}} // "Password:"
	promptEmpty        = &Reply{Code: 334}
)

// cmdAuth runs AUTH <mechanism> [initial-response] (RFC 4954).
func (s *Session) cmdAuth(arg []byte) *Reply {
	switch {
	case !s.extended:
		return replyNeedEhlo
	case s.AuthUser() != "":
		return replyAuthAgain
	case s.txn != nil:
		return replyAuthInTxn
	}
	hook, mechs := s.authHookFor()
	if len(mechs) == 0 {
		if len(s.srv.hooks.auth) > 0 && s.tls == nil {
			return replyAuthNeedsTLS
		}
		return replyAuthNotOn
	}
	mechArg, initial, hasInitial := bytes.Cut(arg, []byte{' '})
	mech := strings.ToUpper(string(mechArg))
	if !slices.Contains(mechs, mech) {
		return replyAuthMech
	}
	var identity, user, pass string
	switch mech {
	case "PLAIN":
		resp := initial
		if !hasInitial {
			var r *Reply
			if resp, r = s.saslResponse(promptEmpty); r != nil || s.closing {
				return r
			}
		}
		var err error
		if identity, user, pass, err = decodePlain(resp); err != nil {
			return replyAuthSyntax
		}
	case "LOGIN":
		resp := initial
		if !hasInitial {
			var r *Reply
			if resp, r = s.saslResponse(promptUsername); r != nil || s.closing {
				return r
			}
		}
		u, err := decodeSASL(resp)
		if err != nil {
			return replyAuthSyntax
		}
		user = string(u)
		resp, r := s.saslResponse(promptPassword)
		if r != nil || s.closing {
			return r
		}
		p, err := decodeSASL(resp)
		if err != nil {
			return replyAuthSyntax
		}
		pass = string(p)
	}
	ctx, cancel := context.WithTimeout(s.ctx, s.cfg.HandlerTimeout)
	defer cancel()
	var ok bool
	var err error
	if !s.safely("auth", hook.name, func() { ok, err = hook.h.Authenticate(ctx, s, mech, identity, user, pass) }) {
		err = errHookPanicked
	}
	switch {
	case err != nil:
		s.cfg.Observer.Auth("error")
		s.log.Error("authentication check failed", zap.String("session", s.id), zap.String("remote", s.remoteString()), zap.Error(err))
		return replyAuthTempFail
	case !ok:
		s.cfg.Observer.Auth("failure")
		s.log.Info("authentication failed", zap.String("session", s.id), zap.String("remote", s.remoteString()),
			zap.String("mechanism", mech), zap.String("username", logSafe(Sanitize(user, 256))))
		return replyAuthFailed
	}
	s.cfg.Observer.Auth("success")
	s.SetAuthenticated(user)
	return replyAuthOK
}

// saslResponse sends a 334 challenge and reads the client's response line,
// which is kept out of the transcript. "*" cancels (RFC 4954 4).
func (s *Session) saslResponse(challenge *Reply) ([]byte, *Reply) {
	s.writeReply(challenge, false)
	s.secret = true
	line, status, err := s.readCommand()
	s.secret = false
	switch {
	case err != nil: // the session ends; readFailed sent what could be sent
		s.closing = true
		s.readFailed(err)
		return nil, nil
	case status == lineEndless:
		return nil, replyLineEndless
	case status != lineOK:
		return nil, replyAuthSyntax
	case len(line) == 1 && line[0] == '*':
		return nil, replyAuthCancelled
	}
	return line, nil
}

// replyBadAuthParam answers a malformed or repeated AUTH= parameter.
var replyBadAuthParam = NewReply(501, "5.5.4", "Syntax error in AUTH parameter")

// authAdvertised reports whether AUTH is (or was, before the client logged
// in) advertised on this session, so that MAIL FROM may carry AUTH=.
func (s *Session) authAdvertised() bool {
	if s.AuthUser() != "" {
		return true
	}
	_, mechs := s.authHookFor()
	return len(mechs) > 0
}

// validAuthParam checks the value of MAIL FROM's AUTH= parameter (RFC 4954
// section 5): "<>" or an xtext-encoded mailbox; UTF-8 is checked later,
// once SMTPUTF8 is known.
func validAuthParam(v string) bool {
	return v == "<>" || (v != "" && len(v) <= maxAuthParam && validXtext(v, true))
}

// maxAuthParam bounds the AUTH= value: an xtext-encoded mailbox of at most
// 256 octets (RFC 5321 4.5.3.1.3), each octet at most three characters.
const maxAuthParam = 3 * 256

// keepAuthParam settles MAIL FROM's AUTH= parameter, params[i]: non-ASCII
// only with SMTPUTF8, and "<>" unless the client has authenticated, since
// RFC 4954 section 5 has a server that does not trust the client behave as
// if AUTH=<> had been given. What is kept in Transaction.MailParams is what
// a relaying sub-handler passes on.
func (s *Session) keepAuthParam(params Params, i int, utf8 bool) *Reply {
	if v := params[i].Value; v != "<>" && !validXtext(v, utf8) {
		return replyBadAuthParam
	}
	if s.AuthUser() == "" {
		params[i].Value = "<>"
	}
	return nil
}
