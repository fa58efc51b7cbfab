package session

import "bytes"

// Message data decoding: DATA (dot-stuffed, ended by CRLF.CRLF) and BDAT
// (exact byte counts). The decoder is a byte-level state machine that never
// treats anything but CRLF as a line end and nothing but <CRLF>.<CRLF> as
// the end of data, so a bare LF or bare CR can never end a message or start
// a smuggled command (SMTP smuggling, 2023).

// decodeState is where the decoder is within a line.
type decodeState uint8

const (
	stLineStart decodeState = iota // after CRLF (or the first byte of data)
	stText                         // inside a line
	stCR                           // a CR was seen inside a line, not yet emitted
	stDot                          // a '.' at line start (DATA only)
	stDotCR                        // ".\r" at line start (DATA only)
)

// dataProblem is the first reason a message's content is refused.
type dataProblem uint8

const (
	problemNone dataProblem = iota
	problemBareCR
	problemBareLF
	problemNUL
	problemLongLine
)

func (p dataProblem) String() string {
	return [...]string{"", "bare CR", "bare LF", "NUL byte", "line too long"}[p]
}

// dataSink receives decoded message bytes: dot-unstuffed, CRLF line ends.
type dataSink interface {
	write(p []byte)
}

var crlf = []byte("\r\n")

// decoder turns raw DATA or BDAT bytes into message bytes.
type decoder struct {
	dot       bool // DATA mode: dot-stuffing and the end sequence
	normalize bool // turn bare CR / bare LF into CRLF instead of refusing
	maxLine   int
	state     decodeState
	lineLen   int
	problem   dataProblem
}

func (d *decoder) reset(dot, normalize bool, maxLine int) {
	*d = decoder{dot: dot, normalize: normalize, maxLine: maxLine}
}

func (d *decoder) flag(p dataProblem) {
	if d.problem == problemNone {
		d.problem = p
	}
}

// bare handles a bare CR or LF inside text: refused, or turned into CRLF.
// The decoder stays inside a line either way: a bare line ending never
// starts a line for dot-unstuffing or for the end sequence.
func (d *decoder) bare(p dataProblem, out dataSink) {
	if d.normalize {
		if d.problem == problemNone {
			out.write(crlf)
		}
		d.lineLen = 0
		return
	}
	d.flag(p)
}

// decode consumes in, writes message bytes to out and returns how many bytes
// of in it used and whether the end of data (<CRLF>.<CRLF>) was reached; the
// bytes after the end are not consumed. After a problem is flagged nothing
// more is written, but decoding goes on to find the real end.
func (d *decoder) decode(in []byte, out dataSink) (n int, end bool) {
	i := 0
	for i < len(in) {
		switch d.state {
		case stText:
			// The run of plain bytes up to the next CR, LF or NUL, found
			// with vectorised scans (LF and NUL are rare, CR ends lines).
			seg := in[i:]
			if k := bytes.IndexByte(seg, '\r'); k >= 0 {
				seg = seg[:k]
			}
			if k := bytes.IndexByte(seg, '\n'); k >= 0 {
				seg = seg[:k]
			}
			if k := bytes.IndexByte(seg, 0); k >= 0 {
				seg = seg[:k]
			}
			j := i + len(seg)
			if j > i {
				d.lineLen += j - i
				if d.lineLen > d.maxLine {
					d.flag(problemLongLine)
				}
				if d.problem == problemNone {
					out.write(in[i:j])
				}
				i = j
				if i == len(in) {
					return i, false
				}
			}
			c := in[i]
			i++
			switch c {
			case '\r':
				d.state = stCR
			case '\n':
				d.bare(problemBareLF, out)
			default:
				d.flag(problemNUL)
			}
		case stCR:
			if in[i] == '\n' {
				i++
				if d.problem == problemNone {
					out.write(crlf)
				}
				d.lineLen = 0
				d.state = stLineStart
				continue
			}
			// CR not followed by LF: a bare CR. The next byte (even
			// another CR) is read afresh, so CR CR LF is one bare CR
			// then a CRLF, never merged.
			d.bare(problemBareCR, out)
			d.state = stText
		case stLineStart:
			if d.dot && in[i] == '.' {
				i++
				d.state = stDot
				continue
			}
			d.state = stText
		case stDot:
			// The leading dot is removed (RFC 5321 4.5.2).
			if in[i] == '\r' {
				i++
				d.state = stDotCR
				continue
			}
			d.state = stText
		case stDotCR:
			if in[i] == '\n' {
				return i + 1, true
			}
			d.bare(problemBareCR, out)
			d.state = stText
		}
	}
	return i, false
}

// finishChunks is called after the last BDAT chunk: a CR left pending at the
// very end is a bare CR.
func (d *decoder) finishChunks(out dataSink) {
	if d.state == stCR {
		d.bare(problemBareCR, out)
		d.state = stText
	}
}
