// Package auth is the sub-handler esmtp.handlers.auth: SMTP AUTH (RFC 4954)
// with the PLAIN and LOGIN mechanisms against accounts whose passwords are
// hashed as for Caddy's basic_auth (`caddy hash-password`: bcrypt or
// argon2id). AUTH is offered only over TLS unless allow_insecure_auth is set.
//
// Other sub-handlers can verify credentials their own way by implementing
// session.AuthHook themselves, as this one does.
package auth

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp/caddyauth"
	"golang.org/x/crypto/bcrypt"

	"github.com/caddy-esmtp/caddy-esmtp/session"
)

func init() {
	caddy.RegisterModule(&Auth{})
}

// Auth verifies AUTH PLAIN and AUTH LOGIN against a list of accounts.
type Auth struct {
	// Accounts are the users that may authenticate.
	Accounts []Account `json:"accounts,omitempty"`
	// AllowInsecureAuth offers AUTH on connections without TLS too. Only
	// for tests or a trusted network: passwords then cross it in clear.
	AllowInsecureAuth bool `json:"allow_insecure_auth,omitempty"`

	hashes map[string][]byte
	fake   []byte // an account's hash, compared for unknown users
}

// Account is one user.
type Account struct {
	// Username is the login name, compared exactly.
	Username string `json:"username"`
	// Password is the password hash, as printed by `caddy hash-password`
	// (bcrypt "$2a$..." or argon2id "$argon2id$...").
	Password string `json:"password"`
}

// CaddyModule returns the Caddy module information.
func (*Auth) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "esmtp.handlers.auth",
		New: func() caddy.Module { return new(Auth) },
	}
}

// Provision checks the accounts.
func (a *Auth) Provision(caddy.Context) error {
	if len(a.Accounts) == 0 {
		return errors.New("auth: accounts: at least one account is required")
	}
	a.hashes = map[string][]byte{}
	for i, acct := range a.Accounts {
		if acct.Username == "" {
			return fmt.Errorf("auth: accounts[%d].username is empty", i)
		}
		if _, dup := a.hashes[acct.Username]; dup {
			return fmt.Errorf("auth: accounts[%d].username %q appears twice", i, acct.Username)
		}
		if !validHash(acct.Password) {
			return fmt.Errorf("auth: accounts[%d].password for %q is not a bcrypt or argon2id hash (make one with `caddy hash-password`)", i, acct.Username)
		}
		a.hashes[acct.Username] = []byte(acct.Password)
	}
	a.fake = []byte(a.Accounts[0].Password)
	return nil
}

// comparer picks the hash algorithm from the hash's own prefix.
func comparer(hash string) caddyauth.Comparer {
	switch {
	case strings.HasPrefix(hash, "$2a$"), strings.HasPrefix(hash, "$2b$"), strings.HasPrefix(hash, "$2y$"):
		return caddyauth.BcryptHash{}
	case strings.HasPrefix(hash, "$argon2id$"):
		return caddyauth.Argon2idHash{}
	}
	return nil
}

// validHash reports whether hash parses as a bcrypt or argon2id hash, so a
// damaged one fails at provision time rather than at every login. It costs
// no hashing.
func validHash(hash string) bool {
	switch comparer(hash).(type) {
	case caddyauth.BcryptHash:
		_, err := bcrypt.Cost([]byte(hash))
		return err == nil
	case caddyauth.Argon2idHash:
		_, _, err := caddyauth.DecodeHash([]byte(hash))
		return err == nil
	}
	return false
}

// AuthMechanisms offers PLAIN and LOGIN over TLS (or anywhere with
// allow_insecure_auth).
func (a *Auth) AuthMechanisms(s *session.Session) []string {
	if s.TLS() == nil && !a.AllowInsecureAuth {
		return nil
	}
	return []string{"PLAIN", "LOGIN"}
}

// Authenticate checks the password. An unknown user costs the same hash
// comparison as a known one (with an account's own algorithm and cost), so
// timing does not tell which users exist.
func (a *Auth) Authenticate(_ context.Context, _ *session.Session, _, identity, username, password string) (bool, error) {
	if identity != "" && identity != username {
		return false, nil // no proxy authorization
	}
	hash, known := a.hashes[username]
	if !known {
		hash = a.fake
	}
	ok, err := comparer(string(hash)).Compare(hash, []byte(password))
	if err != nil {
		return false, err
	}
	return ok && known, nil
}

// UnmarshalCaddyfile sets up the sub-handler from Caddyfile tokens. Syntax,
// as Caddy's basic_auth:
//
//	auth {
//		allow_insecure_auth
//		<username> <hashed_password>
//		...
//	}
func (a *Auth) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // the sub-handler name
	if d.NextArg() {
		return d.ArgErr()
	}
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		if d.Val() == "allow_insecure_auth" {
			if d.NextArg() {
				return d.ArgErr()
			}
			if a.AllowInsecureAuth {
				return d.Err("auth: allow_insecure_auth: given twice")
			}
			a.AllowInsecureAuth = true
			continue
		}
		user := d.Val()
		var hash string
		if !d.Args(&hash) || d.NextArg() {
			return d.Errf("auth: expected <username> <hashed_password>, got %q", user)
		}
		a.Accounts = append(a.Accounts, Account{Username: user, Password: hash})
	}
	if len(a.Accounts) == 0 {
		return d.Err("auth: at least one <username> <hashed_password> is required")
	}
	return nil
}

// Interface guards
var (
	_ caddy.Provisioner     = (*Auth)(nil)
	_ caddyfile.Unmarshaler = (*Auth)(nil)
	_ session.AuthHook      = (*Auth)(nil)
)
