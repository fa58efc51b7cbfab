package webhook

import (
	"bufio"
	"bytes"
	"io"
	"unicode/utf8"

	"github.com/caddy-esmtp/caddy-esmtp/session"
)

// jsonEncoder is the json format of a message, encoded as it is read:
// from a reader of the final message, it splits the header section into
// fields as the engine does (the same names, values unfolded and trimmed
// the same way, the same end of the header section) and writes them and
// the body as JSON strings. It holds at most one header field, one read
// buffer and the encoding of one of them, never the whole message.
type jsonEncoder struct {
	r     *bufio.Reader
	state int
	out   []byte // encoded bytes not yet taken
	off   int    // how much of out was taken
	line  []byte // the header line being read
	field []byte // the header field being read, until the next line shows it is complete
	n     int    // header fields written
	buf   []byte // body bytes read
	carry []byte // an incomplete UTF-8 sequence at the end of a body read
	err   error
}

// The states of a jsonEncoder.
const (
	inHeader = iota
	inBody
	encoded
)

// jsonReadSize is the size of the encoder's reads of the message.
const jsonReadSize = 32 << 10

// newJSONEncoder encodes the message msg with env, the envelope object
// already encoded.
func newJSONEncoder(env []byte, msg io.Reader) *jsonEncoder {
	e := &jsonEncoder{r: bufio.NewReaderSize(msg, jsonReadSize)}
	e.out = append(e.out, `{"envelope":`...)
	e.out = append(e.out, env...)
	e.out = append(e.out, `,"headers":[`...)
	return e
}

// Read reads the encoding.
func (e *jsonEncoder) Read(p []byte) (int, error) {
	for e.off == len(e.out) {
		if e.err != nil {
			return 0, e.err
		}
		if e.state == encoded {
			return 0, io.EOF
		}
		e.out, e.off = e.out[:0], 0
		e.step()
	}
	n := copy(p, e.out[e.off:])
	e.off += n
	return n, nil
}

// WriteTo writes the rest of the encoding to w.
func (e *jsonEncoder) WriteTo(w io.Writer) (int64, error) {
	var total int64
	for {
		if e.off < len(e.out) {
			n, err := w.Write(e.out[e.off:])
			total += int64(n)
			e.off += n
			if err != nil {
				return total, err
			}
		}
		if e.err != nil {
			return total, e.err
		}
		if e.state == encoded {
			return total, nil
		}
		e.out, e.off = e.out[:0], 0
		e.step()
	}
}

// step encodes what the next read of the message gives.
func (e *jsonEncoder) step() {
	switch e.state {
	case inHeader:
		line, err := e.readLine()
		switch {
		case err == io.EOF: // the message ends in its header section
			e.flushField()
			e.endHeader()
			e.text(line) // a last line without CRLF is body, as the engine has it (BDAT)
			e.end()
		case err != nil:
			e.err = err
		default:
			e.headerLine(line)
		}
	case inBody:
		if e.buf == nil {
			e.buf = make([]byte, jsonReadSize)
		}
		n, err := e.r.Read(e.buf)
		e.text(e.buf[:n])
		switch {
		case err == io.EOF:
			e.end()
		case err != nil:
			e.err = err
		}
	}
}

// readLine reads one line, its LF included; at the end of the message it
// returns what is left (maybe nothing) with io.EOF.
func (e *jsonEncoder) readLine() ([]byte, error) {
	e.line = e.line[:0]
	for {
		b, err := e.r.ReadSlice('\n')
		e.line = append(e.line, b...)
		if err != bufio.ErrBufferFull {
			return e.line, err
		}
	}
}

// headerLine handles one complete line of the header section, as the
// engine's assembler does.
func (e *jsonEncoder) headerLine(line []byte) {
	switch {
	case len(line) == 2: // the blank line
		e.flushField()
		e.endHeader()
	case (line[0] == ' ' || line[0] == '\t') && len(e.field) > 0:
		e.field = append(e.field, line...)
	case session.FieldNameLen(line) > 0:
		e.flushField()
		e.field = append(e.field, line...)
	default: // not a header field: the body starts with this line
		e.flushField()
		e.endHeader()
		e.text(line)
	}
}

// flushField writes the header field read so far, if any, as a JSON
// object.
func (e *jsonEncoder) flushField() {
	if len(e.field) == 0 {
		return
	}
	n := session.FieldNameLen(e.field)
	if e.n > 0 {
		e.out = append(e.out, ',')
	}
	e.n++
	e.out = append(e.out, `{"name":"`...)
	e.text(e.field[:n])
	e.flushText()
	e.out = append(e.out, `","value":"`...)
	e.text(unfold(e.field[n+1:]))
	e.flushText()
	e.out = append(e.out, `"}`...)
	e.field = e.field[:0]
}

// unfold removes the CRLFs of folding and trims surrounding white space,
// as the engine does for session.HeaderField.Value.
func unfold(v []byte) []byte {
	v = bytes.TrimRight(v, "\r\n")
	if bytes.Contains(v, []byte("\r\n")) {
		v = bytes.ReplaceAll(v, []byte("\r\n"), nil)
	}
	return bytes.Trim(v, " \t")
}

// endHeader ends the header list and starts the body string.
func (e *jsonEncoder) endHeader() {
	e.out = append(e.out, `],"body":"`...)
	e.state = inBody
}

// end ends the body string and the object.
func (e *jsonEncoder) end() {
	e.flushText()
	e.out = append(e.out, `"}`...)
	e.state = encoded
}

// text writes p as the inside of a JSON string. A UTF-8 sequence cut at
// the end of p is kept until the next call; bytes that are not UTF-8
// become \ufffd.
func (e *jsonEncoder) text(p []byte) {
	for len(e.carry) > 0 {
		if utf8.FullRune(e.carry) {
			r, size := utf8.DecodeRune(e.carry)
			e.rune(r, e.carry[:size])
			e.carry = append(e.carry[:0], e.carry[size:]...)
			continue
		}
		if len(p) == 0 {
			return
		}
		e.carry = append(e.carry, p[0])
		p = p[1:]
	}
	for len(p) > 0 {
		// The run of bytes that need no escaping, written at once.
		i := 0
		for i < len(p) && p[i] >= 0x20 && p[i] < utf8.RuneSelf && p[i] != '"' && p[i] != '\\' {
			i++
		}
		if i > 0 {
			e.out = append(e.out, p[:i]...)
			p = p[i:]
			continue
		}
		if !utf8.FullRune(p) {
			e.carry = append(e.carry[:0], p...)
			return
		}
		r, size := utf8.DecodeRune(p)
		e.rune(r, p[:size])
		p = p[size:]
	}
}

// flushText writes what text kept of a cut UTF-8 sequence: at the end of a
// string it can never be completed.
func (e *jsonEncoder) flushText() {
	for len(e.carry) > 0 {
		r, size := utf8.DecodeRune(e.carry)
		e.rune(r, e.carry[:size])
		e.carry = e.carry[size:]
	}
	e.carry = e.carry[:0]
}

// rune writes one decoded rune (raw: its bytes) escaped for JSON.
func (e *jsonEncoder) rune(r rune, raw []byte) {
	switch {
	case r == utf8.RuneError && len(raw) == 1:
		e.out = append(e.out, `\ufffd`...)
	case r == '"':
		e.out = append(e.out, `\"`...)
	case r == '\\':
		e.out = append(e.out, `\\`...)
	case r == '\n':
		e.out = append(e.out, `\n`...)
	case r == '\r':
		e.out = append(e.out, `\r`...)
	case r == '\t':
		e.out = append(e.out, `\t`...)
	case r < 0x20:
		const hexDigits = "0123456789abcdef"
		e.out = append(e.out, '\\', 'u', '0', '0', hexDigits[r>>4], hexDigits[r&0xf])
	default:
		e.out = append(e.out, raw...)
	}
}
