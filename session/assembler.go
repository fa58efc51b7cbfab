package session

import (
	"bytes"
	"context"
)

// assembler splits decoded message bytes into header fields, the end of the
// header section and body chunks, and hands them to the sub-handlers as they
// arrive. It holds at most one header field (bounded by MaxHeaderSize), one
// partial header line and one body chunk.
type assembler struct {
	s        *Session
	ctx      context.Context
	stream   bool // some sub-handler wants the content
	inHeader bool
	line     []byte // the header line being read, until its CRLF
	field    []byte // the header field being read, until the next line shows it is complete
	chunk    []byte // body bytes not yet given to BodyHook
	size     int64  // client's message bytes so far
	tooBig   bool
	failure  error // first sub-handler error, or a *Reply

	sp         *spool // the transaction's spool, or nil
	prefix     int64  // spool bytes before the client's (Received: and added fields)
	pos        int64  // client bytes the header parser has taken
	fieldStart int64  // client offset of the field being read
}

func (a *assembler) reset(s *Session, ctx context.Context, sp *spool) {
	a.s, a.ctx = s, ctx
	a.stream = s.srv.hooks.streams()
	a.inHeader = true
	a.line, a.field = reuse(a.line), reuse(a.field)
	a.releaseChunk()
	a.size, a.tooBig, a.failure = 0, false, nil
	a.sp, a.pos, a.fieldStart = sp, 0, 0
	if sp != nil {
		a.prefix = sp.size
	}
}

// addedField spools a field that precedes the client's message (our
// Received:, fields added before the data) and gives it to the header
// hooks.
func (a *assembler) addedField(h HeaderField) {
	if a.sp != nil {
		a.sp.addField(h.Name, a.sp.size, int64(len(h.Raw)))
		a.sp.write(h.Raw)
		a.prefix = a.sp.size
	}
	a.s.emitHeader(a, h)
}

// reuse empties a header buffer for the next message, dropping it when an
// earlier message made it large (up to MaxHeaderSize), so that a session
// does not hold that memory for the rest of its life.
func reuse(b []byte) []byte {
	if cap(b) > 64<<10 {
		return nil
	}
	return b[:0]
}

func (a *assembler) failed() bool { return a.tooBig || a.failure != nil }

// write implements dataSink.
func (a *assembler) write(p []byte) {
	a.size += int64(len(p))
	if a.size > a.s.cfg.MaxMessageSize {
		a.tooBig = true
	}
	if !a.stream || a.failed() {
		return
	}
	if a.sp != nil {
		a.sp.write(p)
	}
	for len(p) > 0 && a.inHeader {
		p = a.headerBytes(p)
	}
	if len(p) > 0 {
		a.bodyBytes(p)
	}
}

// headerBytes takes bytes in the header section up to the end of one line
// and returns the rest.
func (a *assembler) headerBytes(p []byte) []byte {
	i := bytes.IndexByte(p, '\n')
	if i < 0 {
		a.line = append(a.line, p...)
		if len(a.line) > a.s.cfg.MaxHeaderSize {
			a.fail(errHeaderTooBig)
		}
		return nil
	}
	a.line = append(a.line, p[:i+1]...)
	rest := p[i+1:]
	a.headerLine(a.line)
	a.line = a.line[:0]
	return rest
}

// headerLine handles one complete line (with CRLF) of the header section.
func (a *assembler) headerLine(line []byte) {
	start := a.pos
	a.pos += int64(len(line))
	switch {
	case len(line) == 2: // the blank line
		a.flushField()
		a.endHeaders(crlf, start)
	case (line[0] == ' ' || line[0] == '\t') && len(a.field) > 0:
		a.field = append(a.field, line...)
		if len(a.field) > a.s.cfg.MaxHeaderSize {
			a.fail(errHeaderTooBig)
		}
	case FieldNameLen(line) > 0:
		a.flushField()
		a.field = append(a.field, line...)
		a.fieldStart = start
	default: // not a header field: the body starts with this line
		a.flushField()
		a.endHeaders(nil, start)
		a.bodyBytes(line)
	}
}

// FieldNameLen returns the length of the field name if line starts with
// "name:" (RFC 5322 ftext: printable ASCII except ':'), else 0: how the
// engine tells a header field from the first line of the body, for a
// sub-handler that splits a message the same way.
func FieldNameLen(line []byte) int {
	for i, c := range line {
		if c == ':' {
			return i
		}
		if c < 33 || c > 126 {
			return 0
		}
	}
	return 0
}

func (a *assembler) flushField() {
	if len(a.field) == 0 || a.failed() {
		a.field = a.field[:0]
		return
	}
	n := FieldNameLen(a.field)
	h := HeaderField{
		Name:  string(a.field[:n]),
		Value: unfold(a.field[n+1:]),
		Raw:   a.field,
	}
	if a.sp != nil {
		if err := a.sp.addField(h.Name, a.prefix+a.fieldStart, int64(len(a.field))); err != nil {
			a.fail(err)
		}
	}
	a.s.emitHeader(a, h)
	a.field = a.field[:0]
}

// unfold removes the CRLFs of folding and trims surrounding white space.
func unfold(v []byte) string {
	v = bytes.TrimRight(v, "\r\n")
	if bytes.Contains(v, crlf) {
		v = bytes.ReplaceAll(v, crlf, nil)
	}
	return string(bytes.Trim(v, " \t"))
}

// endHeaders ends the header section, whose blank line (raw, or none)
// starts at client offset at.
func (a *assembler) endHeaders(raw []byte, at int64) {
	a.inHeader = false
	if a.sp != nil {
		a.sp.sepOff = a.prefix + at
		a.sp.bodyOff = a.sp.sepOff + int64(len(raw))
	}
	if !a.failed() {
		a.s.emitEndOfHeaders(a, raw)
	}
}

func (a *assembler) bodyBytes(p []byte) {
	if len(a.s.srv.hooks.body) == 0 {
		return
	}
	max := a.s.cfg.ChunkSize
	for len(p) > 0 && !a.failed() {
		if len(a.chunk) == 0 && len(p) >= max {
			a.s.emitBody(a, p[:max])
			p = p[max:]
			continue
		}
		if a.chunk == nil {
			a.chunk = a.s.srv.getChunk()
		}
		n := min(max-len(a.chunk), len(p))
		a.chunk = append(a.chunk, p[:n]...)
		p = p[n:]
		if len(a.chunk) == max {
			a.s.emitBody(a, a.chunk)
			a.chunk = a.chunk[:0]
		}
	}
}

// finish flushes what is pending at the end of data.
func (a *assembler) finish() {
	if !a.stream || a.failed() {
		return
	}
	if a.inHeader {
		if len(a.line) > 0 { // a last line without CRLF (BDAT only)
			a.flushField()
			a.endHeaders(nil, a.pos)
			a.bodyBytes(a.line)
			a.line = a.line[:0]
		} else {
			a.flushField()
			a.endHeaders(nil, a.pos)
		}
	}
	if len(a.chunk) > 0 && !a.failed() {
		a.s.emitBody(a, a.chunk)
	}
	a.releaseChunk()
}

// releaseChunk gives the body chunk buffer back to the server's pool, so an
// idle session holds none.
func (a *assembler) releaseChunk() {
	if a.chunk != nil {
		a.s.srv.putChunk(a.chunk)
		a.chunk = nil
	}
}

func (a *assembler) fail(err error) {
	if a.failure == nil {
		a.failure = err
	}
}

var errHeaderTooBig = NewReply(552, "5.3.4", "Message header field too large")
