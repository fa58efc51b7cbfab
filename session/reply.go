package session

import (
	"strconv"
	"strings"
)

// Reply is an SMTP reply: a three-digit code, an enhanced status code (RFC
// 3463) and one or more text lines. A sub-handler returns a *Reply to give its
// opinion on an event, or nil for "no opinion" (the next sub-handler is asked,
// then the engine's default applies).
//
// A *Reply is also an error, so a sub-handler may return one from a streamed
// event (header, end of headers, body chunk) to fix the reply that the client
// gets at end of message.
type Reply struct {
	// Code is the three-digit reply code, 200 to 599.
	Code int
	// Enhanced is the enhanced status code, such as "2.1.0". When empty, the
	// engine fills in "<class>.0.0" for 2xx, 4xx and 5xx replies.
	Enhanced string
	// Lines are the text lines of the reply. They must not contain CR or LF;
	// control characters and non-ASCII bytes are replaced before sending.
	Lines []string
	// Close asks the engine to close the connection after sending the reply.
	Close bool
	// RemoteMTA names the host that gave this reply when a delivery
	// passes on an upstream's answer (relay's MX or smart host); never
	// sent. The queue reports it as the DSN's Remote-MTA.
	RemoteMTA string
	// TLSPolicy is the TLS policy a relay applied toward that host
	// ("dane", "opportunistic"), or ""; never sent. The queue keeps it in
	// the recipient's state.
	TLSPolicy string

	plain bool // sent without an enhanced code (HELO/EHLO success)
}

// NewReply returns a reply with the given code, enhanced code and text lines.
func NewReply(code int, enhanced string, lines ...string) *Reply {
	return &Reply{Code: code, Enhanced: enhanced, Lines: lines}
}

// Error makes *Reply an error: "550 5.1.1 text".
func (r *Reply) Error() string {
	var b strings.Builder
	b.WriteString(strconv.Itoa(r.Code))
	if r.Enhanced != "" {
		b.WriteByte(' ')
		b.WriteString(r.Enhanced)
	}
	for _, l := range r.Lines {
		b.WriteByte(' ')
		b.WriteString(l)
	}
	return b.String()
}

// Temporary reports whether the reply is a transient failure (4xx).
func (r *Reply) Temporary() bool { return r.Code >= 400 && r.Code < 500 }

// Positive reports whether the reply is a success (2xx or 3xx).
func (r *Reply) Positive() bool { return r.Code >= 200 && r.Code < 400 }

// valid reports whether the reply may be sent as it is.
func (r *Reply) valid() bool {
	if r.Code < 200 || r.Code > 599 {
		return false
	}
	if r.Enhanced == "" {
		return true
	}
	return validEnhanced(r.Enhanced, r.Code/100)
}

// validEnhanced checks class.subject.detail with the class matching the
// reply code's first digit (RFC 3463: 2, 4 or 5; 1-3 digits per part).
func validEnhanced(e string, class int) bool {
	parts := strings.Split(e, ".")
	if len(parts) != 3 || parts[0] != strconv.Itoa(class) {
		return false
	}
	for _, p := range parts[1:] {
		if len(p) == 0 || len(p) > 3 {
			return false
		}
		for i := 0; i < len(p); i++ {
			if p[i] < '0' || p[i] > '9' {
				return false
			}
		}
	}
	return true
}

// appendReply renders r in wire form onto b. withEnhanced controls whether an
// enhanced status code is written (never on the greeting or 354/334).
func appendReply(b []byte, r *Reply, withEnhanced bool) []byte {
	enh := ""
	if withEnhanced && !r.plain && r.Code/100 != 1 && r.Code/100 != 3 {
		enh = r.Enhanced
		if enh == "" {
			enh = genericEnhanced[r.Code/100]
		}
	}
	lines := r.Lines
	if len(lines) == 0 {
		lines = []string{""}
	}
	for i, l := range lines {
		b = strconv.AppendInt(b, int64(r.Code), 10)
		if i == len(lines)-1 {
			b = append(b, ' ')
		} else {
			b = append(b, '-')
		}
		if enh != "" {
			b = append(b, enh...)
			if l != "" {
				b = append(b, ' ')
			}
		}
		b = appendSanitized(b, l)
		b = append(b, '\r', '\n')
	}
	return b
}

var genericEnhanced = [6]string{2: "2.0.0", 4: "4.0.0", 5: "5.0.0"}

// appendSanitized appends s with every byte outside printable ASCII replaced
// by '?', so nothing a client sent can break a reply or a header apart.
func appendSanitized(b []byte, s string) []byte {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c < 0x20 || c > 0x7e {
			c = '?'
		}
		b = append(b, c)
	}
	return b
}

// Sanitize returns s with control characters and non-ASCII bytes replaced by
// '?' and cut to at most max bytes (max <= 0: no cut). Use it for anything a
// client sent that goes into a reply, a header or a log line.
func Sanitize(s string, max int) string {
	if max > 0 && len(s) > max {
		s = s[:max]
	}
	clean := true
	for i := 0; i < len(s); i++ {
		if s[i] < 0x20 || s[i] > 0x7e {
			clean = false
			break
		}
	}
	if clean {
		return s
	}
	return string(appendSanitized(make([]byte, 0, len(s)), s))
}
