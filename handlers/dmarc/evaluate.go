package dmarc

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"

	"github.com/emersion/go-msgauth/dmarc"
	"golang.org/x/net/publicsuffix"

	"github.com/caddy-esmtp/caddy-esmtp/authresults"
	"github.com/caddy-esmtp/caddy-esmtp/session"
)

// The DMARC results recorded (RFC 7489 11.2, RFC 8601).
const (
	resultPass      = "pass"
	resultFail      = "fail"
	resultNone      = "none"
	resultTempError = "temperror"
	resultPermError = "permerror"
)

// policy is the record that applies to a From domain, as found.
type policy struct {
	rec *dmarc.Record
	// at is the domain whose _dmarc record it is: the From domain or its
	// organizational domain.
	at string
	// p is the policy that applies: the record's p=, or its sp= when the
	// record is the organizational domain's and the From domain is a
	// subdomain of it.
	p dmarc.Policy
}

// errTemp is a DNS failure other than "no such name" (SERVFAIL, a
// timeout): temperror.
type errTemp struct{ err error }

func (e errTemp) Error() string { return e.err.Error() }

// errNoRecord: no DMARC record at the From domain nor at its
// organizational domain.
var errNoRecord = errors.New("no DMARC record")

// orgDomain returns the organizational domain of d (RFC 7489 3.2): the
// public suffix plus one label, from the public suffix list of
// golang.org/x/net/publicsuffix; d itself when d is a public suffix.
func orgDomain(d string) string {
	o, err := publicsuffix.EffectiveTLDPlusOne(d)
	if err != nil {
		return d
	}
	return o
}

// discover finds the policy for the From domain (RFC 7489 6.6.3): the
// record at _dmarc.<domain>, else the one at _dmarc.<organizational
// domain> with its sp=. It returns errNoRecord, an errTemp, or a parse
// error (permerror).
func discover(ctx context.Context, r session.Resolver, domain string) (*policy, error) {
	rec, err := lookup(ctx, r, domain)
	if err == nil {
		return &policy{rec: rec, at: domain, p: rec.Policy}, nil
	}
	org := orgDomain(domain)
	if err != errNoRecord || org == domain {
		return nil, err
	}
	rec, err = lookup(ctx, r, org)
	if err != nil {
		return nil, err
	}
	p := rec.Policy
	if rec.SubdomainPolicy != "" {
		p = rec.SubdomainPolicy
	}
	return &policy{rec: rec, at: org, p: p}, nil
}

// lookup returns the DMARC record of domain: the one TXT record at
// _dmarc.<domain> that starts with v=DMARC1, parsed by go-msgauth's
// dmarc.Parse. No such record, or several, is errNoRecord (RFC 7489 6.6.3
// steps 4 and 5).
func lookup(ctx context.Context, r session.Resolver, domain string) (*dmarc.Record, error) {
	txts, err := r.LookupTXT(ctx, "_dmarc."+domain+".")
	if err != nil {
		var de *net.DNSError
		if errors.As(err, &de) && de.IsNotFound {
			return nil, errNoRecord
		}
		return nil, errTemp{err}
	}
	var found string
	n := 0
	for _, t := range txts {
		if isDMARC1(t) {
			found = t
			n++
		}
	}
	if n != 1 {
		return nil, errNoRecord
	}
	// Tag names and values are case-insensitive (RFC 7489 6.4: ABNF
	// strings) but dmarc.Parse knows only lower case; v=DMARC1 is
	// exact, and the report URIs, which change case, are not used.
	v, rest, _ := strings.Cut(found, ";")
	rec, err := dmarc.Parse(v + ";" + strings.ToLower(rest))
	if err != nil {
		return nil, fmt.Errorf("_dmarc.%s: %v", domain, err)
	}
	return rec, nil
}

// isDMARC1 reports whether a TXT record starts with the tag v=DMARC1.
func isDMARC1(txt string) bool {
	first, _, _ := strings.Cut(txt, ";")
	k, v, ok := strings.Cut(first, "=")
	return ok && strings.TrimSpace(k) == "v" && strings.TrimSpace(v) == "DMARC1"
}

// aligned reports whether an authenticated domain d is aligned with the
// From domain: equal in strict mode, with the same organizational domain
// in relaxed mode (RFC 7489 3.1).
func aligned(d, from string, mode dmarc.AlignmentMode) bool {
	d, ok := normalize(d)
	if !ok {
		return false
	}
	if d == from {
		return true
	}
	return mode != dmarc.AlignmentStrict && orgDomain(d) == orgDomain(from)
}

// alignedPass returns the first authenticated identifier aligned with the
// From domain, as "spf" or "dkim", with its domain; "" when none is. It
// reads the SPF result (smtp.mailfrom, or smtp.helo / postmaster@<helo>
// for the null sender) and every DKIM result (header.d) recorded for the
// transaction by the sub-handlers before this one.
func alignedPass(results []authresults.Result, from string, rec *dmarc.Record) (method, domain string) {
	for _, r := range results {
		if !strings.EqualFold(r.Value, "pass") {
			continue
		}
		switch strings.ToLower(r.Method) {
		case "spf":
			if d := spfDomain(r); d != "" && aligned(d, from, rec.SPFAlignment) {
				return "spf", d
			}
		case "dkim":
			for _, p := range r.Props {
				if strings.EqualFold(p.Type, "header") && strings.EqualFold(p.Name, "d") && aligned(p.Value, from, rec.DKIMAlignment) {
					return "dkim", p.Value
				}
			}
		}
	}
	return "", ""
}

// spfDomain is the domain SPF authenticated: that of smtp.mailfrom (the
// part after the last "@"), else smtp.helo.
func spfDomain(r authresults.Result) string {
	var helo string
	for _, p := range r.Props {
		if !strings.EqualFold(p.Type, "smtp") {
			continue
		}
		switch strings.ToLower(p.Name) {
		case "mailfrom":
			if i := strings.LastIndexByte(p.Value, '@'); i >= 0 {
				return p.Value[i+1:]
			}
			return p.Value
		case "helo":
			helo = p.Value
		}
	}
	return helo
}

// sampled applies pct= (RFC 7489 6.6.4): a failing message outside the
// sample gets the next lower policy (reject -> quarantine -> none).
// intn(100) is the random draw, in [0, 100).
func sampled(p dmarc.Policy, pct *int, intn func(int) int) (dmarc.Policy, bool) {
	if pct == nil || *pct >= 100 || p == dmarc.PolicyNone {
		return p, true
	}
	if intn(100) < *pct {
		return p, true
	}
	if p == dmarc.PolicyReject {
		return dmarc.PolicyQuarantine, false
	}
	return dmarc.PolicyNone, false
}
