// Package relay is the sub-handler esmtp.handlers.relay: a delivery
// (session.DeliverHook) that forwards each message over SMTP to a smart
// host or to the mail servers (MX) of each recipient's domain, and answers
// the client with the upstream's own replies.
//
// The upstream transaction follows the client's: MAIL FROM is sent
// upstream at the first recipient the relay takes, and each RCPT is passed
// on, the upstream's reply to it being the client's. The message itself is
// sent at the end of data, once the judges (session.MessageHook) have
// accepted and edited it: Deliver sends DATA with the final message
// (session.Delivery.Message: the engine's spool with every edit applied),
// and the upstream's reply to its end of data is the delivery's result. A
// transaction that ends without a message (RSET, a refused message, a
// dropped client) is reset upstream; the upstream never gets DATA for it.
//
// # Edits to the envelope
//
// At Deliver the final envelope (d.From, d.MailParams, d.Recipients) is
// compared with what the upstream got at RCPT time. When they are the
// same, only DATA is sent. When a judge changed the sender or removed or
// added a recipient, the upstream transaction is reset (RSET) and MAIL and
// RCPT are sent again for the final envelope before DATA: a removed
// recipient never reaches the upstream, an added one does, and a
// recipient the upstream refuses now fails the message with the
// upstream's reply. A recipient a judge added is relayed under the same
// rule as the client's (see below), else the message fails with 554
// 5.7.1. With to mx, an added recipient of another domain goes in a
// transaction of its own to that domain's mail servers. A connection held
// since RCPT that the upstream closed while the client sent the message
// (its idle timeout) is replaced, and the envelope sent again.
//
// The relay does not have to be the last delivery: the engine runs it
// with the others and answers 250 only when all succeeded. A message the
// upstream accepted stays there, though, when another delivery then fails
// and the client is told to send it again (4xx): the upstream may get it
// twice; relay cannot take it back.
//
// # With a queue
//
// When the server queues its messages (session.Session.Queueing), none
// of the above happens in the session: at RCPT the relay only applies its
// policy (below) and, to mx, refuses a recipient without a valid domain;
// it contacts no upstream and accepts any other recipient, of any domain.
// When the queue delivers (session.Delivery.Queued), Deliver runs the
// whole upstream transaction: one to the smart host, or to mx one per set
// of mail servers (the domains that share them share it), and gives each
// recipient its own outcome (session.Delivery.SetReply): the upstream's
// refusal of its RCPT, a failure to find or reach its domain's mail
// servers, or the reply to the end of data. The queue retries the 4xx and
// bounces the 5xx.
//
// # Open relay protection
//
// The relay forwards for a recipient only when
//
//   - the recipient is in Domains (the relay is the way in for those
//     domains: a backup MX, an inbound gateway), or
//   - the client authenticated (AUTH, see the auth sub-handler), or
//   - the client's address is in RelayNetworks;
//
// any other recipient gets 554 5.7.1 "Relay access denied". None of these
// is on by default, and Domains and RelayNetworks refuse "everything"
// (a bare *, 0.0.0.0/0, ::/0), so no configuration is an open relay by
// accident.
//
// # Destinations
//
// To "smtp://host[:port]" (port 25 by default) speaks STARTTLS with the
// smart host and requires it by default; "smtps://host[:port]" (port 465)
// speaks TLS from the start. The certificate is verified against the system
// roots (or TLSCA) and the host name (or TLSServerName). Idle connections to
// the smart host are kept for the next messages (RSET between messages).
//
// To "mx" looks up the MX records of each recipient domain (falling back to
// its address records when it has none, RFC 5321 5.1) and tries the mail
// servers in order of preference until one answers. One transaction goes to
// one domain: the recipients of that domain share it, and a recipient of
// another domain gets 452 4.5.3 so that the client sends it in a following
// transaction (RFC 5321 4.5.3.1.10). That way the single reply at end of
// data is the true fate of every recipient it covers. STARTTLS is used when
// offered, and is opportunistic (RFC 7435): a certificate that does not
// verify does not stop the message, which goes encrypted all the same, and
// the per-message log line says whether it verified. With RequireTLS,
// STARTTLS and a verified certificate are both required. With a validating
// resolver, DNSSEC-secured MX and TLSA records make STARTTLS mandatory and
// the certificate is checked against the TLSA records instead (DANE, RFC
// 7672); a message with REQUIRETLS (RFC 8689) goes only over such verified
// TLS (see dane.go).
//
// With to mx, MTA-STS (RFC 8461, option mta_sts, on by default) applies
// each recipient domain's policy, cached in Caddy's data directory: with
// mode enforce only the MX hosts the policy names are tried, each over
// STARTTLS with a certificate that verifies for the MX host's name; a
// domain whose MX hosts are all outside the policy is deferred with 451
// 4.4.4, an MX host without STARTTLS with 451 4.7.4, one whose certificate
// does not verify with 451 4.7.5: the message is never sent in clear.
// Mode testing only logs. The per-message log says relay_tls_policy; a
// deferral logs relay_defer_reason ("mta-sts: ...", "dane: ...") and, with
// a queue, the recipient's reply keeps the policy (tls_policy).
//
// An upstream's 421 (it is closing the connection) becomes 451 4.4.2 for
// the client, whose session goes on; that connection is not used again.
//
// # Internationalised addresses
//
// Domains are looked up, and compared with Domains, as A-labels (an entry
// or a recipient may be written as U-labels or A-labels). An SMTPUTF8
// transaction goes to an upstream with SMTPUTF8 as it came; to one without,
// it goes without the SMTPUTF8 parameter, its domains as A-labels, when it
// can: an address with a non-ASCII local part gets 553 5.6.7, and a message
// whose final header (edits applied) is not ASCII 550 5.6.9 (RFC 6531).
//
// # AUTH=
//
// The AUTH= parameter of MAIL FROM (RFC 4954 section 5) is passed on to an
// upstream that offers AUTH: the client's mailbox when the client
// authenticated, AUTH=<> when it did not.
//
// # DSN
//
// The relay advertises DSN (RFC 3461). The engine then accepts RET, ENVID,
// NOTIFY and ORCPT, and the relay passes them on when the upstream offers
// DSN too (it drops them when not: the relay keeps no queue and issues no
// notifications of its own).
package relay

import (
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"net/url"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"go.uber.org/zap"

	"github.com/caddy-esmtp/caddy-esmtp/dnscache"
	"github.com/caddy-esmtp/caddy-esmtp/handlers/recipients"
	"github.com/caddy-esmtp/caddy-esmtp/internal/clientnet"
	"github.com/caddy-esmtp/caddy-esmtp/internal/idlepool"
	"github.com/caddy-esmtp/caddy-esmtp/mtasts"
	"github.com/caddy-esmtp/caddy-esmtp/session"
)

func init() {
	caddy.RegisterModule(&Relay{})
}

// Relay forwards messages over SMTP.
type Relay struct {
	// To is where messages go: "smtp://host[:port]" (a smart host, with
	// STARTTLS; port 25 by default), "smtps://host[:port]" (a smart host
	// with TLS from the start; port 465 by default) or "mx" (the mail
	// servers of each recipient's domain). Required.
	To string `json:"to,omitempty"`
	// Domains are recipient patterns the relay forwards for, whoever the
	// client: "example.com", "*.example.com" (subdomains),
	// "user@example.com". An internationalised domain may be written as
	// U-labels ("bücher.example") or A-labels ("xn--bcher-kva.example"):
	// either matches a recipient written either way. See the package
	// documentation.
	Domains []string `json:"domains,omitempty"`
	// RelayNetworks are client addresses or CIDR ranges the relay
	// forwards for, to any recipient.
	RelayNetworks []string `json:"relay_networks,omitempty"`
	// AuthUser and AuthPassword, when set, log in to the smart host with
	// AUTH PLAIN, only ever over TLS. Caddy placeholders such as
	// {env.RELAY_PASSWORD} or {file./run/secrets/relay} are replaced at
	// provision time.
	AuthUser     string `json:"auth_user,omitempty"`
	AuthPassword string `json:"auth_password,omitempty"`
	// RequireTLS refuses to send a message to an upstream that does not
	// offer STARTTLS (451 4.7.4 to the client) or whose certificate does
	// not verify (451 4.7.5). Default: true for a smart host, false for mx
	// (opportunistic: STARTTLS when offered, the certificate verified only
	// for the log).
	RequireTLS *bool `json:"require_tls,omitempty"`
	// TLSServerName is the name the upstream's certificate must carry,
	// when it is not the host name of To.
	TLSServerName string `json:"tls_server_name,omitempty"`
	// TLSCA is a PEM file of the certificate authorities that upstream
	// certificates are verified against, instead of the system roots.
	TLSCA string `json:"tls_ca,omitempty"`
	// TLSInsecureSkipVerify accepts any upstream certificate, even with
	// RequireTLS or a smart host. The connection is encrypted but not
	// authenticated: for tests, or a smart host whose certificate cannot be
	// verified. (With mx and without RequireTLS, TLS is opportunistic
	// already.)
	TLSInsecureSkipVerify bool `json:"tls_insecure_skip_verify,omitempty"`
	// Resolver is the DNS server ("host:port") for MX lookups (and the
	// DNSSEC of DANE: a validating resolver), instead of the esmtp
	// handler's resolvers (its `resolvers` option, or the system's
	// resolver without it). Only with to mx.
	Resolver string `json:"resolver,omitempty"`
	// MTASTS applies the MTA-STS policies (RFC 8461) of recipient
	// domains: with mode enforce, only the MX hosts a policy names are
	// used, over TLS with a certificate that verifies for the MX host's
	// name, else the domain is deferred (4.4.4 no MX host matches, 4.7.4
	// no STARTTLS, 4.7.5 certificate), never sent in clear; mode testing
	// only logs. Default: on with to mx (only with to mx).
	MTASTS *bool `json:"mta_sts,omitempty"`
	// MTASTSCache is the file the MTA-STS policies are cached in, kept
	// across reloads and restarts (default: mta-sts.json in the esmtp
	// folder of Caddy's data directory).
	MTASTSCache string `json:"mta_sts_cache,omitempty"`
	// MXPort is the port of the mail servers found by MX lookup (default
	// 25). Only with to mx; for tests.
	MXPort int `json:"mx_port,omitempty"`
	// ConnectTimeout bounds connecting to an upstream (default 30s).
	ConnectTimeout caddy.Duration `json:"connect_timeout,omitempty"`
	// Timeout bounds each upstream command and each write of message data
	// (default 1m).
	Timeout caddy.Duration `json:"timeout,omitempty"`
	// DataTimeout bounds the wait for the upstream's reply at end of data
	// (default 10m). Every wait is bounded by the server's handler_timeout
	// too.
	DataTimeout caddy.Duration `json:"data_timeout,omitempty"`
	// MaxIdle is how many idle connections to the smart host are kept for
	// reuse (default 4; -1 keeps none).
	MaxIdle int `json:"max_idle,omitempty"`
	// IdleTimeout is how long an idle connection is kept (default 30s).
	IdleTimeout caddy.Duration `json:"idle_timeout,omitempty"`

	mx          bool
	smartHost   target
	implicitTLS bool
	requireTLS  bool
	domains     *recipients.List
	nets        []netip.Prefix
	user        string
	password    string
	roots       *x509.CertPool
	resolver    session.Resolver          // nil: the session's (Session.Resolver)
	sts         *mtasts.Cache             // nil: MTA-STS off
	pool        *idlepool.Pool[*upstream] // idle connections to the smart host (nil: none kept)
	logger      *zap.Logger

	// opportunistic: an upstream certificate that does not verify is used
	// all the same (and logged as such): mx without require_tls, or
	// tls_insecure_skip_verify.
	opportunistic bool
}

// CaddyModule returns the Caddy module information.
func (*Relay) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "esmtp.handlers.relay",
		New: func() caddy.Module { return new(Relay) },
	}
}

// Defaults.
const (
	defaultConnectTimeout = 30 * time.Second
	defaultTimeout        = time.Minute
	defaultDataTimeout    = 10 * time.Minute
	defaultMaxIdle        = 4
	defaultIdleTimeout    = 30 * time.Second
)

// Provision checks the configuration; every error names its field.
func (r *Relay) Provision(ctx caddy.Context) error {
	r.logger = ctx.Logger(r)
	if err := r.parseTo(); err != nil {
		return err
	}
	var err error
	if len(r.Domains) > 0 {
		entries := make([]string, len(r.Domains))
		for i, e := range r.Domains {
			if entries[i], err = aLabelEntry(e); err != nil {
				return fmt.Errorf("relay: domains[%d]: %v", i, err)
			}
		}
		if r.domains, err = recipients.BuildList("relay: domains", entries, nil); err != nil {
			return err
		}
	}
	for i, v := range r.RelayNetworks {
		p, err := clientnet.ParsePrefix(v)
		if err != nil {
			return fmt.Errorf("relay: relay_networks[%d]: %v", i, err)
		}
		if p.Bits() == 0 {
			return fmt.Errorf("relay: relay_networks[%d]: %q would relay for every client: an open relay", i, v)
		}
		r.nets = append(r.nets, p)
	}
	r.requireTLS = !r.mx
	if r.RequireTLS != nil {
		r.requireTLS = *r.RequireTLS
	}
	r.opportunistic = r.TLSInsecureSkipVerify || r.mx && !r.requireTLS
	repl := caddy.NewReplacer()
	r.user = repl.ReplaceKnown(r.AuthUser, "")
	r.password = repl.ReplaceKnown(r.AuthPassword, "")
	switch {
	case r.AuthUser == "" && r.AuthPassword != "":
		return errors.New("relay: auth_password: set auth_user too")
	case r.AuthUser == "":
	case r.mx:
		return errors.New("relay: auth_user: AUTH is for a smart host, not with to mx")
	case r.user == "":
		return fmt.Errorf("relay: auth_user: %q is empty once its placeholders are replaced", r.AuthUser)
	case r.password == "":
		return fmt.Errorf("relay: auth_password: empty once its placeholders are replaced (is the variable set?)")
	case !r.implicitTLS && !r.requireTLS:
		return errors.New("relay: auth_user: credentials are sent only over TLS; require_tls cannot be off with AUTH")
	case strings.ContainsAny(r.user, "\x00\r\n") || strings.ContainsAny(r.password, "\x00\r\n"):
		return errors.New("relay: auth_user, auth_password: NUL, CR and LF are not allowed")
	}
	if r.TLSCA != "" {
		pem, err := os.ReadFile(r.TLSCA)
		if err != nil {
			return fmt.Errorf("relay: tls_ca: %v", err)
		}
		r.roots = x509.NewCertPool()
		if !r.roots.AppendCertsFromPEM(pem) {
			return fmt.Errorf("relay: tls_ca: no PEM certificate in %s", r.TLSCA)
		}
	}
	if !r.mx && (r.Resolver != "" || r.MXPort != 0) {
		return errors.New("relay: resolver, mx_port: only with to mx")
	}
	if err := r.provisionMTASTS(); err != nil {
		return err
	}
	r.resolver = nil
	if r.Resolver != "" {
		// A dnscache.Resolver, as the handler's: it tells DNSSEC (DANE).
		dr, err := dnscache.New([]string{r.Resolver}, dnscache.Options{})
		if err != nil {
			return fmt.Errorf("relay: resolver: %v", err)
		}
		r.resolver = dr
	}
	if r.MXPort == 0 {
		r.MXPort = 25
	}
	if r.MXPort < 1 || r.MXPort > 65535 {
		return fmt.Errorf("relay: mx_port: %d is not a port", r.MXPort)
	}
	for _, d := range []struct {
		v    *caddy.Duration
		def  time.Duration
		name string
	}{
		{&r.ConnectTimeout, defaultConnectTimeout, "connect_timeout"},
		{&r.Timeout, defaultTimeout, "timeout"},
		{&r.DataTimeout, defaultDataTimeout, "data_timeout"},
		{&r.IdleTimeout, defaultIdleTimeout, "idle_timeout"},
	} {
		if *d.v == 0 {
			*d.v = caddy.Duration(d.def)
		}
		if *d.v < 0 {
			return fmt.Errorf("relay: %s: must be positive, got %s", d.name, time.Duration(*d.v))
		}
	}
	if r.MaxIdle == 0 {
		r.MaxIdle = defaultMaxIdle
	}
	if !r.mx && r.MaxIdle > 0 {
		r.pool = idlepool.New(r.MaxIdle, time.Duration(r.IdleTimeout), (*upstream).quit)
	}
	if r.domains == nil && len(r.nets) == 0 {
		r.logger.Info("no domains and no relay_networks: relaying only for authenticated clients", zap.String("to", r.To))
	}
	return nil
}

// parseTo reads To.
func (r *Relay) parseTo() error {
	if r.To == "" {
		return errors.New("relay: to is required (smtp://host[:port], smtps://host[:port] or mx)")
	}
	if strings.EqualFold(r.To, "mx") {
		r.mx = true
		return nil
	}
	u, err := url.Parse(r.To)
	if err != nil {
		return fmt.Errorf("relay: to: %v", err)
	}
	port := "25"
	switch strings.ToLower(u.Scheme) {
	case "smtp":
	case "smtps":
		port, r.implicitTLS = "465", true
	default:
		return fmt.Errorf("relay: to: %q: the scheme must be smtp:// or smtps:// (or to mx)", r.To)
	}
	switch {
	case u.User != nil:
		return fmt.Errorf("relay: to: %q: put credentials in auth_user and auth_password, not in the URL", r.To)
	case u.Hostname() == "":
		return fmt.Errorf("relay: to: %q: no host", r.To)
	case u.Path != "" && u.Path != "/", u.RawQuery != "", u.Fragment != "":
		return fmt.Errorf("relay: to: %q: only scheme, host and port", r.To)
	}
	if p := u.Port(); p != "" {
		if n, err := strconv.Atoi(p); err != nil || n < 1 || n > 65535 {
			return fmt.Errorf("relay: to: %q: bad port", r.To)
		}
		port = p
	}
	r.smartHost = target{addr: net.JoinHostPort(u.Hostname(), port), name: u.Hostname()}
	return nil
}

// Cleanup quits the idle connections. Sessions still running on this
// configuration finish their transactions on their own connections.
func (r *Relay) Cleanup() error {
	if r.pool != nil {
		r.pool.Close()
	}
	return nil
}

// Interface guards
var (
	_ caddy.Provisioner     = (*Relay)(nil)
	_ caddy.CleanerUpper    = (*Relay)(nil)
	_ caddyfile.Unmarshaler = (*Relay)(nil)
	_ session.ExtensionHook = (*Relay)(nil)
	_ session.RcptHook      = (*Relay)(nil)
	_ session.DeliverHook   = (*Relay)(nil)
	_ session.AbortHook     = (*Relay)(nil)
	_ session.CloseHook     = (*Relay)(nil)
)
