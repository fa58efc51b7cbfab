// Package authresults records the results of message authentication on a
// transaction (SPF, DKIM, DMARC, iprev: each checking sub-handler adds
// its own) and gives the delivered message the one Authentication-Results
// header field (RFC 8601) that sums them up, with the server's hostname as
// its authserv-id. Fields already in the message that claim that
// authserv-id are removed (RFC 8601 section 5), so no sender can forge
// our verdict.
//
// The field is an edit of the message pipeline
// (Transaction.PrependHeaderFunc): written when the deliveries read the
// message, after every judge, so a result recorded at MAIL (SPF) and one
// recorded at end of data (DMARC) end up in the same field.
package authresults

import (
	"strings"

	"github.com/caddy-esmtp/caddy-esmtp/session"
)

// Result is one method's result, as in RFC 8601 section 2.2.
type Result struct {
	// Method is the method: "spf", "dkim", "dmarc", "iprev"...
	Method string
	// Value is the result: "pass", "fail", "softfail", "neutral",
	// "none", "temperror", "permerror", "policy"...
	Value string
	// Reason, optional, says why in a few words.
	Reason string
	// Props are the properties, in order: {"smtp", "mailfrom",
	// "user@example.com"}, {"header", "d", "example.com"}...
	Props []Prop
}

// Prop is one property of a result: ptype.property=value.
type Prop struct {
	Type, Name, Value string
}

// resultsKey keys a transaction's results.
type resultsKey struct{}

// record is a transaction's results, in the order they were added.
type record struct {
	results []Result
}

// Add records r for the transaction in progress. The first result of a
// transaction also sets up its Authentication-Results field (see the
// package documentation).
func Add(s *session.Session, r Result) {
	txn := s.Transaction()
	if txn == nil {
		return
	}
	rec, _ := txn.Value(resultsKey{}).(*record)
	if rec == nil {
		rec = &record{}
		txn.SetValue(resultsKey{}, rec)
		id := s.Hostname()
		txn.DeleteHeaderWhere("Authentication-Results", func(v string) bool { return claims(v, id) })
		txn.PrependHeaderFunc("Authentication-Results", func() string { return Format(id, rec.results) })
	}
	rec.results = append(rec.results, r)
}

// Of returns the results recorded for the transaction in progress, in
// order (a DMARC check reads the SPF and DKIM results here).
func Of(s *session.Session) []Result {
	txn := s.Transaction()
	if txn == nil {
		return nil
	}
	rec, _ := txn.Value(resultsKey{}).(*record)
	if rec == nil {
		return nil
	}
	return rec.results
}

// Format renders an Authentication-Results field's value: the authserv-id,
// then "; method=value" with the reason and the properties for each result.
func Format(authservID string, results []Result) string {
	var b strings.Builder
	b.WriteString(authservID)
	if len(results) == 0 {
		b.WriteString("; none")
	}
	for _, r := range results {
		b.WriteString(";\r\n\t")
		b.WriteString(token(r.Method))
		b.WriteByte('=')
		b.WriteString(token(r.Value))
		if r.Reason != "" {
			b.WriteString(" reason=")
			b.WriteString(quoted(r.Reason))
		}
		for _, p := range r.Props {
			b.WriteByte(' ')
			b.WriteString(token(p.Type))
			b.WriteByte('.')
			b.WriteString(token(p.Name))
			b.WriteByte('=')
			b.WriteString(value(p.Value))
		}
	}
	return b.String()
}

// claims reports whether an Authentication-Results value's authserv-id
// (what precedes the first ";", a version number after it allowed) is id.
func claims(v, id string) bool {
	head, _, _ := strings.Cut(v, ";")
	head = strings.TrimSpace(head)
	if f := strings.Fields(head); len(f) > 0 {
		head = f[0]
	}
	return strings.EqualFold(head, id)
}

// token keeps the characters of an RFC 2045 token, so a method or value
// from a record cannot break the field.
func token(s string) string {
	return strings.Map(func(r rune) rune {
		if r <= ' ' || r >= 0x7f || strings.ContainsRune(`()<>@,;:\"/[]?=`, r) {
			return -1
		}
		return r
	}, s)
}

// value writes a property value as a token when it is one (a domain, an
// address), else quoted.
func value(s string) string {
	if s != "" && token(s) == s || isAddress(s) {
		return s
	}
	return quoted(s)
}

// isAddress: local@domain with token characters around the @ (RFC 8601
// allows a mailbox as a pvalue).
func isAddress(s string) bool {
	local, domain, ok := strings.Cut(s, "@")
	return ok && local != "" && domain != "" && token(local) == local && token(domain) == domain
}

// quoted makes an RFC 2045 quoted-string, without control characters.
func quoted(s string) string {
	var b strings.Builder
	b.WriteByte('"')
	for _, r := range s {
		switch {
		case r == '"' || r == '\\':
			b.WriteByte('\\')
			b.WriteRune(r)
		case r < ' ' || r == 0x7f:
			b.WriteByte(' ')
		default:
			b.WriteRune(r)
		}
	}
	b.WriteByte('"')
	return b.String()
}
