package recipients

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"

	"github.com/caddy-esmtp/caddy-esmtp/internal/smtptest"
	"github.com/caddy-esmtp/caddy-esmtp/session"
)

func TestListMatch(t *testing.T) {
	l := new(List)
	for _, e := range []string{
		"user@x.test", "*@other.test", "example.test", "*.sub.test", "boss@*.corp.test",
		`"Quoted.Name"@q.test`, "admin@[192.0.2.1]", "trail.test.",
	} {
		if err := l.Add(e); err != nil {
			t.Fatalf("Add(%q): %v", e, err)
		}
	}
	for _, tc := range []struct {
		local, domain string
		match, covers bool
	}{
		{"user", "x.test", true, true},
		{"USER", "X.Test", true, true}, // case-insensitive, local part too
		{`"user"`, "x.test", true, true},
		{"other", "x.test", false, true},
		{"anyone", "other.test", true, true},
		{"anyone", "OTHER.TEST", true, true},
		{"anyone", "example.test", true, true},
		{"anyone", "mail.example.test", false, false}, // a bare domain is not its subdomains
		{"anyone", "a.sub.test", true, true},
		{"anyone", "b.a.sub.test", true, true}, // any depth
		{"anyone", "sub.test", false, false},   // *.sub.test is not sub.test itself
		{"anyone", "xsub.test", false, false},
		{"boss", "eu.corp.test", true, true},
		{"Boss", "EU.corp.test", true, true},
		{"intern", "eu.corp.test", false, true},
		{"boss", "corp.test", false, false},
		{"quoted.name", "q.test", true, true},
		{`"quoted.name"`, "q.test", true, true},
		{"admin", "[192.0.2.1]", true, true},
		{"root", "[192.0.2.1]", false, true},
		{"admin", "[192.0.2.2]", false, false},
		{"who", "trail.test", true, true},
		{"who", "elsewhere.test", false, false},
		{"user", "x.test.evil", false, false},
	} {
		if got := l.Match(tc.local, tc.domain); got != tc.match {
			t.Errorf("Match(%q, %q) = %v, want %v", tc.local, tc.domain, got, tc.match)
		}
		if got := l.Covers(tc.domain); got != tc.covers {
			t.Errorf("Covers(%q) = %v, want %v", tc.domain, got, tc.covers)
		}
	}
	if l.Len() != 8 {
		t.Errorf("Len = %d, want 8", l.Len())
	}
	var empty List
	if empty.Match("a", "b.test") || empty.Covers("b.test") {
		t.Error("an empty list matches")
	}
}

func TestParseEntryErrors(t *testing.T) {
	for _, e := range []string{
		"", "  ", "*", "*@*", "@example.test", "user@", "user@*", "*.", "*.*.example.test",
		"a@b@*x.test", "user@exa*mple.test", "<user@example.test>", "two words", "a,b",
		"*.[192.0.2.1]", ".example.test", "a..b", `user@"x".test`,
	} {
		if _, _, _, err := ParseEntry(e); err == nil {
			t.Errorf("ParseEntry(%q) accepted", e)
		}
	}
	local, domain, sub, err := ParseEntry(" Me@*.Example.TEST ")
	if err != nil || local != "me" || domain != "example.test" || !sub {
		t.Errorf("ParseEntry: %q %q %v %v", local, domain, sub, err)
	}
}

func TestAddFile(t *testing.T) {
	dir := t.TempDir()
	good := filepath.Join(dir, "good")
	os.WriteFile(good, []byte("# local users\n\nalice@x.test   # Alice\n\t*.sub.test\r\nweird#name@x.test\n#bob@x.test\n"), 0o644)
	var l List
	if err := l.AddFile(good); err != nil {
		t.Fatal(err)
	}
	if l.Len() != 3 || !l.Match("alice", "x.test") || !l.Match("weird#name", "x.test") || l.Match("bob", "x.test") || !l.Match("z", "a.sub.test") {
		t.Errorf("file entries wrong: %d entries", l.Len())
	}
	bad := filepath.Join(dir, "bad")
	os.WriteFile(bad, []byte("ok.test\nfine@ok.test\nnot ok\n"), 0o644)
	if err := new(List).AddFile(bad); err == nil || !strings.Contains(err.Error(), bad+":3:") {
		t.Errorf("bad file: got %v, want an error naming %s:3", err, bad)
	}
	bad2 := filepath.Join(dir, "bad2")
	os.WriteFile(bad2, []byte("ok.test\n*@*\n"), 0o644)
	if err := new(List).AddFile(bad2); err == nil || !strings.Contains(err.Error(), bad2+":2:") {
		t.Errorf("bad entry: got %v, want an error naming %s:2", err, bad2)
	}
}

func TestProvisionErrors(t *testing.T) {
	missing := filepath.Join(t.TempDir(), "nope")
	for _, tc := range []struct {
		r    *Recipients
		want string
	}{
		{&Recipients{}, "recipients: allow or files is required"},
		{&Recipients{Allow: []string{"ok.test", "*@*"}}, "recipients: allow[1]:"},
		{&Recipients{Allow: []string{"ok.test"}, Files: []string{missing}}, "recipients: files[0]: open " + missing},
		{&Recipients{Files: []string{""}}, "recipients: files[0]: empty path"},
	} {
		err := smtptest.Provision(tc.r)
		if err == nil || !strings.HasPrefix(err.Error(), tc.want) {
			t.Errorf("%+v: got error %v, want %q...", tc.r, err, tc.want)
		}
	}
}

// TestRcpt runs the sub-handler in the engine: listed recipients pass to
// the next sub-handler, unknown users of local domains get 550 5.1.1,
// foreign domains 554 5.7.1, Postmaster is always accepted.
func TestRcpt(t *testing.T) {
	file := filepath.Join(t.TempDir(), "rcpts")
	os.WriteFile(file, []byte("fromfile@x.test\n"), 0o644)
	r := smtptest.Provisioned(t, &Recipients{Allow: []string{"example.test", "*@other.test", "user@x.test", "*.sub.test"}, Files: []string{file}})
	// The next sub-handler refuses "later@": a listed recipient is no
	// opinion, not an acceptance that skips the rest.
	next := smtptest.RcptFunc(func(to session.Path) *session.Reply {
		if strings.HasPrefix(to.Mailbox, "later@") {
			return session.NewReply(450, "4.2.1", "Try later")
		}
		return nil
	})
	c := smtptest.Serve(t, r, next).DialTCP().Hello(smtptest.Helo)
	c.Cmd("MAIL FROM:<a@client.test>", "250 ")
	for _, tc := range []struct{ rcpt, want string }{
		{"<anyone@example.test>", "250 2.1.5"},
		{"<Anyone@EXAMPLE.test>", "250 2.1.5"},
		{"<x@other.test>", "250 2.1.5"},
		{"<user@x.test>", "250 2.1.5"},
		{"<USER@X.TEST>", "250 2.1.5"},
		{`<"user"@x.test>`, "250 2.1.5"},
		{"<fromfile@x.test>", "250 2.1.5"},
		{"<deep@a.b.sub.test>", "250 2.1.5"},
		{"<nobody@x.test>", "550 5.1.1 No such user here"},
		{"<foreign@elsewhere.test>", "554 5.7.1 Relay access denied"},
		{"<user@x.test.elsewhere.test>", "554 5.7.1 Relay access denied"},
		{"<anyone@mail.example.test>", "554 5.7.1 Relay access denied"},
		{"<anyone@sub.test>", "554 5.7.1 Relay access denied"},
		{"<Postmaster>", "250 2.1.5"},
		{"<postmaster>", "250 2.1.5"},
		{"<PostMaster@x.test>", "250 2.1.5"}, // RFC 5321 4.5.1, for a local domain
		{"<postmaster@a.sub.test>", "250 2.1.5"},
		{"<postmaster@elsewhere.test>", "554 5.7.1 Relay access denied"},
		{"<later@example.test>", "450 4.2.1 Try later"},
		{"<nobody@[192.0.2.1]>", "554 5.7.1 Relay access denied"},
	} {
		c.Cmd("RCPT TO:"+tc.rcpt, tc.want)
	}
}

func TestCaddyfile(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want string // JSON of the result
	}{
		{`recipients example.test *@other.test user@x.test`, `{"allow":["example.test","*@other.test","user@x.test"]}`},
		{"recipients example.test *@other.test user@x.test {\n file /etc/mail/rcpts\n}", `{"allow":["example.test","*@other.test","user@x.test"],"files":["/etc/mail/rcpts"]}`},
		{"recipients {\n allow a.test b.test\n allow *.c.test\n file one\n file two\n}", `{"allow":["a.test","b.test","*.c.test"],"files":["one","two"]}`},
		{"recipients {\n file only\n}", `{"files":["only"]}`},
	} {
		var r Recipients
		if err := r.UnmarshalCaddyfile(caddyfile.NewTestDispenser(tc.in)); err != nil {
			t.Errorf("%q: %v", tc.in, err)
			continue
		}
		got, _ := json.Marshal(&r)
		if string(got) != tc.want {
			t.Errorf("%q: got %s, want %s", tc.in, got, tc.want)
		}
	}
	for _, tc := range []struct{ in, want string }{
		{`recipients`, "no entries"},
		{`recipients *@*`, "the only domain wildcard"},
		{"recipients {\n allow\n}", "wrong argument count"},
		{"recipients {\n file\n}", "wrong argument count"},
		{"recipients {\n file a b\n}", "wrong argument count"},
		{"recipients {\n deny x.test\n}", `unknown option "deny" (known: allow, file)`},
		{"recipients {\n allow @x.test\n}", "empty local part"},
	} {
		var r Recipients
		err := r.UnmarshalCaddyfile(caddyfile.NewTestDispenser(tc.in))
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%q: got error %v, want one containing %q", tc.in, err, tc.want)
		}
	}
}

// TestProvisionRereadsFiles: each Provision (each Caddy reload) reads the
// files anew.
func TestProvisionRereadsFiles(t *testing.T) {
	file := filepath.Join(t.TempDir(), "rcpts")
	os.WriteFile(file, []byte("alice@x.test\n"), 0o644)
	first := smtptest.Provisioned(t, &Recipients{Files: []string{file}})
	os.WriteFile(file, []byte("bob@x.test\n"), 0o644)
	second := smtptest.Provisioned(t, &Recipients{Files: []string{file}})
	if !first.list.Match("alice", "x.test") || first.list.Match("bob", "x.test") {
		t.Error("the first instance changed after the file did")
	}
	if second.list.Match("alice", "x.test") || !second.list.Match("bob", "x.test") {
		t.Error("the second instance did not read the changed file")
	}
}
