package webhook

import (
	"unicode/utf8"

	"github.com/caddy-esmtp/caddy-esmtp/session"
)

// header writes one header field as a JSON object.
func (sp *spool) header(h session.HeaderField) {
	if sp.n > 0 {
		sp.writeString(`,`)
	}
	sp.n++
	sp.writeString(`{"name":"`)
	sp.text([]byte(h.Name))
	sp.flushText()
	sp.writeString(`","value":"`)
	sp.text([]byte(h.Value))
	sp.flushText()
	sp.writeString(`"}`)
}

// text writes p as the inside of a JSON string. A UTF-8 sequence cut at
// the end of p is kept until the next call; bytes that are not UTF-8
// become \ufffd.
func (sp *spool) text(p []byte) {
	for len(sp.carry) > 0 {
		if utf8.FullRune(sp.carry) {
			r, size := utf8.DecodeRune(sp.carry)
			sp.rune(r, sp.carry[:size])
			sp.carry = append(sp.carry[:0], sp.carry[size:]...)
			continue
		}
		if len(p) == 0 {
			return
		}
		sp.carry = append(sp.carry, p[0])
		p = p[1:]
	}
	for len(p) > 0 {
		// The run of bytes that need no escaping, written at once.
		i := 0
		for i < len(p) && p[i] >= 0x20 && p[i] < utf8.RuneSelf && p[i] != '"' && p[i] != '\\' {
			i++
		}
		if i > 0 {
			sp.write(p[:i])
			p = p[i:]
			continue
		}
		if !utf8.FullRune(p) {
			sp.carry = append(sp.carry[:0], p...)
			return
		}
		r, size := utf8.DecodeRune(p)
		sp.rune(r, p[:size])
		p = p[size:]
	}
}

// flushText writes what text kept of a cut UTF-8 sequence: at the end of a
// string it can never be completed.
func (sp *spool) flushText() {
	for len(sp.carry) > 0 {
		r, size := utf8.DecodeRune(sp.carry)
		sp.rune(r, sp.carry[:size])
		sp.carry = sp.carry[size:]
	}
	sp.carry = sp.carry[:0]
}

// rune writes one decoded rune (raw: its bytes) escaped for JSON.
func (sp *spool) rune(r rune, raw []byte) {
	switch {
	case r == utf8.RuneError && len(raw) == 1:
		sp.writeString(`\ufffd`)
	case r == '"':
		sp.writeString(`\"`)
	case r == '\\':
		sp.writeString(`\\`)
	case r == '\n':
		sp.writeString(`\n`)
	case r == '\r':
		sp.writeString(`\r`)
	case r == '\t':
		sp.writeString(`\t`)
	case r < 0x20:
		const hexDigits = "0123456789abcdef"
		sp.esc = [6]byte{'\\', 'u', '0', '0', hexDigits[r>>4], hexDigits[r&0xf]}
		sp.write(sp.esc[:])
	default:
		sp.write(raw)
	}
}
