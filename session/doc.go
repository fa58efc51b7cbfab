// Package session is caddy-esmtp's SMTP engine: it carries whole ESMTP
// sessions (RFC 5321 and its extensions) on connections it is given and
// asks an ordered list of sub-handlers what to do at every event. It
// imports no Caddy package: NewServer with a Config, then Server.Serve per
// accepted net.Conn, is all a Go program needs.
//
// Where to read, by role:
//
//   - hooks.go: what a sub-handler implements (one interface per event,
//     judges and deliveries, Matcher); session.go: what it sees (Session,
//     Transaction); edits.go: what it may change before delivery;
//     reply.go: replies.
//   - server.go: the Server, connection limits, the drain.
//   - conn.go: one session's run loop, deadlines, the command line reader,
//     reply writing.
//   - verbs.go: the commands; datacmd.go: DATA and BDAT, the data-phase
//     time budget, the end of a message; auth.go, starttls.go, dsn.go: the
//     extensions.
//   - decoder.go: the DATA decoder (dot-unstuffing, end of data, bare line
//     endings); assembler.go: header fields and body chunks as they arrive.
//   - spool.go: the one spool per message; deliver.go: judges, then
//     deliveries (prepare, deliver, commit).
//   - chain.go: the dispatch, the one fail-closed path into sub-handlers.
//   - config.go, address.go, received.go, log.go, observer.go: the rest.
package session
