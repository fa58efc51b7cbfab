// Package relay is the sub-handler esmtp.handlers.relay: it forwards each
// message over SMTP, as it arrives, to a smart host or to the mail servers
// (MX) of each recipient's domain, and answers the client with the
// upstream's own replies.
//
// The upstream transaction follows the client's: MAIL FROM is sent
// upstream at the first recipient the relay takes, each RCPT is passed on
// and the upstream's reply to it returned to the client, the message is
// streamed to the upstream while it is received (never held whole), and the
// upstream's reply to the end of data decides ours: 2xx lets the later
// sub-handlers run, 4xx or 5xx is passed back. A transaction that does not
// end in a message (RSET, a rejected message, a dropped client) is reset
// upstream, and one cut in the middle of its data is cut upstream too,
// without the final dot, so the upstream never accepts part of a message.
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
// STARTTLS and a verified certificate are both required.
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
// with a non-ASCII header field 550 5.6.9 (RFC 6531).
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
	"context"
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
	"github.com/emersion/go-smtp"
	"go.uber.org/zap"

	"github.com/caddy-esmtp/caddy-esmtp/handlers/recipients"
	"github.com/caddy-esmtp/caddy-esmtp/internal/clientnet"
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
	// Resolver is the DNS server ("host:port") for MX lookups; the
	// system's resolver by default. Only with to mx.
	Resolver string `json:"resolver,omitempty"`
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
	resolver    *net.Resolver
	pool        *pool
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
	r.resolver = net.DefaultResolver
	if r.Resolver != "" {
		addr := r.Resolver
		if _, _, err := net.SplitHostPort(addr); err != nil {
			addr = net.JoinHostPort(addr, "53")
		}
		r.resolver = &net.Resolver{PreferGo: true, Dial: func(ctx context.Context, network, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, network, addr)
		}}
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
		r.pool = &pool{max: r.MaxIdle, ttl: time.Duration(r.IdleTimeout)}
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
		r.pool.close()
	}
	return nil
}

var dsnKeyword = []string{"DSN"}

// Extensions advertises DSN (RFC 3461).
func (r *Relay) Extensions(*session.Session) []string { return dsnKeyword }

// permitted reports whether the relay may forward for to (see the package
// documentation).
func (r *Relay) permitted(s *session.Session, to session.Path) bool {
	if r.domains != nil && to.Domain != "" && r.domains.Match(to.Local, matchDomain(to.Domain)) {
		return true
	}
	if s.AuthUser() != "" {
		return true
	}
	return clientnet.Contains(r.nets, s.RemoteIP())
}

var (
	replyRelayDenied  = session.NewReply(554, "5.7.1", "Relay access denied")
	replyRcptOK       = session.NewReply(250, "2.1.5", "Recipient OK")
	replyOtherDomain  = session.NewReply(452, "4.5.3", "Too many recipient domains in one transaction; send this recipient in another")
	replyNoDomain     = session.NewReply(550, "5.1.2", "No domain to relay to")
	replyBadDomain    = session.NewReply(550, "5.1.2", "Recipient domain is not a valid domain name")
	replyNo8BITMIME   = session.NewReply(550, "5.6.3", "Upstream mail server does not support 8BITMIME")
	replyNoData       = session.NewReply(451, "4.3.0", "Relay: no upstream transaction; try again later")
	replyUpstreamFail = session.NewReply(451, "4.4.2", "Upstream mail server failed during the message; try again later")

	// RFC 6531: an address or a header that needs SMTPUTF8 cannot go to an
	// upstream that does not offer it.
	replySenderUTF8 = session.NewReply(553, "5.6.7", "Sender address needs SMTPUTF8, which the upstream mail server does not support")
	replyRcptUTF8   = session.NewReply(553, "5.6.7", "Recipient address needs SMTPUTF8, which the upstream mail server does not support")
	replyHeaderUTF8 = session.NewReply(550, "5.6.9", "Message header needs SMTPUTF8, which the upstream mail server does not support")
)

// key is the per-transaction state's key, one per relay instance, so two
// relays in one list (behind two matchers) never share a transaction.
type key struct{ r *Relay }

// txnState is the upstream side of one client transaction.
type txnState struct {
	domain string         // the recipient domain, as A-labels (to mx)
	up     *upstream      // nil until the first recipient is taken
	fail   *session.Reply // the destination failed: the reply for every further recipient
	rcpts  int            // recipients the upstream accepted
	data   *smtp.DataCommand
	w      canonWriter
	// ascii: an SMTPUTF8 transaction goes to an upstream without
	// SMTPUTF8, as ASCII (A-labels), so the header must be ASCII too.
	ascii bool
}

func (r *Relay) state(s *session.Session) *txnState {
	if txn := s.Transaction(); txn != nil {
		st, _ := txn.Value(key{r}).(*txnState)
		return st
	}
	return nil
}

// Rcpt takes a recipient the relay may forward for: it opens the upstream
// transaction at the first one, passes RCPT upstream and returns the
// upstream's reply.
func (r *Relay) Rcpt(ctx context.Context, s *session.Session, to session.Path, params session.Params) (*session.Reply, error) {
	txn := s.Transaction()
	if !r.permitted(s, to) {
		if ce := r.logger.Check(zap.DebugLevel, "relay access denied"); ce != nil {
			ce.Write(zap.String("session", s.ID()), zap.String("rcpt", session.Sanitize(to.Mailbox, 256)))
		}
		return replyRelayDenied, nil
	}
	st := r.state(s)
	if st == nil {
		st = &txnState{}
		txn.SetValue(key{r}, st)
	}
	if r.mx {
		if to.Domain == "" {
			return replyNoDomain, nil
		}
		d, err := aLabel(to.Domain)
		if err != nil {
			if ce := r.logger.Check(zap.DebugLevel, "invalid recipient domain"); ce != nil {
				ce.Write(zap.String("session", s.ID()), zap.Error(err))
			}
			return replyBadDomain, nil
		}
		if st.domain != d {
			if st.rcpts > 0 {
				return replyOtherDomain, nil
			}
			r.release(st)
			*st = txnState{domain: d}
		}
	}
	if st.fail != nil {
		return st.fail, nil
	}
	if st.up == nil {
		up, fail := r.open(ctx, s)
		if fail != nil {
			st.fail = fail
			return fail, nil
		}
		st.up = up
		st.ascii = txn.UTF8 && !up.hasExt("SMTPUTF8")
	}
	rcpt := to.Mailbox
	if st.ascii {
		var ok bool
		if rcpt, ok = asciiPath(to); !ok {
			return replyRcptUTF8, nil
		}
	}
	r.bound(ctx, st.up)
	if err := st.up.c.Rcpt(rcpt, rcptOptions(params)); err != nil {
		rep, answered := replyFor(err)
		if !answered {
			r.logger.Warn("upstream failed at RCPT", zap.String("session", s.ID()), zap.String("upstream", st.up.addr), zap.Error(err))
			st.up.close()
			st.up, st.fail = nil, rep
		}
		return rep, nil
	}
	st.rcpts++
	return replyRcptOK, nil
}

// open connects (or takes an idle connection) and sends MAIL FROM.
func (r *Relay) open(ctx context.Context, s *session.Session) (*upstream, *session.Reply) {
	txn := s.Transaction()
	st := r.state(s)
	var up *upstream
	if r.pool != nil {
		up = r.pool.get(s.Hostname(), r.commandTimeout(ctx))
	}
	if up == nil {
		var serr *setupError
		if r.mx {
			up, serr = r.dialMX(ctx, st.domain, s.Hostname())
		} else {
			up, serr = r.connect(ctx, r.smartHost, s.Hostname())
		}
		if serr != nil {
			level := zap.WarnLevel // ours to fix: the upstream, the network, DNS
			if serr.reply.Code >= 500 {
				level = zap.DebugLevel // the recipient's: no such domain, null MX
			}
			if ce := r.logger.Check(level, "no upstream"); ce != nil {
				ce.Write(zap.String("session", s.ID()), zap.String("queue_id", txn.ID),
					zap.String("to", r.To), zap.String("domain", st.domain), zap.Error(serr))
			}
			return nil, serr.reply
		}
	}
	r.bound(ctx, up)
	if txn.Body == "8BITMIME" && !up.hasExt("8BITMIME") {
		r.done(up)
		return nil, replyNo8BITMIME
	}
	// SMTPUTF8 toward an upstream without it: the envelope goes as ASCII
	// when it can (domains as A-labels), and the header is checked as it
	// streams (Header).
	utf8 := txn.UTF8 && up.hasExt("SMTPUTF8")
	from := txn.From.Mailbox
	if txn.UTF8 && !utf8 {
		var ok bool
		if from, ok = asciiPath(txn.From); !ok {
			r.done(up)
			return nil, replySenderUTF8
		}
	}
	if err := up.c.Mail(from, mailOptions(txn, utf8, s.AuthUser() != "")); err != nil {
		rep, answered := replyFor(err)
		if answered {
			r.done(up)
		} else {
			r.logger.Warn("upstream failed at MAIL", zap.String("session", s.ID()), zap.String("upstream", up.addr), zap.Error(err))
			up.close()
		}
		return nil, rep
	}
	return up, nil
}

// bound sets the upstream's timeouts for a hook call with ctx.
func (r *Relay) bound(ctx context.Context, up *upstream) {
	t := r.commandTimeout(ctx)
	up.c.CommandTimeout, up.uc.timeout = t, t
	up.c.SubmissionTimeout = within(ctx, time.Duration(r.DataTimeout))
}

// done is the end of an upstream transaction that left the connection
// usable: it goes back to the pool, or is quit.
func (r *Relay) done(up *upstream) {
	if r.pool != nil {
		r.pool.put(up)
		return
	}
	go up.quit()
}

// release lets go of the upstream side of a transaction that ends without
// a message: reset (at next use) when between commands, cut when in the
// middle of DATA.
func (r *Relay) release(st *txnState) {
	if st.up == nil {
		return
	}
	if st.data != nil {
		st.up.close()
	} else {
		r.done(st.up)
	}
	st.up, st.data = nil, nil
}

// Data opens the upstream's DATA, so that an upstream refusal is the
// client's answer to DATA.
func (r *Relay) Data(ctx context.Context, s *session.Session) (*session.Reply, error) {
	st := r.state(s)
	if st == nil || st.rcpts == 0 {
		return nil, nil
	}
	return r.startData(ctx, s, st), nil
}

// startData sends DATA upstream, once.
func (r *Relay) startData(ctx context.Context, s *session.Session, st *txnState) *session.Reply {
	if st.data != nil {
		return nil
	}
	if st.up == nil {
		if st.fail != nil {
			return st.fail
		}
		return replyNoData
	}
	r.bound(ctx, st.up)
	d, err := st.up.c.Data()
	if err != nil {
		rep, answered := replyFor(err)
		if !answered {
			r.logger.Warn("upstream failed at DATA", zap.String("session", s.ID()), zap.String("upstream", st.up.addr), zap.Error(err))
			st.up.close()
			st.up = nil
		}
		st.fail = rep
		return rep
	}
	st.data = d
	st.w = canonWriter{w: d}
	return nil
}

// write streams message bytes to the upstream.
func (r *Relay) write(ctx context.Context, s *session.Session, p []byte) error {
	st := r.state(s)
	if st == nil || st.rcpts == 0 {
		return nil
	}
	if rep := r.startData(ctx, s, st); rep != nil {
		return rep
	}
	r.bound(ctx, st.up)
	if err := st.w.Write(p); err != nil {
		r.logger.Warn("upstream failed during data", zap.String("session", s.ID()), zap.String("upstream", st.up.addr), zap.Error(err))
		return replyUpstreamFail
	}
	return nil
}

// Header streams a header field (the engine's Received: field first). A
// field that is not ASCII fails the message when the upstream does not take
// SMTPUTF8 (RFC 6531, RFC 6532).
func (r *Relay) Header(ctx context.Context, s *session.Session, h session.HeaderField) error {
	if st := r.state(s); st != nil && st.ascii && st.rcpts > 0 && !isASCII(h.Raw) {
		return replyHeaderUTF8
	}
	return r.write(ctx, s, h.Raw)
}

// EndOfHeaders streams the blank line that ends the header section.
func (r *Relay) EndOfHeaders(ctx context.Context, s *session.Session, raw []byte) error {
	return r.write(ctx, s, raw)
}

// Body streams a body chunk.
func (r *Relay) Body(ctx context.Context, s *session.Session, chunk []byte) error {
	return r.write(ctx, s, chunk)
}

// EndOfMessage ends the data upstream and returns the upstream's verdict:
// nil when it accepted the message, so later sub-handlers run, else its
// reply.
func (r *Relay) EndOfMessage(ctx context.Context, s *session.Session) (*session.Reply, error) {
	st := r.state(s)
	if st == nil {
		return nil, nil
	}
	txn := s.Transaction()
	txn.SetValue(key{r}, nil)
	if st.rcpts == 0 {
		r.release(st)
		return nil, nil
	}
	if rep := r.startData(ctx, s, st); rep != nil {
		r.release(st)
		return rep, nil
	}
	up := st.up
	r.bound(ctx, up)
	err := st.w.Flush()
	var resp *smtp.DataResponse
	if err == nil {
		resp, err = st.data.CloseWithResponse()
	}
	st.data = nil
	logUpstream(txn, up)
	if err != nil {
		rep, answered := replyFor(err)
		txn.AddLogField(zap.String("relay_reply", rep.Error()))
		if !answered {
			r.logger.Warn("upstream failed at end of data", zap.String("session", s.ID()), zap.String("queue_id", txn.ID),
				zap.String("upstream", up.addr), zap.Error(err))
			up.close()
			if rep == replyConnLost {
				rep = replyUpstreamFail
			}
			return rep, nil
		}
		r.done(up)
		return rep, nil
	}
	txn.AddLogField(zap.String("relay_reply", session.Sanitize(strings.ReplaceAll(resp.StatusText, "\n", " "), 200)))
	r.done(up)
	return nil, nil
}

// logUpstream adds to the per-message log line where the message went and
// how: relay (the upstream's address), relay_tls, and relay_tls_verified
// (whether its certificate verified) when relay_tls.
func logUpstream(txn *session.Transaction, up *upstream) {
	txn.AddLogField(zap.String("relay", up.addr))
	txn.AddLogField(zap.Bool("relay_tls", up.tls))
	if up.tls {
		txn.AddLogField(zap.Bool("relay_tls_verified", up.verified))
	}
}

// Abort lets go of the upstream transaction: it is reset, or cut if its
// data had started.
func (r *Relay) Abort(s *session.Session, _ error) {
	if st := r.state(s); st != nil {
		s.Transaction().SetValue(key{r}, nil)
		r.release(st)
	}
}

// mailOptions are the MAIL parameters passed upstream: SIZE, SMTPUTF8
// (when utf8), DSN's RET and ENVID, and AUTH (the SMTP client sends
// BODY=8BITMIME by itself when the upstream offers it, and SIZE, DSN and
// AUTH only when it offers them). authenticated tells whether the client
// authenticated.
func mailOptions(txn *session.Transaction, utf8, authenticated bool) *smtp.MailOptions {
	o := &smtp.MailOptions{UTF8: utf8}
	if v, ok := txn.MailParams.Get("AUTH"); ok {
		a := authMailbox(v, authenticated)
		o.Auth = &a
	}
	if v, ok := txn.MailParams.Get("SIZE"); ok {
		o.Size, _ = strconv.ParseInt(v, 10, 64)
	}
	if v, ok := txn.MailParams.Get("RET"); ok {
		o.Return = smtp.DSNReturn(strings.ToUpper(v))
	}
	if v, ok := txn.MailParams.Get("ENVID"); ok {
		if id, err := session.DecodeXtext(v); err == nil && printable(id) {
			o.EnvelopeID = id
		}
	}
	return o
}

// authMailbox is the AUTH= mailbox passed upstream for the client's AUTH=
// value v (xtext) (RFC 4954 section 5): the client's mailbox when the
// client authenticated, and <> ("not known") when it did not, since then
// nothing vouches for it, or when v is not an ASCII mailbox.
func authMailbox(v string, authenticated bool) string {
	if !authenticated {
		return "<>"
	}
	m, err := session.DecodeXtext(v)
	if err != nil || m == "<>" || !isASCII(m) {
		return "<>"
	}
	p, params, err := session.ParsePathArg("<"+m+">", false, false)
	if err != nil || len(params) > 0 || p.Mailbox != m {
		return "<>"
	}
	return m
}

// rcptOptions are DSN's NOTIFY and ORCPT for the upstream.
func rcptOptions(params session.Params) *smtp.RcptOptions {
	o := &smtp.RcptOptions{}
	if v, ok := params.Get("NOTIFY"); ok {
		for n := range strings.SplitSeq(strings.ToUpper(v), ",") {
			o.Notify = append(o.Notify, smtp.DSNNotify(n))
		}
	}
	if v, ok := params.Get("ORCPT"); ok {
		typ, addr, _ := strings.Cut(v, ";")
		decoded, err := session.DecodeXtext(addr)
		switch {
		case err != nil:
		case strings.EqualFold(typ, "rfc822") && printable(decoded):
			o.OriginalRecipientType, o.OriginalRecipient = smtp.DSNAddressTypeRFC822, decoded
		case strings.EqualFold(typ, "utf-8"):
			if u, ok := decodeUTF8Addr(decoded); ok {
				o.OriginalRecipientType, o.OriginalRecipient = smtp.DSNAddressTypeUTF8, u
			}
		}
	}
	return o
}

// printable reports whether v is printable US-ASCII, as ENVID and an
// rfc822 ORCPT must be (RFC 3461 4.2, 4.4).
func printable(v string) bool {
	for i := 0; i < len(v); i++ {
		if v[i] < ' ' || v[i] > '~' {
			return false
		}
	}
	return true
}

// decodeUTF8Addr decodes the \x{HEX} escapes of a utf-8-addr (RFC 6533).
func decodeUTF8Addr(v string) (string, bool) {
	var b strings.Builder
	for i := 0; i < len(v); i++ {
		if v[i] == '\\' && strings.HasPrefix(v[i:], `\x{`) {
			end := strings.IndexByte(v[i:], '}')
			if end < 0 {
				return "", false
			}
			n, err := strconv.ParseUint(v[i+3:i+end], 16, 32)
			if err != nil || n < 0x20 || n > 0x10FFFF {
				return "", false
			}
			b.WriteRune(rune(n))
			i += end
			continue
		}
		b.WriteByte(v[i])
	}
	return b.String(), true
}

// UnmarshalCaddyfile sets up the sub-handler from Caddyfile tokens. Syntax:
//
//	relay [<to>] [{
//		to                       smtp://host[:port] | smtps://host[:port] | mx
//		domains                  <pattern...>
//		relay_networks           <ip or cidr...>
//		auth_user                <user>
//		auth_password            <password>
//		require_tls              [on|off]
//		tls_server_name          <name>
//		tls_ca                   <pem file>
//		tls_insecure_skip_verify
//		resolver                 <host[:port]>
//		mx_port                  <port>
//		connect_timeout          <duration>
//		timeout                  <duration>
//		data_timeout             <duration>
//		max_idle                 <n>
//		idle_timeout             <duration>
//	}]
//
// domains and relay_networks may be repeated.
func (r *Relay) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // the sub-handler name
	if d.NextArg() {
		r.To = d.Val()
		if d.NextArg() {
			return d.ArgErr()
		}
	}
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		opt := d.Val()
		switch opt {
		case "to", "auth_user", "auth_password", "tls_server_name", "tls_ca", "resolver":
			var v string
			if !d.AllArgs(&v) {
				return d.ArgErr()
			}
			switch opt {
			case "to":
				r.To = v
			case "auth_user":
				r.AuthUser = v
			case "auth_password":
				r.AuthPassword = v
			case "tls_server_name":
				r.TLSServerName = v
			case "tls_ca":
				r.TLSCA = v
			case "resolver":
				r.Resolver = v
			}
		case "domains":
			args := d.RemainingArgs()
			if len(args) == 0 {
				return d.ArgErr()
			}
			r.Domains = append(r.Domains, args...)
		case "relay_networks":
			args := d.RemainingArgs()
			if len(args) == 0 {
				return d.ArgErr()
			}
			r.RelayNetworks = append(r.RelayNetworks, args...)
		case "require_tls":
			on := true
			if d.NextArg() {
				switch d.Val() {
				case "on", "true":
				case "off", "false":
					on = false
				default:
					return d.Errf("relay: require_tls: %q is not on or off", d.Val())
				}
				if d.NextArg() {
					return d.ArgErr()
				}
			}
			r.RequireTLS = &on
		case "tls_insecure_skip_verify":
			if d.NextArg() {
				return d.ArgErr()
			}
			r.TLSInsecureSkipVerify = true
		case "mx_port", "max_idle":
			var v string
			if !d.AllArgs(&v) {
				return d.ArgErr()
			}
			n, err := strconv.Atoi(v)
			if err != nil {
				return d.Errf("relay: %s: %q is not a number", opt, v)
			}
			if opt == "mx_port" {
				r.MXPort = n
			} else {
				r.MaxIdle = n
			}
		case "connect_timeout", "timeout", "data_timeout", "idle_timeout":
			var v string
			if !d.AllArgs(&v) {
				return d.ArgErr()
			}
			dur, err := caddy.ParseDuration(v)
			if err != nil {
				return d.Errf("relay: %s: %v", opt, err)
			}
			switch opt {
			case "connect_timeout":
				r.ConnectTimeout = caddy.Duration(dur)
			case "timeout":
				r.Timeout = caddy.Duration(dur)
			case "data_timeout":
				r.DataTimeout = caddy.Duration(dur)
			case "idle_timeout":
				r.IdleTimeout = caddy.Duration(dur)
			}
		default:
			return d.Errf("relay: unknown option %q (known: to, domains, relay_networks, auth_user, auth_password, require_tls, "+
				"tls_server_name, tls_ca, tls_insecure_skip_verify, resolver, mx_port, connect_timeout, timeout, data_timeout, max_idle, idle_timeout)", opt)
		}
	}
	if r.To == "" {
		return d.Err("relay: to is required (smtp://host[:port], smtps://host[:port] or mx)")
	}
	return nil
}

// Interface guards
var (
	_ caddy.Provisioner        = (*Relay)(nil)
	_ caddy.CleanerUpper       = (*Relay)(nil)
	_ caddyfile.Unmarshaler    = (*Relay)(nil)
	_ session.ExtensionHook    = (*Relay)(nil)
	_ session.RcptHook         = (*Relay)(nil)
	_ session.DataHook         = (*Relay)(nil)
	_ session.HeaderHook       = (*Relay)(nil)
	_ session.EndOfHeadersHook = (*Relay)(nil)
	_ session.BodyHook         = (*Relay)(nil)
	_ session.MessageHook      = (*Relay)(nil)
	_ session.AbortHook        = (*Relay)(nil)
)
