package queue

import (
	"errors"
	"fmt"
	"strings"
	"time"
)

// Envelope is what the queue keeps of a message's SMTP transaction: enough
// to deliver it and to report on it long after the session that received
// it has ended.
type Envelope struct {
	// ID is the queue id (the session's transaction id), at most 64
	// characters of [A-Za-z0-9_-]; Enqueue makes one when it is empty.
	ID string `json:"id"`
	// From is the reverse-path's mailbox, "" for the null sender (a
	// bounce, which never gets a bounce of its own).
	From string `json:"from"`
	// Ret is MAIL's RET= ("FULL", "HDRS") or "" (see package dsn).
	Ret string `json:"ret,omitempty"`
	// EnvID is MAIL's ENVID=, xtext as sent, or "".
	EnvID string `json:"envid,omitempty"`
	// SMTPUTF8 is true when MAIL had SMTPUTF8 (RFC 6531).
	SMTPUTF8 bool `json:"smtputf8,omitempty"`
	// Body is MAIL's BODY= ("7BIT", "8BITMIME") or "".
	Body string `json:"body,omitempty"`
	// RequireTLS is true when MAIL had REQUIRETLS (RFC 8689).
	RequireTLS bool `json:"requiretls,omitempty"`
	// Recipients are the message's recipients with their delivery state.
	Recipients []Recipient `json:"recipients"`
	// Arrival is when the message was accepted (Arrival-Date of DSNs,
	// and the start of MaxAge and DelayWarning).
	Arrival time.Time `json:"arrival"`
	// Client is who sent the message, for trace fields and reports.
	Client Client `json:"client"`
	// Labels are opaque to the queue (routes, the name of the handler
	// that queued the message): the Deliver function's to read.
	Labels map[string]string `json:"labels,omitempty"`
}

// Client is the session a message came from.
type Client struct {
	// Addr is the client's IP address.
	Addr string `json:"addr,omitempty"`
	// Helo is the HELO/EHLO name.
	Helo string `json:"helo,omitempty"`
	// AuthUser is the authenticated identity, or "".
	AuthUser string `json:"auth_user,omitempty"`
	// TLS describes the TLS connection ("TLS1.3 TLS_AES_128_GCM_SHA256"),
	// "" without TLS.
	TLS string `json:"tls,omitempty"`
	// Protocol is the Received: "with" word (ESMTPS, UTF8SMTPSA, ...).
	Protocol string `json:"protocol,omitempty"`
}

// State is a recipient's delivery state.
type State string

// The recipient states. Pending and Deferred are still to be delivered;
// Delivered and Failed are final.
const (
	// Pending: not tried yet.
	Pending State = "pending"
	// Deferred: tried, and the last attempt failed temporarily (4xx).
	Deferred State = "deferred"
	// Delivered: the destination took it (2xx).
	Delivered State = "delivered"
	// Failed: a permanent failure (5xx), expiry (MaxAge) or a delete.
	Failed State = "failed"
)

// Final reports whether no more delivery attempts are made in state s.
func (s State) Final() bool { return s == Delivered || s == Failed }

func (s State) valid() bool {
	switch s {
	case Pending, Deferred, Delivered, Failed:
		return true
	}
	return false
}

// Recipient is one recipient of a queued message and its delivery state.
type Recipient struct {
	// Addr is the forward-path's mailbox.
	Addr string `json:"addr"`
	// Notify is RCPT's NOTIFY= as sent ("NEVER", "SUCCESS,DELAY", ...),
	// "" when absent (see Recipient.Wants).
	Notify string `json:"notify,omitempty"`
	// ORCPT is RCPT's ORCPT= as sent ("rfc822;a+2Bb@example.com"), or "".
	ORCPT string `json:"orcpt,omitempty"`
	// Route is an opaque label for the Deliver function (which
	// delivery takes this recipient), or "".
	Route string `json:"route,omitempty"`

	// State is the delivery state.
	State State `json:"state"`
	// Attempts counts the delivery attempts made for this recipient.
	Attempts int `json:"attempts,omitempty"`
	// LastAttempt is when the last attempt ended.
	LastAttempt time.Time `json:"last_attempt,omitzero"`
	// Reply is the last attempt's outcome, nil before any.
	Reply *Outcome `json:"reply,omitempty"`
	// Reason says why a Failed recipient failed when it was not a
	// permanent reply: ReasonExpired or ReasonDeleted; "" otherwise.
	Reason string `json:"reason,omitempty"`
	// Reported is true once the notification of a final state was
	// queued (or was not wanted): the entry can go.
	Reported bool `json:"reported,omitempty"`
	// DelayReported is true once a delay warning was queued (or was not
	// wanted).
	DelayReported bool `json:"delay_reported,omitempty"`
}

// The values of Recipient.Reason.
const (
	// ReasonExpired: still deferred when the message reached MaxAge.
	ReasonExpired = "expired"
	// ReasonDeleted: deleted by Queue.Delete with a bounce.
	ReasonDeleted = "deleted"
)

// Notification kinds a recipient may ask for (RCPT NOTIFY=, RFC 3461 4.1).
type Notification int

// The notification kinds.
const (
	NotifySuccess Notification = iota
	NotifyFailure
	NotifyDelay
)

// Wants reports whether the recipient's NOTIFY asks for notification n.
// NOTIFY absent means FAILURE,DELAY (RFC 3461 4.1 leaves the choice between
// FAILURE and FAILURE,DELAY to the MTA; delay warnings are sent only when
// Options.DelayWarning is set); NEVER means none.
func (r *Recipient) Wants(n Notification) bool {
	if r.Notify == "" {
		return n != NotifySuccess
	}
	word := [...]string{NotifySuccess: "SUCCESS", NotifyFailure: "FAILURE", NotifyDelay: "DELAY"}[n]
	for item := range strings.SplitSeq(r.Notify, ",") {
		if strings.EqualFold(strings.TrimSpace(item), word) {
			return true
		}
	}
	return false
}

// Outcome is the result of one delivery attempt for one recipient.
type Outcome struct {
	// Code is the SMTP reply code: 2xx delivered, 4xx temporary failure
	// (retried), 5xx permanent failure. Anything else counts as 451.
	Code int `json:"code"`
	// Enhanced is the enhanced status code ("5.1.1"), or "" (derived
	// from Code in reports).
	Enhanced string `json:"enhanced,omitempty"`
	// Text is the reply text (lines joined by a space), or a local
	// error's description.
	Text string `json:"text,omitempty"`
	// RemoteMTA is the host that gave the reply, "" for a local result.
	RemoteMTA string `json:"remote_mta,omitempty"`
	// TLSPolicy is the TLS policy the delivery applied toward RemoteMTA
	// ("dane", "opportunistic"), or "".
	TLSPolicy string `json:"tls_policy,omitempty"`
	// Relayed is true for a 2xx from a destination that will not send
	// DSNs of its own (an upstream without DSN): reported as "relayed".
	Relayed bool `json:"relayed,omitempty"`
}

// Permanent reports whether the outcome is a permanent failure.
func (o Outcome) Permanent() bool { return o.Code >= 500 && o.Code < 600 }

// Success reports whether the outcome is a delivery.
func (o Outcome) Success() bool { return o.Code >= 200 && o.Code < 300 }

// Status returns the enhanced status code, or one derived from Code.
func (o Outcome) Status() string {
	if validStatus(o.Enhanced) {
		return o.Enhanced
	}
	switch {
	case o.Success():
		return "2.0.0"
	case o.Permanent():
		return "5.0.0"
	}
	return "4.0.0"
}

// validStatus: class "." subject "." detail (RFC 3463).
func validStatus(s string) bool {
	parts := strings.Split(s, ".")
	if len(parts) != 3 || (parts[0] != "2" && parts[0] != "4" && parts[0] != "5") {
		return false
	}
	for _, p := range parts[1:] {
		if p == "" || len(p) > 3 {
			return false
		}
		for i := 0; i < len(p); i++ {
			if p[i] < '0' || p[i] > '9' {
				return false
			}
		}
	}
	return true
}

// Entry is one queued message: its envelope, the recipients' states and
// the schedule.
type Entry struct {
	Envelope
	// Size is the message's size in bytes.
	Size int64 `json:"size"`
	// Attempts counts delivery passes over the message.
	Attempts int `json:"attempts,omitempty"`
	// NextAttempt is when the next pass is due.
	NextAttempt time.Time `json:"next_attempt,omitzero"`
}

// Clone returns a deep copy of e.
func (e *Entry) Clone() *Entry {
	c := *e
	c.Recipients = make([]Recipient, len(e.Recipients))
	for i, r := range e.Recipients {
		if r.Reply != nil {
			o := *r.Reply
			r.Reply = &o
		}
		c.Recipients[i] = r
	}
	if e.Labels != nil {
		c.Labels = make(map[string]string, len(e.Labels))
		for k, v := range e.Labels {
			c.Labels[k] = v
		}
	}
	return &c
}

// Done reports whether nothing is left to do for the entry: every
// recipient is in a final state and reported.
func (e *Entry) Done() bool {
	for _, r := range e.Recipients {
		if !r.State.Final() || !r.Reported {
			return false
		}
	}
	return true
}

// ErrInvalidID is returned for a queue id that is not 1 to 64 characters
// of [A-Za-z0-9_-].
var ErrInvalidID = errors.New("queue: invalid queue id")

// ValidID reports whether id may name a queue entry (it is a file name in
// DirStore).
func ValidID(id string) bool {
	if id == "" || len(id) > 64 {
		return false
	}
	for i := 0; i < len(id); i++ {
		c := id[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_') {
			return false
		}
	}
	return true
}

// check validates an entry read from a store or given to Put.
func (e *Entry) check() error {
	if !ValidID(e.ID) {
		return ErrInvalidID
	}
	if len(e.Recipients) == 0 {
		return errors.New("queue: entry without recipients")
	}
	if e.Size < 0 {
		return errors.New("queue: negative size")
	}
	for i, r := range e.Recipients {
		if r.Addr == "" {
			return fmt.Errorf("queue: recipient %d without address", i)
		}
		if !r.State.valid() {
			return fmt.Errorf("queue: recipient %d: unknown state %q", i, r.State)
		}
		if r.Reason != "" && r.Reason != ReasonExpired && r.Reason != ReasonDeleted {
			return fmt.Errorf("queue: recipient %d: unknown reason %q", i, r.Reason)
		}
		if r.Attempts < 0 {
			return fmt.Errorf("queue: recipient %d: negative attempts", i)
		}
	}
	if e.Attempts < 0 {
		return errors.New("queue: negative attempts")
	}
	return nil
}
