package recipients

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"strings"
)

// List is a set of address patterns, as the recipients and senders
// sub-handlers use them. An entry is one of
//
//	user@example.com     that address
//	*@example.com        any user at example.com
//	example.com          the same: any user at example.com
//	*.example.com        any user at any subdomain of example.com, at any
//	                     depth (a.example.com, b.a.example.com), not at
//	                     example.com itself
//	user@*.example.com   that user at any subdomain of example.com
//
// Domains are compared case-insensitively, and so are local parts (RFC 5321
// lets a server treat local parts as case-sensitive; nearly none does, and
// a list that refused User@ for user@ would refuse real mail). A quoted local
// part is compared by its content: "john"@example.com is john@example.com.
// A trailing dot on a domain is ignored. Address literals
// (user@[192.0.2.1]) are compared as written, case aside.
//
// A List is built once (Add, AddFile) and then only read, so it is safe for
// concurrent use by every session.
type List struct {
	exact      map[string]struct{} // "local@domain"
	anyUser    map[string]struct{} // "domain": *@domain
	subExact   map[string]struct{} // "local@parent": local@*.parent
	subAny     map[string]struct{} // "parent": *.parent
	subParents map[string]struct{} // every parent of a *. entry
	domains    map[string]struct{} // every domain of an entry without *.
	n          int
}

// Len returns the number of entries added.
func (l *List) Len() int { return l.n }

// Add adds one entry (see List for the forms). The error says what is wrong
// with it.
func (l *List) Add(entry string) error {
	local, domain, sub, err := ParseEntry(entry)
	if err != nil {
		return err
	}
	if l.exact == nil {
		l.exact = map[string]struct{}{}
		l.anyUser = map[string]struct{}{}
		l.subExact = map[string]struct{}{}
		l.subAny = map[string]struct{}{}
		l.subParents = map[string]struct{}{}
		l.domains = map[string]struct{}{}
	}
	switch {
	case sub && local == "*":
		l.subAny[domain] = struct{}{}
		l.subParents[domain] = struct{}{}
	case sub:
		l.subExact[local+"@"+domain] = struct{}{}
		l.subParents[domain] = struct{}{}
	case local == "*":
		l.anyUser[domain] = struct{}{}
		l.domains[domain] = struct{}{}
	default:
		l.exact[local+"@"+domain] = struct{}{}
		l.domains[domain] = struct{}{}
	}
	l.n++
	return nil
}

// AddFile adds the entries of a file: one entry per line; blank lines are
// skipped, and a # at the start of a line or after white space starts a
// comment that runs to the end of the line. An error names the file and
// the line.
func (l *List) AddFile(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 0, 4096), 64*1024)
	for n := 1; sc.Scan(); n++ {
		line := stripComment(sc.Text())
		if line == "" {
			continue
		}
		if strings.ContainsAny(line, " \t") {
			return fmt.Errorf("%s:%d: one entry per line, got %q", path, n, line)
		}
		if err := l.Add(line); err != nil {
			return fmt.Errorf("%s:%d: %v", path, n, err)
		}
	}
	if err := sc.Err(); err != nil {
		return fmt.Errorf("%s: %v", path, err)
	}
	return nil
}

// stripComment removes a comment (# at the start or after white space)
// and the surrounding white space.
func stripComment(line string) string {
	for i := 0; i < len(line); i++ {
		if line[i] == '#' && (i == 0 || line[i-1] == ' ' || line[i-1] == '\t') {
			line = line[:i]
			break
		}
	}
	return strings.TrimSpace(line)
}

// Match reports whether the address local@domain matches an entry. local
// is the local part as sent (a quoted-string with its quotes is fine).
func (l *List) Match(local, domain string) bool {
	if l.n == 0 {
		return false
	}
	local, domain = NormalizeLocal(local), NormalizeDomain(domain)
	if _, ok := l.exact[local+"@"+domain]; ok {
		return true
	}
	if _, ok := l.anyUser[domain]; ok {
		return true
	}
	if len(l.subParents) == 0 {
		return false
	}
	for p := range parents(domain) {
		if _, ok := l.subAny[p]; ok {
			return true
		}
		if _, ok := l.subExact[local+"@"+p]; ok {
			return true
		}
	}
	return false
}

// Covers reports whether domain is one the list has entries for (a local
// domain, for recipients): named by an entry, or a subdomain of a *.
// entry.
func (l *List) Covers(domain string) bool {
	if l.n == 0 {
		return false
	}
	domain = NormalizeDomain(domain)
	if _, ok := l.domains[domain]; ok {
		return true
	}
	for p := range parents(domain) {
		if _, ok := l.subParents[p]; ok {
			return true
		}
	}
	return false
}

// parents yields the strict parent domains of d: for a.b.c, b.c then c.
// An address literal has none.
func parents(d string) func(func(string) bool) {
	return func(yield func(string) bool) {
		if strings.HasPrefix(d, "[") {
			return
		}
		for rest := d; ; {
			i := strings.IndexByte(rest, '.')
			if i < 0 {
				return
			}
			rest = rest[i+1:]
			if rest == "" || !yield(rest) {
				return
			}
		}
	}
}

// ParseEntry parses a list entry into its normalized local part ("*" for
// any user), its normalized domain, and whether it matches subdomains of
// that domain (a *. entry) rather than the domain itself.
func ParseEntry(entry string) (local, domain string, sub bool, err error) {
	e := strings.TrimSpace(entry)
	switch {
	case e == "":
		return "", "", false, errors.New("empty entry")
	case strings.ContainsAny(e, " \t\r\n<>,;"):
		return "", "", false, fmt.Errorf("%q: an entry is an address, *@domain, domain or *.domain, without spaces, brackets or separators", entry)
	}
	local, domain = "*", e
	if at := strings.LastIndexByte(e, '@'); at >= 0 {
		local, domain = e[:at], e[at+1:]
		if local == "" {
			return "", "", false, fmt.Errorf("%q: empty local part (use *@domain or the domain alone for any user)", entry)
		}
	}
	if strings.HasPrefix(domain, "*.") {
		sub, domain = true, domain[2:]
	}
	domain = NormalizeDomain(domain)
	switch {
	case domain == "":
		return "", "", false, fmt.Errorf("%q: empty domain", entry)
	case domain == "*" || strings.Contains(domain, "*"):
		return "", "", false, fmt.Errorf("%q: the only domain wildcard is a leading *. (as in *.example.com); a list cannot allow every domain", entry)
	case strings.ContainsAny(domain, "@\"\\"):
		return "", "", false, fmt.Errorf("%q: invalid domain %q", entry, domain)
	case sub && strings.HasPrefix(domain, "["):
		return "", "", false, fmt.Errorf("%q: an address literal has no subdomains", entry)
	case strings.HasPrefix(domain, ".") || strings.Contains(domain, ".."):
		return "", "", false, fmt.Errorf("%q: invalid domain %q", entry, domain)
	}
	if local != "*" {
		local = NormalizeLocal(local)
	}
	return local, domain, sub, nil
}

// NormalizeLocal returns the form of a local part that lists compare: the
// content of a quoted-string (quotes and backslash escapes removed),
// lower-cased.
func NormalizeLocal(local string) string {
	if len(local) >= 2 && local[0] == '"' && local[len(local)-1] == '"' {
		var b strings.Builder
		inner := local[1 : len(local)-1]
		for i := 0; i < len(inner); i++ {
			if inner[i] == '\\' && i+1 < len(inner) {
				i++
			}
			b.WriteByte(inner[i])
		}
		local = b.String()
	}
	return strings.ToLower(local)
}

// NormalizeDomain returns the form of a domain that lists compare:
// lower-cased, without a trailing dot.
func NormalizeDomain(domain string) string {
	return strings.ToLower(strings.TrimSuffix(domain, "."))
}
