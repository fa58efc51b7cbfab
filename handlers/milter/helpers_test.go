package milter_test

import (
	"bufio"
	"fmt"
	"net"
	"os"
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
	dir, err := os.MkdirTemp("", "esmtp-milter-caddy-")
	if err != nil {
		panic(err)
	}
	os.Setenv("XDG_CONFIG_HOME", filepath.Join(dir, "config"))
	os.Setenv("XDG_DATA_HOME", filepath.Join(dir, "data"))
	caddy.DefaultStorage.Path = caddy.AppDataDir()
	code := m.Run()
	caddy.Stop()
	os.RemoveAll(dir)
	os.Exit(code)
}

// startCaddy runs real Caddy (in process, caddy-l4 and caddy-esmtp) with
// one esmtp handler for mx.example.test on a free loopback port, with
// the given lines (options and sub-handlers) in which %DIR% is a fresh
// directory; it returns the address and the directory.
func startCaddy(t *testing.T, lines string) (addr, dir string) {
	t.Helper()
	dir = t.TempDir()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr = l.Addr().String()
	l.Close()
	caddyfile := `{
	admin off
	persist_config off
	layer4 {
		` + addr + ` {
			route {
				esmtp {
					hostname mx.example.test
					` + strings.ReplaceAll(strings.TrimSpace(lines), "%DIR%", dir) + `
				}
			}
		}
	}
}
`
	cfg, _, err := caddyconfig.GetAdapter("caddyfile").Adapt([]byte(caddyfile), map[string]any{"filename": "Caddyfile"})
	if err != nil {
		t.Fatalf("adapting Caddyfile: %v\n%s", err, caddyfile)
	}
	if err := caddy.Load(cfg, true); err != nil {
		t.Fatalf("loading config: %v\n%s", err, caddyfile)
	}
	t.Cleanup(func() { caddy.Stop() })
	deadline := time.Now().Add(5 * time.Second)
	for {
		c, err := net.Dial("tcp", addr)
		if err == nil {
			c.Close()
			return addr, dir
		}
		if time.Now().After(deadline) {
			t.Fatalf("nothing listens on %s: %v", addr, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// client is a plain SMTP client over TCP.
type client struct {
	t *testing.T
	c net.Conn
	r *bufio.Reader
}

func dial(t *testing.T, addr string) *client {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(2 * time.Minute))
	return &client{t: t, c: c, r: bufio.NewReader(c)}
}

func (c *client) send(s string) {
	c.t.Helper()
	if _, err := c.c.Write([]byte(s)); err != nil {
		c.t.Fatalf("write: %v", err)
	}
}

// reply reads one reply, its lines joined by "\n".
func (c *client) reply() string {
	c.t.Helper()
	var lines []string
	for {
		l, err := c.r.ReadString('\n')
		if err != nil {
			c.t.Fatalf("reading reply after %q: %v", lines, err)
		}
		l = strings.TrimSuffix(l, "\r\n")
		lines = append(lines, l)
		if len(l) < 4 || l[3] == ' ' {
			return strings.Join(lines, "\n")
		}
	}
}

// expect reads one reply and checks that it starts with prefix.
func (c *client) expect(prefix string) string {
	c.t.Helper()
	r := c.reply()
	if !strings.HasPrefix(r, prefix) {
		c.t.Fatalf("got reply %q, want %q...", r, prefix)
	}
	return r
}

// cmd sends a command line and expects a reply starting with prefix.
func (c *client) cmd(line, prefix string) string {
	c.t.Helper()
	c.send(line + "\r\n")
	return c.expect(prefix)
}

// hello connects and greets.
func hello(t *testing.T, addr string) *client {
	t.Helper()
	c := dial(t, addr)
	c.expect("220 ")
	c.cmd("EHLO client.example.test", "250")
	return c
}

// data sends a message (dot-stuffed here) and returns the reply.
func (c *client) data(msg string) string {
	c.t.Helper()
	c.cmd("DATA", "354")
	var b strings.Builder
	for _, l := range strings.SplitAfter(msg, "\r\n") {
		if strings.HasPrefix(l, ".") {
			b.WriteByte('.')
		}
		b.WriteString(l)
	}
	c.send(b.String() + ".\r\n")
	return c.reply()
}

// message is a small test message with the given subject.
func message(subject string, extra ...string) string {
	return "From: Alice <alice@example.test>\r\n" +
		"To: bob@example.test\r\n" +
		"Subject: " + subject + "\r\n" +
		"Date: Sun, 1 Jun 2025 12:00:00 +0000\r\n" +
		"Message-ID: <" + strings.ReplaceAll(subject, " ", ".") + "@example.test>\r\n" +
		strings.Join(extra, "") +
		"\r\n" +
		"Hello Bob,\r\n.a dotted line\r\nbye\r\n"
}

// mails returns the messages in a Maildir's new/, sorted by file name.
func mails(t *testing.T, maildir string) []string {
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
	var out []string
	for _, n := range names {
		b, err := os.ReadFile(filepath.Join(maildir, "new", n))
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, string(b))
	}
	return out
}

// one returns the one message in a Maildir.
func one(t *testing.T, maildir string) string {
	t.Helper()
	ms := mails(t, maildir)
	if len(ms) != 1 {
		t.Fatalf("%d messages in %s, want 1", len(ms), maildir)
	}
	return ms[0]
}

// header returns a message's header section.
func header(msg string) string {
	h, _, _ := strings.Cut(msg, "\r\n\r\n")
	return h + "\r\n"
}

// fieldNames returns the names of a message's header fields in order.
func fieldNames(msg string) []string {
	var names []string
	for _, l := range strings.Split(header(msg), "\r\n") {
		if l == "" || l[0] == ' ' || l[0] == '\t' {
			continue
		}
		name, _, _ := strings.Cut(l, ":")
		names = append(names, name)
	}
	return names
}

var _ = fmt.Sprint
