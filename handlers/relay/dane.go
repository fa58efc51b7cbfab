package relay

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net/textproto"
	"strings"

	"github.com/miekg/dns"

	"github.com/caddy-esmtp/caddy-esmtp/dnscache"
	"github.com/caddy-esmtp/caddy-esmtp/session"
)

// DANE (RFC 7672) and REQUIRETLS (RFC 8689), with to mx.
//
// DANE needs DNSSEC, which only a dnscache.Resolver tells (the AD bit of
// its validating server's answers): the esmtp handler's `resolvers`, or the
// relay's own `resolver`. With the system resolver there is no DANE.
//
// A mail server is DANE-protected when its domain's MX answer (or the
// secure denial of MX, for a domain that is its own mail server), its
// address records, and the TLSA records of _<port>._tcp.<mx host> are all
// authenticated. Then STARTTLS is mandatory and the certificate must match
// a usable TLSA record (DANE-EE 3 x x: the leaf, no name or expiry check;
// DANE-TA 2 x x: a certificate of the chain the server sent, the leaf
// chaining to it and carrying the MX host's name or the recipient domain).
// PKIX-TA and PKIX-EE records (usages 0 and 1) are not usable (RFC 7672
// 3.1.3). A secure TLSA RRset without a usable record still makes TLS
// mandatory, without authentication. Any failure defers that mail server
// with 4.7.5 (the next one is tried), never plain text. A TLSA lookup that
// fails (SERVFAIL) defers it too (4.4.3). Anything insecure: opportunistic
// TLS as without DANE.
//
// MTA-STS (RFC 8461) plugs in at policyFor: a tlsPolicy of kind
// "mta-sts enforce" with verify set (the PKIX check against the policy's
// mx patterns) and verified true lets REQUIRETLS messages through the same
// way.

// TLS policies, as relay_tls_policy logs them.
const (
	policyDANE          = "dane"
	policyOpportunistic = "opportunistic"
)

// tlsPolicy is the TLS policy for one mail server.
type tlsPolicy struct {
	kind string
	// mandatory: no STARTTLS, or a failed check, defers the mail server.
	mandatory bool
	// verify checks the server's certificate during the handshake (nil:
	// none, or the relay's own checks).
	verify func(tls.ConnectionState) error
	// verified: the policy authenticates the server, so a REQUIRETLS
	// message may go there.
	verified bool
	// why says why the policy is what it is, for the debug log.
	why string
}

var opportunistic = &tlsPolicy{kind: policyOpportunistic}

// Replies for DANE and REQUIRETLS failures. The DANE ones are temporary:
// the next attempt may find a corrected certificate or TLSA record.
var (
	replyDANENoTLS  = session.NewReply(451, "4.7.5", "DANE: the upstream mail server does not offer STARTTLS; try again later")
	replyDANECert   = session.NewReply(451, "4.7.5", "DANE: the certificate of the upstream mail server matches no TLSA record; try again later")
	replyTLSADNS    = session.NewReply(451, "4.4.3", "DANE: DNS lookup of the TLSA records of the mail server failed; try again later")
	replyRequireTLS = session.NewReply(550, "5.7.30", "REQUIRETLS: no verified TLS connection to a mail server that supports REQUIRETLS")
)

// Defer reasons, as relay_defer_reason logs them.
const (
	reasonDANENoTLS       = "dane: no starttls"
	reasonDANECert        = "dane: certificate mismatch"
	reasonTLSADNS         = "dane: tlsa lookup failed"
	reasonNotVerified     = "requiretls: tls not verified by dane or mta-sts"
	reasonNoRequireTLSExt = "requiretls: upstream does not offer REQUIRETLS"
)

// secureAnswer reports whether the resolver's answer for name and qtype is
// DNSSEC-authenticated (it is in the cache after the lookup that used it).
func secureAnswer(ctx context.Context, dr *dnscache.Resolver, name string, qtype uint16) bool {
	ans, err := dr.Lookup(ctx, name, qtype)
	return err == nil && ans.Authenticated
}

// hostSecure reports whether the address records of host are
// authenticated (RFC 7672 2.2.2): each of A and AAAA answered with AD.
func hostSecure(ctx context.Context, dr *dnscache.Resolver, host string) bool {
	return secureAnswer(ctx, dr, host, dns.TypeA) && secureAnswer(ctx, dr, host, dns.TypeAAAA)
}

// policyFor is the TLS policy for the mail server t of domain. waived
// (TLS-Required: No, RFC 8689 5) makes it opportunistic whatever DNS says.
func (r *Relay) policyFor(ctx context.Context, resolver session.Resolver, domain string, t target, waived bool) (*tlsPolicy, *setupError) {
	if !r.mx {
		return nil, nil
	}
	if waived {
		return &tlsPolicy{kind: policyOpportunistic, why: "TLS-Required: No"}, nil
	}
	dr, ok := resolver.(*dnscache.Resolver)
	if !ok || !t.secure {
		return stsOr(t, opportunistic), nil
	}
	name := fmt.Sprintf("_%d._tcp.%s", r.MXPort, t.name)
	ans, err := dr.Lookup(ctx, name, dns.TypeTLSA)
	if err != nil {
		return nil, failed(replyTLSADNS, "TLSA lookup of %s: %v", name, err).because(reasonTLSADNS)
	}
	if !ans.Authenticated || ans.NotFound {
		return stsOr(t, &tlsPolicy{kind: policyOpportunistic, why: "no secure TLSA records"}), nil
	}
	var usable []*dns.TLSA
	for _, rr := range ans.Records {
		if a, ok := rr.(*dns.TLSA); ok && (a.Usage == 2 || a.Usage == 3) && a.Selector <= 1 && a.MatchingType <= 2 {
			usable = append(usable, a)
		}
	}
	p := &tlsPolicy{kind: policyDANE, mandatory: true, verified: len(usable) > 0}
	if len(usable) == 0 {
		// RFC 7672 2.2: TLS still mandatory, without authentication.
		p.why = "no usable TLSA records"
		return p, nil
	}
	p.verify = func(cs tls.ConnectionState) error { return daneVerify(cs.PeerCertificates, usable, t.name, domain) }
	return p, nil
}

// stsOr is the MTA-STS policy of t's domain where DANE does not apply
// (RFC 8461 2: DANE, when present, wins), else otherwise. With enforce,
// greet requires STARTTLS and a certificate that verifies for the MX
// host's name (stsCheck), so a REQUIRETLS message may go there.
func stsOr(t target, otherwise *tlsPolicy) *tlsPolicy {
	switch t.sts {
	case stsEnforce:
		return &tlsPolicy{kind: stsEnforce, verified: true, why: "MTA-STS enforce"}
	case stsTesting:
		return &tlsPolicy{kind: stsTesting, why: "MTA-STS testing"}
	}
	return otherwise
}

// daneVerify checks a server's certificate chain against usable TLSA
// records (RFC 7672 3.1): a DANE-EE record matching the leaf, or a DANE-TA
// record matching a certificate of the chain that the leaf chains to, the
// leaf carrying the MX host's name or the domain (3.2.3).
func daneVerify(chain []*x509.Certificate, records []*dns.TLSA, host, domain string) error {
	if len(chain) == 0 {
		return errors.New("no certificate")
	}
	leaf := chain[0]
	var taErr error
	for _, rr := range records {
		switch rr.Usage {
		case 3:
			if rr.Verify(leaf) == nil {
				return nil
			}
		case 2:
			for _, ta := range chain[1:] {
				if rr.Verify(ta) != nil {
					continue
				}
				roots, inter := x509.NewCertPool(), x509.NewCertPool()
				roots.AddCert(ta)
				for _, c := range chain[1:] {
					inter.AddCert(c)
				}
				_, err := leaf.Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter})
				if err == nil {
					if err = leaf.VerifyHostname(host); err != nil && leaf.VerifyHostname(domain) == nil {
						err = nil
					}
				}
				if err == nil {
					return nil
				}
				taErr = err
			}
		}
	}
	if taErr != nil {
		return fmt.Errorf("no TLSA record matches (DANE-TA: %v)", taErr)
	}
	return errors.New("no TLSA record matches the certificate chain")
}

// requiresTLS reports whether MAIL had REQUIRETLS (RFC 8689).
func requiresTLS(params session.Params) bool {
	_, ok := params.Get("REQUIRETLS")
	return ok
}

// tlsNotRequired reports whether the message's header has TLS-Required:
// No (RFC 8689 5): the sender asks that recipient-side TLS policies (DANE,
// MTA-STS) be ignored. It counts only without REQUIRETLS (RFC 8689 4.1).
func tlsNotRequired(m *session.Message) bool {
	if m == nil {
		return false
	}
	h, _ := textproto.NewReader(bufio.NewReader(io.LimitReader(m.Reader(), 1<<20))).ReadMIMEHeader()
	for _, v := range h.Values("Tls-Required") {
		if strings.EqualFold(strings.TrimSpace(v), "No") {
			return true
		}
	}
	return false
}
