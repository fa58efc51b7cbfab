package filtertest

import (
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"testing"
)

// Postgrey is a running postgrey (Debian package postgrey), the
// greylisting policy server for Postfix, started by StartPostgrey.
type Postgrey struct {
	*Process
	// Addr is where it listens: 127.0.0.1:port.
	Addr string
	// Delay is its greylisting delay in seconds: a retry of a triplet is
	// accepted once this many seconds (of postgrey's whole-second clock)
	// have passed since its first try.
	Delay int
}

// StartPostgrey starts postgrey on a free loopback port with its
// database in a private directory, greylisting for delay seconds (1 or
// more: postgrey takes 0 as its default, 300), with no whitelist and no
// automatic whitelisting of clients, so that every new triplet is
// greylisted. As root it runs as the postgrey user; otherwise as the
// current user (given to --user and --group either way). It is stopped when the test ends.
func StartPostgrey(tb testing.TB, delay int) *Postgrey {
	tb.Helper()
	if delay < 1 {
		tb.Fatalf("postgrey: delay %d: must be 1 or more", delay)
	}
	prog := Program(tb, "postgrey", "postgrey")
	a := AccountFor(tb, "postgrey")
	dir := Dir(tb, a)
	empty := filepath.Join(dir, "empty")
	if err := os.WriteFile(empty, nil, 0o644); err != nil {
		tb.Fatal(err)
	}
	Own(tb, a, empty)
	addr := FreePort(tb)
	args := []string{
		"--inet=" + addr,
		"--dbdir=" + dir,
		"--delay=" + strconv.Itoa(delay),
		"--whitelist-clients=" + empty,
		"--whitelist-recipients=" + empty,
		"--auto-whitelist-clients=0",
		"--hostname=postgrey.test",
		"--verbose",
	}
	// Always name the user and group: postgrey's default (postgrey) makes
	// it try to switch, which fails when it is not started as root.
	group := strconv.Itoa(a.GID)
	if g, err := user.LookupGroupId(group); err == nil {
		group = g.Name
	}
	args = append(args, "--user="+a.Name, "--group="+group)
	cmd := Command(a, prog, args...)
	cmd.Dir = dir
	p := Start(tb, cmd, Dials("tcp", addr))
	return &Postgrey{Process: p, Addr: addr, Delay: delay}
}
