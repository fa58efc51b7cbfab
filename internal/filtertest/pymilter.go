package filtertest

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// PyMilter starts a milter written in Python with pymilter (Debian
// package python3-milter, on Sendmail's libmilter): script is the
// program's text, run with the milter's socket address as its one
// argument, as nobody when the tests run as root. It returns the milter's
// address for the milter sub-handler ("127.0.0.1:port"); the milter is
// stopped when the test ends.
func PyMilter(tb testing.TB, script string) string {
	tb.Helper()
	python := ""
	for _, p := range []string{"/usr/bin/python3", "python3"} {
		if path, err := exec.LookPath(p); err == nil && exec.Command(path, "-c", "import Milter").Run() == nil {
			python = path
			break
		}
	}
	if python == "" {
		Missing(tb, "python3 with pymilter not installed (Debian package python3-milter)")
	}
	acct := AccountFor(tb, "nobody")
	dir := Dir(tb, acct)
	path := filepath.Join(dir, "testmilter.py")
	if err := os.WriteFile(path, []byte(script), 0o644); err != nil {
		tb.Fatal(err)
	}
	addr := FreePort(tb)
	host, port, _ := strings.Cut(addr, ":")
	cmd := Command(acct, python, path, "inet:"+port+"@"+host)
	cmd.Dir = dir
	Start(tb, cmd, MilterReady("tcp", addr))
	return addr
}
