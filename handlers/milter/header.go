package milter

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"strings"

	"github.com/caddy-esmtp/caddy-esmtp/session"
)

// maxLine bounds one line of the header read for the milter (the engine
// bounds header fields while receiving; this is a second fence).
const maxLine = 4 << 20

var errLongLine = errors.New("header line too long")

// headerReader splits a message into its header fields, keeping their
// folding, and the body after them.
type headerReader struct {
	br      *bufio.Reader
	pending []byte // a line read ahead: the next field, the blank line or the body's start
	start   []byte // the body's first line when the header ended without a blank line
	done    bool
}

func newHeaderReader(r io.Reader) *headerReader {
	return &headerReader{br: bufio.NewReaderSize(r, 64<<10)}
}

// readLine reads one line with its line end (none at the end of input).
func (h *headerReader) readLine() ([]byte, error) {
	if h.pending != nil {
		l := h.pending
		h.pending = nil
		return l, nil
	}
	var line []byte
	for {
		frag, err := h.br.ReadSlice('\n')
		line = append(line, frag...)
		if len(line) > maxLine {
			return nil, errLongLine
		}
		if err == bufio.ErrBufferFull {
			continue
		}
		if err == io.EOF {
			return line, nil
		}
		return line, err
	}
}

// next returns the next header field: its name and its value as the
// milter protocol has it (what follows the colon, folding kept with LF
// line breaks as Postfix sends them, no final line end); ok is false at
// the end of the header.
func (h *headerReader) next() (name, value string, ok bool, err error) {
	if h.done {
		return "", "", false, nil
	}
	line, err := h.readLine()
	if err != nil {
		return "", "", false, err
	}
	if len(line) == 0 || string(line) == "\r\n" || string(line) == "\n" {
		h.done = true
		return "", "", false, nil
	}
	n := session.FieldNameLen(line)
	if n <= 0 {
		h.done, h.start = true, line
		return "", "", false, nil
	}
	field := append([]byte(nil), line...)
	for {
		l, err := h.readLine()
		if err != nil {
			return "", "", false, err
		}
		if len(l) > 0 && (l[0] == ' ' || l[0] == '\t') {
			if len(field)+len(l) > maxLine {
				return "", "", false, errLongLine
			}
			field = append(field, l...)
			continue
		}
		if len(l) > 0 {
			h.pending = l
		}
		break
	}
	v := strings.ReplaceAll(string(field[n+1:]), "\r\n", "\n")
	return string(bytes.TrimSpace(field[:n])), strings.TrimRight(v, "\r\n"), true, nil
}

// body returns the body: what follows the header.
func (h *headerReader) body() io.Reader {
	var rs []io.Reader
	if h.pending != nil { // not reached: next reads until the header ends
		rs = append(rs, bytes.NewReader(h.pending))
		h.pending = nil
	}
	if h.start != nil {
		rs = append(rs, bytes.NewReader(h.start))
	}
	return io.MultiReader(append(rs, h.br)...)
}
