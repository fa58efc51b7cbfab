package policy

import (
	"crypto/sha256"
	"crypto/tls"
	"net"
	"strconv"
	"strings"

	"github.com/caddy-esmtp/caddy-esmtp/session"
)

// The request: Postfix's SMTPD_POLICY_README attributes, "name=value"
// lines ended by an empty line. Every attribute is sent, empty when we do
// not know it (postgrey, for one, answers DUNNO to a request without
// client_name, sender or recipient).

// maxValue bounds one attribute value, in bytes.
const maxValue = 1000

// Stages: the `at` values and the protocol_state each sends.
const (
	atMail      = "mail"
	atRcpt      = "rcpt"
	atData      = "data"
	atEndOfData = "end_of_data"
)

var protocolStates = map[string]string{
	atMail:      "MAIL",
	atRcpt:      "RCPT",
	atData:      "DATA",
	atEndOfData: "END-OF-MESSAGE",
}

// request builds the request for the sub-handler's stage; rcpt is the
// recipient at RCPT, nil at the other stages.
func (p *Policy) request(s *session.Session, rcpt *session.Path) []byte {
	txn := s.Transaction()
	b := make([]byte, 0, 1024)
	add := func(name, value string) {
		b = append(b, name...)
		b = append(b, '=')
		b = appendValue(b, value)
		b = append(b, '\n')
	}
	add("request", "smtpd_access_policy")
	add("protocol_state", protocolStates[p.At])
	proto := "SMTP"
	if s.Extended() {
		proto = "ESMTP"
	}
	add("protocol_name", proto)
	add("helo_name", s.Helo())
	var queueID, sender, recipient, size, saslSender string
	count := 0
	if txn != nil {
		queueID = txn.ID
		sender = txn.From.Mailbox
		size = "0"
		for _, prm := range txn.MailParams {
			switch prm.Key {
			case "SIZE":
				size = prm.Value
			case "AUTH":
				if prm.Value != "<>" {
					saslSender = xtextDecode(prm.Value)
				}
			}
		}
		switch {
		case rcpt != nil:
			recipient = rcpt.Mailbox
		case len(txn.Recipients) == 1:
			// Postfix: at DATA and END-OF-MESSAGE only when there is one.
			recipient = txn.Recipients[0].Path.Mailbox
		}
		if p.At == atData || p.At == atEndOfData {
			count = len(txn.Recipients)
		}
		if p.At == atEndOfData {
			size = strconv.FormatInt(txn.Size, 10)
		}
	}
	add("queue_id", queueID)
	add("sender", sender)
	add("recipient", recipient)
	add("recipient_count", strconv.Itoa(count))
	clientAddr, clientPort := hostPort(s.RemoteAddr())
	if ip := s.RemoteIP(); ip.IsValid() {
		clientAddr = ip.String()
	}
	add("client_address", clientAddr)
	// The engine does no reverse DNS: "unknown" is what Postfix sends
	// for a client whose name it could not find.
	add("client_name", "unknown")
	add("reverse_client_name", "unknown")
	add("instance", queueID)
	user := s.AuthUser()
	if user == "" {
		saslSender = ""
	}
	add("sasl_method", "") // the engine does not record the mechanism
	add("sasl_username", user)
	add("sasl_sender", saslSender)
	add("size", size)
	var subject, issuer, fingerprint, pubkey, protocol, cipher, keysize string
	if cs := s.TLS(); cs != nil {
		protocol, cipher, keysize = tlsVersion(cs.Version), tls.CipherSuiteName(cs.CipherSuite), cipherBits(cs.CipherSuite)
		if len(cs.PeerCertificates) > 0 {
			c := cs.PeerCertificates[0]
			subject, issuer = c.Subject.CommonName, c.Issuer.CommonName
			fingerprint, pubkey = colonHex(sha256.Sum256(c.Raw)), colonHex(sha256.Sum256(c.RawSubjectPublicKeyInfo))
		}
	}
	add("ccert_subject", subject)
	add("ccert_issuer", issuer)
	add("ccert_fingerprint", fingerprint)
	add("ccert_pubkey_fingerprint", pubkey)
	add("encryption_protocol", protocol)
	add("encryption_cipher", cipher)
	add("encryption_keysize", keysize)
	add("etrn_domain", "")
	add("stress", "")
	add("client_port", clientPort)
	add("policy_context", p.PolicyContext)
	serverAddr, serverPort := hostPort(s.LocalAddr())
	add("server_address", serverAddr)
	add("server_port", serverPort)
	return append(b, '\n')
}

// appendValue appends v with every control byte (CR, LF, NUL, ...)
// replaced by '?', so that a value can never end its line or the
// request; UTF-8 is kept (SMTPUTF8 addresses). At most maxValue bytes.
func appendValue(b []byte, v string) []byte {
	if len(v) > maxValue {
		v = v[:maxValue]
	}
	for i := 0; i < len(v); i++ {
		c := v[i]
		if c < 0x20 || c == 0x7f {
			c = '?'
		}
		b = append(b, c)
	}
	return b
}

// hostPort splits an address into its host and port, or gives the whole
// address and no port (a unix socket).
func hostPort(a net.Addr) (string, string) {
	if a == nil {
		return "", ""
	}
	switch a := a.(type) {
	case *net.TCPAddr:
		ip := a.IP
		if v4 := ip.To4(); v4 != nil {
			ip = v4
		}
		return ip.String(), strconv.Itoa(a.Port)
	}
	h, port, err := net.SplitHostPort(a.String())
	if err != nil {
		return a.String(), ""
	}
	return h, port
}

// tlsVersion names a TLS version as Postfix does ("TLSv1.3").
func tlsVersion(v uint16) string {
	switch v {
	case tls.VersionTLS10:
		return "TLSv1"
	case tls.VersionTLS11:
		return "TLSv1.1"
	case tls.VersionTLS12:
		return "TLSv1.2"
	case tls.VersionTLS13:
		return "TLSv1.3"
	}
	return tls.VersionName(v)
}

// cipherBits is the symmetric key size of a cipher suite, in bits.
func cipherBits(id uint16) string {
	name := tls.CipherSuiteName(id)
	switch {
	case strings.Contains(name, "AES_128"):
		return "128"
	case strings.Contains(name, "AES_256"), strings.Contains(name, "CHACHA20"):
		return "256"
	case strings.Contains(name, "3DES"):
		return "168"
	}
	return ""
}

// colonHex renders a digest as upper-case hex pairs joined by colons.
func colonHex(sum [32]byte) string {
	const digits = "0123456789ABCDEF"
	b := make([]byte, 0, len(sum)*3)
	for i, c := range sum {
		if i > 0 {
			b = append(b, ':')
		}
		b = append(b, digits[c>>4], digits[c&15])
	}
	return string(b)
}

// xtextDecode decodes RFC 3461 xtext ("+XX" hex escapes); a malformed
// escape is kept as it is.
func xtextDecode(v string) string {
	if !strings.Contains(v, "+") {
		return v
	}
	var b strings.Builder
	for i := 0; i < len(v); i++ {
		if v[i] == '+' && i+2 < len(v) {
			if n, err := strconv.ParseUint(v[i+1:i+3], 16, 8); err == nil {
				b.WriteByte(byte(n))
				i += 2
				continue
			}
		}
		b.WriteByte(v[i])
	}
	return b.String()
}
