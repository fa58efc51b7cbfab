package milter

import (
	"crypto/tls"
	"net"
	"net/netip"
	"strconv"
	"strings"

	gomilter "github.com/d--j/go-milter"

	"github.com/caddy-esmtp/caddy-esmtp/session"
)

// The macros (Sendmail's names, as Postfix sends them) and the stages
// they go at, unless a milter asks for others in its negotiation.
// Postfix's defaults (milter_*_macros) plus the client's address macros
// at connect.
var defaultMacros = map[gomilter.MacroStage][]string{
	gomilter.StageConnect: {"j", "{daemon_name}", "{daemon_addr}", "{daemon_port}", "v", "_",
		"{client_addr}", "{client_port}", "{client_name}", "{client_ptr}"},
	gomilter.StageHelo: {"{tls_version}", "{cipher}", "{cipher_bits}", "{cert_subject}", "{cert_issuer}"},
	gomilter.StageMail: {"i", "{auth_type}", "{auth_authen}", "{auth_author}", "{mail_addr}", "{mail_host}", "{mail_mailer}"},
	gomilter.StageRcpt: {"i", "{rcpt_addr}", "{rcpt_host}", "{rcpt_mailer}"},
	gomilter.StageData: {"i"},
	gomilter.StageEOH:  {"i"},
	gomilter.StageEOM:  {"i"},
}

// mtaVersion is the "v" macro.
const mtaVersion = "caddy-esmtp"

// macros is a session's macro values (go-milter's Macros): only those
// set are sent.
type macros map[string]string

// Get returns the value of a macro, "" when unset.
func (m macros) Get(name string) string { return m[name] }

// GetEx returns the value of a macro and whether it is set.
func (m macros) GetEx(name string) (string, bool) {
	v, ok := m[name]
	return v, ok
}

// set sets a macro, or unsets it for an empty value.
func (m macros) set(name, value string) {
	if value == "" {
		delete(m, name)
		return
	}
	m[name] = value
}

// hostPort splits a TCP address.
func hostPort(a net.Addr) (netip.Addr, int, bool) {
	if ta, ok := a.(*net.TCPAddr); ok {
		ip, ok := netip.AddrFromSlice(ta.IP)
		return ip.Unmap(), ta.Port, ok
	}
	if a == nil {
		return netip.Addr{}, 0, false
	}
	ap, err := netip.ParseAddrPort(a.String())
	if err != nil {
		return netip.Addr{}, 0, false
	}
	return ap.Addr().Unmap(), int(ap.Port()), true
}

// connectInfo is what SMFIC_CONNECT says about the client: its name
// (the address in brackets, as without a verified reverse name), family,
// port and address.
func connectInfo(s *session.Session) (string, gomilter.ProtoFamily, uint16, string) {
	if ip, port, ok := hostPort(s.RemoteAddr()); ok {
		if ip.Is4() {
			return "[" + ip.String() + "]", gomilter.FamilyInet, uint16(port), ip.String()
		}
		return "[IPv6:" + ip.String() + "]", gomilter.FamilyInet6, uint16(port), ip.String()
	}
	if ua, ok := s.RemoteAddr().(*net.UnixAddr); ok {
		return "localhost", gomilter.FamilyUnix, 0, ua.Name
	}
	return "unknown", gomilter.FamilyUnknown, 0, ""
}

// setConnect sets the connect stage's macros.
func setConnect(m macros, s *session.Session, daemonName string) {
	m.set("j", s.Hostname())
	m.set("{daemon_name}", daemonName)
	m.set("v", mtaVersion)
	if ip, port, ok := hostPort(s.LocalAddr()); ok {
		m.set("{daemon_addr}", ip.String())
		m.set("{daemon_port}", strconv.Itoa(port))
	}
	name, _, port, addr := connectInfo(s)
	m.set("{client_addr}", addr)
	if port != 0 {
		m.set("{client_port}", strconv.Itoa(int(port)))
	}
	// No reverse lookup is made: the names are "unknown", as Postfix's
	// for a client without a (verified) name.
	m.set("{client_name}", "unknown")
	m.set("{client_ptr}", "unknown")
	if addr != "" {
		m.set("_", "unknown "+name)
	} else {
		m.set("_", "unknown")
	}
}

// setHelo sets the TLS macros Postfix sends at HELO.
func setHelo(m macros, s *session.Session) {
	for _, k := range []string{"{tls_version}", "{cipher}", "{cipher_bits}", "{cert_subject}", "{cert_issuer}"} {
		delete(m, k)
	}
	st := s.TLS()
	if st == nil {
		return
	}
	v := tls.VersionName(st.Version) // "TLS 1.3"
	m.set("{tls_version}", strings.Replace(v, "TLS ", "TLSv", 1))
	cipher := tls.CipherSuiteName(st.CipherSuite)
	m.set("{cipher}", cipher)
	bits := ""
	switch {
	case strings.Contains(cipher, "AES_128"):
		bits = "128"
	case strings.Contains(cipher, "AES_256"), strings.Contains(cipher, "CHACHA20"):
		bits = "256"
	}
	m.set("{cipher_bits}", bits)
	if len(st.PeerCertificates) > 0 {
		c := st.PeerCertificates[0]
		m.set("{cert_subject}", c.Subject.String())
		m.set("{cert_issuer}", c.Issuer.String())
	}
}

// setMail sets the MAIL stage's macros (and clears the RCPT ones).
func setMail(m macros, s *session.Session, from session.Path, params session.Params) {
	txn := s.Transaction()
	id := ""
	if txn != nil {
		id = txn.ID
	}
	m.set("i", id)
	user := s.AuthUser()
	m.set("{auth_authen}", user)
	if user != "" {
		// The engine does not say which mechanism was used; milters look
		// at whether the macro is set (OpenDKIM, rspamd).
		m.set("{auth_type}", "PLAIN")
	} else {
		m.set("{auth_type}", "")
	}
	author, _ := params.Get("AUTH")
	if author == "<>" {
		author = ""
	}
	m.set("{auth_author}", strings.Trim(author, "<>"))
	m.set("{mail_addr}", from.Mailbox)
	m.set("{mail_host}", domainOf(from.Mailbox))
	mailer := "smtp"
	if from.IsNull() {
		mailer = "error"
	}
	m.set("{mail_mailer}", mailer)
	for _, k := range []string{"{rcpt_addr}", "{rcpt_host}", "{rcpt_mailer}"} {
		delete(m, k)
	}
}

// setRcpt sets the RCPT stage's macros.
func setRcpt(m macros, to session.Path) {
	m.set("{rcpt_addr}", to.Mailbox)
	m.set("{rcpt_host}", domainOf(to.Mailbox))
	m.set("{rcpt_mailer}", "smtp")
}

// domainOf is the domain of a mailbox, "" for none.
func domainOf(mailbox string) string {
	if i := strings.LastIndexByte(mailbox, '@'); i >= 0 {
		return mailbox[i+1:]
	}
	return ""
}
