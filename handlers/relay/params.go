package relay

import (
	"strconv"
	"strings"

	"github.com/emersion/go-smtp"

	"github.com/caddy-esmtp/caddy-esmtp/session"
)

var dsnKeyword = []string{"DSN"}

// Extensions advertises DSN (RFC 3461).
func (r *Relay) Extensions(*session.Session) []string { return dsnKeyword }

// mailOptions are the MAIL parameters passed upstream from the client's
// params: SIZE (size, when not 0), SMTPUTF8 (when utf8), DSN's RET and
// ENVID, and AUTH (the SMTP client sends BODY=8BITMIME by itself when the
// upstream offers it, and SIZE, DSN and AUTH only when it offers them).
// authenticated tells whether the client authenticated.
func mailOptions(params session.Params, size int64, utf8, authenticated bool) *smtp.MailOptions {
	o := &smtp.MailOptions{UTF8: utf8, Size: size}
	if v, ok := params.Get("AUTH"); ok {
		a := authMailbox(v, authenticated)
		o.Auth = &a
	}
	if v, ok := params.Get("RET"); ok {
		o.Return = smtp.DSNReturn(strings.ToUpper(v))
	}
	if v, ok := params.Get("ENVID"); ok {
		if id, err := session.DecodeXtext(v); err == nil && printable(id) {
			o.EnvelopeID = id
		}
	}
	return o
}

// authMailbox is the AUTH= mailbox passed upstream for the client's AUTH=
// value v (xtext) (RFC 4954 section 5): the client's mailbox when the
// client authenticated, and <> ("not known") when it did not, since then
// nothing vouches for it, or when v is not an ASCII mailbox.
func authMailbox(v string, authenticated bool) string {
	if !authenticated {
		return "<>"
	}
	m, err := session.DecodeXtext(v)
	if err != nil || m == "<>" || !isASCII(m) {
		return "<>"
	}
	p, params, err := session.ParsePathArg("<"+m+">", false, false)
	if err != nil || len(params) > 0 || p.Mailbox != m {
		return "<>"
	}
	return m
}

// declaredSize is the client's SIZE= parameter, or 0.
func declaredSize(params session.Params) int64 {
	v, _ := params.Get("SIZE")
	n, _ := strconv.ParseInt(v, 10, 64)
	return max(n, 0)
}

// rcptOptions are DSN's NOTIFY and ORCPT for the upstream.
func rcptOptions(params session.Params) *smtp.RcptOptions {
	o := &smtp.RcptOptions{}
	if v, ok := params.Get("NOTIFY"); ok {
		for n := range strings.SplitSeq(strings.ToUpper(v), ",") {
			o.Notify = append(o.Notify, smtp.DSNNotify(n))
		}
	}
	if v, ok := params.Get("ORCPT"); ok {
		typ, addr, _ := strings.Cut(v, ";")
		decoded, err := session.DecodeXtext(addr)
		switch {
		case err != nil:
		case strings.EqualFold(typ, "rfc822") && printable(decoded):
			o.OriginalRecipientType, o.OriginalRecipient = smtp.DSNAddressTypeRFC822, decoded
		case strings.EqualFold(typ, "utf-8"):
			if u, ok := decodeUTF8Addr(decoded); ok {
				o.OriginalRecipientType, o.OriginalRecipient = smtp.DSNAddressTypeUTF8, u
			}
		}
	}
	return o
}

// printable reports whether v is printable US-ASCII, as ENVID and an
// rfc822 ORCPT must be (RFC 3461 4.2, 4.4).
func printable(v string) bool {
	for i := 0; i < len(v); i++ {
		if v[i] < ' ' || v[i] > '~' {
			return false
		}
	}
	return true
}

// decodeUTF8Addr decodes the \x{HEX} escapes of a utf-8-addr (RFC 6533).
func decodeUTF8Addr(v string) (string, bool) {
	var b strings.Builder
	for i := 0; i < len(v); i++ {
		if v[i] == '\\' && strings.HasPrefix(v[i:], `\x{`) {
			end := strings.IndexByte(v[i:], '}')
			if end < 0 {
				return "", false
			}
			n, err := strconv.ParseUint(v[i+3:i+end], 16, 32)
			if err != nil || n < 0x20 || n > 0x10FFFF {
				return "", false
			}
			b.WriteRune(rune(n))
			i += end
			continue
		}
		b.WriteByte(v[i])
	}
	return b.String(), true
}
