package relay

import (
	"fmt"
	"strings"

	"golang.org/x/net/idna"

	"github.com/caddy-esmtp/caddy-esmtp/handlers/recipients"
	"github.com/caddy-esmtp/caddy-esmtp/session"
)

// Internationalised domain names (RFC 5890, RFC 6531). The client may give
// a domain as U-labels ("bücher.example", with SMTPUTF8) or as A-labels
// ("xn--bcher-kva.example"); both name the same domain. The relay compares
// and looks up domains in their A-label form: DNS knows only that one (and
// Go's resolver refuses a name that is not ASCII without asking), and one
// form lets a domains entry written either way match a recipient written
// either way. Toward an upstream without SMTPUTF8 the envelope goes as
// A-labels too.

// aLabel returns domain in the form the relay compares and looks up:
// lower case, without a trailing dot, and, when it is not ASCII, converted
// to A-labels with the IDNA lookup profile (UTS #46 mapping, IDNA 2008
// rules). An address literal is returned as it is (lower-cased).
func aLabel(domain string) (string, error) {
	d := recipients.NormalizeDomain(domain)
	if isASCII(d) || strings.HasPrefix(d, "[") {
		return d, nil
	}
	a, err := idna.Lookup.ToASCII(d)
	if err != nil {
		return "", fmt.Errorf("%q is not a valid internationalised domain name: %v", domain, err)
	}
	return a, nil
}

// matchDomain is the form of a recipient domain that the domains list is
// compared with: its A-label form, or the domain as given when it has none
// (it then matches no entry that has one).
func matchDomain(domain string) string {
	if a, err := aLabel(domain); err == nil {
		return a
	}
	return domain
}

// aLabelEntry returns a domains entry ("example.com", "*.example.com",
// "user@example.com", "user@*.example.com") with its domain in A-label form.
func aLabelEntry(entry string) (string, error) {
	at := strings.LastIndexByte(entry, '@')
	prefix, domain := entry[:at+1], entry[at+1:]
	if strings.HasPrefix(domain, "*.") {
		prefix, domain = prefix+"*.", domain[2:]
	}
	if isASCII(domain) {
		return entry, nil
	}
	a, err := aLabel(domain)
	if err != nil {
		return "", err
	}
	return prefix + a, nil
}

// asciiPath returns p's mailbox as an upstream without SMTPUTF8 may get it:
// the domain as A-labels. ok is false when that cannot be: the local part
// is not ASCII (there is no ASCII form of it), or the domain is not a valid
// IDN.
func asciiPath(p session.Path) (mailbox string, ok bool) {
	if isASCII(p.Mailbox) {
		return p.Mailbox, true
	}
	if !isASCII(p.Local) || p.Domain == "" {
		return "", false
	}
	d, err := aLabel(p.Domain)
	if err != nil {
		return "", false
	}
	return p.Local + "@" + d, true
}

// isASCII reports whether s has only US-ASCII bytes.
func isASCII[T string | []byte](s T) bool {
	for i := 0; i < len(s); i++ {
		if s[i] >= 0x80 {
			return false
		}
	}
	return true
}
