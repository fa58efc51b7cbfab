package session

import (
	"encoding/base32"
	"encoding/binary"
	"math/rand/v2"
	"net"
	"strconv"
	"strings"
	"time"
)

var idEncoding = base32.HexEncoding.WithPadding(base32.NoPadding)

// newID returns a 16-character id that sorts by time: 48 bits of Unix
// milliseconds and 32 random bits, base32hex.
func newID(t time.Time) string {
	var b [10]byte
	binary.BigEndian.PutUint64(b[:8], uint64(t.UnixMilli())<<16)
	binary.BigEndian.PutUint32(b[6:], rand.Uint32())
	return idEncoding.EncodeToString(b[:])
}

// ehloKeywords are the extensions the engine itself implements.
// With a queue, DSN too (RFC 3461): the queue sends the reports.
// requireTLSKeyword is REQUIRETLS (RFC 8689), advertised only on TLS
// sessions: MAIL FROM's REQUIRETLS parameter is refused (555 5.5.4)
// elsewhere.
const requireTLSKeyword = "REQUIRETLS"

func ehloKeywords(cfg *Config) []string {
	kw := []string{
		"PIPELINING",
		"SIZE " + strconv.FormatInt(cfg.MaxMessageSize, 10),
		"8BITMIME",
		"SMTPUTF8",
		"ENHANCEDSTATUSCODES",
		"CHUNKING",
		"HELP",
	}
	if cfg.Queue != nil {
		kw = append(kw, "DSN")
	}
	return kw
}

// protocol is the "with" word of Received: (RFC 3848, RFC 6531).
func (s *Session) protocol() string {
	p := "SMTP"
	if s.extended {
		p = "ESMTP"
	}
	if s.txn != nil && s.txn.UTF8 {
		p = "UTF8SMTP"
	}
	if s.tls != nil {
		p += "S"
	}
	if s.Value(authKey{}) != nil {
		p += "A"
	}
	if p == "SMTPS" || p == "SMTPA" || p == "SMTPSA" { // HELO clients: RFC 3848 names only the ESMTP forms
		p = "E" + p
	}
	return p
}

// authKey is the session value key under which an authenticated identity is
// stored (see SetAuthenticated).
type authKey struct{}

// SetAuthenticated records the identity a client authenticated as; it shows
// in Received: (ESMTPA) and in AuthUser.
func (s *Session) SetAuthenticated(user string) { s.SetValue(authKey{}, user) }

// AuthUser returns the authenticated identity, or "".
func (s *Session) AuthUser() string {
	u, _ := s.Value(authKey{}).(string)
	return u
}

// receivedField builds the Received: trace field (RFC 5321 4.4).
func (s *Session) receivedField() HeaderField {
	var b strings.Builder
	b.WriteString("Received: from ")
	b.WriteString(traceToken(s.helo))
	if lit := addressLiteral(s.remote); lit != "" {
		b.WriteString(" (")
		b.WriteString(lit)
		b.WriteString(")")
	}
	b.WriteString("\r\n\tby ")
	b.WriteString(s.cfg.Hostname)
	b.WriteString(" with ")
	b.WriteString(s.protocol())
	b.WriteString(" id ")
	b.WriteString(s.txn.ID)
	if len(s.txn.Recipients) == 1 {
		b.WriteString("\r\n\tfor <")
		b.WriteString(traceToken(s.txn.Recipients[0].Path.Mailbox))
		b.WriteString(">")
	}
	b.WriteString(";\r\n\t")
	b.WriteString(time.Now().Format(time.RFC1123Z))
	b.WriteString("\r\n")
	raw := b.String()
	name, value, _ := strings.Cut(raw, ":")
	return HeaderField{Name: name, Value: unfold([]byte(value)), Raw: []byte(raw)}
}

// traceToken makes a client-given string safe inside a trace field: only
// printable ASCII without white space, parentheses, brackets, quotes,
// backslash or ';', each other byte becomes '?'; at most 255 bytes.
func traceToken(v string) string {
	if len(v) > 255 {
		v = v[:255]
	}
	b := []byte(v)
	for i, c := range b {
		if c <= ' ' || c > '~' || strings.IndexByte("()<>[]\\\";", c) >= 0 {
			b[i] = '?'
		}
	}
	return string(b)
}

// addressLiteral renders the client's IP as an RFC 5321 address literal.
func addressLiteral(a net.Addr) string {
	var ip net.IP
	switch a := a.(type) {
	case *net.TCPAddr:
		ip = a.IP
	case *net.UDPAddr:
		ip = a.IP
	default:
		if a == nil {
			return ""
		}
		host, _, err := net.SplitHostPort(a.String())
		if err != nil {
			return ""
		}
		ip = net.ParseIP(host)
	}
	if ip == nil {
		return ""
	}
	if ip4 := ip.To4(); ip4 != nil {
		return "[" + ip4.String() + "]"
	}
	return "[IPv6:" + ip.String() + "]"
}
