// Package integration_test starts real Caddy (in process, with caddy-l4 and
// this module) and talks to it over real loopback TCP with real clients.
package integration_test

import (
	"bufio"
	"bytes"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
	_ "github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	_ "github.com/caddyserver/caddy/v2/modules/standard"
	_ "github.com/mholt/caddy-l4"

	_ "github.com/caddy-esmtp/caddy-esmtp"
)

func TestMain(m *testing.M) {
	// Keep Caddy's autosave, certificates and locks out of the user's home.
	dir, err := os.MkdirTemp("", "esmtp-caddy-")
	if err != nil {
		panic(err)
	}
	os.Setenv("XDG_CONFIG_HOME", filepath.Join(dir, "config"))
	os.Setenv("XDG_DATA_HOME", filepath.Join(dir, "data"))
	// Caddy chose its default storage when its package initialised, before
	// the variable above was set: point it into the temp dir too.
	caddy.DefaultStorage.Path = caddy.AppDataDir()
	code := m.Run()
	caddy.Stop()
	os.RemoveAll(dir)
	os.Exit(code)
}

// freePort returns a loopback TCP port that is free now.
func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// adapt turns a Caddyfile into JSON with Caddy's own adapter.
func adapt(t *testing.T, caddyfile string) []byte {
	t.Helper()
	cfg, warnings, err := caddyconfig.GetAdapter("caddyfile").Adapt([]byte(caddyfile), map[string]any{"filename": "Caddyfile"})
	if err != nil {
		t.Fatalf("adapting Caddyfile: %v\n%s", err, caddyfile)
	}
	for _, w := range warnings {
		t.Logf("adapt warning: %s", w.String())
	}
	return cfg
}

// load runs cfg (JSON) as Caddy's configuration until the test ends.
func load(t *testing.T, cfg []byte) {
	t.Helper()
	if err := caddy.Load(cfg, true); err != nil {
		t.Fatalf("loading config: %v\n%s", err, cfg)
	}
	t.Cleanup(func() { caddy.Stop() })
}

// startCaddyfile adapts and loads a Caddyfile; %PORT% and %MAIL% are
// replaced by a free port and a fresh Maildir path, which it returns.
func startCaddyfile(t *testing.T, caddyfile string) (addr, maildir string) {
	t.Helper()
	port := freePort(t)
	maildir = filepath.Join(t.TempDir(), "mail")
	caddyfile = strings.NewReplacer("%PORT%", fmt.Sprint(port), "%MAIL%", maildir).Replace(caddyfile)
	load(t, adapt(t, caddyfile))
	addr = fmt.Sprintf("127.0.0.1:%d", port)
	waitListening(t, addr)
	return addr, maildir
}

func waitListening(t *testing.T, addr string) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		c, err := net.Dial("tcp", addr)
		if err == nil {
			c.Close()
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("nothing listens on %s: %v", addr, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// esmtpCaddyfile is the usual test Caddyfile: no admin endpoint, one
// layer4 server on %PORT% whose one route is an esmtp handler for
// mx.example.test with the given lines (options and sub-handlers).
func esmtpCaddyfile(lines string) string {
	return `{
	admin off
	persist_config off
	layer4 {
		127.0.0.1:%PORT% {
			route {
				esmtp {
					hostname mx.example.test
					` + strings.TrimSpace(lines) + `
				}
			}
		}
	}
}
`
}

// issueCaddyfile is the Caddyfile of the foundation issue, verbatim but for
// the port and the Maildir path.
const issueCaddyfile = `{
	admin off
	persist_config off
	layer4 {
		127.0.0.1:%PORT% {
			route {
				esmtp {
					hostname mx.example.test
					max_message_size 10MiB
					max_recipients 50
					command_timeout 2m
					maildir %MAIL%
				}
			}
		}
	}
}
`

// delivered returns the files in maildir/new, sorted by name.
func delivered(t *testing.T, maildir string) [][]byte {
	t.Helper()
	entries, err := os.ReadDir(filepath.Join(maildir, "new"))
	if err != nil && !os.IsNotExist(err) {
		t.Fatal(err)
	}
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	sort.Strings(names)
	var out [][]byte
	for _, n := range names {
		b, err := os.ReadFile(filepath.Join(maildir, "new", n))
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, b)
	}
	if tmp, _ := os.ReadDir(filepath.Join(maildir, "tmp")); len(tmp) > 0 {
		t.Errorf("%d files left in %s/tmp", len(tmp), maildir)
	}
	return out
}

// splitReceived checks that file is a Received: field from our hostname
// followed by exactly want, and returns the Received: field.
func splitReceived(t *testing.T, file []byte, hostname string, want []byte) string {
	t.Helper()
	if !bytes.HasPrefix(file, []byte("Received: from ")) {
		t.Fatalf("delivered file does not start with Received:\n%q", file)
	}
	// The Received: field ends at the first CRLF not followed by a tab.
	end := 0
	for {
		i := bytes.Index(file[end:], []byte("\r\n"))
		if i < 0 {
			t.Fatalf("unterminated Received: field in %q", file)
		}
		end += i + 2
		if end >= len(file) || file[end] != '\t' {
			break
		}
	}
	received, rest := string(file[:end]), file[end:]
	if !strings.Contains(received, "by "+hostname+" with ") {
		t.Errorf("Received: field does not name %s: %q", hostname, received)
	}
	if !bytes.Equal(rest, want) {
		t.Errorf("delivered message differs from what was sent\n got: %q\nwant: %q", rest, want)
	}
	return received
}

// conn is a raw SMTP client over TCP for tests that need byte control.
type conn struct {
	t *testing.T
	c net.Conn
	r *bufio.Reader
}

func dial(t *testing.T, addr string) *conn {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(30 * time.Second))
	return &conn{t: t, c: c, r: bufio.NewReader(c)}
}

func (c *conn) send(s string) {
	c.t.Helper()
	if _, err := c.c.Write([]byte(s)); err != nil {
		c.t.Fatalf("write: %v", err)
	}
}

// reply reads one (possibly multi-line) reply and returns its lines.
func (c *conn) reply() []string {
	c.t.Helper()
	var lines []string
	for {
		l, err := c.r.ReadString('\n')
		if err != nil {
			c.t.Fatalf("reading reply after %q: %v", lines, err)
		}
		if !strings.HasSuffix(l, "\r\n") || len(l) < 6 {
			c.t.Fatalf("malformed reply line %q", l)
		}
		l = strings.TrimSuffix(l, "\r\n")
		lines = append(lines, l)
		if l[3] == ' ' {
			return lines
		}
	}
}

// expect reads one reply and checks that its last line starts with prefix.
func (c *conn) expect(prefix string) []string {
	c.t.Helper()
	lines := c.reply()
	if last := lines[len(lines)-1]; !strings.HasPrefix(last, prefix) {
		c.t.Fatalf("got reply %q, want %q...", lines, prefix)
	}
	return lines
}

// need returns the path of an external client, or skips the test when it
// is absent (fails under ESMTP_REQUIRE_CLIENTS=1, as in CI).
func need(t *testing.T, tool string) string {
	t.Helper()
	p, err := exec.LookPath(tool)
	if err != nil {
		if os.Getenv("ESMTP_REQUIRE_CLIENTS") == "1" {
			t.Fatalf("%s is required (ESMTP_REQUIRE_CLIENTS=1) but not installed", tool)
		}
		t.Skipf("%s not installed; .ci/run installs it", tool)
	}
	return p
}
