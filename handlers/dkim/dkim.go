// Package dkim is the sub-handler esmtp.handlers.dkim: a judge that
// verifies the DKIM signatures of each message at end of data (RFC 6376,
// with Ed25519 keys from RFC 8463) and records one Authentication-Results
// result per signature (package authresults). It never refuses a message:
// a DMARC check after it decides what the results mean.
//
//	dkim [{
//		max_signatures 10
//	}]
//
// The message is read once from the engine's spool, as it is at this
// point of the judges (our Received: field first, edits so far applied);
// every signature is checked in that one pass, with the handler's DNS
// resolver for the keys. Each signature gets one result, with the
// properties header.d, header.s, header.a (and header.i when the
// signature has one):
//
//   - pass: the signature verified.
//   - fail: it did not (the body or the header changed), or the key is
//     an RSA key under 1024 bits (RFC 8301).
//   - policy: the signature has an l= tag (a body length: the rest of the
//     body would be unsigned, so it is not accepted), or it is beyond
//     max_signatures (one result, without properties, for all of those).
//   - permerror: the signature cannot be checked (a missing or malformed
//     tag, bad base64, a version or algorithm we do not know, rsa-sha1, an
//     expired x=, no key or a malformed one in DNS).
//   - temperror: the key could not be looked up (DNS failure or timeout).
//   - neutral: any other failure to check it.
//
// A message without a signature gets dkim=none. The results are also put
// on the message's log line, as the field "dkim".
package dkim

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	msgdkim "github.com/emersion/go-msgauth/dkim"
	"go.uber.org/zap"

	"github.com/caddy-esmtp/caddy-esmtp/authresults"
	"github.com/caddy-esmtp/caddy-esmtp/internal/mailheader"
	"github.com/caddy-esmtp/caddy-esmtp/session"
)

func init() {
	caddy.RegisterModule(&DKIM{})
}

// DefaultMaxSignatures is the default of DKIM.MaxSignatures.
const DefaultMaxSignatures = 10

// maxProp bounds a property value copied from a signature into a result.
const maxProp = 255

// DKIM verifies DKIM signatures and records the results.
type DKIM struct {
	// MaxSignatures is how many signatures of a message are verified, the
	// first ones in the header; each further one is not checked (it looks
	// up no key) and they get one result "policy". Default 10.
	MaxSignatures int `json:"max_signatures,omitempty"`

	logger *zap.Logger
}

// CaddyModule returns the Caddy module information.
func (*DKIM) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "esmtp.handlers.dkim",
		New: func() caddy.Module { return new(DKIM) },
	}
}

// Provision checks the options.
func (v *DKIM) Provision(ctx caddy.Context) error {
	v.logger = ctx.Logger(v)
	switch {
	case v.MaxSignatures < 0:
		return fmt.Errorf("dkim: max_signatures must be positive, got %d", v.MaxSignatures)
	case v.MaxSignatures == 0:
		v.MaxSignatures = DefaultMaxSignatures
	}
	return nil
}

// ReadsMessage is true: the engine spools each message for the judge.
func (*DKIM) ReadsMessage() bool { return true }

// sigInfo is what a DKIM-Signature field says about itself, for the
// result's properties.
type sigInfo struct {
	tags map[string]string
}

// EndOfMessage verifies the message's signatures and records the results.
// It never refuses the message, but an error reading the spool is
// returned (451 4.3.0).
func (v *DKIM) EndOfMessage(ctx context.Context, s *session.Session) (*session.Reply, error) {
	txn := s.Transaction()
	// The message as the sender sent it: an earlier judge's edit (a tag
	// in the Subject, a removed field) must not break its signatures.
	m := txn.ReceivedMessage()
	if m == nil {
		return nil, nil
	}
	max := v.MaxSignatures
	if max <= 0 {
		max = DefaultMaxSignatures
	}

	// The signatures' own tags, in the order go-msgauth verifies them.
	var sigs []sigInfo
	total := 0
	err := mailheader.Scan(m.Reader(), func(f mailheader.Field) bool {
		if !strings.EqualFold(f.Name, "DKIM-Signature") {
			return true
		}
		if total++; total <= max {
			sigs = append(sigs, sigInfo{tags: parseTags(f.Value)})
		}
		return true
	})
	if err != nil {
		return nil, fmt.Errorf("dkim: reading the message: %w", err)
	}
	if total == 0 {
		v.record(s, authresults.Result{Method: "dkim", Value: "none"})
		v.log(txn, []string{"none"})
		return nil, nil
	}

	opts := &msgdkim.VerifyOptions{LookupTXT: lookupTXT(ctx, s.Resolver()), MaxVerifications: max}
	// A CRLF after the message: the header ends even when the message has
	// no body nor blank line, and both canonicalizations ignore empty lines
	// at the end of the body.
	verifs, err := msgdkim.VerifyWithOptions(io.MultiReader(m.Reader(), strings.NewReader("\r\n")), opts)
	unexpected := err != nil && !errors.Is(err, msgdkim.ErrTooManySignatures)
	if unexpected {
		v.logger.Warn("dkim: verification failed", zap.Error(err))
	}
	var summary []string
	for i, sig := range sigs {
		var ve *msgdkim.Verification
		if i < len(verifs) {
			ve = verifs[i]
		}
		r := authresults.Result{Method: "dkim", Props: sig.props()}
		switch {
		case unexpected || ve == nil:
			r.Value, r.Reason = "temperror", "verification did not complete"
		default:
			r.Value, r.Reason = classify(ve.Err, sig)
		}
		if r.Value == "pass" && len(r.Props) == 0 && ve.Domain != "" {
			r.Props = []authresults.Prop{{Type: "header", Name: "d", Value: clip(ve.Domain)}}
		}
		v.record(s, r)
		summary = append(summary, summaryOf(r))
	}
	if extra := total - len(sigs); extra > 0 {
		r := authresults.Result{Method: "dkim", Value: "policy",
			Reason: strconv.Itoa(extra) + " signatures beyond the first " + strconv.Itoa(max) + " not verified"}
		v.record(s, r)
		summary = append(summary, "policy (+"+strconv.Itoa(extra)+" not verified)")
	}
	v.log(txn, summary)
	return nil, nil
}

func (v *DKIM) record(s *session.Session, r authresults.Result) { authresults.Add(s, r) }

func (v *DKIM) log(txn *session.Transaction, summary []string) {
	txn.AddLogField(zap.Strings("dkim", summary))
}

// summaryOf is a result in a few words for the log: "pass d=example.com
// s=s1".
func summaryOf(r authresults.Result) string {
	b := r.Value
	for _, p := range r.Props {
		b += " " + p.Name + "=" + p.Value
	}
	if r.Reason != "" {
		b += " (" + r.Reason + ")"
	}
	return b
}

// classify maps go-msgauth's verdict on one signature to a result value
// and a reason.
func classify(err error, sig sigInfo) (value, reason string) {
	switch {
	case err == nil:
		return "pass", ""
	case msgdkim.IsTempFail(err):
		return "temperror", reasonOf(err)
	case msgdkim.IsPermFail(err):
		// go-msgauth refuses RSA keys under 1024 bits as a permanent
		// error; RFC 8301 says such a signature is not valid: fail.
		if strings.Contains(err.Error(), "key is too short") {
			return "fail", reasonOf(err)
		}
		return "permerror", reasonOf(err)
	}
	if _, ok := sig.tags["l"]; ok {
		return "policy", "body length tag (l=) not accepted"
	}
	if strings.Contains(err.Error(), "did not verify") {
		return "fail", reasonOf(err)
	}
	return "neutral", reasonOf(err)
}

// reasonOf is an error's text without go-msgauth's "dkim: " prefix,
// cut short.
func reasonOf(err error) string {
	return clip(strings.TrimPrefix(err.Error(), "dkim: "))
}

// props are a signature's header.d, header.s, header.a and header.i,
// those it has.
func (sig sigInfo) props() []authresults.Prop {
	var p []authresults.Prop
	for _, name := range []string{"d", "s", "a", "i"} {
		if val := sig.tags[name]; val != "" {
			p = append(p, authresults.Prop{Type: "header", Name: name, Value: clip(val)})
		}
	}
	return p
}

// parseTags reads a DKIM tag list (RFC 6376 section 3.2) loosely: the
// first value of each tag, white space removed; malformed parts are
// skipped (go-msgauth judges them).
func parseTags(v string) map[string]string {
	tags := map[string]string{}
	for _, part := range strings.Split(v, ";") {
		name, val, ok := strings.Cut(part, "=")
		if !ok {
			continue
		}
		name = strings.TrimSpace(name)
		if _, dup := tags[name]; dup || name == "" {
			continue
		}
		tags[name] = strings.Map(func(r rune) rune {
			if r == ' ' || r == '\t' || r == '\r' || r == '\n' {
				return -1
			}
			return r
		}, val)
	}
	return tags
}

// clip cuts s to maxProp bytes.
func clip(s string) string {
	if len(s) > maxProp {
		return s[:maxProp]
	}
	return s
}

// lookupTXT adapts a resolver to go-msgauth: the lookup is bound to the
// hook's context, and any failure but "no such name" is reported as
// temporary (temperror), whatever the resolver's error type.
func lookupTXT(ctx context.Context, r session.Resolver) func(string) ([]string, error) {
	return func(name string) ([]string, error) {
		txts, err := r.LookupTXT(ctx, name)
		if err == nil {
			return txts, nil
		}
		var dnsErr *net.DNSError
		if errors.As(err, &dnsErr) && dnsErr.IsNotFound {
			return nil, err
		}
		return nil, tempError{err}
	}
}

// tempError is a lookup failure that go-msgauth takes as temporary.
type tempError struct{ err error }

func (e tempError) Error() string   { return e.err.Error() }
func (e tempError) Unwrap() error   { return e.err }
func (e tempError) Timeout() bool   { return true }
func (e tempError) Temporary() bool { return true }

// UnmarshalCaddyfile sets up the sub-handler from Caddyfile tokens.
// Syntax:
//
//	dkim [{
//		max_signatures <n>
//	}]
func (v *DKIM) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // the sub-handler name
	if d.NextArg() {
		return d.ArgErr()
	}
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		switch opt := d.Val(); opt {
		case "max_signatures":
			var s string
			if !d.Args(&s) || d.NextArg() {
				return d.ArgErr()
			}
			n, err := strconv.Atoi(s)
			if err != nil || n <= 0 {
				return d.Errf("dkim: max_signatures must be a positive number, got %q", s)
			}
			v.MaxSignatures = n
		default:
			return d.Errf("dkim: unknown option %q", opt)
		}
	}
	return nil
}

// Interface guards.
var (
	_ caddy.Provisioner     = (*DKIM)(nil)
	_ caddyfile.Unmarshaler = (*DKIM)(nil)
	_ session.MessageHook   = (*DKIM)(nil)
	_ session.MessageReader = (*DKIM)(nil)
)
