package relay

import (
	"bytes"
	"io"
)

// canonWriter turns every line ending of the message into CRLF on its way
// to the upstream: CRLF stays, a bare CR and a bare LF each become CRLF. The
// engine hands over CRLF-only data already (a bare line ending is refused
// or, with bare_line_endings normalize, already turned into CRLF), so this
// is a second guard: whatever reaches the relay, no bare CR or LF leaves it,
// and the upstream cannot read a line ending, let alone an end of data,
// that we did not (SMTP smuggling). Dot-stuffing is done after it, by the
// SMTP client's dot writer.
type canonWriter struct {
	w   io.Writer
	cr  bool // the last write ended in a CR whose LF may follow
	err error
}

var crlf = []byte("\r\n")

// Write writes p with canonical line endings. It keeps the first error.
func (c *canonWriter) Write(p []byte) error {
	for len(p) > 0 && c.err == nil {
		if c.cr {
			c.cr = false
			c.put(crlf)
			if p[0] == '\n' {
				p = p[1:]
			}
			continue
		}
		i := bytes.IndexAny(p, "\r\n")
		if i < 0 {
			c.put(p)
			return c.err
		}
		c.put(p[:i])
		if p[i] == '\r' {
			c.cr = true // decided by the next byte, which may be in the next write
			p = p[i+1:]
			continue
		}
		c.put(crlf) // a bare LF
		p = p[i+1:]
	}
	return c.err
}

// Flush ends a pending CR at the end of the message.
func (c *canonWriter) Flush() error {
	if c.cr {
		c.cr = false
		c.put(crlf)
	}
	return c.err
}

func (c *canonWriter) put(b []byte) {
	if c.err == nil && len(b) > 0 {
		_, c.err = c.w.Write(b)
	}
}
