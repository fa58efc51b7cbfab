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

// MessageHook is the judge at end of message, called once all data was
// read and no earlier error failed it, in configured order, before any
// delivery. A 4xx or 5xx reply refuses the message (no delivery runs); nil
// or a 2xx lets the next judge decide. A judge may edit the message, the
// sender and the recipients (Transaction.PrependHeader, ChangeHeader,
// ReplaceBody, AddRecipient, ...) and read the message as it is so far
// (Transaction.Message, when it implements MessageReader). It must not
// deliver: that is DeliverHook's.
type MessageHook interface {
	EndOfMessage(ctx context.Context, s *Session) (*Reply, error)
}

// DeliverHook delivers a message that every judge accepted. It is called
// once per message with its own envelope: the final sender and those of
// the final recipients its Matcher takes, and a reader over the final
// message (the spool with every edit applied). It returns nil once the
// message is stored or forwarded durably (fsynced, upstream 250, HTTP
// 2xx); an error fails the message: a *Reply (4xx or 5xx) is what the
// client gets, any other error answers 451 4.3.0. Every delivery must
// succeed for the client to get 250 (see Server for the order).
//
// A recipient that no DeliverHook would take (given the matchers) is
// refused at RCPT with 550 5.1.1: mail is never accepted into nowhere.
type DeliverHook interface {
	Deliver(ctx context.Context, s *Session, d *Delivery) error
}

// PrepareHook is a delivery made in two steps, so that it keeps nothing
// when another delivery of the message fails: Prepare stores the message
// durably but invisibly (maildir: a file written and fsynced in tmp/), and
// the engine calls Commit on the result only once every other delivery
// succeeded (maildir: the link into new/), Rollback otherwise. Prepares
// run before the deliveries that cannot be taken back. A sub-handler that
// implements PrepareHook is not asked to Deliver.
type PrepareHook interface {
	Prepare(ctx context.Context, s *Session, d *Delivery) (Prepared, error)
}

// Prepared is a prepared delivery (see PrepareHook).
type Prepared interface {
	// Commit makes the delivery visible; an error answers 451 4.3.0.
	Commit() error
	// Rollback removes what Prepare stored.
	Rollback()
}

// Delivery is what one DeliverHook or PrepareHook delivers.
type Delivery struct {
	// From is the final reverse-path (after any judge changed it).
	From Path
	// MailParams are the final MAIL FROM parameters.
	MailParams Params
	// Recipients are the final recipients this delivery is for: those of
	// the transaction its Matcher takes, in order. Never empty.
	Recipients []Recipient
	// Message is the final message, our Received: field first, with
	// every edit applied; readable as many times as needed. Nil only for
	// a delivery that does not read messages (see MessageReader).
	Message *Message
	// Queued is true when the delivery runs from the queue
	// (Server.DeliverQueued), outside the session the message came in:
	// the session stands for that one (no connection), and each
	// recipient may have its own outcome (SetReply).
	Queued bool

	replies []*Reply // by recipient (SetReply)
}

// SetReply gives the i-th recipient of the delivery its own outcome, as
// an upstream answered it (LMTP's reply per recipient, an upstream's
// refused RCPT): a 4xx or 5xx reply fails that recipient alone when the
// delivery returns nil. From the queue, each recipient keeps its own
// outcome (the others are delivered); in the session, where the client
// gets one reply for the message, the first failure is that reply. A 2xx
// reply records a delivered recipient's answer.
func (d *Delivery) SetReply(i int, r *Reply) {
	if i < 0 || i >= len(d.Recipients) {
		return
	}
	if d.replies == nil {
		d.replies = make([]*Reply, len(d.Recipients))
	}
	d.replies[i] = r
}

// failed returns the first failure SetReply recorded, or nil.
func (d *Delivery) failed() *Reply {
	for _, r := range d.replies {
		if r != nil && r.Code >= 400 {
			return r
		}
	}
	return nil
}

// MessageReader tells whether a sub-handler reads the whole message
// (Transaction.Message, Delivery.Message). The engine spools a message
// only when some sub-handler does: every DeliverHook and PrepareHook does
// unless it implements MessageReader and says false (discard); any other
// sub-handler does only if it implements it and says true (a filter that
// sends the message to an outside scanner at end of data).
type MessageReader interface {
	ReadsMessage() bool
}

// Matcher limits a sub-handler to some sessions, senders and recipients
// (SubHandler.Match): the match sub-handler's conditions. The engine asks
// the sub-handler about session events (connect, HELO, verbs, EHLO
// keywords, AUTH) when MatchSession holds; MAIL when MatchSender holds
// too; RCPT when MatchRecipient holds for that recipient too; DATA,
// header, body and end-of-message events when some recipient of the
// transaction matches, showing it only those (Transaction.Recipients);
// and it delivers to it only the recipients that match.
type Matcher interface {
	MatchSession(s *Session) bool
	MatchSender(s *Session, from Path) bool
	MatchRecipient(s *Session, to Path) bool
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
