package session

import (
	"errors"
	"strings"
)

// Delivery status notification parameters (RFC 3461): MAIL RET= and ENVID=,
// RCPT NOTIFY= and ORCPT=. The engine accepts them only in sessions where
// some sub-handler advertises DSN (an ExtensionHook returning "DSN", as the
// relay sub-handler does), checks their syntax and keeps them, as sent, in
// Transaction.MailParams and Recipient.Params for the sub-handler that
// forwards the message. Elsewhere they are unknown parameters (555 5.5.4).

// Limits of RFC 3461 4.4 and 4.2.
const (
	maxEnvID = 100
	maxORCPT = 500
)

// DSN parameter bits, to refuse a parameter given twice.
const (
	dsnRet uint8 = 1 << iota
	dsnEnvID
	dsnNotify
	dsnORCPT
)

// advertises reports whether a sub-handler lists keyword among its EHLO
// keywords for this session.
func (s *Session) advertises(keyword string) bool {
	if keyword == "DSN" && s.cfg.Queue != nil {
		return true
	}
	for _, e := range s.extensions() {
		k, _, _ := strings.Cut(e, " ")
		if strings.EqualFold(k, keyword) {
			return true
		}
	}
	return false
}

// extensions returns the EHLO keywords the sub-handlers add for this
// session; a sub-handler that panics adds none.
func (s *Session) extensions() []string {
	var out []string
	for _, h := range s.srv.hooks.ext {
		if s.matches(h.match, scopeSession, Path{}) {
			s.safely("extensions", h.name, func() { out = append(out, h.h.Extensions(s)...) })
		}
	}
	return out
}

// dsnParam checks a MAIL (mail true) or RCPT parameter that the engine does
// not know otherwise: a DSN parameter is accepted when DSN is advertised and
// its value is valid (501 5.5.4 when not, or when it is repeated); anything
// else is 555 5.5.4. seen collects the DSN parameters of the command.
func (s *Session) dsnParam(p Param, mail bool, seen *uint8) *Reply {
	var bit uint8
	var ok bool
	switch {
	case mail && p.Key == "RET":
		bit = dsnRet
		ok = p.HasValue && (strings.EqualFold(p.Value, "FULL") || strings.EqualFold(p.Value, "HDRS"))
	case mail && p.Key == "ENVID":
		bit = dsnEnvID
		ok = p.HasValue && p.Value != "" && len(p.Value) <= maxEnvID && validXtext(p.Value, false)
	case !mail && p.Key == "NOTIFY":
		bit = dsnNotify
		ok = p.HasValue && validNotify(p.Value)
	case !mail && p.Key == "ORCPT":
		bit = dsnORCPT
		ok = p.HasValue && validORCPT(p.Value, s.txn != nil && s.txn.UTF8)
	default:
		return replyBadParam
	}
	if !s.advertises("DSN") {
		return replyBadParam
	}
	if !ok || *seen&bit != 0 {
		return NewReply(501, "5.5.4", "Syntax error in "+p.Key+" parameter")
	}
	*seen |= bit
	return nil
}

// validNotify: "NEVER", or a comma-separated list of SUCCESS, FAILURE and
// DELAY, each at most once (RFC 3461 4.1).
func validNotify(v string) bool {
	if strings.EqualFold(v, "NEVER") {
		return true
	}
	var got [3]bool
	for item := range strings.SplitSeq(v, ",") {
		i := -1
		switch {
		case strings.EqualFold(item, "SUCCESS"):
			i = 0
		case strings.EqualFold(item, "FAILURE"):
			i = 1
		case strings.EqualFold(item, "DELAY"):
			i = 2
		}
		if i < 0 || got[i] {
			return false
		}
		got[i] = true
	}
	return true
}

// validORCPT: addr-type ";" xtext (RFC 3461 4.2), addr-type an atom such
// as "rfc822"; with SMTPUTF8 the address may carry UTF-8 (RFC 6533).
func validORCPT(v string, utf8 bool) bool {
	typ, addr, ok := strings.Cut(v, ";")
	if !ok || typ == "" || addr == "" || len(v) > maxORCPT {
		return false
	}
	for i := 0; i < len(typ); i++ {
		if !isAtext(typ[i]) || typ[i] >= 0x80 {
			return false
		}
	}
	return validXtext(addr, utf8)
}

// validXtext: "+" and two hexadecimal digits, or any printable ASCII
// character but "+" and "=" (RFC 3461 4); bytes of UTF-8 too when utf8.
func validXtext(v string, utf8 bool) bool {
	for i := 0; i < len(v); i++ {
		switch c := v[i]; {
		case c == '+':
			if i+2 >= len(v) || unhex(v[i+1]) < 0 || unhex(v[i+2]) < 0 {
				return false
			}
			i += 2
		case c >= '!' && c <= '~' && c != '=':
		case c >= 0x80 && utf8:
		default:
			return false
		}
	}
	return true
}

func unhex(c byte) int {
	switch {
	case c >= '0' && c <= '9':
		return int(c - '0')
	case c >= 'A' && c <= 'F':
		return int(c - 'A' + 10)
	case c >= 'a' && c <= 'f':
		return int(c - 'a' + 10)
	}
	return -1
}

var errXtext = errors.New("invalid xtext")

// DecodeXtext decodes an xtext value (RFC 3461 4), such as the ENVID= and
// ORCPT= parameters: each "+XX" becomes the byte with that hexadecimal value.
func DecodeXtext(v string) (string, error) {
	if strings.IndexByte(v, '+') < 0 {
		if strings.IndexByte(v, '=') >= 0 {
			return "", errXtext
		}
		return v, nil
	}
	var b strings.Builder
	b.Grow(len(v))
	for i := 0; i < len(v); i++ {
		c := v[i]
		switch {
		case c == '+':
			if i+2 >= len(v) || unhex(v[i+1]) < 0 || unhex(v[i+2]) < 0 {
				return "", errXtext
			}
			b.WriteByte(byte(unhex(v[i+1])<<4 | unhex(v[i+2])))
			i += 2
		case c == '=':
			return "", errXtext
		default:
			b.WriteByte(c)
		}
	}
	return b.String(), nil
}
