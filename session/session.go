package session

import (
	"bufio"
	"context"
	"crypto/tls"
	"net"
	"net/netip"
	"sync/atomic"
	"time"

	"go.uber.org/zap"
)

// Session is one SMTP connection. Sub-handlers read its state through the
// methods below; they must not keep a *Session after the session ends.
type Session struct {
	srv  *Server
	cfg  *Config
	raw  net.Conn // the accepted connection: deadlines are set on it
	conn net.Conn // what is read and written: raw, or TLS over raw after STARTTLS
	r    *bufio.Reader
	w    *bufio.Writer

	id       string
	remote   net.Addr
	ip       netip.Addr  // the client IP counted for MaxConnectionsPerIP
	counts   *connCounts // where the session is counted for the connection limits
	perIP    bool        // counted per IP too
	local    net.Addr
	tls      *tls.ConnectionState
	ctx      context.Context
	cancel   context.CancelFunc
	start    time.Time
	log      *zap.Logger
	debug    bool
	helo     string
	extended bool
	txn      *Transaction
	values   map[any]any
	errors   int // protocol errors in the whole session, for the log
	strikes  int // protocol errors since the last accepted message, for MaxErrors
	messages int

	lineBuf      []byte // a command line longer than the reader's buffer
	lineOverflow bool   // the current line is over the limit and being discarded
	lineSkipped  int    // bytes discarded of the current line
	out          []byte // reply scratch
	dec          decoder
	asm          assembler

	streamCtx      context.Context // see hookContext
	streamCancel   context.CancelFunc
	streamDeadline time.Time

	jobs      []job    // the deliveries of the message at its end, reused
	remoteStr string   // remoteOf's String(), for log lines
	remoteOf  net.Addr // the address remoteStr was made from
	heloLog   string   // Sanitize(heloLogOf, 255), for log lines
	heloLogOf string
	secret    bool // the next line is a SASL response: kept out of the transcript
	closing   bool // the session ends after the reply being sent
	draining  atomic.Bool
	deadline  time.Time // the current read deadline before any drain

	dataBudget time.Duration // what is left of the data phase's time (see spendData)
	dataCut    bool          // the current read deadline is the data budget's
}

// Transaction is one mail transaction, from MAIL to end of message or RSET.
type Transaction struct {
	// ID is the queue id, unique per transaction, in every log line and in
	// the Received: field.
	ID string
	// From is the reverse-path of MAIL FROM.
	From Path
	// MailParams are the parameters of MAIL FROM.
	MailParams Params
	// Recipients are the accepted RCPT TO forward-paths, in order.
	Recipients []Recipient
	// UTF8 is true when MAIL had the SMTPUTF8 parameter (RFC 6531).
	UTF8 bool
	// Body is the BODY= parameter ("7BIT", "8BITMIME") or "".
	Body string
	// Size is the number of message bytes received so far (dot-unstuffed,
	// the Received: field not counted).
	Size int64
	// Start is when MAIL was accepted.
	Start time.Time

	added     []HeaderField
	logFields []zap.Field
	// firstRecipients backs Recipients up to its length, so that most
	// transactions' recipients cost no allocation of their own.
	firstRecipients [2]Recipient
	values          map[any]any
	chunking        bool   // a BDAT started the data
	refused         int    // RCPTs refused by a sub-handler
	discard         string // why the message is discarded (Discard)
	quarantine      string // why the message is quarantined (Quarantine)

	sp    *spool        // the message, when some sub-handler reads it
	body  *spool        // a replaced body
	edits []headerEdit  // header edits, applied when the message is read
	views [][]Recipient // each matched sub-handler's recipients, by place (see recipientsFor)
}

// Recipient is an accepted RCPT TO.
type Recipient struct {
	// Path is the forward-path.
	Path Path
	// Params are the RCPT parameters.
	Params Params
}

// AddHeader adds a header field that every sub-handler sees right after the
// engine's Received: field. Call it from MAIL, RCPT or DATA hooks; headers
// added once the message data has started are ignored.
func (t *Transaction) AddHeader(name, value string) {
	name, value = Sanitize(name, 0), Sanitize(value, 0)
	t.added = append(t.added, HeaderField{Name: name, Value: value, Raw: []byte(name + ": " + value + "\r\n")})
}

// AddLogField adds a field to the transaction's one per-message log line,
// so that line tells the message's whole story (where it was delivered,
// why it was refused) without a log line of the sub-handler's own.
func (t *Transaction) AddLogField(f zap.Field) { t.logFields = append(t.logFields, f) }

// Value returns the per-transaction value stored under key.
func (t *Transaction) Value(key any) any { return t.values[key] }

// SetValue stores a per-transaction value; use an unexported key type.
func (t *Transaction) SetValue(key, value any) {
	if t.values == nil {
		t.values = map[any]any{}
	}
	t.values[key] = value
}

// ID returns the session id used in log lines.
func (s *Session) ID() string { return s.id }

// RemoteAddr returns the client's address.
func (s *Session) RemoteAddr() net.Addr { return s.remote }

// RemoteIP returns the client's IP address (IPv4 unmapped), the real
// client's behind a PROXY protocol handler or XCLIENT; the zero Addr when
// the connection has none (a unix socket).
func (s *Session) RemoteIP() netip.Addr { return remoteIP(s.remote) }

// Resolver returns the DNS resolver of this session's server (see
// Config.Resolver): what a sub-handler looks names up with unless it was
// given one of its own.
func (s *Session) Resolver() Resolver { return s.cfg.Resolver }

// LocalAddr returns the server's address.
func (s *Session) LocalAddr() net.Addr { return s.local }

// TLS returns the connection's TLS state, or nil for plain TCP.
func (s *Session) TLS() *tls.ConnectionState { return s.tls }

// Helo returns the name the client gave in HELO or EHLO, "" before.
func (s *Session) Helo() string { return s.helo }

// Extended reports whether the client greeted with EHLO.
func (s *Session) Extended() bool { return s.extended }

// Transaction returns the mail transaction in progress, or nil.
func (s *Session) Transaction() *Transaction { return s.txn }

// Hostname returns the server's configured hostname.
func (s *Session) Hostname() string { return s.cfg.Hostname }

// Logger returns the session's logger.
func (s *Session) Logger() *zap.Logger { return s.log }

// Value returns the per-session value stored under key.
func (s *Session) Value(key any) any { return s.values[key] }

// SetValue stores a per-session value; use an unexported key type.
func (s *Session) SetValue(key, value any) {
	if s.values == nil {
		s.values = map[any]any{}
	}
	s.values[key] = value
}

func newSession(srv *Server, conn net.Conn, info ConnInfo) *Session {
	s := &Session{
		srv:    srv,
		cfg:    &srv.cfg,
		raw:    conn,
		conn:   conn,
		r:      getReader(conn),
		id:     newID(time.Now()),
		remote: info.RemoteAddr,
		local:  info.LocalAddr,
		tls:    info.TLS,
		start:  time.Now(),
	}
	if s.remote == nil {
		s.remote = conn.RemoteAddr()
	}
	if s.local == nil {
		s.local = conn.LocalAddr()
	}
	s.log = srv.cfg.Logger
	s.debug = srv.cfg.LogTranscript && s.log.Core().Enabled(zap.DebugLevel)
	return s
}
