package dmarc

import (
	"errors"
	"io"
	"mime"
	"net/mail"
	"strings"

	"golang.org/x/net/idna"
)

// fromState is what the header hook saw of the From: fields of the
// message in progress (a transaction value).
type fromState struct {
	fields  int      // From: fields seen
	domains []string // the distinct domains of their addresses, in order
	bad     bool     // some From: field had no usable address
}

// fromKey keys a transaction's fromState.
type fromKey struct{}

// add records one From: field's value.
func (st *fromState) add(value string) {
	st.fields++
	ds, err := fromDomains(value)
	if err != nil || len(ds) == 0 {
		st.bad = true
		return
	}
	for _, d := range ds {
		if !contains(st.domains, d) {
			st.domains = append(st.domains, d)
		}
	}
}

// domain returns the one RFC5322.From domain, or why there is not
// exactly one (RFC 7489 6.6.1).
func (st *fromState) domain() (string, string) {
	switch {
	case st == nil || st.fields == 0:
		return "", "no From field"
	case st.fields > 1:
		return "", "several From fields"
	case st.bad:
		return "", "no domain in the From address"
	case len(st.domains) > 1:
		return "", "several From domains"
	}
	return st.domains[0], ""
}

func contains(list []string, s string) bool {
	for _, v := range list {
		if v == s {
			return true
		}
	}
	return false
}

// addressParser parses From: values; an encoded-word in a display name
// in a charset Go does not know is kept undecoded rather than failing the
// address (only the domain matters here).
var addressParser = mail.AddressParser{WordDecoder: &mime.WordDecoder{
	CharsetReader: func(_ string, r io.Reader) (io.Reader, error) { return r, nil },
}}

// errNoDomain: no address with a domain in the value.
var errNoDomain = errors.New("no address with a domain")

// fromDomains returns the normalized domains (lower case A-labels, no
// final dot) of the addresses of a From: field value, in order, one per
// address (a group's members count; an empty group gives none). When
// net/mail cannot parse the value, a value with exactly one "@" still
// gives the domain after it, so that a sloppy display name does not hide
// the domain that DMARC is about.
func fromDomains(value string) ([]string, error) {
	list, err := addressParser.ParseList(value)
	if err != nil {
		d, ok := lenientDomain(value)
		if !ok {
			return nil, err
		}
		list = []*mail.Address{{Address: "x@" + d}}
	}
	if len(list) == 0 {
		return nil, errNoDomain
	}
	out := make([]string, 0, len(list))
	for _, a := range list {
		i := strings.LastIndexByte(a.Address, '@')
		if i < 0 {
			return nil, errNoDomain
		}
		d, ok := normalize(a.Address[i+1:])
		if !ok {
			return nil, errNoDomain
		}
		out = append(out, d)
	}
	return out, nil
}

// lenientDomain returns what follows the only "@" of value, up to a ">"
// or the end, when that is a domain.
func lenientDomain(value string) (string, bool) {
	if strings.Count(value, "@") != 1 {
		return "", false
	}
	_, d, _ := strings.Cut(value, "@")
	d, _, _ = strings.Cut(d, ">")
	return normalize(d)
}

// normalize returns domain d as DNS names are compared and looked up: an
// A-label form in lower case without a final dot; ok is false when d is
// not a host name (a domain literal, an empty label, a bad character).
func normalize(d string) (string, bool) {
	d = strings.TrimSuffix(strings.TrimSpace(d), ".")
	if d == "" || len(d) > 253 {
		return "", false
	}
	ascii := true
	for i := 0; i < len(d); i++ {
		if d[i] >= 0x80 {
			ascii = false
			break
		}
	}
	if !ascii {
		a, err := idna.Lookup.ToASCII(d)
		if err != nil {
			return "", false
		}
		d = a
	}
	d = strings.ToLower(d)
	if len(d) > 253 {
		return "", false
	}
	for _, label := range strings.Split(d, ".") {
		if label == "" || len(label) > 63 {
			return "", false
		}
		for i := 0; i < len(label); i++ {
			c := label[i]
			if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-' || c == '_') {
				return "", false
			}
		}
	}
	return d, true
}
