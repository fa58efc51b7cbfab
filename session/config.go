package session

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"time"

	"go.uber.org/zap"
)

// Defaults for the limits in Config.
const (
	DefaultMaxMessageSize = 25 << 20
	DefaultMaxRecipients  = 100
	DefaultMaxErrors      = 10
	DefaultCommandTimeout = 5 * time.Minute
	DefaultDataTimeout    = 10 * time.Minute
	// DefaultMinDataRate is Postfix's smtpd_min_data_rate, in bytes per
	// second: a client that sends faster than 4 kbit/s on average never
	// runs out of time, whatever the size (a 25 MiB message then takes up
	// to 14.5 hours), while one that drips a byte every second or so is
	// cut once DataTimeout is used up.
	DefaultMinDataRate    = 500
	DefaultChunkSize      = 64 << 10
	DefaultMaxLineLength  = 8192
	DefaultMaxHeaderSize  = 1 << 20
	DefaultHandlerTimeout = 2 * time.Minute
	DefaultGracePeriod    = 30 * time.Second
	// DefaultSpoolMemory bounds the memory of all of a Server's spools.
	DefaultSpoolMemory = 64 << 20
	// DefaultMaxConnections bounds the sessions on one port. Postfix runs
	// at most 100 smtpd processes (default_process_limit); a session here
	// is a goroutine of about 12 KiB idle and 200 KiB in DATA, so ten times
	// that costs at most some 200 MiB and a thousand file descriptors.
	DefaultMaxConnections = 1000
	// DefaultMaxConnectionsPerIP bounds the sessions from one client IP.
	// Postfix allows 50 (smtpd_client_connection_count_limit, half its
	// process limit); a well-behaved sender opens far fewer to one host
	// (Postfix's own client: default_destination_concurrency_limit 20),
	// so 20 never slows real mail while one client cannot take more than
	// a fiftieth of the server.
	DefaultMaxConnectionsPerIP = 20
)

// BareLineEndings says what the engine does with a bare CR, a bare LF or a
// NUL in message data.
type BareLineEndings string

const (
	// BareReject refuses the message with 550 5.5.2 once the real end of
	// data has been read (the default).
	BareReject BareLineEndings = "reject"
	// BareNormalize turns each bare CR and bare LF into CRLF. NUL is still
	// refused. A bare line ending never ends the data either way.
	BareNormalize BareLineEndings = "normalize"
)

// Resolver is what sub-handlers look names up with: the method set of
// *net.Resolver that SPF, DKIM, DMARC, iprev, DNSBL and MX lookups need
// (and that blitiri.com.ar/go/spf's DNSResolver asks for).
type Resolver interface {
	LookupTXT(ctx context.Context, name string) ([]string, error)
	LookupMX(ctx context.Context, name string) ([]*net.MX, error)
	LookupIPAddr(ctx context.Context, host string) ([]net.IPAddr, error)
	LookupAddr(ctx context.Context, addr string) ([]string, error)
}

// SubHandler is one named sub-handler in the ordered list of a Server.
type SubHandler struct {
	// Name names the sub-handler in logs and metrics ("maildir").
	Name string
	// Handler implements one or more of the hook interfaces.
	Handler any
	// Match, when set, limits the sub-handler to the sessions, senders
	// and recipients it matches (see Matcher); nil: everything.
	Match Matcher
}

// Config configures a Server. Zero values take the defaults above.
type Config struct {
	// Hostname is the name the server gives in its greeting, EHLO reply
	// and Received: fields.
	Hostname string
	// Greeting is the text after "220 <hostname> ESMTP".
	Greeting string
	// MaxMessageSize is the largest message accepted, in bytes; advertised
	// with SIZE and enforced while streaming.
	MaxMessageSize int64
	// MaxRecipients is the most RCPTs accepted per message (then 452 4.5.3).
	MaxRecipients int
	// MaxErrors is how many protocol errors (see protocolError) a session
	// may make since its last accepted message before it is closed with
	// 421 4.7.0. Policy refusals (an unknown recipient) do not count.
	MaxErrors int
	// CommandTimeout bounds the whole time to receive one command line.
	CommandTimeout time.Duration
	// DataTimeout bounds the wait for each read of message data, and is
	// the data phase's starting budget (see MinDataRate).
	DataTimeout time.Duration
	// MinDataRate, in bytes per second, bounds the whole data phase (DATA,
	// or all the BDATs of a message): each read spends the time it waited
	// from a budget of DataTimeout and earns back the time its bytes are
	// worth at this rate, never above DataTimeout. A client slower than
	// this on average runs out and gets 421 4.4.2. Default 500.
	MinDataRate int64
	// ChunkSize is the largest body chunk given to BodyHook.
	ChunkSize int
	// MaxLineLength is the longest message line accepted, CRLF excluded.
	MaxLineLength int
	// MaxHeaderSize bounds one header field (with its folded lines).
	MaxHeaderSize int
	// HandlerTimeout bounds one sub-handler hook call.
	HandlerTimeout time.Duration
	// GracePeriod bounds how long a session may go on after Shutdown to
	// finish its transaction.
	GracePeriod time.Duration
	// BareLineEndings is BareReject (default) or BareNormalize.
	BareLineEndings BareLineEndings
	// TLSConfig, when set, offers STARTTLS (RFC 3207) with it on sessions
	// that are not TLS already.
	TLSConfig *tls.Config
	// RequireTLS refuses MAIL with 530 5.7.0 before STARTTLS.
	RequireTLS bool
	// XClientNetworks are the client networks allowed to use XCLIENT
	// (Postfix's extension, spoken by proxies such as nginx's mail proxy)
	// to pass on the original client's address, HELO name and login.
	XClientNetworks []netip.Prefix
	// MaxConnections bounds the sessions on one local port at once, those
	// of every Server of the process on that port counted (so sessions
	// still draining after a reload count); more get 421 4.7.0 at connect.
	// 0: DefaultMaxConnections; -1: no limit.
	MaxConnections int
	// MaxConnectionsPerIP bounds the sessions from one client IP at once,
	// counted as MaxConnections is; more get 421 4.7.0. Clients in
	// XClientNetworks are not limited per IP. 0: DefaultMaxConnectionsPerIP;
	// -1: no limit.
	MaxConnectionsPerIP int
	// RejectEarlyTalkers waits GreetDelay before the greeting and answers
	// 554 5.5.0 and closes when the client has sent anything by then.
	RejectEarlyTalkers bool
	// GreetDelay is that wait (default 1s when RejectEarlyTalkers is set).
	GreetDelay time.Duration
	// LogTranscript logs every command and reply at debug level (AUTH
	// credentials redacted). Off by default: a transcript is large.
	LogTranscript bool
	// Observer receives measurements for metrics; nil: none.
	Observer Observer
	// Resolver is the DNS resolver every sub-handler of this Server that
	// looks something up uses (Session.Resolver), unless it has its own;
	// the Caddy module makes one from its `resolvers` option, with a
	// cache. Nil: the system's (net.DefaultResolver).
	Resolver Resolver
	// Queue, when set, takes every accepted message at end of data (after
	// the judges) instead of the deliveries, which it then runs through
	// Server.DeliverQueued; the client gets 250 once Queue.Enqueue
	// returned. Nil: the deliveries run in the session.
	Queue Queue
	// SpoolMemory bounds the memory that the spools of all this Server's
	// messages hold at once, in bytes; a message that does not fit (or is
	// over 1 MiB) is spooled to an unlinked file in SpoolDir. Default 64
	// MiB.
	SpoolMemory int64
	// SpoolDir is where spool files are made; default the system's
	// temporary directory.
	SpoolDir string
	// Handlers are the sub-handlers, asked in this order.
	Handlers []SubHandler
	// Logger receives one line per message and per session, and the
	// transcript at debug level. Nil means no logging.
	Logger *zap.Logger
}

// withDefaults returns c with zero values replaced by defaults, or an error
// naming the invalid field.
func (c Config) withDefaults() (Config, error) {
	if c.Hostname == "" {
		c.Hostname = "localhost"
	}
	if c.MaxMessageSize == 0 {
		c.MaxMessageSize = DefaultMaxMessageSize
	}
	if c.MaxRecipients == 0 {
		c.MaxRecipients = DefaultMaxRecipients
	}
	if c.MaxErrors == 0 {
		c.MaxErrors = DefaultMaxErrors
	}
	if c.CommandTimeout == 0 {
		c.CommandTimeout = DefaultCommandTimeout
	}
	if c.DataTimeout == 0 {
		c.DataTimeout = DefaultDataTimeout
	}
	if c.MaxConnections == 0 {
		c.MaxConnections = DefaultMaxConnections
	}
	if c.MaxConnectionsPerIP == 0 {
		c.MaxConnectionsPerIP = DefaultMaxConnectionsPerIP
	}
	if c.Resolver == nil {
		c.Resolver = net.DefaultResolver
	}
	if c.SpoolMemory == 0 {
		c.SpoolMemory = DefaultSpoolMemory
	}
	if c.MinDataRate == 0 {
		c.MinDataRate = DefaultMinDataRate
	}
	if c.ChunkSize == 0 {
		c.ChunkSize = DefaultChunkSize
	}
	if c.MaxLineLength == 0 {
		c.MaxLineLength = DefaultMaxLineLength
	}
	if c.MaxHeaderSize == 0 {
		c.MaxHeaderSize = DefaultMaxHeaderSize
	}
	if c.HandlerTimeout == 0 {
		c.HandlerTimeout = DefaultHandlerTimeout
	}
	if c.GracePeriod == 0 {
		c.GracePeriod = DefaultGracePeriod
	}
	if c.RejectEarlyTalkers && c.GreetDelay == 0 {
		c.GreetDelay = time.Second
	}
	if c.BareLineEndings == "" {
		c.BareLineEndings = BareReject
	}
	if c.Observer == nil {
		c.Observer = nopObserver{}
	}
	if c.Logger == nil {
		c.Logger = zap.NewNop()
	}
	var errs []error
	check := func(ok bool, field string, format string, args ...any) {
		if !ok {
			errs = append(errs, fmt.Errorf("%s: "+format, append([]any{field}, args...)...))
		}
	}
	check(c.MaxMessageSize > 0, "max_message_size", "must be positive, got %d", c.MaxMessageSize)
	check(c.MaxRecipients > 0, "max_recipients", "must be positive, got %d", c.MaxRecipients)
	check(c.MaxErrors > 0, "max_errors", "must be positive, got %d", c.MaxErrors)
	check(c.CommandTimeout > 0, "command_timeout", "must be positive, got %s", c.CommandTimeout)
	check(c.DataTimeout > 0, "data_timeout", "must be positive, got %s", c.DataTimeout)
	check(c.SpoolMemory > 0, "spool_memory", "must be positive, got %d", c.SpoolMemory)
	if c.SpoolDir != "" {
		if fi, err := os.Stat(c.SpoolDir); err != nil || !fi.IsDir() {
			errs = append(errs, fmt.Errorf("spool_dir: %q is not a directory", c.SpoolDir))
		}
	}
	check(c.MinDataRate > 0, "min_data_rate", "must be positive, got %d", c.MinDataRate)
	check(c.ChunkSize >= 512 && c.ChunkSize <= 16<<20, "chunk_size", "must be between 512 B and 16 MiB, got %d", c.ChunkSize)
	check(c.MaxLineLength >= 998, "max_line_length", "must be at least 998 (RFC 5322), got %d", c.MaxLineLength)
	check(c.MaxHeaderSize >= 998, "max_header_size", "must be at least 998, got %d", c.MaxHeaderSize)
	check(c.HandlerTimeout > 0, "handler_timeout", "must be positive, got %s", c.HandlerTimeout)
	check(c.MaxConnections >= -1, "max_connections", "must be positive, or -1 for no limit, got %d", c.MaxConnections)
	check(c.MaxConnectionsPerIP >= -1, "max_connections_per_ip", "must be positive, or -1 for no limit, got %d", c.MaxConnectionsPerIP)
	check(c.GreetDelay >= 0 && c.GreetDelay <= time.Minute, "reject_early_talkers", "delay must be between 0 and 1m, got %s", c.GreetDelay)
	check(c.GracePeriod > 0, "grace_period", "must be positive, got %s", c.GracePeriod)
	check(c.BareLineEndings == BareReject || c.BareLineEndings == BareNormalize,
		"bare_line_endings", "must be %q or %q, got %q", BareReject, BareNormalize, c.BareLineEndings)
	check(validDomain(c.Hostname, false) || validAddressLiteral(c.Hostname), "hostname", "%q is not a domain name", c.Hostname)
	for i, h := range c.Handlers {
		check(h.Handler != nil, fmt.Sprintf("handlers[%d]", i), "is nil")
	}
	return c, errors.Join(errs...)
}
