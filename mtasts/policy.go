// Package mtasts implements the sending side of SMTP MTA Strict Transport
// Security (MTA-STS, RFC 8461): the parsers of the "_mta-sts" TXT record
// (section 3.1) and of the policy file (section 3.2), the MX-pattern
// matcher (section 4.1), and a Cache that discovers, fetches over HTTPS,
// caches and persists the policy of a recipient domain (sections 3.3 and 5).
//
// It imports no Caddy package: the relay sub-handler uses it, and so can
// any Go program.
package mtasts

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"
)

// Mode is a policy's mode (RFC 8461 section 5).
type Mode string

// The modes of a policy.
const (
	// ModeEnforce: deliver only to MX hosts the policy names, over TLS
	// with a certificate that verifies for the MX host's name.
	ModeEnforce Mode = "enforce"
	// ModeTesting: deliver as without a policy, and report (log) what
	// enforce would have refused.
	ModeTesting Mode = "testing"
	// ModeNone: the domain has withdrawn its policy.
	ModeNone Mode = "none"
)

// MaxMaxAge is the largest max_age a policy may have (RFC 8461 3.2: one
// year, in seconds).
const MaxMaxAge = 31557600

// Policy is a parsed MTA-STS policy file.
type Policy struct {
	Mode Mode `json:"mode"`
	// MX are the MX host patterns: "mail.example.com" or
	// "*.example.com" (one label of any value), lower case, without a
	// trailing dot.
	MX []string `json:"mx,omitempty"`
	// MaxAge is how long the policy may be cached.
	MaxAge time.Duration `json:"max_age"`
}

// Match reports whether the MX host name host is allowed by the policy
// (RFC 8461 4.1).
func (p *Policy) Match(host string) bool {
	for _, pat := range p.MX {
		if MatchMX(pat, host) {
			return true
		}
	}
	return false
}

// MatchMX reports whether the MX host name host matches pattern (RFC 8461
// 4.1): the names are compared without case and without a trailing dot; a
// pattern "*.example.com" matches "mail.example.com" but neither
// "example.com" nor "a.b.example.com" (the wildcard is exactly one
// label, and only the leftmost).
func MatchMX(pattern, host string) bool {
	pattern = strings.ToLower(strings.TrimSuffix(pattern, "."))
	host = strings.ToLower(strings.TrimSuffix(host, "."))
	if pattern == "" || host == "" {
		return false
	}
	if rest, ok := strings.CutPrefix(pattern, "*."); ok {
		label, parent, ok := strings.Cut(host, ".")
		return ok && label != "" && parent == rest
	}
	return pattern == host
}

// ParseRecord parses the text of one "_mta-sts" TXT record (RFC 8461
// 3.1), strictly: "v=STSv1" first, then fields separated by ";" (with
// optional spaces and tabs around it), an "id" of 1 to 32 letters and
// digits exactly once, extensions "name=value" ignored, an optional final
// ";". It returns the id.
func ParseRecord(txt string) (id string, err error) {
	rest, ok := strings.CutPrefix(txt, "v=STSv1")
	if !ok {
		return "", errors.New(`mta-sts record: does not begin with "v=STSv1"`)
	}
	fields := strings.Split(rest, ";")
	if strings.TrimLeft(fields[0], " \t") != "" {
		return "", errors.New(`mta-sts record: text after "v=STSv1" before ";"`)
	}
	fields = fields[1:]
	if len(fields) == 0 {
		return "", errors.New("mta-sts record: no id")
	}
	if last := len(fields) - 1; strings.Trim(fields[last], " \t") == "" && last > 0 {
		fields = fields[:last] // the optional final ";"
	}
	for _, f := range fields {
		f = strings.Trim(f, " \t")
		name, value, ok := strings.Cut(f, "=")
		if !ok || !validExtName(name) {
			return "", fmt.Errorf("mta-sts record: bad field %q", f)
		}
		if name == "id" {
			if id != "" {
				return "", errors.New("mta-sts record: more than one id")
			}
			if len(value) < 1 || len(value) > 32 || !allAlnum(value) {
				return "", fmt.Errorf("mta-sts record: bad id %q (1 to 32 letters and digits)", value)
			}
			id = value
			continue
		}
		if value == "" {
			return "", fmt.Errorf("mta-sts record: empty value in %q", f)
		}
		for i := 0; i < len(value); i++ {
			if c := value[i]; c < 0x21 || c > 0x7e || c == '=' || c == ';' {
				return "", fmt.Errorf("mta-sts record: bad character in %q", f)
			}
		}
	}
	if id == "" {
		return "", errors.New("mta-sts record: no id")
	}
	return id, nil
}

// SelectRecord picks the MTA-STS record among the TXT records of
// "_mta-sts.<domain>" (RFC 8461 3.1): those not beginning with "v=STSv1"
// are ignored, and there must be exactly one left, valid. It returns its
// id; ok is false when there is no record at all.
func SelectRecord(txts []string) (id string, ok bool, err error) {
	var recs []string
	for _, t := range txts {
		if strings.HasPrefix(t, "v=STSv1") {
			recs = append(recs, t)
		}
	}
	switch len(recs) {
	case 0:
		return "", false, nil
	case 1:
		id, err := ParseRecord(recs[0])
		return id, true, err
	default:
		return "", true, fmt.Errorf("mta-sts record: %d records, not one", len(recs))
	}
}

func allAlnum(s string) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9') {
			return false
		}
	}
	return true
}

// validExtName: (ALPHA / DIGIT) *31(ALPHA / DIGIT / "_" / "-" / ".").
func validExtName(s string) bool {
	if len(s) < 1 || len(s) > 32 || !allAlnum(s[:1]) {
		return false
	}
	for i := 1; i < len(s); i++ {
		c := s[i]
		if !allAlnum(s[i:i+1]) && c != '_' && c != '-' && c != '.' {
			return false
		}
	}
	return true
}

// ParsePolicy parses a policy file (RFC 8461 3.2), strictly: lines
// "key: value" ended by CRLF or LF (the last one may have no end, and
// empty lines are allowed only at the end), "version: STSv1", "mode",
// "max_age" (at most MaxMaxAge) exactly once each, "mx" one or more times
// (zero only with mode none), unknown keys ignored.
func ParsePolicy(b []byte) (*Policy, error) {
	text := string(b)
	text = strings.TrimRight(text, "\r\n")
	if text == "" {
		return nil, errors.New("mta-sts policy: empty")
	}
	var p Policy
	var haveVersion, haveAge bool
	for n, line := range strings.Split(text, "\n") {
		line, _ = strings.CutSuffix(line, "\r")
		line = strings.TrimRight(line, " \t")
		key, value, ok := strings.Cut(line, ":")
		if !ok || !validExtName(key) {
			return nil, fmt.Errorf("mta-sts policy: line %d: not key: value", n+1)
		}
		value = strings.TrimLeft(value, " \t")
		if strings.ContainsAny(value, "\r") {
			return nil, fmt.Errorf("mta-sts policy: line %d: bare CR", n+1)
		}
		for _, c := range []byte(value) {
			if c < 0x20 && c != '\t' || c == 0x7f {
				return nil, fmt.Errorf("mta-sts policy: line %d: control character", n+1)
			}
		}
		switch key {
		case "version":
			if haveVersion {
				return nil, errors.New("mta-sts policy: more than one version")
			}
			if value != "STSv1" {
				return nil, fmt.Errorf("mta-sts policy: version %q, not STSv1", value)
			}
			haveVersion = true
		case "mode":
			if p.Mode != "" {
				return nil, errors.New("mta-sts policy: more than one mode")
			}
			switch m := Mode(value); m {
			case ModeEnforce, ModeTesting, ModeNone:
				p.Mode = m
			default:
				return nil, fmt.Errorf("mta-sts policy: mode %q", value)
			}
		case "max_age":
			if haveAge {
				return nil, errors.New("mta-sts policy: more than one max_age")
			}
			if len(value) < 1 || len(value) > 10 || strings.Trim(value, "0123456789") != "" {
				return nil, fmt.Errorf("mta-sts policy: max_age %q", value)
			}
			secs, err := strconv.ParseUint(value, 10, 64)
			if err != nil || secs > MaxMaxAge {
				return nil, fmt.Errorf("mta-sts policy: max_age %s over %d", value, MaxMaxAge)
			}
			p.MaxAge, haveAge = time.Duration(secs)*time.Second, true
		case "mx":
			pat := strings.ToLower(value)
			if !validHost(strings.TrimPrefix(pat, "*.")) {
				return nil, fmt.Errorf("mta-sts policy: mx %q", value)
			}
			p.MX = append(p.MX, pat)
		default:
			if value == "" {
				return nil, fmt.Errorf("mta-sts policy: line %d: empty value", n+1)
			}
		}
	}
	switch {
	case !haveVersion:
		return nil, errors.New("mta-sts policy: no version")
	case p.Mode == "":
		return nil, errors.New("mta-sts policy: no mode")
	case !haveAge:
		return nil, errors.New("mta-sts policy: no max_age")
	case len(p.MX) == 0 && p.Mode != ModeNone:
		return nil, errors.New("mta-sts policy: no mx")
	}
	return &p, nil
}

// validHost: a domain name of LDH labels (A-labels for an IDN), without
// a trailing dot.
func validHost(s string) bool {
	if s == "" || len(s) > 253 {
		return false
	}
	for _, l := range strings.Split(s, ".") {
		if l == "" || len(l) > 63 || l[0] == '-' || l[len(l)-1] == '-' {
			return false
		}
		for i := 0; i < len(l); i++ {
			c := l[i]
			if !('a' <= c && c <= 'z' || '0' <= c && c <= '9' || c == '-' || 'A' <= c && c <= 'Z') {
				return false
			}
		}
	}
	return true
}
