// Package esmtp is the Caddy module layer4.handlers.esmtp: a caddy-l4
// connection handler that carries a complete ESMTP conversation (RFC 5321
// and its extensions) and asks an ordered list of sub-handler modules
// (namespace esmtp.handlers) what to do at every SMTP event.
//
// The protocol engine is package session; this package is only the Caddy
// glue: configuration, provisioning, the Caddyfile and the reload drain.
package esmtp

import (
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddytls"
	"go.uber.org/zap"

	"github.com/caddy-esmtp/caddy-esmtp/dnscache"
	"github.com/caddy-esmtp/caddy-esmtp/handlers/match"
	"github.com/caddy-esmtp/caddy-esmtp/internal/clientnet"
	"github.com/caddy-esmtp/caddy-esmtp/session"

	// Every sub-handler of this repository, so that
	// `xcaddy build --with github.com/caddy-esmtp/caddy-esmtp` brings them.
	_ "github.com/caddy-esmtp/caddy-esmtp/handlers/auth"
	_ "github.com/caddy-esmtp/caddy-esmtp/handlers/discard"
	_ "github.com/caddy-esmtp/caddy-esmtp/handlers/dkim"
	_ "github.com/caddy-esmtp/caddy-esmtp/handlers/dkim_sign"
	_ "github.com/caddy-esmtp/caddy-esmtp/handlers/dmarc"
	_ "github.com/caddy-esmtp/caddy-esmtp/handlers/dnsbl"
	_ "github.com/caddy-esmtp/caddy-esmtp/handlers/exec"
	_ "github.com/caddy-esmtp/caddy-esmtp/handlers/greylist"
	_ "github.com/caddy-esmtp/caddy-esmtp/handlers/iprev"
	_ "github.com/caddy-esmtp/caddy-esmtp/handlers/lmtp"
	_ "github.com/caddy-esmtp/caddy-esmtp/handlers/maildir"
	_ "github.com/caddy-esmtp/caddy-esmtp/handlers/milter"
	_ "github.com/caddy-esmtp/caddy-esmtp/handlers/policy"
	_ "github.com/caddy-esmtp/caddy-esmtp/handlers/rate_limit"
	_ "github.com/caddy-esmtp/caddy-esmtp/handlers/recipients"
	_ "github.com/caddy-esmtp/caddy-esmtp/handlers/relay"
	_ "github.com/caddy-esmtp/caddy-esmtp/handlers/reply"
	_ "github.com/caddy-esmtp/caddy-esmtp/handlers/rspamd"
	_ "github.com/caddy-esmtp/caddy-esmtp/handlers/senders"
	_ "github.com/caddy-esmtp/caddy-esmtp/handlers/spf"
	_ "github.com/caddy-esmtp/caddy-esmtp/handlers/webhook"
)

func init() {
	caddy.RegisterModule(&Handler{})
}

// Handler is the layer4.handlers.esmtp module. It is terminal: it never
// calls the next layer4 handler.
type Handler struct {
	// Hostname is the server's name in the greeting, the EHLO reply and
	// Received: fields. Default: the machine's host name.
	Hostname string `json:"hostname,omitempty"`
	// Greeting is the text after "220 <hostname> ESMTP" in the greeting.
	Greeting string `json:"greeting,omitempty"`
	// MaxMessageSize is the largest message accepted, in bytes (SIZE,
	// RFC 1870), enforced while streaming. Default: 25 MiB.
	MaxMessageSize int64 `json:"max_message_size,omitempty"`
	// MaxRecipients is the most recipients per message; more get
	// 452 4.5.3. Default: 100.
	MaxRecipients int `json:"max_recipients,omitempty"`
	// MaxErrors is how many protocol errors (syntax, sequence, unknown
	// commands, failed AUTH) a session may make since its last accepted
	// message before it is closed with 421 4.7.0; policy refusals such as
	// an unknown recipient do not count. Default: 10.
	MaxErrors int `json:"max_errors,omitempty"`
	// CommandTimeout bounds the time to receive one whole command line;
	// then 421 4.4.2 and close. Default: 5m.
	CommandTimeout caddy.Duration `json:"command_timeout,omitempty"`
	// DataTimeout bounds each wait for message data, and is the starting
	// budget of the whole data phase (see min_data_rate). Default: 10m.
	DataTimeout caddy.Duration `json:"data_timeout,omitempty"`
	// MinDataRate bounds the whole data phase (DATA, or all the BDATs of
	// a message), in bytes per second, as Postfix's smtpd_min_data_rate:
	// each read spends the time it waited from a budget of data_timeout
	// and earns back the time its bytes are worth at this rate, never above
	// data_timeout. A client that sends slower than this on average (a
	// drip-feeder) gets 421 4.4.2 and nothing is delivered. Default: 500.
	MinDataRate int64 `json:"min_data_rate,omitempty"`
	// ChunkSize is the largest body chunk given to a sub-handler at once,
	// in bytes. Default: 64 KiB.
	ChunkSize int `json:"chunk_size,omitempty"`
	// MaxLineLength is the longest message line accepted, in bytes
	// without CRLF. Default: 8192 (RFC 5321 asks for at least 998).
	MaxLineLength int `json:"max_line_length,omitempty"`
	// MaxHeaderSize bounds one header field with its folded lines, in
	// bytes. Default: 1 MiB.
	MaxHeaderSize int `json:"max_header_size,omitempty"`
	// HandlerTimeout bounds one sub-handler call; a call that runs past it
	// answers 451 4.3.0. Default: 2m.
	HandlerTimeout caddy.Duration `json:"handler_timeout,omitempty"`
	// GracePeriod is how long a session in a transaction may go on after
	// its configuration was replaced (reload) or Caddy stops, before it is
	// closed with 421 4.3.2. Default: 30s.
	GracePeriod caddy.Duration `json:"grace_period,omitempty"`
	// BareLineEndings is what happens to a bare CR, bare LF or NUL in
	// message data: "reject" (default; 550 5.5.2 after the end of data)
	// or "normalize" (bare CR and LF become CRLF; NUL is still refused).
	BareLineEndings string `json:"bare_line_endings,omitempty"`
	// StartTLS, when present, offers STARTTLS (RFC 3207) with certificates
	// from Caddy's tls app. With no connection policies, the certificate
	// Caddy manages for hostname is used, and Caddy is asked to manage it
	// (ACME in production, the internal issuer where configured).
	StartTLS *StartTLS `json:"starttls,omitempty"`
	// RequireTLS refuses MAIL with 530 5.7.0 until the client has used
	// STARTTLS (or the connection is implicit TLS).
	RequireTLS bool `json:"require_tls,omitempty"`
	// XClientNetworks are CIDR ranges (or single addresses) of proxies
	// allowed to use XCLIENT to pass on the original client's address,
	// HELO name and login (Postfix's extension, as nginx's mail proxy
	// speaks it). Empty: XCLIENT is refused.
	XClientNetworks []string `json:"xclient_networks,omitempty"`
	// MaxConnections bounds the sessions on this handler's port at once;
	// more get 421 4.7.0 and are closed at once, before they use up file
	// descriptors. Sessions still draining on a replaced configuration
	// count too. Default: 1000; -1: no limit.
	MaxConnections int `json:"max_connections,omitempty"`
	// MaxConnectionsPerIP bounds the sessions from one client IP at once,
	// counted as max_connections is; more get 421 4.7.0. Proxies in
	// xclient_networks are not limited per IP. Default: 20; -1: no limit.
	MaxConnectionsPerIP int `json:"max_connections_per_ip,omitempty"`
	// RejectEarlyTalkers waits GreetDelay before the greeting; a client
	// that sends anything by then (which RFC 5321 forbids, and spam
	// software does) gets 554 5.5.0 and is closed.
	RejectEarlyTalkers bool `json:"reject_early_talkers,omitempty"`
	// GreetDelay is that wait. Default: 1s when reject_early_talkers is on.
	GreetDelay caddy.Duration `json:"greet_delay,omitempty"`
	// SpoolMemory bounds the memory that the spools of all this handler's
	// messages hold at once, in bytes: a message is kept in memory while
	// it is under 1 MiB and this budget allows, in an unlinked file in
	// spool_dir past that. Only messages that some sub-handler reads
	// (every delivery but discard) are spooled. Default: 64 MiB.
	SpoolMemory int64 `json:"spool_memory,omitempty"`
	// SpoolDir is the directory of the spool files. Default: the
	// system's temporary directory.
	SpoolDir string `json:"spool_dir,omitempty"`
	// Resolvers are the DNS servers ("host" or "host:port"; port 53 by
	// default) that every sub-handler of this handler that looks something
	// up asks (SPF, DKIM, DMARC, iprev, dnsbl, relay's MX lookups), in
	// order: the next one when one fails or does not answer in time. Their
	// answers are cached for their TTL (at most 1h; NXDOMAIN and NODATA for
	// the zone's SOA minimum, or 1m) in one cache of at most 10000 answers
	// shared by all this handler's sessions. Give recursive resolvers, a
	// validating one on the same host ideally. Empty: the system's resolver
	// (/etc/resolv.conf through Go's net.DefaultResolver), without this
	// cache. A sub-handler's own `resolver` option overrides these.
	Resolvers []string `json:"resolvers,omitempty"`
	// LogTranscript logs the whole SMTP conversation, every command and
	// reply, at debug level (AUTH credentials are redacted). The logger
	// must also be at debug level for it to show.
	LogTranscript bool `json:"log_transcript,omitempty"`
	// HandlersRaw is the ordered list of sub-handlers (modules in the
	// esmtp.handlers namespace), asked in this order at every event.
	HandlersRaw []json.RawMessage `json:"handlers,omitempty" caddy:"namespace=esmtp.handlers inline_key=handler"`

	// Queue, when set, stores every accepted message in a queue
	// directory (fsynced) before the 250, and delivers it from there:
	// each recipient with its own retries (backoff), bounces (RFC 3464
	// DSNs) after max_age or a permanent failure. Without it the
	// deliveries run in the session and the client waits for them.
	Queue *QueueConfig `json:"queue,omitempty"`

	server *session.Server
	logger *zap.Logger
	queue  *runningQueue
	queued string // the queue's key in queues
}

// StartTLS configures STARTTLS.
type StartTLS struct {
	// ConnectionPolicies select the certificate and TLS settings per
	// handshake, as for caddy-l4's tls handler. Empty: one policy for the
	// esmtp hostname.
	ConnectionPolicies caddytls.ConnectionPolicies `json:"connection_policies,omitempty"`
}

// CaddyModule returns the Caddy module information.
func (*Handler) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "layer4.handlers.esmtp",
		New: func() caddy.Module { return new(Handler) },
	}
}

// Provision loads the sub-handlers and builds the engine.
func (h *Handler) Provision(ctx caddy.Context) error {
	h.logger = ctx.Logger(h)
	var handlers []session.SubHandler
	if h.HandlersRaw != nil {
		mods, err := ctx.LoadModule(h, "HandlersRaw")
		if err != nil {
			return fmt.Errorf("loading esmtp sub-handlers: %v", err)
		}
		for _, m := range mods.([]any) {
			handlers = append(handlers, match.Expand(m)...)
		}
	}
	hostname := h.Hostname
	if hostname == "" {
		hostname = defaultHostname()
	}
	tlsConfig, err := h.provisionTLS(ctx, hostname)
	if err != nil {
		return err
	}
	xclient, err := clientnet.ParsePrefixes(h.XClientNetworks)
	if err != nil {
		return fmt.Errorf("esmtp: xclient_networks: %v", err)
	}
	var resolver session.Resolver
	if len(h.Resolvers) > 0 {
		r, err := dnscache.New(h.Resolvers, dnscache.Options{})
		if err != nil {
			return fmt.Errorf("esmtp: resolvers%v", err)
		}
		resolver = r
	}
	var obs session.Observer
	if reg := ctx.GetMetricsRegistry(); reg != nil {
		m, err := newMetrics(reg)
		if err != nil {
			return fmt.Errorf("esmtp: registering metrics: %v", err)
		}
		obs = observer{m}
	}
	var q session.Queue
	if h.Queue != nil {
		rq, err := h.openQueue(hostname)
		if err != nil {
			return err
		}
		h.queue, h.queued, q = rq, rq.dir, rq
	}
	srv, err := session.NewServer(session.Config{
		Queue:               q,
		Observer:            obs,
		Resolver:            resolver,
		LogTranscript:       h.LogTranscript,
		TLSConfig:           tlsConfig,
		RequireTLS:          h.RequireTLS,
		XClientNetworks:     xclient,
		MaxConnections:      h.MaxConnections,
		MaxConnectionsPerIP: h.MaxConnectionsPerIP,
		RejectEarlyTalkers:  h.RejectEarlyTalkers,
		GreetDelay:          time.Duration(h.GreetDelay),
		Hostname:            hostname,
		Greeting:            h.Greeting,
		MaxMessageSize:      h.MaxMessageSize,
		MaxRecipients:       h.MaxRecipients,
		MaxErrors:           h.MaxErrors,
		CommandTimeout:      time.Duration(h.CommandTimeout),
		DataTimeout:         time.Duration(h.DataTimeout),
		MinDataRate:         h.MinDataRate,
		SpoolMemory:         h.SpoolMemory,
		SpoolDir:            h.SpoolDir,
		ChunkSize:           h.ChunkSize,
		MaxLineLength:       h.MaxLineLength,
		MaxHeaderSize:       h.MaxHeaderSize,
		HandlerTimeout:      time.Duration(h.HandlerTimeout),
		GracePeriod:         time.Duration(h.GracePeriod),
		BareLineEndings:     session.BareLineEndings(h.BareLineEndings),
		Handlers:            handlers,
		Logger:              h.logger,
	})
	if err != nil {
		h.releaseQueue()
		return fmt.Errorf("esmtp: %w", err)
	}
	h.server = srv
	if h.queue != nil {
		h.queue.attach(srv)
		if err := h.queue.start(); err != nil {
			return fmt.Errorf("esmtp: queue: starting: %v", err)
		}
	}
	return nil
}

// releaseQueue lets the handler's queue go: its deliveries no longer use
// this handler's server, and the last handler to let it go stops it.
func (h *Handler) releaseQueue() {
	if h.queue == nil {
		return
	}
	if h.server != nil {
		h.queue.detach(h.server)
	}
	if _, err := queues.Delete(h.queued); err != nil {
		h.logger.Error("stopping the queue", zap.String("dir", h.queued), zap.Error(err))
	}
	h.queue = nil
}

// Validate reports configuration errors that Provision did not.
func (h *Handler) Validate() error {
	if h.server == nil {
		return errors.New("esmtp: not provisioned")
	}
	return nil
}

// Cleanup starts the drain of this configuration's sessions: idle ones are
// closed with 421 4.3.2, ones in a transaction may finish it within
// grace_period. On a reload it returns at once (sessions finish on the old
// configuration while the new one serves new connections); when Caddy is
// exiting it waits for the drain, bounded by grace_period.
func (h *Handler) Cleanup() error {
	defer h.releaseQueue()
	if h.server == nil {
		return nil
	}
	done := h.server.Shutdown()
	if caddy.Exiting() {
		select {
		case <-done:
		case <-time.After(h.server.Config().GracePeriod + time.Second):
			h.logger.Warn("sessions still open after the grace period", zap.Int("sessions", h.server.Sessions()))
		}
	}
	return nil
}

// provisionTLS builds the STARTTLS configuration from Caddy's tls app.
func (h *Handler) provisionTLS(ctx caddy.Context, hostname string) (*tls.Config, error) {
	if h.StartTLS == nil {
		return nil, nil
	}
	policies := h.StartTLS.ConnectionPolicies
	manage := len(policies) == 0
	if manage {
		policies = caddytls.ConnectionPolicies{new(caddytls.ConnectionPolicy)}
	}
	for _, p := range policies {
		if p.DefaultSNI == "" {
			p.DefaultSNI = hostname // mail clients often send no SNI
		}
		if p.ALPN == nil {
			p.ALPN = []string{} // not Caddy's h2/http1.1 default: SMTP clients may offer others
		}
	}
	if manage {
		appIface, err := ctx.App("tls")
		if err != nil {
			return nil, fmt.Errorf("esmtp: starttls: getting the tls app: %v", err)
		}
		if err := appIface.(*caddytls.TLS).Manage(map[string]struct{}{hostname: {}}); err != nil {
			return nil, fmt.Errorf("esmtp: starttls: managing a certificate for %q: %v", hostname, err)
		}
	}
	if err := policies.Provision(ctx); err != nil {
		return nil, fmt.Errorf("esmtp: starttls: connection_policies: %v", err)
	}
	h.StartTLS.ConnectionPolicies = policies
	return policies.TLSConfig(ctx), nil
}

// defaultHostname is the machine's name when it is a valid domain.
func defaultHostname() string {
	name, err := os.Hostname()
	if err != nil || name == "" || strings.Trim(name, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-.") != "" {
		return "localhost"
	}
	return name
}

// Interface guards
var (
	_ caddy.Provisioner  = (*Handler)(nil)
	_ caddy.Validator    = (*Handler)(nil)
	_ caddy.CleanerUpper = (*Handler)(nil)
)
