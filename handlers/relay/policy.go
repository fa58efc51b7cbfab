package relay

import (
	"github.com/caddy-esmtp/caddy-esmtp/internal/clientnet"
	"github.com/caddy-esmtp/caddy-esmtp/session"
)

// permitted reports whether the relay may forward for to (see the package
// documentation).
func (r *Relay) permitted(s *session.Session, to session.Path) bool {
	if r.domains != nil && to.Domain != "" && r.domains.Match(to.Local, matchDomain(to.Domain)) {
		return true
	}
	if s.AuthUser() != "" {
		return true
	}
	return clientnet.Contains(r.nets, s.RemoteIP())
}
