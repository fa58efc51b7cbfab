// Package dkimsign is the sub-handler esmtp.handlers.dkim_sign: a judge
// that signs each message whose From: domain it has a key for with DKIM
// (RFC 6376; RSA-SHA256, and Ed25519-SHA256 from RFC 8463).
//
//	dkim_sign example.com s1 /etc/mail/s1.key
//
//	dkim_sign {
//		key example.com s1 /etc/mail/example.com.s1.key
//		key example.com e1 /etc/mail/example.com.e1.key   # a second signature
//		key example.org s1 /etc/mail/example.org.key
//		headers From From Subject Date To Cc Message-ID   # default: see DefaultHeaders
//		expire 7d                                         # default: none
//	}
//
// The From: field of the message as the judges before it left it gives the
// domain (all its addresses must be at one domain, and there must be one
// From: field); every key of that domain (exactly, case ignored) signs,
// relaxed/relaxed, the fields of the header list and the whole body. Put it
// last among the judges: it signs the message as the deliveries will send
// it, and a judge after it that edits a signed field or the body breaks the
// signature. Fields prepended afterwards, such as the
// Authentication-Results field, are not signed (they are not in the list).
//
// Keys are PEM files read at provision (so again on each config reload):
// RSA (PKCS #1 "RSA PRIVATE KEY" or PKCS #8 "PRIVATE KEY", 2048 bits or
// more) or Ed25519 (PKCS #8 "PRIVATE KEY", as `openssl genpkey -algorithm
// ed25519` writes it); a file with just the base64 of a 32-byte Ed25519
// seed (as dkimpy's dknewkey writes it) is taken too. A missing, unreadable
// or weak key fails the configuration, naming the file.
package dkimsign

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ed25519"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net/mail"
	"os"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	msgdkim "github.com/emersion/go-msgauth/dkim"
	"go.uber.org/zap"

	"github.com/caddy-esmtp/caddy-esmtp/internal/caddyopt"
	"github.com/caddy-esmtp/caddy-esmtp/internal/mailheader"
	"github.com/caddy-esmtp/caddy-esmtp/session"
)

func init() {
	caddy.RegisterModule(&Sign{})
}

// DefaultHeaders are the fields signed by default (RFC 6376 section
// 5.4.1's list), From twice: a second From: field added on the way then
// breaks the signature (over-signing).
var DefaultHeaders = []string{
	"From", "From", "Reply-To", "Subject", "Date", "To", "Cc",
	"Message-ID", "In-Reply-To", "References",
	"MIME-Version", "Content-Type", "Content-Transfer-Encoding",
	"List-Id", "List-Unsubscribe", "List-Unsubscribe-Post",
}

// MinRSABits is the smallest RSA key accepted for signing.
const MinRSABits = 2048

// Sign signs messages with DKIM.
type Sign struct {
	// Keys are the signing keys; at least one is required. Several keys
	// of one domain each add a signature (an RSA and an Ed25519 one).
	Keys []Key `json:"keys,omitempty"`
	// Headers are the header fields signed, in order, each name as many
	// times as instances are to be signed (RFC 6376 section 5.4.2); it must
	// include From. Default: DefaultHeaders.
	Headers []string `json:"headers,omitempty"`
	// Expire, when set, puts an expiry (x=) this long after the signing
	// time in each signature. Default: none.
	Expire caddy.Duration `json:"expire,omitempty"`

	keys   map[string][]signingKey // by lower-case domain
	logger *zap.Logger
	now    func() time.Time
}

// Key is one signing key.
type Key struct {
	// Domain is the signing domain (d=), and the From: domain of the
	// messages it signs.
	Domain string `json:"domain,omitempty"`
	// Selector is the key's selector (s=): its public key is the TXT
	// record <selector>._domainkey.<domain>.
	Selector string `json:"selector,omitempty"`
	// KeyFile is the path of the PEM private key.
	KeyFile string `json:"key_file,omitempty"`
}

// signingKey is a loaded Key.
type signingKey struct {
	domain, selector string
	signer           crypto.Signer
}

// CaddyModule returns the Caddy module information.
func (*Sign) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "esmtp.handlers.dkim_sign",
		New: func() caddy.Module { return new(Sign) },
	}
}

// Provision checks the options and reads the keys.
func (g *Sign) Provision(ctx caddy.Context) error {
	g.logger = ctx.Logger(g)
	if g.now == nil {
		g.now = time.Now
	}
	if len(g.Keys) == 0 {
		return errors.New("dkim_sign: keys: at least one key is required")
	}
	if g.Headers != nil {
		if err := checkHeaders(g.Headers); err != nil {
			return fmt.Errorf("dkim_sign: headers: %v", err)
		}
	}
	if g.Expire < 0 {
		return fmt.Errorf("dkim_sign: expire must be positive, got %s", time.Duration(g.Expire))
	}
	g.keys = map[string][]signingKey{}
	for i, k := range g.Keys {
		domain := strings.ToLower(strings.TrimSuffix(strings.TrimSpace(k.Domain), "."))
		if err := checkName(domain); err != nil {
			return fmt.Errorf("dkim_sign: keys[%d].domain: %v", i, err)
		}
		if err := checkName(k.Selector); err != nil {
			return fmt.Errorf("dkim_sign: keys[%d].selector: %v", i, err)
		}
		if k.KeyFile == "" {
			return fmt.Errorf("dkim_sign: keys[%d].key_file is required", i)
		}
		signer, err := LoadKey(k.KeyFile)
		if err != nil {
			return fmt.Errorf("dkim_sign: keys[%d].key_file: %v", i, err)
		}
		g.keys[domain] = append(g.keys[domain], signingKey{domain: domain, selector: k.Selector, signer: signer})
	}
	return nil
}

// checkHeaders checks a header list: field names, From among them.
func checkHeaders(h []string) error {
	from := false
	for _, name := range h {
		if name == "" || strings.ContainsFunc(name, func(r rune) bool { return r <= ' ' || r >= 0x7f || r == ':' }) {
			return fmt.Errorf("%q is not a header field name", name)
		}
		from = from || strings.EqualFold(name, "From")
	}
	if !from {
		return errors.New("must include From")
	}
	return nil
}

// checkName checks a domain or selector: DNS labels of letters, digits,
// hyphens and underscores.
func checkName(s string) error {
	if s == "" || len(s) > 253 || strings.HasPrefix(s, ".") || strings.Contains(s, "..") {
		return fmt.Errorf("%q is not a DNS name", s)
	}
	for _, c := range s {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '.' || c == '_') {
			return fmt.Errorf("%q is not a DNS name", s)
		}
	}
	return nil
}

// LoadKey reads a private key file (see the package documentation for the
// forms taken). Errors name the file.
func LoadKey(path string) (crypto.Signer, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err // *fs.PathError names the file
	}
	k, err := parseKey(data)
	if err != nil {
		return nil, fmt.Errorf("%s: %v", path, err)
	}
	return k, nil
}

// parseKey parses a PEM private key, or the base64 of an Ed25519 seed.
func parseKey(data []byte) (crypto.Signer, error) {
	block, _ := pem.Decode(data)
	if block == nil {
		seed, err := base64.StdEncoding.DecodeString(string(bytes.TrimSpace(data)))
		if err == nil && len(seed) == ed25519.SeedSize {
			return ed25519.NewKeyFromSeed(seed), nil
		}
		return nil, errors.New("no PEM private key found")
	}
	if _, encrypted := block.Headers["Proc-Type"]; encrypted || block.Type == "ENCRYPTED PRIVATE KEY" {
		return nil, errors.New("encrypted keys are not supported")
	}
	var key any
	var err error
	switch block.Type {
	case "RSA PRIVATE KEY":
		key, err = x509.ParsePKCS1PrivateKey(block.Bytes)
	case "PRIVATE KEY":
		key, err = x509.ParsePKCS8PrivateKey(block.Bytes)
	default:
		return nil, fmt.Errorf("PEM block %q is not a private key (want RSA PRIVATE KEY or PRIVATE KEY)", block.Type)
	}
	if err != nil {
		return nil, err
	}
	switch k := key.(type) {
	case *rsa.PrivateKey:
		if bits := k.N.BitLen(); bits < MinRSABits {
			return nil, fmt.Errorf("RSA key of %d bits is too weak (at least %d)", bits, MinRSABits)
		}
		return k, nil
	case ed25519.PrivateKey:
		return k, nil
	default:
		return nil, fmt.Errorf("%T keys are not supported (RSA or Ed25519)", key)
	}
}

// ReadsMessage is true: the engine spools each message for the judge.
func (*Sign) ReadsMessage() bool { return true }

// EndOfMessage signs the message with every key of its From: domain. A
// message of a domain without a key passes unsigned; a failure to sign
// (reading the spool) answers 451 4.3.0, so that no message leaves
// unsigned by mistake.
func (g *Sign) EndOfMessage(ctx context.Context, s *session.Session) (*session.Reply, error) {
	txn := s.Transaction()
	m := txn.Message()
	if m == nil {
		return nil, nil
	}
	var froms []string
	err := mailheader.Scan(m.Reader(), func(f mailheader.Field) bool {
		if strings.EqualFold(f.Name, "From") {
			if f.Truncated {
				f.Value = "" // not a domain we sign for
			}
			froms = append(froms, f.Value)
		}
		return true
	})
	if err != nil {
		return nil, fmt.Errorf("dkim_sign: reading the message: %w", err)
	}
	if len(froms) != 1 {
		g.logger.Debug("not signed: not one From field", zap.Int("from_fields", len(froms)))
		return nil, nil
	}
	domain := FromDomain(froms[0])
	keys := g.keys[domain]
	if len(keys) == 0 {
		return nil, nil
	}

	headers := g.Headers
	if headers == nil {
		headers = DefaultHeaders
	}
	var expiry time.Time
	if g.Expire > 0 {
		expiry = g.now().Add(time.Duration(g.Expire))
	}
	signers := make([]*msgdkim.Signer, 0, len(keys))
	writers := make([]io.Writer, 0, len(keys))
	defer func() {
		for _, sg := range signers {
			sg.Close()
		}
	}()
	for _, k := range keys {
		sg, err := msgdkim.NewSigner(&msgdkim.SignOptions{
			Domain:                 k.domain,
			Selector:               k.selector,
			Signer:                 k.signer,
			HeaderCanonicalization: msgdkim.CanonicalizationRelaxed,
			BodyCanonicalization:   msgdkim.CanonicalizationRelaxed,
			HeaderKeys:             headers,
			Expiration:             expiry,
		})
		if err != nil {
			return nil, fmt.Errorf("dkim_sign: %w", err)
		}
		signers = append(signers, sg)
		writers = append(writers, sg)
	}
	// A CRLF after the message: its header ends even when it has no body
	// nor blank line; relaxed body canonicalization ignores empty lines at
	// the end of the body.
	if _, err := m.WriteTo(io.MultiWriter(writers...)); err != nil {
		return nil, fmt.Errorf("dkim_sign: %w", err)
	}
	if _, err := io.MultiWriter(writers...).Write([]byte("\r\n")); err != nil {
		return nil, fmt.Errorf("dkim_sign: %w", err)
	}
	var signed []string
	for i, sg := range signers {
		if err := sg.Close(); err != nil {
			return nil, fmt.Errorf("dkim_sign: %w", err)
		}
		name, value, _ := strings.Cut(sg.Signature(), ":")
		txn.PrependHeader(name, strings.TrimRight(value, "\r\n"))
		signed = append(signed, keys[i].selector+"._domainkey."+keys[i].domain)
	}
	signers = nil
	txn.AddLogField(zap.Strings("dkim_signed", signed))
	return nil, nil
}

// FromDomain returns the domain of the addresses of a From: field value,
// lower case, or "" when it has none, several different ones, or cannot
// be parsed.
func FromDomain(value string) string {
	addrs, err := mail.ParseAddressList(value)
	if err != nil || len(addrs) == 0 {
		return ""
	}
	domain := ""
	for _, a := range addrs {
		at := strings.LastIndexByte(a.Address, '@')
		if at < 0 {
			return ""
		}
		d := strings.ToLower(strings.TrimSuffix(a.Address[at+1:], "."))
		if d == "" || domain != "" && d != domain {
			return ""
		}
		domain = d
	}
	return domain
}

// UnmarshalCaddyfile sets up the sub-handler from Caddyfile tokens.
// Syntax:
//
//	dkim_sign [<domain> <selector> <key_file>] [{
//		key     <domain> <selector> <key_file>
//		headers <field...>
//		expire  <duration>
//	}]
//
// key may be repeated; headers and expire are given at most once.
func (g *Sign) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // the sub-handler name
	if args := d.RemainingArgs(); len(args) > 0 {
		if len(args) != 3 {
			return d.Errf("dkim_sign: want <domain> <selector> <key_file>, got %d arguments", len(args))
		}
		g.Keys = append(g.Keys, Key{Domain: args[0], Selector: args[1], KeyFile: args[2]})
	}
	opts := caddyopt.New("dkim_sign", "key")
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		opt := d.Val()
		if err := opts.Once(d); err != nil {
			return err
		}
		switch opt {
		case "key":
			args := d.RemainingArgs()
			if len(args) != 3 {
				return d.Errf("dkim_sign: key: want <domain> <selector> <key_file>, got %d arguments", len(args))
			}
			g.Keys = append(g.Keys, Key{Domain: args[0], Selector: args[1], KeyFile: args[2]})
		case "headers":
			args := d.RemainingArgs()
			if len(args) == 0 {
				return d.ArgErr()
			}
			if err := checkHeaders(args); err != nil {
				return d.Errf("dkim_sign: headers: %v", err)
			}
			g.Headers = args
		case "expire":
			var v string
			if !d.Args(&v) || d.NextArg() {
				return d.ArgErr()
			}
			dur, err := caddy.ParseDuration(v)
			if err != nil || dur <= 0 {
				return d.Errf("dkim_sign: expire must be a positive duration, got %q", v)
			}
			g.Expire = caddy.Duration(dur)
		default:
			return d.Errf("dkim_sign: unknown option %q", opt)
		}
	}
	if len(g.Keys) == 0 {
		return d.Err("dkim_sign: no key given")
	}
	return nil
}

// Interface guards.
var (
	_ caddy.Provisioner     = (*Sign)(nil)
	_ caddyfile.Unmarshaler = (*Sign)(nil)
	_ session.MessageHook   = (*Sign)(nil)
	_ session.MessageReader = (*Sign)(nil)
)
