package session

import "context"

// A sub-handler is any value that implements one or more of the hook
// interfaces below: the Go form of the Perl base class's overridable methods,
// one interface per SMTP event. The engine asks the sub-handlers in their
// configured order. For command events the first non-nil *Reply wins; a nil
// reply means "no opinion" and the next sub-handler is asked, then the
// engine's default applies. An error, a panic or a hook that returns after
// Config.HandlerTimeout answers 451 4.3.0 (fail closed), never success.
//
// Every hook gets a context that is cancelled when the connection ends or
// when Config.HandlerTimeout has passed for that call.
// Per-session and per-transaction state belongs in Session.Values and
// Transaction.Values, never in the sub-handler value, which is shared by all
// sessions.

// ConnectHook is called when a client connects, before the greeting. A reply
// of 4xx or 5xx is sent instead of the greeting and the connection closes.
type ConnectHook interface {
	Connect(ctx context.Context, s *Session) (*Reply, error)
}

// HeloHook is called for HELO and EHLO (s.Extended tells which) with the
// client's claimed name.
type HeloHook interface {
	Helo(ctx context.Context, s *Session, name string) (*Reply, error)
}

// MailHook is called for MAIL FROM once the command is syntactically valid;
// the new transaction is s.Transaction().
type MailHook interface {
	Mail(ctx context.Context, s *Session, from Path, params Params) (*Reply, error)
}

// RcptHook is called for each valid RCPT TO. A 2xx reply (or none) adds the
// recipient to the transaction.
type RcptHook interface {
	Rcpt(ctx context.Context, s *Session, to Path, params Params) (*Reply, error)
}

// DataHook is called for DATA, and for the first BDAT of a transaction,
// before any message byte is read. Headers added here with
// Transaction.AddHeader reach the header hooks of every sub-handler.
type DataHook interface {
	Data(ctx context.Context, s *Session) (*Reply, error)
}

// HeaderHook is called for each header field of the message, in order, the
// engine's Received: field first. It gives no reply; an error (a *Reply to
// choose the reply) fails the message at end of data.
type HeaderHook interface {
	Header(ctx context.Context, s *Session, h HeaderField) error
}

// EndOfHeadersHook is called once after the last header field. raw is the
// blank line that ended the header section ("\r\n"), or empty when the first
// line that is not a header field started the body.
type EndOfHeadersHook interface {
	EndOfHeaders(ctx context.Context, s *Session, raw []byte) error
}

// BodyHook is called for each chunk of the body (at most Config.ChunkSize
// bytes, dot-unstuffed, CRLF line ends). The chunk is only valid during the
// call.
type BodyHook interface {
	Body(ctx context.Context, s *Session, chunk []byte) error
}

// MessageHook is called at end of message, once all data was read and no
// earlier error failed it. A delivering sub-handler stores the message
// durably here and returns nil on success, so later sub-handlers are asked
// too; a 4xx or 5xx reply rejects the message.
type MessageHook interface {
	EndOfMessage(ctx context.Context, s *Session) (*Reply, error)
}

// AbortHook is called when a transaction ends without the message being
// accepted: RSET, a new HELO/EHLO or MAIL after a failure, a rejected
// message, a dropped connection. reason says why. Use it to remove
// temporary files.
type AbortHook interface {
	Abort(s *Session, reason error)
}

// CloseHook is called once when the session ends.
type CloseHook interface {
	Close(s *Session)
}

// VerbHook answers the simple commands RSET, NOOP, HELP, VRFY, EXPN and
// QUIT, and any unknown command. cmd is the upper-case verb; arg is the rest
// of the line (already checked for CR, LF and NUL).
type VerbHook interface {
	Verb(ctx context.Context, s *Session, cmd, arg string) (*Reply, error)
}

// ExtensionHook adds EHLO keywords (such as "STARTTLS" or "DSN") to the
// ones the engine advertises.
type ExtensionHook interface {
	Extensions(s *Session) []string
}

// HeaderField is one header field of a message.
type HeaderField struct {
	// Name is the field name as sent (case kept).
	Name string
	// Value is the unfolded value, leading and trailing white space removed.
	Value string
	// Raw is the field exactly as received, folding and final CRLF
	// included. Only valid during the call.
	Raw []byte
}

// hooked is a hook with the name of its sub-handler, for logs.
type hooked[H any] struct {
	name string
	h    H
}

// hookSet is the sub-handler list split by hook, built once per Server.
type hookSet struct {
	connect      []hooked[ConnectHook]
	helo         []hooked[HeloHook]
	mail         []hooked[MailHook]
	rcpt         []hooked[RcptHook]
	data         []hooked[DataHook]
	header       []hooked[HeaderHook]
	endOfHeaders []hooked[EndOfHeadersHook]
	body         []hooked[BodyHook]
	message      []hooked[MessageHook]
	abort        []hooked[AbortHook]
	close        []hooked[CloseHook]
	verb         []hooked[VerbHook]
	ext          []hooked[ExtensionHook]
	auth         []hooked[AuthHook]
}

func collect[H any](handlers []Handler) []hooked[H] {
	var out []hooked[H]
	for _, nh := range handlers {
		if h, ok := nh.Handler.(H); ok {
			out = append(out, hooked[H]{name: nh.Name, h: h})
		}
	}
	return out
}

func newHookSet(handlers []Handler) *hookSet {
	return &hookSet{
		connect:      collect[ConnectHook](handlers),
		helo:         collect[HeloHook](handlers),
		mail:         collect[MailHook](handlers),
		rcpt:         collect[RcptHook](handlers),
		data:         collect[DataHook](handlers),
		header:       collect[HeaderHook](handlers),
		endOfHeaders: collect[EndOfHeadersHook](handlers),
		body:         collect[BodyHook](handlers),
		message:      collect[MessageHook](handlers),
		abort:        collect[AbortHook](handlers),
		close:        collect[CloseHook](handlers),
		verb:         collect[VerbHook](handlers),
		ext:          collect[ExtensionHook](handlers),
		auth:         collect[AuthHook](handlers),
	}
}

// streams reports whether any sub-handler wants the message content.
func (hs *hookSet) streams() bool {
	return len(hs.header) > 0 || len(hs.endOfHeaders) > 0 || len(hs.body) > 0
}
