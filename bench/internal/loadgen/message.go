package loadgen

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"strings"
)

// lineText is one body line: 78 printable characters, then CRLF (80 bytes).
// No line starts with '.', so the message needs no dot-stuffing and its size
// on the wire is exactly its size.
var lineText = strings.Repeat("0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ-", 2)[:78]

// prebuiltMax is the largest message held whole in memory; larger ones are
// generated while they are written, so a 1 GiB message costs the generator
// only its block.
const prebuiltMax = 16 << 20

// Message is a test message of an exact size (header and body, CRLF line
// ends, without the terminating "." line).
type Message struct {
	size   int64
	header []byte
	whole  []byte // the message, when size <= prebuiltMax
	block  []byte // whole body lines, repeated for large messages
	// idOff is where the 8 hex digits of a numbered Message-ID start in
	// header (NewNumberedMessage), 0 if the message is not numbered.
	idOff int
}

// NewMessage returns a message of size bytes from from to to. Sizes below
// the header's length are raised to it plus one empty body line.
func NewMessage(size int64, from, to string) *Message {
	return newMessage(size, from, to, fmt.Sprintf("bench-%d", size))
}

// NewNumberedMessage is NewMessage whose Message-ID is
// <bench-PREFIX-NNNNNNNN@example.test>, NNNNNNNN the 8 hex digits of the
// number WriteNumbered is given: every message sent gets its own
// Message-ID, of a fixed width (the size stays exact), so a receiver can
// tell a duplicate. prefix is 1 to 32 letters and digits.
func NewNumberedMessage(size int64, from, to, prefix string) (*Message, error) {
	if len(prefix) == 0 || len(prefix) > 32 || strings.IndexFunc(prefix, func(r rune) bool {
		return !(r >= '0' && r <= '9' || r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z')
	}) >= 0 {
		return nil, fmt.Errorf("message id prefix %q: want 1 to 32 letters and digits", prefix)
	}
	m := newMessage(size, from, to, "bench-"+prefix+"-00000000")
	m.idOff = bytes.Index(m.header, []byte("<bench-"+prefix+"-")) + len("<bench-"+prefix+"-")
	return m, nil
}

func newMessage(size int64, from, to, idLocal string) *Message {
	h := fmt.Sprintf("From: <%s>\r\nTo: <%s>\r\nSubject: bench %d bytes\r\n"+
		"Message-ID: <%s@example.test>\r\nDate: Thu, 1 Jan 2026 00:00:00 +0000\r\n"+
		"MIME-Version: 1.0\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\n",
		from, to, size, idLocal)
	m := &Message{header: []byte(h)}
	if size < int64(len(h))+2 {
		size = int64(len(h)) + 2
	}
	m.size = size
	line := lineText + "\r\n"
	m.block = []byte(strings.Repeat(line, (64<<10)/len(line)))
	if size <= prebuiltMax {
		var b strings.Builder
		b.Grow(int(size))
		b.Write(m.header)
		w := &stringSink{&b}
		m.writeBody(w)
		m.whole = []byte(b.String())
	}
	return m
}

// MessageFromBytes returns a message that is b exactly (a whole message,
// CRLF line ends, no end-of-data line): for a message prepared outside,
// such as a DKIM-signed one. It refuses a message that would need
// dot-stuffing or is not CRLF-terminated, since it is written as it is.
func MessageFromBytes(b []byte) (*Message, error) {
	if len(b) < 2 || !bytes.HasSuffix(b, []byte("\r\n")) {
		return nil, errors.New("message must end with CRLF")
	}
	if bytes.HasPrefix(b, []byte(".")) || bytes.Contains(b, []byte("\n.")) {
		return nil, errors.New("message has a line starting with '.' (it is sent without dot-stuffing)")
	}
	if len(b) > prebuiltMax {
		return nil, errors.New("message larger than 16 MiB")
	}
	return &Message{size: int64(len(b)), whole: b}, nil
}

// Bytes is the whole message, nil for one larger than 16 MiB.
func (m *Message) Bytes() []byte { return m.whole }

// Size is the message's size in bytes.
func (m *Message) Size() int64 { return m.size }

type byteWriter interface {
	Write(p []byte) (int, error)
}

type stringSink struct{ b *strings.Builder }

func (s *stringSink) Write(p []byte) (int, error) { return s.b.Write(p) }

// WriteTo writes the message to w (header, body, no end-of-data line).
func (m *Message) WriteTo(w *bufio.Writer) error {
	if m.whole != nil {
		_, err := w.Write(m.whole)
		return err
	}
	if _, err := w.Write(m.header); err != nil {
		return err
	}
	return m.writeBody(w)
}

// WriteNumbered writes the message like WriteTo, with n as the number in
// its Message-ID when it is numbered (NewNumberedMessage).
func (m *Message) WriteNumbered(w *bufio.Writer, n uint32) error {
	if m.idOff == 0 {
		return m.WriteTo(w)
	}
	const hexd = "0123456789abcdef"
	var num [8]byte
	for i := range num {
		num[7-i] = hexd[n>>(4*i)&0xf]
	}
	w.Write(m.header[:m.idOff])
	w.Write(num[:])
	if _, err := w.Write(m.header[m.idOff+8:]); err != nil {
		return err
	}
	if m.whole != nil {
		_, err := w.Write(m.whole[len(m.header):])
		return err
	}
	return m.writeBody(w)
}

// writeBody writes size-len(header) body bytes: whole blocks, then a last
// line cut to length and ended with CRLF.
func (m *Message) writeBody(w byteWriter) error {
	rest := m.size - int64(len(m.header))
	for rest > int64(len(m.block)) {
		if _, err := w.Write(m.block); err != nil {
			return err
		}
		rest -= int64(len(m.block))
	}
	// rest <= len(block) and rest >= 2: block[:rest-2] then CRLF. A cut
	// just after a CR would leave a bare CR: replace it with text.
	cut := int(rest - 2)
	tail := make([]byte, 0, rest)
	tail = append(tail, m.block[:cut]...)
	if cut > 0 && tail[cut-1] == '\r' {
		tail[cut-1] = 'x'
	}
	tail = append(tail, '\r', '\n')
	_, err := w.Write(tail)
	return err
}
