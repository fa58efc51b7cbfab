package session

import (
	"io"
	"slices"
	"strings"
)

// The edits: what a sub-handler may change in a message before it is
// delivered. They are the milter protocol's actions, one for one (add,
// insert, change and delete a header field; replace the body; change the
// sender; add and remove a recipient), usable from any hook until the
// deliveries start. Header and body edits are recorded on the transaction
// and applied when the message is read (Transaction.Message,
// Delivery.Message); the spool is never rewritten. Envelope edits change
// the transaction at once.

// headerOp is the kind of a header edit.
type headerOp uint8

const (
	opInsert      headerOp = iota // insert before index (-1: after the last field)
	opChange                      // change the n-th field called name (delete when value is "")
	opDeleteWhere                 // delete every field called name whose value match takes
)

// headerEdit is one recorded header edit.
type headerEdit struct {
	op    headerOp
	index int
	name  string
	n     int
	value string
	fn    func() string           // the value, made when the message is read (PrependHeaderFunc)
	match func(value string) bool // which fields to delete (DeleteHeaderWhere)
}

// PrependHeader adds a header field at the top of the message, above our
// Received: field (as trace fields and Authentication-Results: go).
func (t *Transaction) PrependHeader(name, value string) { t.InsertHeader(0, name, value) }

// PrependHeaderFunc adds a header field at the top of the message whose
// value the function gives when the message is read (by a judge or the
// deliveries), not now: for a field that sums up what several
// sub-handlers record until the end of data, such as
// Authentication-Results. An empty value adds no field.
func (t *Transaction) PrependHeaderFunc(name string, value func() string) {
	t.edits = append(t.edits, headerEdit{op: opInsert, name: name, fn: value})
}

// DeleteHeaderWhere deletes every header field called name (no case)
// whose value (unfolded, trimmed) match takes, when the message is read:
// for fields the message must not keep, such as an Authentication-Results
// field that claims to be ours (RFC 8601 section 5).
func (t *Transaction) DeleteHeaderWhere(name string, match func(value string) bool) {
	t.edits = append(t.edits, headerEdit{op: opDeleteWhere, name: name, match: match})
}

// AppendHeader adds a header field after the last one (milter's "add
// header").
func (t *Transaction) AppendHeader(name, value string) { t.InsertHeader(-1, name, value) }

// InsertHeader adds a header field before the index-th field of the
// header as it is when the edit is applied (0: the top; the message's own
// fields follow our Received: field, index 0); an index past the end, or
// -1, appends (milter's "insert header").
func (t *Transaction) InsertHeader(index int, name, value string) {
	t.edits = append(t.edits, headerEdit{op: opInsert, index: index, name: name, value: value})
}

// ChangeHeader replaces the value of the n-th (from 1) field called name
// (case-insensitive); an empty value deletes it. When there is no such
// field, a non-empty value is appended as a new field (milter's "change
// header").
func (t *Transaction) ChangeHeader(name string, n int, value string) {
	t.edits = append(t.edits, headerEdit{op: opChange, name: name, n: n, value: value})
}

// DeleteHeader deletes the n-th (from 1) field called name.
func (t *Transaction) DeleteHeader(name string, n int) { t.ChangeHeader(name, n, "") }

// ReplaceBody replaces the message body (what follows the header and its
// blank line) with what r gives, read now into a spool of its own. It
// returns r's error, or nil. Without a spool (no sub-handler reads
// messages) it reads nothing and has no effect.
func (t *Transaction) ReplaceBody(r io.Reader) error {
	if t.sp == nil {
		return nil
	}
	if t.body != nil {
		t.body.release()
	}
	t.body = newSpool(t.sp.srv)
	buf := make([]byte, 32<<10)
	for {
		n, err := r.Read(buf)
		t.body.write(buf[:n])
		if err == io.EOF {
			return t.body.failure()
		}
		if err != nil {
			return err
		}
	}
}

// SetSender changes the envelope sender and its MAIL parameters (milter's
// "change sender").
func (t *Transaction) SetSender(from Path, params Params) {
	t.From, t.MailParams = from, params
	t.views = nil
}

// AddRecipient adds an envelope recipient (milter's "add recipient"). At
// end of data, a recipient that no delivery takes fails the message with
// 451 4.3.0: it is never dropped silently.
func (t *Transaction) AddRecipient(to Path, params Params) {
	t.Recipients = append(t.Recipients, Recipient{Path: to, Params: params})
	t.views = nil
}

// RemoveRecipient removes the recipients whose mailbox is mailbox (the
// domain compared without case) and reports whether there was one
// (milter's "delete recipient").
func (t *Transaction) RemoveRecipient(mailbox string) bool {
	kept := t.Recipients[:0]
	for _, r := range t.Recipients {
		if !sameMailbox(r.Path.Mailbox, mailbox) {
			kept = append(kept, r)
		}
	}
	removed := len(kept) < len(t.Recipients)
	clear(t.Recipients[len(kept):])
	t.Recipients = kept
	t.views = nil
	return removed
}

// sameMailbox compares local parts exactly and domains without case.
func sameMailbox(a, b string) bool {
	ai, bi := strings.LastIndexByte(a, '@'), strings.LastIndexByte(b, '@')
	if ai < 0 || bi < 0 {
		return a == b
	}
	return a[:ai] == b[:bi] && strings.EqualFold(a[ai+1:], b[bi+1:])
}

// Message returns the message as it is now (our Received: field first,
// every edit so far applied), or nil when it is not spooled: only when
// some sub-handler reads messages (MessageReader) does the engine keep
// it. Valid until the end of the transaction.
func (t *Transaction) Message() *Message {
	if t.sp == nil {
		return nil
	}
	return t.sp.message(t.edits, t.body)
}

// ReceivedMessage returns the message as it was received (our Received:
// field first), without any edit, or nil when it is not spooled: what a
// check of the sender's own data reads, such as DKIM verification, which
// an earlier judge's edit (a tag in the Subject) must not break.
func (t *Transaction) ReceivedMessage() *Message {
	if t.sp == nil {
		return nil
	}
	return t.sp.message(nil, nil)
}

// Message is a message ready to read: ranges of the spool and the bytes
// of added or changed fields, in order. Each Reader reads it from the
// start, so a delivery that retries reads it again.
type Message struct {
	segs []segment
	size int64
}

// segment is a range of a spool, literal bytes, or a range of a ReaderAt
// (a queued message: NewMessage).
type segment struct {
	sp  *spool
	off int64
	n   int64
	lit []byte
	ra  io.ReaderAt
}

// Size is the message's length in bytes.
func (m *Message) Size() int64 { return m.size }

// Reader returns a reader of the whole message from its start.
func (m *Message) Reader() io.Reader { return &messageReader{m: m} }

// WriteTo writes the whole message to w without copying it through a
// buffer of its own: the spool's memory chunks are written as they are,
// and a spool file is copied by the kernel where it can (copy_file_range
// or sendfile when w is a file or a socket).
func (m *Message) WriteTo(w io.Writer) (int64, error) {
	var total int64
	for _, s := range m.segs {
		var n int64
		var err error
		switch {
		case s.ra != nil:
			n, err = io.Copy(w, io.NewSectionReader(s.ra, s.off, s.n))
			if err == nil && n < s.n {
				err = io.ErrUnexpectedEOF
			}
		case s.sp == nil:
			var k int
			k, err = w.Write(s.lit[:s.n])
			n = int64(k)
		default:
			n, err = s.sp.writeTo(w, s.off, s.n)
		}
		total += n
		if err != nil {
			return total, err
		}
	}
	return total, nil
}

// Bytes returns the whole message in memory: for tests and small
// messages only.
func (m *Message) Bytes() ([]byte, error) { return io.ReadAll(m.Reader()) }

// messageReader reads a Message's segments in turn.
type messageReader struct {
	m   *Message
	seg int
	off int64 // within the segment
}

func (r *messageReader) Read(p []byte) (int, error) {
	for r.seg < len(r.m.segs) {
		s := &r.m.segs[r.seg]
		if r.off >= s.n {
			r.seg, r.off = r.seg+1, 0
			continue
		}
		want := min(int64(len(p)), s.n-r.off)
		var n int
		var err error
		switch {
		case s.ra != nil:
			n, err = s.ra.ReadAt(p[:want], s.off+r.off)
			if err == io.EOF && n > 0 {
				err = nil
			} else if err == io.EOF {
				err = io.ErrUnexpectedEOF
			}
		case s.sp == nil:
			n = copy(p[:want], s.lit[r.off:])
		default:
			n, err = s.sp.readAt(p[:want], s.off+r.off)
			if err == io.EOF && n > 0 {
				err = nil
			}
		}
		r.off += int64(n)
		if err != nil {
			return n, err
		}
		return n, nil
	}
	return 0, io.EOF
}

// field is one header field of the message being rendered: a range of
// the spool, or new bytes.
type field struct {
	name string
	ref  fieldRef
	raw  []byte
}

// valueOf returns a field's value, unfolded and trimmed.
func (sp *spool) valueOf(f field) string {
	raw := f.raw
	if raw == nil {
		raw = make([]byte, f.ref.n)
		if _, err := sp.readAt(raw, f.ref.off); err != nil {
			return ""
		}
	}
	n := FieldNameLen(raw)
	if n <= 0 {
		return ""
	}
	return unfold(raw[n+1:])
}

// message renders the spool with the header edits and the replaced body.
func (sp *spool) message(edits []headerEdit, body *spool) *Message {
	m := &Message{}
	add := func(s segment) {
		if s.n > 0 {
			m.segs = append(m.segs, s)
			m.size += s.n
		}
	}
	if len(edits) == 0 {
		add(segment{sp: sp, off: 0, n: sp.bodyOff})
	} else {
		fields := make([]field, len(sp.fields))
		for i, f := range sp.fields {
			fields[i] = field{name: f.name, ref: f}
		}
		for _, e := range edits {
			fields = applyEdit(sp, fields, e)
		}
		for _, f := range fields {
			if f.raw != nil {
				add(segment{lit: f.raw, n: int64(len(f.raw))})
			} else {
				add(segment{sp: sp, off: f.ref.off, n: f.ref.n})
			}
		}
		add(segment{sp: sp, off: sp.sepOff, n: sp.bodyOff - sp.sepOff})
	}
	if body != nil {
		if sp.bodyOff == sp.sepOff && body.size > 0 {
			add(segment{lit: crlf, n: 2}) // the body needs its blank line now
		}
		add(segment{sp: body, off: 0, n: body.size})
	} else {
		add(segment{sp: sp, off: sp.bodyOff, n: sp.size - sp.bodyOff})
	}
	return m
}

// applyEdit applies one header edit to the fields.
func applyEdit(sp *spool, fields []field, e headerEdit) []field {
	switch e.op {
	case opDeleteWhere:
		return slices.DeleteFunc(fields, func(f field) bool {
			return strings.EqualFold(f.name, e.name) && e.match(sp.valueOf(f))
		})
	case opInsert:
		value := e.value
		if e.fn != nil {
			if value = e.fn(); value == "" {
				return fields
			}
		}
		f := field{name: e.name, raw: renderField(e.name, value)}
		i := e.index
		if i < 0 || i > len(fields) {
			i = len(fields)
		}
		return append(fields[:i], append([]field{f}, fields[i:]...)...)
	case opChange:
		seen := 0
		for i, f := range fields {
			if !strings.EqualFold(f.name, e.name) {
				continue
			}
			if seen++; seen != e.n {
				continue
			}
			if e.value == "" {
				return append(fields[:i], fields[i+1:]...)
			}
			fields[i] = field{name: f.name, raw: renderField(f.name, e.value)}
			return fields
		}
		if e.value != "" {
			return append(fields, field{name: e.name, raw: renderField(e.name, e.value)})
		}
	}
	return fields
}

// renderField makes "name: value" CRLF, keeping folding (a line break
// followed by white space, as milters send it) and turning any other line
// break or control character into a space, so an edit can never add a
// field or end the header.
func renderField(name, value string) []byte {
	name = Sanitize(strings.TrimSpace(name), 0)
	value = strings.TrimLeft(strings.ReplaceAll(value, "\r\n", "\n"), " \t")
	b := make([]byte, 0, len(name)+len(value)+4)
	b = append(b, name...)
	b = append(b, ':', ' ')
	for i := 0; i < len(value); i++ {
		c := value[i]
		switch {
		case c == '\n' && i+1 < len(value) && (value[i+1] == ' ' || value[i+1] == '\t'):
			b = append(b, '\r', '\n')
		case c < 0x20 && c != '\t', c == 0x7f:
			b = append(b, ' ')
		default:
			b = append(b, c)
		}
	}
	return append(b, '\r', '\n')
}
