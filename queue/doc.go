// Package queue is caddy-esmtp's durable mail queue: end of data commits
// the message and its envelope to a Store (fsynced) and only then is the
// client answered 250; workers then deliver it, recipient by recipient,
// with retries, and send RFC 3464 delivery status notifications (package
// dsn). Like package session it imports no Caddy package: New with a Store
// and Options, Start, Enqueue per message, Stop.
//
// # Store and file layout
//
// A Store persists entries; all delivery logic is in Queue, so another
// store (a replicated NATS JetStream one is planned) reuses it. DirStore
// keeps one directory:
//
//	.lock        flock'ed while open: one process per directory
//	<id>.msg     the entry file: the message as it will be delivered
//	             (spool + edits), then the Entry as Put stored it
//	             (EncodeState), then a trailer (see FileVersion); immutable
//	<id>.state   the Entry's later state, if any: overrides <id>.msg's
//	.tmp-*       being written; removed when the store is opened
//	corrupt/     entries set aside by recovery, for an operator
//
// Put writes the entry file to a removed entry file kept for reuse (see
// below), else an unnamed file (Linux's O_TMPFILE; a named .tmp- file
// elsewhere), fsyncs it, links it to <id>.msg and fsyncs
// the directory: the 250 costs one file and two fsyncs, and concurrent
// Puts share the directory fsync (the first fsyncs, those that linked
// meanwhile wait for the next: internal/durable, as maildir does for
// new/). Update writes <id>.state to a temporary file, fsyncs it, renames
// it over the old one and fsyncs the directory (shared likewise): the
// message is never rewritten. Remove unlinks <id>.msg, then, only if the
// entry has a <id>.state, fsyncs the directory and unlinks that; the
// unlinks themselves are not fsynced.
//
// Rather than unlink <id>.msg, Remove keeps up to 256 entry files for
// reuse, renamed to .tmp-free- names: a Put then overwrites one (O_TRUNC)
// instead of allocating an inode, the dear part of making a file on a
// busy file system (ext4 without a journal scans past every inode freed
// in the last minute). A kept file is overwritten only once a directory
// fsync that started after its rename has ended (so no power loss brings
// the old name back over new content), and never while it is open for
// reading (Open, Get: Remove unlinks such a file); opening the store
// removes the files kept.
//
// A message delivered at the first attempt to recipients that want no
// DSN (the common case) thus costs one file (a reused one under load),
// one file fsync and one (shared) directory fsync, and no state write at
// all: the pass removes the entry instead (see Queue's passes below).
// Before, it cost four new files and nine fsyncs.
//
// On opening: half-written temporary files are removed (an unnamed one
// leaves nothing); a <id>.state without its entry file (Remove was cut
// between its unlinks) is removed; an entry file that does not read (no
// trailer, an unknown file version, a state that does not decode, a
// state whose Size disagrees with the message, an entry of another id),
// or whose <id>.state does not, is logged at ERROR and moved to corrupt/.
// An entry file linked by a Put that a crash cut before it returned (the
// client got no 250) is a valid entry and is delivered: the client,
// having no reply, may send it again (RFC 5321 6.1's duplicate, as with
// any MTA that crashes after its commit and before its reply).
//
// The state encoding is versioned JSON (see StateVersion) with a strict
// decoder (DecodeState): unknown fields, versions and states are refused;
// the entry file's trailer carries the file layout's version
// (FileVersion), and a file of another version, or of none (the
// unreleased two-file layout of version 1), is refused by name.
//
// # Recipient states
//
//	pending --2xx--> delivered
//	   |  \--5xx---> failed
//	   4xx
//	   v
//	deferred --2xx--> delivered
//	   |  \--5xx---> failed
//	   \--still 4xx at MaxAge--> failed (reason "expired", Status 5.4.7)
//	pending/deferred --Delete with bounce--> failed (reason "deleted")
//
// Each pass over an entry tries every pending and deferred recipient in
// one Deliver call, stores the new states, then queues the DSN they call
// for, then marks them reported and stores that; an entry whose recipients
// are all final and reported is removed. A state the entry's removal
// would make moot is not stored: a pass whose attempt leaves every
// recipient final with no DSN due removes the entry without storing the
// outcome, and one that queued the entry's last DSN removes it without
// storing the recipients as reported. Passes over one entry never
// overlap, and the states are stored (or the entry removed) before the
// next pass can start.
//
// # Backoff
//
// The first attempt is made at once. After attempt n the next is due
// after RetryInterval * 2^(n-1), capped at MaxRetryInterval (defaults
// 5m and 1h: 5m, 10m, 20m, 40m, 1h, 1h, ...; Postfix's minimal and
// maximal backoff times work alike). The last attempt is made at MaxAge
// exactly (default 5 days): a recipient still deferred then fails. While a
// delay warning is still to be sent, an attempt is also made at
// DelayWarning, so the warning carries the latest reply. Flush and Retry
// make attempts due at once. The schedule is per entry (Entry.NextAttempt).
//
// # DSNs
//
// A pass that leaves recipients newly failed (their NOTIFY asks for
// FAILURE, the default), newly delivered (NOTIFY has SUCCESS) or deferred
// past DelayWarning (NOTIFY has DELAY, or no NOTIFY; once per recipient)
// queues one DSN for all of them: multipart/report from the null sender to
// the original sender, with the actions failed, delivered, relayed (a 2xx
// with Outcome.Relayed) or delayed, the upstream's reply as Diagnostic-Code
// and its host as Remote-MTA, ENVID and ORCPT decoded into
// Original-Envelope-Id and Original-Recipient. RET=HDRS returns the
// header; RET=FULL and no RET return the whole message in a report of a
// failure, the header in any other (RFC 3461 4.3 leaves the choice).
// A message sent with SMTPUTF8 gets the RFC 6533 shapes and its DSN is
// queued with SMTPUTF8; an 8BITMIME one's DSN with BODY=8BITMIME. The DSN
// is a new entry (Options.Bounce, by default Enqueue) delivered like any
// other. A message from the null sender never gets a DSN: the DSN that
// would have been is logged and counted (Stats.BouncesDropped).
//
// # At least once
//
// Whatever got a 250 (Enqueue returned nil) survives kill -9 and a power
// loss; after a restart (Start) every entry resumes from its stored state.
// A delivery that the kill cut (made, but its outcome not yet stored) is
// made again, and so is a DSN queued but not yet marked reported: at least
// once. That includes a pass that ended in the entry's removal without
// storing its outcome (above) and was cut before the unlink, and, after a
// power loss, an entry whose unlink had not reached the disk (Remove does
// not fsync it): the entry comes back with its last stored state and its
// cut or unstored deliveries are made again. Nothing else is repeated: a
// recipient whose delivered state was stored is never tried again (Remove
// makes the entry file's unlink durable before it unlinks a later state,
// so no crash brings an entry back with an older state than it had).
package queue
