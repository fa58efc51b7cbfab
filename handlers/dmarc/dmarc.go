// Package dmarc is the sub-handler esmtp.handlers.dmarc: at end of data
// it checks the message against the DMARC policy (RFC 7489) of the
// domain of its From: address, records the result in the
// Authentication-Results field (package authresults) and applies the
// policy.
//
//	dmarc {
//		enforce off   # record and log only (default: on)
//	}
//
// It reads the SPF and DKIM results that the spf and dkim sub-handlers
// recorded with authresults.Add, so it must come after them in the list.
// The From domain is aligned with the SPF-authenticated domain
// (smtp.mailfrom, or the HELO name for the null sender) when SPF passed,
// and with the d= of each DKIM signature that passed: equal domains
// (strict, aspf=s / adkim=s) or the same organizational domain (relaxed,
// the default), the organizational domain coming from the public suffix
// list (golang.org/x/net/publicsuffix). One aligned pass is dmarc=pass.
//
// The record is the TXT record at _dmarc.<From domain>, else the one at
// _dmarc.<organizational domain>, whose sp= then applies (p= when it has
// none). A failing message gets the policy, sampled by pct= (a message
// outside the sample gets the next lower policy):
//
//   - p=reject: 550 5.7.1, nothing delivered;
//   - p=quarantine: accepted and marked: the field "X-Esmtp-Quarantine:
//     dmarc" on top of the message, policy.dmarc=quarantine in
//     Authentication-Results, the log field dmarc_disposition=quarantine,
//     and Disposition(s) == "quarantine" for the sub-handlers after it;
//   - p=none: accepted.
//
// No record is dmarc=none; a DNS failure on the record (SERVFAIL, a
// timeout) is dmarc=temperror and answers 451 4.7.0; a malformed record
// is dmarc=permerror and the message is accepted (there is no policy to
// apply). A message without exactly one From: address with a domain (no
// From: field, several, or several addresses of different domains) is
// dmarc=permerror and refused with 550 5.7.1 (RFC 7489 6.6.1: such
// messages are "typically rejected"). With `enforce off` nothing is
// refused nor marked: the results are recorded and logged only.
package dmarc

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"strings"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/emersion/go-msgauth/dmarc"
	"go.uber.org/zap"

	"github.com/caddy-esmtp/caddy-esmtp/authresults"
	"github.com/caddy-esmtp/caddy-esmtp/internal/caddyopt"
	"github.com/caddy-esmtp/caddy-esmtp/session"
)

func init() {
	caddy.RegisterModule(&DMARC{})
}

// QuarantineReason is the reason a message that the DMARC policy of its
// From domain says to quarantine is quarantined with
// (session.Transaction.Quarantine): the field "X-Esmtp-Quarantine: dmarc"
// on top of it, which a Maildir filter (Sieve, procmail) or a later
// sub-handler can act on.
const QuarantineReason = "dmarc"

// DMARC checks messages against the DMARC policy of their From domain.
type DMARC struct {
	// Enforce applies the policies: p=reject refuses with 550 5.7.1,
	// p=quarantine marks the message, a DNS failure on the record
	// answers 451 4.7.0, and a message without exactly one From
	// address is refused with 550 5.7.1. False records the result in
	// Authentication-Results and the log only. Default: true.
	Enforce *bool `json:"enforce,omitempty"`

	// intn draws the pct= sample: a number in [0, n). Tests replace it.
	intn func(n int) int
}

// CaddyModule returns the Caddy module information.
func (*DMARC) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "esmtp.handlers.dmarc",
		New: func() caddy.Module { return new(DMARC) },
	}
}

// Provision sets the defaults.
func (h *DMARC) Provision(caddy.Context) error {
	if h.intn == nil {
		h.intn = rand.IntN
	}
	return nil
}

// enforcing reports whether policies are applied (Enforce, default true).
func (h *DMARC) enforcing() bool { return h.Enforce == nil || *h.Enforce }

// Header notes the From: fields of the message as it streams in.
func (h *DMARC) Header(_ context.Context, s *session.Session, f session.HeaderField) error {
	if !strings.EqualFold(f.Name, "From") {
		return nil
	}
	txn := s.Transaction()
	st, _ := txn.Value(fromKey{}).(*fromState)
	if st == nil {
		st = &fromState{}
		txn.SetValue(fromKey{}, st)
	}
	st.add(f.Value)
	return nil
}

// dispositionKey keys the disposition of a transaction's message.
type dispositionKey struct{}

// Disposition returns what the DMARC check did with the message of the
// transaction in progress: "none" (passed, no record, or p=none),
// "quarantine" (accepted and marked), "reject" (refused, or would have
// been with enforce off), or "" after a temperror (with enforce off) or
// when no dmarc sub-handler has judged it.
func Disposition(s *session.Session) string {
	txn := s.Transaction()
	if txn == nil {
		return ""
	}
	d, _ := txn.Value(dispositionKey{}).(string)
	return d
}

// EndOfMessage evaluates the message and applies the policy (see the
// package documentation).
func (h *DMARC) EndOfMessage(ctx context.Context, s *session.Session) (*session.Reply, error) {
	txn := s.Transaction()
	st, _ := txn.Value(fromKey{}).(*fromState)
	from, why := st.domain()
	if from == "" {
		h.record(s, resultPermError, why, "", "", "reject")
		if h.enforcing() {
			return session.NewReply(550, "5.7.1", "Message must have exactly one From address (RFC 7489 6.6.1)"), nil
		}
		return nil, nil
	}
	pol, err := discover(ctx, s.Resolver(), from)
	var temp errTemp
	switch {
	case errors.Is(err, errNoRecord):
		h.record(s, resultNone, "", from, "", "none")
		return nil, nil
	case errors.As(err, &temp):
		h.record(s, resultTempError, "DNS error on the DMARC record", from, "", "")
		txn.AddLogField(zap.String("dmarc_error", err.Error()))
		if h.enforcing() {
			return session.NewReply(451, "4.7.0", "DMARC record of "+from+" unavailable, try again later"), nil
		}
		return nil, nil
	case err != nil:
		h.record(s, resultPermError, "malformed DMARC record", from, "", "none")
		txn.AddLogField(zap.String("dmarc_error", err.Error()))
		return nil, nil
	}
	if method, d := alignedPass(authresults.Of(s), from, pol.rec); method != "" {
		h.record(s, resultPass, "", from, string(pol.p), "none")
		txn.AddLogField(zap.String("dmarc_aligned", method+":"+d))
		return nil, nil
	}
	applied, inSample := sampled(pol.p, pol.rec.Percent, h.intn)
	var reasons []string
	if !inSample {
		reasons = append(reasons, fmt.Sprintf("pct=%d sampled out, published policy %s", *pol.rec.Percent, pol.p))
	}
	if !h.enforcing() && applied != dmarc.PolicyNone {
		reasons = append(reasons, "not enforced")
	}
	h.record(s, resultFail, strings.Join(reasons, "; "), from, string(applied), string(applied))
	if !h.enforcing() {
		return nil, nil
	}
	switch applied {
	case dmarc.PolicyReject:
		return session.NewReply(550, "5.7.1", "Message rejected by the DMARC policy of "+from), nil
	case dmarc.PolicyQuarantine:
		txn.Quarantine(QuarantineReason)
	}
	return nil, nil
}

// record adds the DMARC result to Authentication-Results
// (header.from=<domain>, policy.dmarc=<policy>: the published policy on
// a pass, the one applied on a failure), the transaction's log line
// (dmarc, dmarc_domain, dmarc_disposition, dmarc_reason) and its
// disposition value.
func (h *DMARC) record(s *session.Session, result, reason, from, policy, disposition string) {
	txn := s.Transaction()
	r := authresults.Result{Method: "dmarc", Value: result, Reason: reason}
	if from != "" {
		r.Props = append(r.Props, authresults.Prop{Type: "header", Name: "from", Value: from})
	}
	if policy != "" {
		r.Props = append(r.Props, authresults.Prop{Type: "policy", Name: "dmarc", Value: policy})
	}
	authresults.Add(s, r)
	fields := []zap.Field{zap.String("dmarc", result)}
	if from != "" {
		fields = append(fields, zap.String("dmarc_domain", from))
	}
	if disposition != "" && disposition != "none" {
		fields = append(fields, zap.String("dmarc_disposition", disposition))
	}
	if reason != "" {
		fields = append(fields, zap.String("dmarc_reason", reason))
	}
	for _, f := range fields {
		txn.AddLogField(f)
	}
	if disposition != "" {
		txn.SetValue(dispositionKey{}, disposition)
	}
}

// UnmarshalCaddyfile sets up the sub-handler from Caddyfile tokens.
// Syntax:
//
//	dmarc [{
//		enforce on|off
//	}]
func (h *DMARC) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // the sub-handler name
	if d.NextArg() {
		return d.ArgErr()
	}
	opts := caddyopt.New("dmarc")
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		opt := d.Val()
		if err := opts.Once(d); err != nil {
			return err
		}
		switch opt {
		case "enforce":
			var v string
			if !d.Args(&v) || d.NextArg() {
				return d.ArgErr()
			}
			switch v {
			case "on":
				t := true
				h.Enforce = &t
			case "off":
				f := false
				h.Enforce = &f
			default:
				return d.Errf("dmarc: enforce: %q is not on or off", v)
			}
		default:
			return d.Errf("dmarc: unknown option %q (known: enforce)", opt)
		}
	}
	return nil
}

// Interface guards
var (
	_ caddy.Provisioner     = (*DMARC)(nil)
	_ caddyfile.Unmarshaler = (*DMARC)(nil)
	_ session.HeaderHook    = (*DMARC)(nil)
	_ session.MessageHook   = (*DMARC)(nil)
)
