package filtertest

import (
	"fmt"
	"net"
	"os"
	"path/filepath"
	"testing"
)

// OpenDKIMOptions configures the OpenDKIM that OpenDKIM starts.
type OpenDKIMOptions struct {
	// Domain, Selector and KeyPEM are the signing domain, the selector
	// and the private key (PEM): mail from Domain is signed when the
	// client is one of the internal hosts (127.0.0.1, OpenDKIM's default)
	// or authenticated.
	Domain, Selector string
	KeyPEM           []byte
	// DNS is the address (127.0.0.1:port) of the DNS server OpenDKIM
	// asks for public keys to verify with: OpenDKIM's Nameservers option
	// takes port 53 only, so its resolver (libunbound) is given a
	// configuration (ResolverConfiguration) that forwards every query
	// there.
	DNS string
	// AuthservID is the authserv-id of its Authentication-Results fields.
	AuthservID string
}

// OpenDKIM starts OpenDKIM (Debian package opendkim) as a signing and
// verifying milter on a unix socket in its private directory, as the
// user opendkim when the tests run as root, and returns its address for
// the milter sub-handler ("unix:/path"). It is stopped when the test
// ends.
func OpenDKIM(tb testing.TB, o OpenDKIMOptions) string {
	tb.Helper()
	prog := Program(tb, "opendkim", "opendkim")
	acct := AccountFor(tb, "opendkim")
	dir := Dir(tb, acct)
	write := func(name, text string, mode os.FileMode) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(text), mode); err != nil {
			tb.Fatal(err)
		}
		Own(tb, acct, p)
		return p
	}
	// The key is under /tmp, which others may write: RequireSafeKeys is
	// off (the file itself is 0600, the user's own).
	key := write("signing.key", string(o.KeyPEM), 0o600)
	host, port, err := net.SplitHostPort(o.DNS)
	if err != nil {
		tb.Fatalf("OpenDKIM: DNS %q: %v", o.DNS, err)
	}
	unbound := write("unbound.conf", fmt.Sprintf(`server:
	do-not-query-localhost: no
	module-config: "iterator"
	use-syslog: no
	chroot: ""
	username: ""
	directory: %q
forward-zone:
	name: "."
	forward-addr: %s@%s
`, dir, host, port), 0o644)
	// A unix socket in its private directory: a TCP port found free a
	// moment ago may be taken by another test's program before OpenDKIM
	// binds it, and the test would then talk to that one.
	sock := filepath.Join(dir, "milter.sock")
	conf := write("opendkim.conf", fmt.Sprintf(`Syslog no
LogResults yes
Background no
Mode sv
Socket local:%s
Domain %s
Selector %s
KeyFile %s
AuthservID %s
ResolverConfiguration %s
Canonicalization relaxed/relaxed
SignatureAlgorithm rsa-sha256
RequireSafeKeys false
`, sock, o.Domain, o.Selector, key, o.AuthservID, unbound), 0o644)
	cmd := Command(acct, prog, "-f", "-x", conf)
	cmd.Dir = dir
	Start(tb, cmd, MilterConnects("unix", sock))
	return "unix:" + sock
}
