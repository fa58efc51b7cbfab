package milter_test

import (
	"encoding/binary"
	"io"
	"net"
	"testing"
)

// fakeMilter is a milter that speaks the protocol's framing but answers
// what behave says to each command code (nil: close the connection), for
// the failures no real milter makes on purpose.
func fakeMilter(t *testing.T, behave func(code byte) []byte) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				for {
					var hdr [5]byte
					if _, err := io.ReadFull(c, hdr[:]); err != nil {
						return
					}
					n := binary.BigEndian.Uint32(hdr[:4])
					if _, err := io.CopyN(io.Discard, c, int64(n-1)); err != nil {
						return
					}
					switch hdr[4] {
					case 'O': // negotiation: version 6, no actions, every stage
						c.Write(packet('O', 0, 0, 0, 6, 0, 0, 0, 0, 0, 0, 0, 0))
					case 'D': // macros: no answer
					default:
						out := behave(hdr[4])
						if out == nil {
							return
						}
						c.Write(out)
					}
				}
			}()
		}
	}()
	return l.Addr().String()
}

func packet(code byte, data ...byte) []byte {
	p := binary.BigEndian.AppendUint32(nil, uint32(len(data)+1))
	return append(append(p, code), data...)
}

// TestFailingMilter: a milter that answers garbage, dies or sends a reply
// code that is not a refusal gets on_error (tempfail: 421 at connect, 451
// after), never a silent pass; with on_error accept the mail goes on.
func TestFailingMilter(t *testing.T) {
	cont := packet('c')
	for _, c := range []struct {
		name, onError string
		behave        func(byte) []byte
		greeting      string // the reply to the connection
		ehlo, mail    string
	}{
		{"garbage at connect", "", func(byte) []byte { return []byte("HELLO WORLD\r\n") }, "421 ", "", ""},
		{"unknown answer", "", func(byte) []byte { return packet('!') }, "421 ", "", ""},
		{"dies at MAIL", "", func(code byte) []byte {
			if code == 'C' || code == 'H' {
				return cont
			}
			return nil
		}, "220 ", "250", "451 4.7.1"},
		{"250 as a reply code", "", func(code byte) []byte {
			if code == 'M' {
				return packet('y', []byte("250 2.0.0 fine\x00")...)
			}
			return cont
		}, "220 ", "250", "451 4.7.1"},
		{"mismatched reply lines", "reject", func(code byte) []byte {
			if code == 'M' {
				return packet('y', []byte("550-5.7.1 a\r\n450 4.7.1 b\x00")...)
			}
			return cont
		}, "220 ", "250", "550 5.7.1 Command rejected"},
		{"dies, fail open", "accept", func(code byte) []byte {
			if code == 'C' {
				return cont
			}
			return nil
		}, "220 ", "250", "250"},
	} {
		t.Run(c.name, func(t *testing.T) {
			addr := fakeMilter(t, c.behave)
			opt := ""
			if c.onError != "" {
				opt = "on_error " + c.onError
			}
			srv, _ := startCaddy(t, `
				milter `+addr+` {
					`+opt+`
				}
				maildir %DIR%/mail
			`)
			cl := dial(t, srv)
			cl.expect(c.greeting)
			if c.ehlo == "" {
				return
			}
			cl.cmd("EHLO client.example.test", c.ehlo)
			cl.cmd("MAIL FROM:<alice@example.test>", c.mail)
			// A failed milter answers the rest of the session the same.
			cl.cmd("MAIL FROM:<alice@example.test>", map[bool]string{true: "503", false: c.mail}[c.mail == "250"])
		})
	}
}
