package milter

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sync"
	"time"
)

// The milter connection as go-milter's client reads it: every packet the
// milter sends passes through wireConn, which checks its length (the
// library would take up to 512 MiB) and, at end of message, takes the
// body replacement packets (SMFIR_REPLBODY) out of the stream into a
// bodySink. So a replaced body of any size is streamed to memory, then a
// file, instead of being held whole in the library's list of modify
// actions, and is applied only once the milter's whole answer is read
// and checked (a milter that dies halfway leaves the message as it was).

// maxPacket is the largest packet a milter may send: a body chunk of the
// largest negotiable size (1 MiB), or a header field, with room to spare.
const maxPacket = 2 << 20

// codeReplBody is SMFIR_REPLBODY.
const codeReplBody = 'b'

var errPacketSize = errors.New("milter sent a packet of an invalid length")

// wireConn is a milter connection whose reads go packet by packet.
type wireConn struct {
	net.Conn
	timeout time.Duration // per packet, as the library sets it

	pending []byte    // what is left of the current packet for the library
	sink    *bodySink // non-nil: SMFIR_REPLBODY packets go there

	closeOnce sync.Once
	closeErr  error
}

// Close closes the connection once (a hook context's cancellation and
// the session's end may both close it).
func (c *wireConn) Close() error {
	c.closeOnce.Do(func() { c.closeErr = c.Conn.Close() })
	return c.closeErr
}

// Read gives the library the milter's packets, less the diverted ones.
func (c *wireConn) Read(p []byte) (int, error) {
	for len(c.pending) == 0 {
		var hdr [5]byte
		if _, err := io.ReadFull(c.Conn, hdr[:4]); err != nil {
			return 0, err
		}
		n := binary.BigEndian.Uint32(hdr[:4])
		if n == 0 || n > maxPacket {
			return 0, fmt.Errorf("%w: %d bytes", errPacketSize, n)
		}
		if _, err := io.ReadFull(c.Conn, hdr[4:]); err != nil {
			return 0, err
		}
		if c.sink != nil && hdr[4] == codeReplBody {
			if _, err := io.CopyN(c.sink, c.Conn, int64(n-1)); err != nil {
				return 0, err
			}
			c.sink.used = true
			// The next packet gets its own time, as each packet does.
			if c.timeout > 0 {
				_ = c.Conn.SetReadDeadline(time.Now().Add(c.timeout))
			}
			continue
		}
		buf := make([]byte, 5+int(n-1))
		copy(buf, hdr[:])
		if _, err := io.ReadFull(c.Conn, buf[5:]); err != nil {
			return 0, err
		}
		c.pending = buf
	}
	n := copy(p, c.pending)
	c.pending = c.pending[n:]
	return n, nil
}

// memBody is how much of a replaced body is kept in memory before the
// rest goes to an unlinked temporary file.
const memBody = 1 << 20

// bodySink collects a replaced body with its line ends made CRLF (bare
// LF and bare CR become CRLF, as Postfix's cleanup stores lines), in
// memory up to memBody, then in an unlinked temporary file.
type bodySink struct {
	mem  bytes.Buffer
	file *os.File
	cr   bool // the last byte written was CR
	last byte
	n    int64
	used bool // a SMFIR_REPLBODY came (even an empty one)
	out  []byte
}

// Write takes a piece of the body.
func (b *bodySink) Write(p []byte) (int, error) {
	out := b.out[:0]
	for _, c := range p {
		if b.cr && c != '\n' {
			out = append(out, '\n')
		}
		if c == '\n' && !b.cr {
			out = append(out, '\r')
		}
		out = append(out, c)
		b.cr = c == '\r'
	}
	b.out = out
	if err := b.write(out); err != nil {
		return 0, err
	}
	return len(p), nil
}

func (b *bodySink) write(p []byte) error {
	if len(p) == 0 {
		return nil
	}
	b.n += int64(len(p))
	b.last = p[len(p)-1]
	if b.file == nil && b.mem.Len()+len(p) <= memBody {
		b.mem.Write(p)
		return nil
	}
	if b.file == nil {
		f, err := os.CreateTemp("", "esmtp-milter-body-")
		if err != nil {
			return err
		}
		_ = os.Remove(f.Name()) // unlinked: gone with the last descriptor
		b.file = f
		if _, err := f.Write(b.mem.Bytes()); err != nil {
			return err
		}
		b.mem = bytes.Buffer{}
	}
	_, err := b.file.Write(p)
	return err
}

// Reader ends the body (a last line end where it lacks one) and returns
// a reader of it from its start.
func (b *bodySink) Reader() (io.Reader, error) {
	if b.cr {
		b.cr = false
		if err := b.write([]byte{'\n'}); err != nil {
			return nil, err
		}
	} else if b.n > 0 && b.last != '\n' {
		if err := b.write([]byte("\r\n")); err != nil {
			return nil, err
		}
	}
	if b.file == nil {
		return bytes.NewReader(b.mem.Bytes()), nil
	}
	if _, err := b.file.Seek(0, io.SeekStart); err != nil {
		return nil, err
	}
	return b.file, nil
}

// Close frees the file, if any.
func (b *bodySink) Close() {
	if b.file != nil {
		b.file.Close()
		b.file = nil
	}
}
