package session

import "go.uber.org/zap"

// Two dispositions a judge may give a message besides accepting and
// refusing it, the milter protocol's and Postfix's access(5) DISCARD and
// quarantine (HOLD).

// QuarantineField is the header field put on top of a quarantined message
// (Transaction.Quarantine), with the reason as its value, for a Maildir
// filter (Sieve: if exists "X-Esmtp-Quarantine" { fileinto "Junk"; }),
// a mail client or a later hop to act on.
const QuarantineField = "X-Esmtp-Quarantine"

// Discard makes the client get 250 for the message while no delivery
// runs: the message is dropped on purpose (a milter's SMFIR_DISCARD, a
// policy server's DISCARD), and the message's log line says so
// (discarded=<reason>). The judges after the one that discarded are not
// asked. The first reason given is kept.
func (t *Transaction) Discard(reason string) {
	if t.discard == "" {
		if reason == "" {
			reason = "discarded"
		}
		t.discard = reason
		t.AddLogField(zap.String("discarded", reason))
	}
}

// Discarded returns the reason given to Discard, or "" when the message
// is not discarded.
func (t *Transaction) Discarded() string { return t.discard }

// Quarantine marks the message as held for review: it is delivered as
// usual, with the field "X-Esmtp-Quarantine: <reason>" on top (above the
// trace and Authentication-Results fields), and its log line has
// quarantine=<reason>. Once a message is quarantined, later calls add
// nothing. (With the queue, a quarantined message will be held in it.)
func (t *Transaction) Quarantine(reason string) {
	if t.quarantine != "" {
		return
	}
	if reason == "" {
		reason = "quarantined"
	}
	t.quarantine = reason
	t.PrependHeader(QuarantineField, reason)
	t.AddLogField(zap.String("quarantine", reason))
}

// Quarantined returns the reason given to Quarantine, or "" when the
// message is not quarantined.
func (t *Transaction) Quarantined() string { return t.quarantine }
