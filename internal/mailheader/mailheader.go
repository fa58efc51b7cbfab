// Package mailheader reads the header fields of a message from a reader,
// one field at a time and within a bound, for the sub-handlers that look
// at a few fields of the final message (dkim, dkim_sign). It splits the
// header the way go-msgauth's DKIM code does (every line up to the first
// empty one; a line that starts with white space continues the field
// before it), so that the n-th DKIM-Signature field here is the n-th one
// there.
package mailheader

import (
	"bufio"
	"io"
	"strings"
)

// MaxField is the longest field Scan gives whole, in bytes; a longer one
// is given cut, with Field.Truncated set.
const MaxField = 64 << 10

// Field is one header field.
type Field struct {
	// Name is the field name, white space around it removed.
	Name string
	// Value is the value, unfolded (line breaks removed) and trimmed.
	Value string
	// Truncated is set when the field was longer than MaxField: Value is
	// then its start only.
	Truncated bool
}

// Scan reads the header of the message r gives, up to the first empty
// line or the end, and calls fn for each field in order until fn returns
// false. It returns r's error, if any (io.EOF is not one).
func Scan(r io.Reader, fn func(Field) bool) error {
	br := bufio.NewReaderSize(r, 4096)
	var cur []byte // the field being read, line breaks removed
	truncated, have := false, false
	flush := func() bool {
		if !have {
			return true
		}
		have = false
		name, value, _ := strings.Cut(string(cur), ":")
		return fn(Field{Name: strings.TrimSpace(name), Value: strings.TrimSpace(value), Truncated: truncated})
	}
	for {
		line, err := readLine(br)
		if err != nil && len(line) == 0 {
			flush()
			if err == io.EOF {
				return nil
			}
			return err
		}
		if len(line) == 0 && err == nil {
			flush()
			return nil
		}
		if !have || (line[0] != ' ' && line[0] != '\t') {
			if !flush() {
				return nil
			}
			cur, truncated, have = cur[:0], false, true
		}
		if room := MaxField - len(cur); len(line) > room {
			line, truncated = line[:room], true
		}
		cur = append(cur, line...)
		if err != nil { // the last line, without a line end
			flush()
			if err == io.EOF {
				return nil
			}
			return err
		}
	}
}

// readLine reads one line without its line end ("\r\n" or "\n"), keeping
// at most MaxField+1 bytes of it (the rest is read and dropped). At the
// end of r it returns what is left and io.EOF.
func readLine(br *bufio.Reader) ([]byte, error) {
	var line []byte
	for {
		chunk, err := br.ReadSlice('\n')
		if len(line) <= MaxField {
			line = append(line, chunk[:min(len(chunk), MaxField+1-len(line))]...)
		}
		switch err {
		case bufio.ErrBufferFull:
			continue
		case nil:
			if len(line) <= MaxField || line[len(line)-1] == '\n' {
				line = trimEOL(line)
			}
			return line, nil
		default:
			return line, err
		}
	}
}

// trimEOL removes a final "\n" or "\r\n".
func trimEOL(b []byte) []byte {
	if n := len(b); n > 0 && b[n-1] == '\n' {
		b = b[:n-1]
		if n := len(b); n > 0 && b[n-1] == '\r' {
			b = b[:n-1]
		}
	}
	return b
}
