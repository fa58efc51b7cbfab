// Package filtertest starts the real filter programs the tests of the
// milter, rspamd and policy sub-handlers talk to (rspamd, OpenDKIM,
// clamav-milter, postgrey, a pymilter script), each with a private
// configuration in a temporary directory, on loopback, as the user the
// program expects, and stops them when the test ends.
//
// A program that is not installed skips the test with a message, or fails
// it when ESMTP_REQUIRE_CLIENTS=1 (as .ci/run sets, after installing it).
package filtertest

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"
)

// Missing skips the test because something it needs is absent, or fails
// it under ESMTP_REQUIRE_CLIENTS=1.
func Missing(tb testing.TB, format string, args ...any) {
	tb.Helper()
	msg := fmt.Sprintf(format, args...)
	if os.Getenv("ESMTP_REQUIRE_CLIENTS") == "1" {
		tb.Fatalf("%s (required: ESMTP_REQUIRE_CLIENTS=1)", msg)
	}
	tb.Skipf("%s; .ci/run installs it", msg)
}

// Program returns the path of an installed program, looked up in PATH and
// in the sbin directories, or calls Missing naming the Debian package.
func Program(tb testing.TB, name, debianPackage string) string {
	tb.Helper()
	if p, err := exec.LookPath(name); err == nil {
		return p
	}
	for _, dir := range []string{"/usr/sbin", "/sbin", "/usr/local/sbin"} {
		p := filepath.Join(dir, name)
		if fi, err := os.Stat(p); err == nil && !fi.IsDir() && fi.Mode()&0o111 != 0 {
			return p
		}
	}
	Missing(tb, "%s not installed (Debian package %s)", name, debianPackage)
	return ""
}

// Account is the user a program runs as: the one it expects when the
// tests run as root, the current user otherwise (who cannot switch).
type Account struct {
	Name     string
	UID, GID int
}

// AccountFor returns the Account to run a program as: the system user
// name when the tests run as root and it exists, else the current user.
func AccountFor(tb testing.TB, name string) Account {
	tb.Helper()
	if os.Geteuid() == 0 {
		if u, err := user.Lookup(name); err == nil {
			uid, _ := strconv.Atoi(u.Uid)
			gid, _ := strconv.Atoi(u.Gid)
			return Account{Name: name, UID: uid, GID: gid}
		}
	}
	u, err := user.Current()
	if err != nil {
		tb.Fatal(err)
	}
	return Account{Name: u.Username, UID: os.Geteuid(), GID: os.Getegid()}
}

// Switches reports whether starting a program as a differs from the
// current user (root starting a program as its own user).
func (a Account) Switches() bool { return a.UID != os.Geteuid() }

// Dir makes a private temporary directory owned by a, removed when the
// test ends. Unlike testing.TB.TempDir, its parents are traversable by a.
func Dir(tb testing.TB, a Account) string {
	tb.Helper()
	dir, err := os.MkdirTemp("", "esmtp-filter-")
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		tb.Fatal(err)
	}
	Own(tb, a, dir)
	return dir
}

// Own gives the files and directories at paths to a (a no-op when a is
// the current user).
func Own(tb testing.TB, a Account, paths ...string) {
	tb.Helper()
	if !a.Switches() {
		return
	}
	for _, p := range paths {
		if err := os.Lchown(p, a.UID, a.GID); err != nil {
			tb.Fatal(err)
		}
	}
}

// Command returns a command that runs as a, in its own process group (so
// Start can stop the program with its children).
func Command(a Account, name string, args ...string) *exec.Cmd {
	cmd := exec.Command(name, args...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if a.Switches() {
		cmd.SysProcAttr.Credential = &syscall.Credential{Uid: uint32(a.UID), Gid: uint32(a.GID)}
	}
	return cmd
}

// Process is a running program started by Start.
type Process struct {
	cmd  *exec.Cmd
	out  *syncBuffer
	done chan struct{}
	err  error
}

// Output is what the program wrote to its stdout and stderr so far.
func (p *Process) Output() string { return p.out.String() }

// Exited reports whether the program has ended.
func (p *Process) Exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// Stop ends the program (SIGTERM to its group, SIGKILL after 5 s) and
// waits for it. Start arranges for it to run when the test ends.
func (p *Process) Stop() {
	if p.Exited() {
		return
	}
	pgid := p.cmd.Process.Pid
	_ = syscall.Kill(-pgid, syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(5 * time.Second):
		_ = syscall.Kill(-pgid, syscall.SIGKILL)
		<-p.done
	}
}

// Start starts cmd, which must come from Command (or have Setpgid set),
// and waits until ready returns nil (at most 60 s; ready is retried every
// 100 ms). The program is stopped when the test ends; its output is shown
// when it fails to get ready.
func Start(tb testing.TB, cmd *exec.Cmd, ready func() error) *Process {
	tb.Helper()
	p := &Process{cmd: cmd, out: &syncBuffer{}, done: make(chan struct{})}
	cmd.Stdout, cmd.Stderr = p.out, p.out
	if err := cmd.Start(); err != nil {
		tb.Fatalf("start %s: %v", cmd.Path, err)
	}
	go func() { p.err = cmd.Wait(); close(p.done) }()
	tb.Cleanup(func() {
		exited := p.Exited()
		p.Stop()
		if tb.Failed() {
			tb.Logf("%s (exited before the end: %v, %v) wrote:\n%s", cmd.Path, exited, p.err, p.Output())
		}
	})
	deadline := time.Now().Add(60 * time.Second)
	for {
		err := ready()
		if err == nil {
			return p
		}
		if p.Exited() {
			tb.Fatalf("%s exited (%v) before it was ready (%v); output:\n%s", cmd.Path, p.err, err, p.Output())
		}
		if time.Now().After(deadline) {
			tb.Fatalf("%s not ready after 60 s: %v; output:\n%s", cmd.Path, err, p.Output())
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// Dials returns a readiness check for Start: a connection to the address
// (network "tcp" or "unix") can be opened.
func Dials(network, address string) func() error {
	return func() error {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		c, err := (&net.Dialer{}).DialContext(ctx, network, address)
		if err != nil {
			return err
		}
		return c.Close()
	}
}

// FreePort returns a loopback TCP address (127.0.0.1:port) that was free
// a moment ago.
func FreePort(tb testing.TB) string {
	tb.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// syncBuffer is a bytes.Buffer safe for the writes of a program's output
// and the reads of a test.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}
