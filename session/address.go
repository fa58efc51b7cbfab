package session

import (
	"errors"
	"strconv"
	"strings"
	"unicode/utf8"
)

// Path is a parsed reverse-path or forward-path (RFC 5321 4.1.2). The null
// reverse-path "<>" has an empty Mailbox. Source routes ("<@a,@b:u@d>") are
// accepted and dropped, as RFC 5321 C asks.
type Path struct {
	// Mailbox is "local@domain", or "" for the null path, or "postmaster"
	// for the special RCPT TO:<Postmaster>.
	Mailbox string
	// Local is the local part as sent (quoted-string kept with its quotes).
	Local string
	// Domain is the domain or address literal ("[192.0.2.1]").
	Domain string
	// UTF8 is true when the path contains non-ASCII characters (RFC 6531).
	UTF8 bool
}

// IsNull reports whether p is the null reverse-path "<>".
func (p Path) IsNull() bool { return p.Mailbox == "" }

// String returns the path in angle brackets.
func (p Path) String() string { return "<" + p.Mailbox + ">" }

// Param is one ESMTP parameter of MAIL or RCPT (RFC 5321 4.1.2 esmtp-param).
type Param struct {
	// Key is the keyword in upper case.
	Key string
	// Value is the value, "" when the parameter had none.
	Value string
	// HasValue tells "KEY=" (empty value) from "KEY".
	HasValue bool
}

// Params is the ordered list of parameters of a MAIL or RCPT command.
type Params []Param

// Get returns the value of the parameter key (upper case) and whether it is
// present.
func (ps Params) Get(key string) (string, bool) {
	for _, p := range ps {
		if p.Key == key {
			return p.Value, true
		}
	}
	return "", false
}

// Address limits of RFC 5321 4.5.3.1.
const (
	maxLocalPart = 64
	maxDomain    = 255
	maxPath      = 256
)

var (
	errPathSyntax   = errors.New("path syntax")
	errParamSyntax  = errors.New("parameter syntax")
	errPathTooLong  = errors.New("path too long")
	errNeedBrackets = errors.New("path must be in angle brackets")
)

// ParsePathArg parses the argument of MAIL or RCPT after "FROM:" or "TO:":
// optional spaces, a path in angle brackets, then space-separated
// parameters. allowNull permits "<>"; allowPostmaster permits "<Postmaster>".
func ParsePathArg(arg string, allowNull, allowPostmaster bool) (Path, Params, error) {
	arg = strings.TrimLeft(arg, " ")
	if !strings.HasPrefix(arg, "<") {
		return Path{}, nil, errNeedBrackets
	}
	end := closingBracket(arg)
	if end < 0 {
		return Path{}, nil, errPathSyntax
	}
	inner := arg[1:end]
	rest := arg[end+1:]
	if len(inner)+2 > maxPath {
		return Path{}, nil, errPathTooLong
	}
	path, err := parsePath(inner, allowNull, allowPostmaster)
	if err != nil {
		return Path{}, nil, err
	}
	if rest != "" && rest[0] != ' ' {
		return Path{}, nil, errPathSyntax
	}
	params, err := ParseParams(rest)
	if err != nil {
		return Path{}, nil, err
	}
	return path, params, nil
}

// closingBracket finds the '>' that closes the path, skipping quoted strings.
func closingBracket(s string) int {
	inQuote := false
	for i := 1; i < len(s); i++ {
		switch c := s[i]; {
		case inQuote && c == '\\':
			i++
		case c == '"':
			inQuote = !inQuote
		case !inQuote && c == '>':
			return i
		}
	}
	return -1
}

func parsePath(inner string, allowNull, allowPostmaster bool) (Path, error) {
	if inner == "" {
		if allowNull {
			return Path{}, nil
		}
		return Path{}, errPathSyntax
	}
	// A-d-l: "@one,@two:" is accepted and ignored.
	if inner[0] == '@' {
		colon := strings.IndexByte(inner, ':')
		if colon < 0 {
			return Path{}, errPathSyntax
		}
		for _, hop := range strings.Split(inner[:colon], ",") {
			if len(hop) < 2 || hop[0] != '@' || !validDomain(hop[1:], false) {
				return Path{}, errPathSyntax
			}
		}
		inner = inner[colon+1:]
	}
	if allowPostmaster && strings.EqualFold(inner, "postmaster") {
		return Path{Mailbox: inner, Local: inner}, nil
	}
	at := strings.LastIndexByte(inner, '@')
	if at <= 0 || at == len(inner)-1 {
		return Path{}, errPathSyntax
	}
	local, domain := inner[:at], inner[at+1:]
	utf := !isASCII(inner)
	if utf && !utf8.ValidString(inner) {
		return Path{}, errPathSyntax
	}
	if !validLocalPart(local) {
		return Path{}, errPathSyntax
	}
	if len(local) > maxLocalPart || len(domain) > maxDomain {
		return Path{}, errPathTooLong
	}
	if !validDomainOrLiteral(domain) {
		return Path{}, errPathSyntax
	}
	return Path{Mailbox: inner, Local: local, Domain: domain, UTF8: utf}, nil
}

func isASCII(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] >= 0x80 {
			return false
		}
	}
	return true
}

// atext of RFC 5322, plus UTF-8 (RFC 6531 extends atext with UTF8-non-ascii).
func isAtext(c byte) bool {
	switch {
	case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9', c >= 0x80:
		return true
	}
	return strings.IndexByte("!#$%&'*+-/=?^_`{|}~", c) >= 0
}

// validLocalPart: Dot-string or Quoted-string (RFC 5321 4.1.2).
func validLocalPart(l string) bool {
	if l == "" {
		return false
	}
	if l[0] == '"' {
		if len(l) < 2 || l[len(l)-1] != '"' {
			return false
		}
		q := l[1 : len(l)-1]
		for i := 0; i < len(q); i++ {
			c := q[i]
			switch {
			case c == '\\':
				i++
				if i >= len(q) || q[i] < 32 || q[i] > 126 {
					return false
				}
			case c == '"':
				return false
			case c < 32 || c == 127:
				return false
			}
		}
		return true
	}
	prevDot := true
	for i := 0; i < len(l); i++ {
		c := l[i]
		if c == '.' {
			if prevDot {
				return false
			}
			prevDot = true
			continue
		}
		if !isAtext(c) {
			return false
		}
		prevDot = false
	}
	return !prevDot
}

func validDomainOrLiteral(d string) bool {
	if strings.HasPrefix(d, "[") {
		return validAddressLiteral(d)
	}
	return validDomain(d, true)
}

// validDomain: sub-domain *("." sub-domain), sub-domain = Let-dig [Ldh-str];
// with utf8, non-ASCII U-labels (RFC 6531) are allowed too.
func validDomain(d string, utf bool) bool {
	if d == "" || len(d) > maxDomain {
		return false
	}
	for label := range strings.SplitSeq(d, ".") {
		if label == "" || len(label) > 63 && isASCII(label) {
			return false
		}
		for i := 0; i < len(label); i++ {
			c := label[i]
			alnum := c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9'
			switch {
			case alnum:
			case c >= 0x80 && utf:
			case c == '-' && i > 0 && i < len(label)-1:
			default:
				return false
			}
		}
	}
	return true
}

// validAddressLiteral: "[" (IPv4 / "IPv6:" IPv6 / tag ":" content) "]".
func validAddressLiteral(d string) bool {
	if len(d) < 3 || d[len(d)-1] != ']' {
		return false
	}
	in := d[1 : len(d)-1]
	if colon := strings.IndexByte(in, ':'); colon >= 0 {
		tag, content := in[:colon], in[colon+1:]
		if strings.EqualFold(tag, "IPv6") {
			return strings.Count(content, ":") >= 2 && strings.Trim(content, "0123456789abcdefABCDEF:.") == ""
		}
		if !validDomain(tag, false) || content == "" {
			return false
		}
		for i := 0; i < len(content); i++ {
			if c := content[i]; c < 33 || c > 126 || c == '[' || c == ']' || c == '\\' {
				return false
			}
		}
		return true
	}
	parts := 0
	for p := range strings.SplitSeq(in, ".") {
		n, err := strconv.Atoi(p)
		if parts++; err != nil || n < 0 || n > 255 || len(p) > 3 {
			return false
		}
	}
	return parts == 4
}

// ParseParams parses space-separated "KEY[=VALUE]" parameters (RFC 5321
// esmtp-param): keyword = ALPHA / DIGIT *(ALPHA / DIGIT / "-"); value is
// printable ASCII except "=" and SP (UTF-8 allowed, RFC 6531).
func ParseParams(s string) (Params, error) {
	var ps Params
	for s != "" {
		var f string
		f, s, _ = strings.Cut(s, " ")
		if f == "" {
			continue
		}
		key, value, has := strings.Cut(f, "=")
		if key == "" {
			return nil, errParamSyntax
		}
		for i := 0; i < len(key); i++ {
			c := key[i]
			alnum := c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9'
			if !alnum && (c != '-' || i == 0) {
				return nil, errParamSyntax
			}
		}
		for i := 0; i < len(value); i++ {
			if c := value[i]; c < 33 || c == '=' || c == 127 {
				return nil, errParamSyntax
			}
		}
		ps = append(ps, Param{Key: strings.ToUpper(key), Value: value, HasValue: has})
	}
	return ps, nil
}
