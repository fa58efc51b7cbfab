package maildir

import (
	"bytes"
	"context"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest"

	"github.com/caddy-esmtp/caddy-esmtp/internal/smtptest"
	"github.com/caddy-esmtp/caddy-esmtp/session"
)

// provision returns a Maildir with path, provisioned through Caddy's API;
// its logger writes to the test log.
func provision(tb testing.TB, path string) *Maildir {
	tb.Helper()
	m, err := tryProvision(path)
	if err != nil {
		tb.Fatalf("provisioning maildir %q: %v", path, err)
	}
	m.logger = zaptest.NewLogger(tb, zaptest.Level(zap.InfoLevel))
	return m
}

func tryProvision(path string) (*Maildir, error) {
	ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
	defer cancel()
	m := &Maildir{Path: path}
	return m, m.Provision(ctx)
}

// startServer runs the engine with one sub-handler on loopback TCP.
func startServer(tb testing.TB, h any, cfg session.Config) *smtptest.Server {
	tb.Helper()
	cfg.Hostname = "mx.example.test"
	cfg.Handlers = []session.SubHandler{{Name: "maildir", Handler: h}}
	return smtptest.NewServer(tb, cfg)
}

// dial connects to ts, reads the greeting and says EHLO.
func dial(ts *smtptest.Server) *smtptest.Client {
	return ts.DialTCP().Hello("client.example.test")
}

// files returns the names of the entries of dir, sorted; a missing dir has
// none.
func files(tb testing.TB, dir string) []string {
	tb.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil && !os.IsNotExist(err) {
		tb.Fatal(err)
	}
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	sort.Strings(names)
	return names
}

// messages returns the contents of maildir/new, checking that tmp/ is
// empty.
func messages(tb testing.TB, maildir string) map[string][]byte {
	tb.Helper()
	if left := files(tb, filepath.Join(maildir, "tmp")); len(left) > 0 {
		tb.Errorf("%s/tmp holds %q, want nothing", maildir, left)
	}
	out := map[string][]byte{}
	for _, n := range files(tb, filepath.Join(maildir, "new")) {
		b, err := os.ReadFile(filepath.Join(maildir, "new", n))
		if err != nil {
			tb.Fatal(err)
		}
		out[n] = b
	}
	return out
}

// only returns the one message in maildir/new.
func only(tb testing.TB, maildir string) (name string, content []byte) {
	tb.Helper()
	msgs := messages(tb, maildir)
	if len(msgs) != 1 {
		tb.Fatalf("%s/new holds %d files, want 1", maildir, len(msgs))
	}
	for n, b := range msgs {
		return n, b
	}
	panic("unreachable")
}

// assertEmpty checks that neither tmp/ nor new/ of maildir holds a file.
func assertEmpty(tb testing.TB, maildir string) {
	tb.Helper()
	for _, sub := range []string{"tmp", "new"} {
		fi, err := os.Stat(filepath.Join(maildir, sub))
		if err != nil || !fi.IsDir() {
			continue
		}
		if left := files(tb, filepath.Join(maildir, sub)); len(left) > 0 {
			tb.Errorf("%s/%s holds %q, want nothing", maildir, sub, left)
		}
	}
}

func TestProvisionCreatesMaildir(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "a", "mail")
	provision(t, dir)
	for _, sub := range []string{"tmp", "new", "cur"} {
		if fi, err := os.Stat(filepath.Join(dir, sub)); err != nil || !fi.IsDir() {
			t.Errorf("%s/%s is not a directory: %v", dir, sub, err)
		}
	}
}

func TestDeliverByteForByte(t *testing.T) {
	big := strings.Repeat(strings.Repeat("0123456789", 99)+"\r\n", 300) // ~300 KB: several body chunks
	cases := map[string]string{
		"plain":                   "From: a@example.test\r\nTo: b@example.test\r\nSubject: hi\r\n\r\nHello.\r\n",
		"dots":                    "Subject: dots\r\n\r\n.\r\n..\r\n.leading dot\r\n...three\r\nend.\r\n. \r\n",
		"folded header and 8 bit": "Subject: a\r\n folded\r\n\tfield\r\nX-8bit: \xc3\xa9t\xc3\xa9\r\n\r\nbody \xff\xfe\r\n",
		"no body":                 "Subject: only a header\r\n",
		"no header":               "just a body line, no header at all\r\nsecond\r\n",
		"empty body":              "Subject: x\r\n\r\n",
		"big":                     "Subject: big\r\n\r\n" + big,
		"trailing blank lines":    "Subject: x\r\n\r\nbody\r\n\r\n\r\n",
	}
	for name, msg := range cases {
		t.Run(name, func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "mail")
			ts := startServer(t, provision(t, dir), session.Config{})
			c := dial(ts)
			if r := smtptest.Mail(c, msg, "rcpt@example.test"); !strings.HasPrefix(r, "250 2.0.0 ") {
				t.Fatalf("end of data: %q", r)
			}
			c.Cmd("QUIT", "221")
			ts.Close()
			fname, file := only(t, dir)
			if got := smtptest.SplitReceived(t, file); !bytes.Equal(got, []byte(msg)) {
				t.Errorf("delivered message differs\n got: %q\nwant: %q", got, msg)
			}
			if !bytes.Contains(file, []byte("\r\n\tfor <rcpt@example.test>;")) {
				t.Errorf("Received: field has no for clause: %q", file[:200])
			}
			if strings.ContainsAny(fname, ":/") || strings.HasPrefix(fname, ".") {
				t.Errorf("file name %q is not a valid Maildir name", fname)
			}
		})
	}
}

func TestUniqueNamesParallel(t *testing.T) {
	const conns, perConn = 4, 50
	dir := filepath.Join(t.TempDir(), "mail")
	ts := startServer(t, provision(t, dir), session.Config{})
	want := map[string]bool{}
	for i := range conns * perConn {
		want[fmt.Sprintf("Message-ID: <%d@example.test>\r\nSubject: %d\r\n\r\nmessage %d\r\n", i, i, i)] = true
	}
	var wg sync.WaitGroup
	for k := range conns {
		wg.Go(func() {
			c := dial(ts)
			for j := range perConn {
				i := k*perConn + j
				msg := fmt.Sprintf("Message-ID: <%d@example.test>\r\nSubject: %d\r\n\r\nmessage %d\r\n", i, i, i)
				if r := smtptest.Mail(c, msg, "rcpt@example.test"); !strings.HasPrefix(r, "250 ") {
					t.Errorf("message %d: %q", i, r)
					return
				}
			}
			c.Cmd("QUIT", "221")
		})
	}
	wg.Wait()
	ts.Close()
	msgs := messages(t, dir)
	if len(msgs) != conns*perConn {
		t.Fatalf("%d files in new/, want %d", len(msgs), conns*perConn)
	}
	for _, file := range msgs {
		m := string(smtptest.SplitReceived(t, file))
		if !want[m] {
			t.Errorf("unexpected or duplicate message %q", m)
		}
		delete(want, m)
	}
	if len(want) > 0 {
		t.Errorf("%d messages missing", len(want))
	}
}

func TestPerRecipient(t *testing.T) {
	base := t.TempDir()
	ts := startServer(t, provision(t, filepath.Join(base, "{esmtp.rcpt.domain}", "{esmtp.rcpt.local}")), session.Config{})
	if left := files(t, base); len(left) > 0 {
		t.Fatalf("a per-recipient path created %q at provision time", left)
	}
	c := dial(ts)
	msg := "Subject: three\r\n\r\n.one\r\nbody\r\n"
	if r := smtptest.Mail(c, msg, "a@one.test", "b@ONE.test", "c@two.test"); !strings.HasPrefix(r, "250 ") {
		t.Fatalf("end of data: %q", r)
	}
	c.Cmd("QUIT", "221")
	ts.Close()
	var first []byte
	for _, d := range []string{"one.test/a", "one.test/b", "two.test/c"} {
		_, file := only(t, filepath.Join(base, d))
		if got := smtptest.SplitReceived(t, file); string(got) != msg {
			t.Errorf("%s: got %q, want %q", d, got, msg)
		}
		if first == nil {
			first = file
		} else if !bytes.Equal(file, first) {
			t.Errorf("%s differs from one.test/a", d)
		}
	}
	if got := files(t, base); strings.Join(got, ",") != "one.test,two.test" {
		t.Errorf("base holds %q", got)
	}
}

func TestPerRecipientDistinctTargets(t *testing.T) {
	// Two recipients that map to one Maildir get one file there.
	base := t.TempDir()
	ts := startServer(t, provision(t, filepath.Join(base, "{esmtp.rcpt.domain}")), session.Config{})
	c := dial(ts)
	if r := smtptest.Mail(c, "Subject: x\r\n\r\nx\r\n", "a@one.test", "b@One.Test", "c@two.test"); !strings.HasPrefix(r, "250 ") {
		t.Fatalf("end of data: %q", r)
	}
	ts.Close()
	only(t, filepath.Join(base, "one.test"))
	only(t, filepath.Join(base, "two.test"))
}

func TestPerRecipientAliasedTargets(t *testing.T) {
	// Two recipients whose Maildirs are one directory under two names (a
	// domain alias made with a symlink, or a case-insensitive file system)
	// get the message once, not a 451 forever.
	base := t.TempDir()
	if err := makeMaildir(filepath.Join(base, "one.test")); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("one.test", filepath.Join(base, "alias.test")); err != nil {
		t.Skip("no symlinks:", err)
	}
	ts := startServer(t, provision(t, filepath.Join(base, "{esmtp.rcpt.domain}")), session.Config{})
	c := dial(ts)
	msg := "Subject: alias\r\n\r\nbody\r\n"
	if r := smtptest.Mail(c, msg, "a@one.test", "b@alias.test"); !strings.HasPrefix(r, "250 ") {
		t.Fatalf("end of data: %q", r)
	}
	if r := smtptest.Mail(c, msg, "b@alias.test", "a@one.test"); !strings.HasPrefix(r, "250 ") {
		t.Fatalf("end of data: %q", r)
	}
	c.Cmd("QUIT", "221")
	ts.Close()
	msgs := messages(t, filepath.Join(base, "one.test"))
	if len(msgs) != 2 {
		t.Fatalf("%d files in one.test/new, want 2", len(msgs))
	}
	for _, file := range msgs {
		if got := smtptest.SplitReceived(t, file); string(got) != msg {
			t.Errorf("got %q", got)
		}
	}
}

func TestPerRecipientCannotEscape(t *testing.T) {
	for i, tmpl := range []string{
		"{esmtp.rcpt.domain}/{esmtp.rcpt.local}",
		"{esmtp.rcpt}",
		"{esmtp.rcpt.local}",
		"x{esmtp.rcpt.local}/{esmtp.rcpt.domain}",
	} {
		// Subtest names end up in t.TempDir(): keep placeholders out.
		t.Run(fmt.Sprint("template", i), func(t *testing.T) {
			top := t.TempDir()
			base := filepath.Join(top, "base")
			ts := startServer(t, provision(t, filepath.Join(base, tmpl)), session.Config{})
			c := dial(ts)
			rcpts := []string{
				`"../../evil"@x.test`,
				`"../../../evil"@x.test`,
				`"../../../../../../../../tmp/evil"@x.test`,
				`".."@x.test`,
				`"."@x.test`,
				`"a/b"@x.test`,
				`"/abs"@x.test`,
				`"..\\..\\evil"@x.test`,
				`"{esmtp.rcpt.domain}"@x.test`,
				`""@x.test`,
				`Postmaster`,
			}
			if r := smtptest.Mail(c, "Subject: escape\r\n\r\nx\r\n", rcpts...); !strings.HasPrefix(r, "250 ") {
				t.Fatalf("end of data: %q", r)
			}
			ts.Close()
			if got := files(t, top); len(got) != 1 || got[0] != "base" {
				t.Errorf("%s holds %q, want only base", top, got)
			}
			if got := files(t, filepath.Dir(top)); len(got) != 1 {
				t.Errorf("%s holds %q, want only the test's temp dir", filepath.Dir(top), got)
			}
			if escaped, _ := filepath.Glob("/tmp/evil*"); len(escaped) > 0 {
				t.Errorf("delivered outside the base directory: %q", escaped)
				for _, p := range escaped {
					os.RemoveAll(p)
				}
			}
			// Every delivered file is in a Maildir directly under base
			// (one or two levels, as the template says).
			levels := strings.Count(tmpl, "/") + 1
			n := 0
			filepath.WalkDir(base, func(p string, d fs.DirEntry, err error) error {
				if err != nil {
					t.Error(err)
					return nil
				}
				if d.IsDir() {
					return nil
				}
				rel, _ := filepath.Rel(base, p)
				parts := strings.Split(rel, string(filepath.Separator))
				if len(parts) != levels+2 || parts[levels] != "new" {
					t.Errorf("file at unexpected place %s", rel)
				}
				n++
				return nil
			})
			if n == 0 {
				t.Errorf("nothing delivered")
			}
		})
	}
}

func TestWriteFailure(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "mail")
	ts := startServer(t, provision(t, dir), session.Config{})
	newDir := filepath.Join(dir, "new")
	if err := os.Remove(newDir); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(newDir, []byte("not a directory"), 0o600); err != nil {
		t.Fatal(err)
	}
	c := dial(ts)
	if r := smtptest.Mail(c, "Subject: x\r\n\r\nbody\r\n", "rcpt@example.test"); !strings.HasPrefix(r, "451 4.3.0 ") {
		t.Fatalf("end of data with new/ a regular file: %q, want 451 4.3.0", r)
	}
	if left := files(t, filepath.Join(dir, "tmp")); len(left) > 0 {
		t.Errorf("tmp/ holds %q after a failed delivery", left)
	}
	if b, err := os.ReadFile(newDir); err != nil || string(b) != "not a directory" {
		t.Errorf("new/ was changed: %q, %v", b, err)
	}

	// Once the Maildir is repaired the same session delivers.
	os.Remove(newDir)
	if err := os.Mkdir(newDir, 0o700); err != nil {
		t.Fatal(err)
	}
	msg := "Subject: again\r\n\r\nbody\r\n"
	if r := smtptest.Mail(c, msg, "rcpt@example.test"); !strings.HasPrefix(r, "250 ") {
		t.Fatalf("end of data after repair: %q", r)
	}
	c.Cmd("QUIT", "221")
	ts.Close()
	if _, file := only(t, dir); string(smtptest.SplitReceived(t, file)) != msg {
		t.Errorf("got %q", file)
	}
}

func TestWriteFailurePathUnderFile(t *testing.T) {
	top := t.TempDir()
	file := filepath.Join(top, "file")
	if err := os.WriteFile(file, []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	ts := startServer(t, provision(t, filepath.Join(file, "{esmtp.rcpt.local}")), session.Config{})
	c := dial(ts)
	if r := smtptest.Mail(c, "Subject: x\r\n\r\nbody\r\n", "a@x.test"); !strings.HasPrefix(r, "451 4.3.0 ") {
		t.Fatalf("end of data: %q, want 451 4.3.0", r)
	}
	c.Cmd("QUIT", "221")
	ts.Close()
	if got := files(t, top); len(got) != 1 {
		t.Errorf("%s holds %q", top, got)
	}
}

func TestWriteFailurePerRecipient(t *testing.T) {
	// One of two targets failing leaves no file in the other's new/,
	// whichever of them comes first.
	for _, order := range [][]string{{"good", "bad"}, {"bad", "good"}} {
		t.Run(strings.Join(order, "-"), func(t *testing.T) {
			base := t.TempDir()
			for _, d := range []string{"good", "bad"} {
				for _, sub := range []string{"tmp", "cur"} {
					if err := os.MkdirAll(filepath.Join(base, d, sub), 0o700); err != nil {
						t.Fatal(err)
					}
				}
			}
			if err := os.Mkdir(filepath.Join(base, "good", "new"), 0o700); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(filepath.Join(base, "bad", "new"), []byte("x"), 0o600); err != nil {
				t.Fatal(err)
			}
			ts := startServer(t, provision(t, filepath.Join(base, "{esmtp.rcpt.local}")), session.Config{})
			c := dial(ts)
			if r := smtptest.Mail(c, "Subject: x\r\n\r\nbody\r\n", order[0]+"@x.test", order[1]+"@x.test"); !strings.HasPrefix(r, "451 4.3.0 ") {
				t.Fatalf("end of data: %q, want 451 4.3.0", r)
			}
			c.Cmd("QUIT", "221")
			ts.Close()
			assertEmpty(t, filepath.Join(base, "good"))
			assertEmpty(t, filepath.Join(base, "bad"))
		})
	}
}

func TestRejectedLeavesNothing(t *testing.T) {
	cases := map[string]struct {
		cfg  session.Config
		data string
		want string
	}{
		"bare LF":           {data: "Subject: x\r\n\r\nbare\nLF\r\n.\r\n", want: "550 5.5.2 "},
		"bare LF in header": {data: "Subject: x\nX: y\r\n\r\nbody\r\n.\r\n", want: "550 5.5.2 "},
		"bare CR":           {data: "Subject: x\r\n\r\nbare\rCR\r\n.\r\n", want: "550 5.5.2 "},
		"NUL":               {data: "Subject: x\r\n\r\nnul\x00\r\n.\r\n", want: "550 5.5.2 "},
		"too big":           {cfg: session.Config{MaxMessageSize: 1000}, data: "Subject: x\r\n\r\n" + strings.Repeat("x\r\n", 1000) + ".\r\n", want: "552 5.3.4 "},
		"long line":         {data: "Subject: x\r\n\r\n" + strings.Repeat("x", 9000) + "\r\n.\r\n", want: "550 5.5.2 "},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "mail")
			ts := startServer(t, provision(t, dir), tc.cfg)
			c := dial(ts)
			c.Cmd("MAIL FROM:<s@example.test>", "250")
			c.Cmd("RCPT TO:<r@example.test>", "250")
			c.Cmd("DATA", "354")
			c.Send(tc.data)
			c.Expect(tc.want)
			assertEmpty(t, dir) // the reply came after the Abort hook
			c.Cmd("QUIT", "221")
			ts.Close()
			assertEmpty(t, dir)
		})
	}
}

func TestRsetLeavesNothing(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "mail")
	ts := startServer(t, provision(t, dir), session.Config{})
	c := dial(ts)

	// RSET after RCPT, before any data.
	c.Cmd("MAIL FROM:<s@example.test>", "250")
	c.Cmd("RCPT TO:<r@example.test>", "250")
	c.Cmd("RSET", "250")
	assertEmpty(t, dir)

	// RSET between BDAT chunks.
	c.Cmd("MAIL FROM:<s@example.test>", "250")
	c.Cmd("RCPT TO:<r@example.test>", "250")
	chunk := "Subject: x\r\n\r\nfirst chunk\r\n"
	c.Send(fmt.Sprintf("BDAT %d\r\n%s", len(chunk), chunk))
	c.Expect("250 ")
	c.Cmd("RSET", "250")
	assertEmpty(t, dir)

	// A new EHLO in the middle of BDAT also ends the transaction.
	c.Cmd("MAIL FROM:<s@example.test>", "250")
	c.Cmd("RCPT TO:<r@example.test>", "250")
	c.Send(fmt.Sprintf("BDAT %d\r\n%s", len(chunk), chunk))
	c.Expect("250 ")
	c.Cmd("EHLO again.example.test", "250")
	assertEmpty(t, dir)

	// BDAT LAST delivers the chunks as one message.
	c.Cmd("MAIL FROM:<s@example.test>", "250")
	c.Cmd("RCPT TO:<r@example.test>", "250")
	c.Send(fmt.Sprintf("BDAT %d\r\n%s", len(chunk), chunk))
	c.Expect("250 ")
	c.Send("BDAT 7 LAST\r\nsecond\n")
	c.Expect("550 5.5.2 ") // a bare LF is refused in BDAT too
	assertEmpty(t, dir)
	c.Cmd("MAIL FROM:<s@example.test>", "250")
	c.Cmd("RCPT TO:<r@example.test>", "250")
	c.Send(fmt.Sprintf("BDAT %d\r\n%s", len(chunk), chunk))
	c.Expect("250 ")
	c.Send("BDAT 8 LAST\r\nsecond\r\n")
	c.Expect("250 2.0.0 ")
	c.Cmd("QUIT", "221")
	ts.Close()
	if _, file := only(t, dir); string(smtptest.SplitReceived(t, file)) != chunk+"second\r\n" {
		t.Errorf("got %q", file)
	}
}

func TestDisconnectMidDataLeavesNothing(t *testing.T) {
	for _, perRcpt := range []bool{false, true} {
		t.Run(fmt.Sprint("per-recipient=", perRcpt), func(t *testing.T) {
			base := t.TempDir()
			path := filepath.Join(base, "mail")
			if perRcpt {
				path = filepath.Join(base, "{esmtp.rcpt.local}")
			}
			started := make(chan struct{})
			ts := smtptest.ServeConfig(t, session.Config{}, provision(t, path), smtptest.EOHSignal{Ch: started})
			c := ts.DialTCPHello()
			c.Cmd("MAIL FROM:<s@example.test>", "250")
			c.Cmd("RCPT TO:<a@example.test>", "250")
			c.Cmd("RCPT TO:<b@example.test>", "250")
			c.Cmd("DATA", "354")
			c.Send("Subject: x\r\n\r\n" + strings.Repeat("partial line\r\n", 10000))
			<-started // the message is being spooled
			c.Conn.Close()
			ts.Close()
			for _, d := range []string{"mail", "a", "b"} {
				assertEmpty(t, filepath.Join(base, d))
			}
		})
	}
}

func TestProvisionErrors(t *testing.T) {
	top := t.TempDir()
	file := filepath.Join(top, "file")
	if err := os.WriteFile(file, []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		path string
		want []string
	}{
		{"", []string{"path"}},
		{filepath.Join(top, "{esmtp.foo}"), []string{"path", filepath.Join(top, "{esmtp.foo}")}},
		{filepath.Join(top, "{esmtp.rcpt.local}", "{http.request.host}"), []string{"{http.request.host}"}},
		{filepath.Join(top, "{esmtp.rcpt.localx}"), []string{"{esmtp.rcpt.localx}"}},
		{filepath.Join(file, "mail"), []string{"path", filepath.Join(file, "mail")}},
	}
	for _, tc := range cases {
		_, err := tryProvision(tc.path)
		if err == nil {
			t.Errorf("path %q: no error", tc.path)
			continue
		}
		for _, w := range tc.want {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("path %q: error %q does not mention %q", tc.path, err, w)
			}
		}
	}
}

func TestUnmarshalCaddyfile(t *testing.T) {
	for _, in := range []string{
		"maildir ./mail",
		"maildir {\n\tpath ./mail\n}",
		"maildir ./other {\n\tpath ./mail\n}",
	} {
		m := new(Maildir)
		if err := m.UnmarshalCaddyfile(caddyfile.NewTestDispenser(in)); err != nil {
			t.Errorf("%q: %v", in, err)
			continue
		}
		if m.Path != "./mail" {
			t.Errorf("%q: Path = %q, want ./mail", in, m.Path)
		}
	}
	for in, want := range map[string]string{
		"maildir":                  "path is required",
		"maildir {\n}":             "path is required",
		"maildir {\n\tbogus x\n}":  "bogus",
		"maildir a b":              "argument",
		"maildir {\n\tpath\n}":     "argument",
		"maildir {\n\tpath a b\n}": "argument",
	} {
		err := new(Maildir).UnmarshalCaddyfile(caddyfile.NewTestDispenser(in))
		if err == nil {
			t.Errorf("%q: no error", in)
		} else if !strings.Contains(err.Error(), want) {
			t.Errorf("%q: error %q does not mention %q", in, err, want)
		}
	}
}

func BenchmarkMaildirDeliver(b *testing.B) {
	m := provision(b, filepath.Join(b.TempDir(), "mail"))
	m.logger = zap.NewNop()
	ts := startServer(b, m, session.Config{})
	c := dial(ts)
	const size = 10 << 10
	line := strings.Repeat("x", 78) + "\r\n"
	msg := "Subject: bench\r\n\r\n"
	msg += strings.Repeat(line, (size-len(msg))/len(line))
	msg += strings.Repeat("y", size-len(msg)-2) + "\r\n"
	if len(msg) != size {
		b.Fatalf("message is %d bytes", len(msg))
	}
	data := msg + ".\r\n"
	b.SetBytes(int64(len(msg)))
	b.ResetTimer()
	for b.Loop() {
		c.Send("MAIL FROM:<s@example.test>\r\nRCPT TO:<r@example.test>\r\nDATA\r\n")
		c.Expect("250 ")
		c.Expect("250 ")
		c.Expect("354 ")
		c.Send(data)
		c.Expect("250 ")
	}
	b.StopTimer()
	c.Cmd("QUIT", "221")
}
