// Package dsn builds and parses delivery status notifications (RFC 3464):
// multipart/report; report-type=delivery-status messages with a
// human-readable text/plain part, a message/delivery-status part (one
// per-message block, one block per recipient) and, optionally, the
// original message (message/rfc822) or its header (text/rfc822-headers).
//
// For a message that was sent with SMTPUTF8 the report takes the shapes of
// RFC 6533: message/global-delivery-status, message/global (or
// message/global-headers), and a UTF-8 text part; such a report must itself
// be sent with SMTPUTF8. Otherwise the report is 7bit throughout except the
// returned original, which is sent as it came (Content-Transfer-Encoding
// 8bit when Report.EightBit, so the report is then sent with BODY=8BITMIME).
//
// Every value taken from the outside (addresses, replies, host names,
// ENVID, ORCPT) is written so it cannot start a header field or a MIME
// part: control characters (CR and LF among them) become spaces or "?",
// non-ASCII becomes "?" outside SMTPUTF8 reports, long values are folded at
// spaces (lines of at most 78 characters where the words allow, never more
// than 998) and cut at a bound. The boundary is 144 random bits.
package dsn

import (
	"bufio"
	"crypto/rand"
	"encoding/base32"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"
	"unicode/utf8"
)

// Action is a recipient's Action field (RFC 3464 2.3.3).
type Action string

// The actions.
const (
	// Failed: the message could not be delivered and will not be.
	Failed Action = "failed"
	// Delayed: not delivered yet; still being retried.
	Delayed Action = "delayed"
	// Delivered: delivered to the recipient's mailbox.
	Delivered Action = "delivered"
	// Relayed: passed on to a system that will not send DSNs.
	Relayed Action = "relayed"
	// Expanded: delivered and forwarded to several addresses.
	Expanded Action = "expanded"
)

func (a Action) valid() bool {
	switch a {
	case Failed, Delayed, Delivered, Relayed, Expanded:
		return true
	}
	return false
}

// Return is what of the original message a report carries.
type Return int

// The Return choices.
const (
	// ReturnNone attaches nothing of the original.
	ReturnNone Return = iota
	// ReturnHeaders attaches the original's header section
	// (text/rfc822-headers, or message/global-headers).
	ReturnHeaders
	// ReturnFull attaches the whole original (message/rfc822, or
	// message/global).
	ReturnFull
)

// Report is one delivery status notification.
type Report struct {
	// ReportingMTA is the host name of the MTA writing the report
	// (Reporting-MTA: dns; ...), also in From: and Message-ID:.
	ReportingMTA string
	// ReceivedFromMTA is the name (HELO) of the host the original came
	// from, or "" (Received-From-MTA).
	ReceivedFromMTA string
	// EnvID is the original's ENVID= as sent (xtext), or ""
	// (Original-Envelope-Id, decoded).
	EnvID string
	// Arrival is when the original arrived (Arrival-Date); zero omits it.
	Arrival time.Time
	// Date is the report's date; zero means now.
	Date time.Time
	// To is the original's sender, to whom the report goes.
	To string
	// QueueID is the original's queue id, named in the text part.
	QueueID string
	// Recipients are the recipients reported on; at least one.
	Recipients []Recipient
	// Return is what of the original to attach.
	Return Return
	// UTF8 selects the RFC 6533 shapes (the original had SMTPUTF8).
	UTF8 bool
	// EightBit marks the original as 8bit content: the attached original
	// is labelled Content-Transfer-Encoding: 8bit.
	EightBit bool
}

// Recipient is one recipient's block of a report.
type Recipient struct {
	// Final is the recipient's address (Final-Recipient: rfc822; ...).
	Final string
	// Original is RCPT's ORCPT= as sent ("rfc822;xtext"), or ""
	// (Original-Recipient, decoded).
	Original string
	// Action is what happened.
	Action Action
	// Status is the enhanced status code ("5.1.1").
	Status string
	// RemoteMTA is the host that gave the reply, or "" (Remote-MTA).
	RemoteMTA string
	// Diagnostic is the remote reply, code and text ("550 5.1.1 No such
	// user"), or "" (Diagnostic-Code: smtp; ...).
	Diagnostic string
	// LastAttempt is when the last attempt was made; zero omits it.
	LastAttempt time.Time
	// WillRetryUntil is when retries stop, for Delayed; zero omits it.
	WillRetryUntil time.Time
}

const (
	maxValue = 900 // bytes of a field value, before folding
	foldAt   = 78
)

var b32 = base32.StdEncoding.WithPadding(base32.NoPadding)

// Subject returns the Subject the report gets, from its actions: a
// failure wins over a delay, a delay over a success.
func (r *Report) Subject() string {
	var failed, delayed bool
	for _, rc := range r.Recipients {
		switch rc.Action {
		case Failed:
			failed = true
		case Delayed:
			delayed = true
		}
	}
	switch {
	case failed:
		return "Undelivered Mail Returned to Sender"
	case delayed:
		return "Delayed Mail (still being retried)"
	}
	return "Successful Mail Delivery Report"
}

// Build writes the report to w, CRLF line endings throughout. original is
// the original message (read to its end, only when r.Return is not
// ReturnNone; it may be nil then).
func Build(w io.Writer, r *Report, original io.Reader) error {
	if len(r.Recipients) == 0 {
		return errors.New("dsn: no recipients")
	}
	for _, rc := range r.Recipients {
		if !rc.Action.valid() {
			return fmt.Errorf("dsn: unknown action %q", rc.Action)
		}
	}
	if r.Return != ReturnNone && original == nil {
		return errors.New("dsn: no original to return")
	}
	var rnd [18]byte
	rand.Read(rnd[:])
	boundary := "=_dsn_" + b32.EncodeToString(rnd[:])
	rand.Read(rnd[:])
	mta := r.hostName(r.ReportingMTA)
	if mta == "" {
		mta = "localhost"
	}
	date := r.Date
	if date.IsZero() {
		date = time.Now()
	}
	bw := bufio.NewWriter(w)
	h := &fieldWriter{w: bw, utf8: r.UTF8}

	h.field("From", "Mail Delivery System <MAILER-DAEMON@"+mta+">")
	h.field("To", "<"+r.text(r.To)+">")
	h.field("Subject", r.Subject())
	h.field("Date", date.Format(time.RFC1123Z))
	h.field("Message-ID", "<"+strings.ToLower(b32.EncodeToString(rnd[:]))+"@"+mta+">")
	h.field("Auto-Submitted", "auto-replied")
	h.field("MIME-Version", "1.0")
	h.field("Content-Type", "multipart/report; report-type=delivery-status;\r\n\tboundary=\""+boundary+"\"")
	bw.WriteString("\r\nThis is a MIME-encapsulated message.\r\n")

	// The human-readable part.
	charset := "us-ascii"
	if r.UTF8 {
		charset = "utf-8"
	}
	bw.WriteString("\r\n--" + boundary + "\r\n")
	h.field("Content-Description", "Notification")
	h.field("Content-Type", "text/plain; charset="+charset)
	h.field("Content-Transfer-Encoding", map[bool]string{false: "7bit", true: "8bit"}[r.UTF8])
	bw.WriteString("\r\n")
	r.writeText(bw, mta)

	// The delivery-status part.
	dsType := "message/delivery-status"
	if r.UTF8 {
		dsType = "message/global-delivery-status"
	}
	bw.WriteString("\r\n--" + boundary + "\r\n")
	h.field("Content-Description", "Delivery report")
	h.field("Content-Type", dsType)
	if r.UTF8 {
		h.field("Content-Transfer-Encoding", "8bit")
	}
	bw.WriteString("\r\n")
	h.field("Reporting-MTA", "dns; "+mta)
	if v := r.xtextValue(r.EnvID); v != "" {
		h.field("Original-Envelope-Id", v)
	}
	if v := r.hostName(r.ReceivedFromMTA); v != "" {
		h.field("Received-From-MTA", "dns; "+v)
	}
	if !r.Arrival.IsZero() {
		h.field("Arrival-Date", r.Arrival.Format(time.RFC1123Z))
	}
	for _, rc := range r.Recipients {
		bw.WriteString("\r\n")
		h.field("Final-Recipient", r.address(rc.Final))
		if typ, addr, ok := strings.Cut(rc.Original, ";"); ok {
			typ = strings.TrimSpace(typ)
			if v := r.xtextValue(strings.TrimSpace(addr)); v != "" && isAtom(typ) {
				h.field("Original-Recipient", typ+"; "+v)
			}
		}
		h.field("Action", string(rc.Action))
		h.field("Status", status(rc.Status, rc.Action))
		if v := r.hostName(rc.RemoteMTA); v != "" {
			h.field("Remote-MTA", "dns; "+v)
		}
		if v := r.text(rc.Diagnostic); v != "" {
			h.field("Diagnostic-Code", "smtp; "+v)
		}
		if !rc.LastAttempt.IsZero() {
			h.field("Last-Attempt-Date", rc.LastAttempt.Format(time.RFC1123Z))
		}
		if rc.Action == Delayed && !rc.WillRetryUntil.IsZero() {
			h.field("Will-Retry-Until", rc.WillRetryUntil.Format(time.RFC1123Z))
		}
	}

	// The original.
	if r.Return != ReturnNone {
		typ, desc := "message/rfc822", "Undelivered Message"
		switch {
		case r.Return == ReturnHeaders && r.UTF8:
			typ, desc = "message/global-headers", "Undelivered Message Headers"
		case r.Return == ReturnHeaders:
			typ, desc = "text/rfc822-headers", "Undelivered Message Headers"
		case r.UTF8:
			typ = "message/global"
		}
		bw.WriteString("\r\n--" + boundary + "\r\n")
		h.field("Content-Description", desc)
		h.field("Content-Type", typ)
		if r.EightBit || r.UTF8 {
			h.field("Content-Transfer-Encoding", "8bit")
		} else {
			h.field("Content-Transfer-Encoding", "7bit")
		}
		bw.WriteString("\r\n")
		if err := copyOriginal(bw, original, r.Return == ReturnHeaders); err != nil {
			return err
		}
	}
	bw.WriteString("\r\n--" + boundary + "--\r\n")
	if h.err != nil {
		return h.err
	}
	return bw.Flush()
}

// writeText writes the human-readable part.
func (r *Report) writeText(w *bufio.Writer, mta string) {
	var b strings.Builder
	b.WriteString("This is the mail system at host " + mta + ".\r\n\r\n")
	say := func(s string) {
		for _, l := range wrap(s, 72) {
			b.WriteString(l + "\r\n")
		}
	}
	id := ""
	if v := r.text(r.QueueID); v != "" {
		id = " (queue id " + v + ")"
	}
	switch r.Subject() {
	case "Undelivered Mail Returned to Sender":
		say("I'm sorry to have to inform you that your message" + id + " could not be delivered to one or more recipients. The details are below.")
	case "Delayed Mail (still being retried)":
		say("Your message" + id + " could not be delivered yet to one or more recipients. It is still being retried: you do not need to send it again. The details are below.")
	default:
		say("Your message" + id + " was delivered to the recipients below, as you asked.")
	}
	for _, rc := range r.Recipients {
		b.WriteString("\r\n")
		line := "<" + r.text(rc.Final) + ">: " + string(rc.Action)
		if v := r.hostName(rc.RemoteMTA); v != "" {
			line += " (host " + v + ")"
		}
		if v := r.text(rc.Diagnostic); v != "" {
			line += ": " + v
		}
		say(line)
	}
	w.WriteString(b.String())
}

// status returns s if it is an enhanced status code of the action's class,
// or the action's generic one.
func status(s string, a Action) string {
	class := map[Action]byte{Failed: '5', Delayed: '4'}[a]
	if class == 0 {
		class = '2'
	}
	parts := strings.Split(s, ".")
	ok := len(parts) == 3 && len(s) > 0 && s[0] == class
	for _, p := range parts {
		ok = ok && p != "" && len(p) <= 3 && strings.Trim(p, "0123456789") == ""
	}
	if ok {
		return s
	}
	return string(class) + ".0.0"
}

// text makes a value safe for a field body or the text part: controls
// become spaces (runs collapse), non-ASCII becomes "?" unless UTF-8 is
// allowed (and invalid UTF-8 always does), and it is cut at maxValue bytes.
func (r *Report) text(s string) string {
	var b strings.Builder
	space := false
	for i, c := range s {
		if b.Len() >= maxValue {
			break
		}
		switch {
		case c == utf8.RuneError && !strings.HasPrefix(s[i:], "\uFFFD"):
			c = '?'
		case c < ' ' || c == 0x7f || (c >= 0x80 && c < 0xa0) || c == '\u2028' || c == '\u2029':
			c = ' '
		case c >= 0x80 && !r.UTF8:
			c = '?'
		}
		if c == ' ' {
			if space || b.Len() == 0 {
				continue
			}
			space = true
		} else {
			space = false
		}
		b.WriteRune(c)
	}
	return strings.TrimRight(b.String(), " ")
}

// hostName keeps only the characters of a host name or address literal.
func (r *Report) hostName(s string) string {
	var b strings.Builder
	for i := 0; i < len(s) && b.Len() < 255; i++ {
		c := s[i]
		if c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || strings.IndexByte(".-_:[]", c) >= 0 {
			b.WriteByte(c)
		}
	}
	return b.String()
}

// address writes a Final-Recipient value: "rfc822; addr", or with UTF8 and
// a non-ASCII address "utf-8; addr" (RFC 6533 3).
func (r *Report) address(a string) string {
	v := r.text(strings.ReplaceAll(a, " ", ""))
	if r.UTF8 && !isASCII(v) {
		return "utf-8; " + v
	}
	return "rfc822; " + v
}

// xtextValue decodes an xtext value (ENVID, ORCPT's address) for a field;
// if the decoded value would need changing to be safe, the xtext as sent
// is kept instead when it is itself safe, else the value is dropped.
func (r *Report) xtextValue(x string) string {
	d, ok := decodeXtext(x)
	if ok && d != "" && r.text(d) == d && !strings.ContainsAny(d, " \t") {
		return d
	}
	if x != "" && r.text(x) == x && isASCII(x) && !strings.ContainsAny(x, " \t") {
		return x
	}
	return ""
}

func decodeXtext(v string) (string, bool) {
	var b strings.Builder
	for i := 0; i < len(v); i++ {
		c := v[i]
		if c != '+' {
			b.WriteByte(c)
			continue
		}
		if i+2 >= len(v) {
			return "", false
		}
		var x byte
		for _, h := range []byte{v[i+1], v[i+2]} {
			switch {
			case h >= '0' && h <= '9':
				x = x<<4 | (h - '0')
			case h >= 'A' && h <= 'F':
				x = x<<4 | (h - 'A' + 10)
			default:
				return "", false
			}
		}
		b.WriteByte(x)
		i += 2
	}
	return b.String(), true
}

func isASCII(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] >= 0x80 {
			return false
		}
	}
	return true
}

func isAtom(s string) bool {
	if s == "" || len(s) > 64 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_' || c == '.') {
			return false
		}
	}
	return true
}

// fieldWriter writes header fields, folded.
type fieldWriter struct {
	w    *bufio.Writer
	utf8 bool
	err  error
}

// field writes "name: value" CRLF, folding value at spaces so lines stay
// within foldAt where the words allow. A value with its own folds ("\r\n\t")
// is written as it is: only Build's own constants have them.
func (f *fieldWriter) field(name, value string) {
	if strings.Contains(value, "\r\n") {
		f.w.WriteString(name + ": " + value + "\r\n")
		return
	}
	line := name + ":"
	for w := range strings.FieldsSeq(value) {
		if len(line)+1+len(w) > foldAt && len(line) > len(name)+1 {
			f.w.WriteString(line + "\r\n")
			line = " " + w
			continue
		}
		line += " " + w
	}
	if _, err := f.w.WriteString(line + "\r\n"); err != nil && f.err == nil {
		f.err = err
	}
}

// wrap splits s into lines of at most width characters at spaces (a
// longer word gets a line of its own).
func wrap(s string, width int) []string {
	var lines []string
	line := ""
	for w := range strings.FieldsSeq(s) {
		if line != "" && utf8.RuneCountInString(line)+1+utf8.RuneCountInString(w) > width {
			lines = append(lines, line)
			line = ""
		}
		if line != "" {
			line += " "
		}
		line += w
	}
	if line != "" {
		lines = append(lines, line)
	}
	return lines
}

// copyOriginal copies the original (its header section only, when
// headers), turning every line ending into CRLF and ending on one.
func copyOriginal(w *bufio.Writer, original io.Reader, headers bool) error {
	br := bufio.NewReader(original)
	atLineStart := true
	for {
		line, err := br.ReadSlice('\n')
		if len(line) > 0 {
			body := line
			body = body[:len(body)-len(trailingEOL(body))]
			// A bare CR inside a line is a line ending too.
			for {
				i := indexCR(body)
				if i < 0 {
					break
				}
				w.Write(body[:i])
				w.WriteString("\r\n")
				body = body[i+1:]
			}
			w.Write(body)
			ended := len(trailingEOL(line)) > 0
			if ended {
				w.WriteString("\r\n")
				if headers && len(line) == len(trailingEOL(line)) && atLineStart {
					return nil // the blank line that ends the header section
				}
			}
			atLineStart = ended
		}
		if err == bufio.ErrBufferFull {
			atLineStart = false
			continue
		}
		if err == io.EOF {
			if !atLineStart {
				w.WriteString("\r\n")
			}
			return nil
		}
		if err != nil {
			return err
		}
	}
}

func trailingEOL(b []byte) []byte {
	switch {
	case len(b) >= 2 && b[len(b)-2] == '\r' && b[len(b)-1] == '\n':
		return b[len(b)-2:]
	case len(b) >= 1 && b[len(b)-1] == '\n':
		return b[len(b)-1:]
	}
	return nil
}

func indexCR(b []byte) int {
	for i, c := range b {
		if c == '\r' {
			return i
		}
	}
	return -1
}
