package integration_test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestNamedMatchersSplitRecipients sends one message for two domains; named
// matchers route each domain's recipients to its own Maildir, and each
// delivery sees only its own recipients (only the
// matching recipient's Maildir is made under each base).
func TestNamedMatchersSplitRecipients(t *testing.T) {
	base := t.TempDir()
	one, two := filepath.Join(base, "one"), filepath.Join(base, "two")
	addr, _ := startCaddyfile(t, esmtpCaddyfile(`
					recipients one.test two.test
					@one rcpt one.test
					@two {
						rcpt *@two.test
						tls false
					}
					maildir @one `+one+`/{esmtp.rcpt.local}
					maildir @two `+two+`/{esmtp.rcpt.local}
`))
	c := dial(t, addr)
	c.expect("220 ")
	c.send("EHLO client.test\r\nMAIL FROM:<a@client.test>\r\nRCPT TO:<x@one.test>\r\nRCPT TO:<y@two.test>\r\nRCPT TO:<z@elsewhere.test>\r\nDATA\r\n")
	c.expect("250 ")
	c.expect("250 2.1.0")
	c.expect("250 2.1.5")
	c.expect("250 2.1.5")
	c.expect("554 5.7.1")
	c.expect("354 ")
	c.send(stuffed(message) + ".\r\nQUIT\r\n")
	c.expect("250 2.0.0")
	c.expect("221 ")

	// Each maildir saw only its own recipients: one per-recipient Maildir
	// under each base directory.
	for dir, local := range map[string]string{one: "x", two: "y"} {
		entries, err := os.ReadDir(dir)
		if err != nil {
			t.Fatal(err)
		}
		if len(entries) != 1 || entries[0].Name() != local {
			t.Fatalf("%s holds %v, want only the Maildir of %s", dir, entries, local)
		}
		files := delivered(t, filepath.Join(dir, local))
		if len(files) != 1 {
			t.Fatalf("%s: %d files, want 1", dir, len(files))
		}
		splitReceived(t, files[0], "mx.example.test", []byte(message))
	}
}

// TestMaildirRcptCheckBehindMatch: in real Caddy, a per-recipient maildir
// behind a named matcher folds the case of its recipients, and refuses at
// RCPT those of its recipients whose Maildir path would have an element
// longer than 255 bytes; a recipient of another matcher is not its
// business, however long.
func TestMaildirRcptCheckBehindMatch(t *testing.T) {
	base := t.TempDir()
	one, two := filepath.Join(base, "one"), filepath.Join(base, "two")
	addr, _ := startCaddyfile(t, esmtpCaddyfile(`
					recipients one.test *.one.test *.two.test
					@one rcpt one.test *.one.test
					@two rcpt *.two.test
					maildir @one {
						path `+one+`/{esmtp.rcpt}.maildir
					}
					maildir @two `+two+`
`))
	// 64 + 1 + 184 bytes: with ".maildir", a 257-byte file name.
	long := strings.Repeat("l", 64) + "@" + strings.Repeat("d", 63) + "." + strings.Repeat("d", 63) + "." + strings.Repeat("d", 47)
	c := dial(t, addr)
	c.expect("220 ")
	c.send("EHLO client.test\r\nMAIL FROM:<a@client.test>\r\n")
	c.expect("250 ")
	c.expect("250 2.1.0")
	c.send("RCPT TO:<" + long + ".one.test>\r\n")
	c.expect("553 5.1.3 ")
	c.send("RCPT TO:<" + long + ".two.test>\r\nRCPT TO:<Bob@One.TEST>\r\nDATA\r\n")
	c.expect("250 2.1.5")
	c.expect("250 2.1.5")
	c.expect("354 ")
	c.send(stuffed(message) + ".\r\nQUIT\r\n")
	c.expect("250 2.0.0")
	c.expect("221 ")

	entries, err := os.ReadDir(one)
	if err != nil {
		t.Fatal(err)
	}
	if len(entries) != 1 || entries[0].Name() != "bob@one.test.maildir" {
		t.Fatalf("%s holds %v, want only bob@one.test.maildir", one, entries)
	}
	for _, dir := range []string{filepath.Join(one, "bob@one.test.maildir"), two} {
		files := delivered(t, dir)
		if len(files) != 1 {
			t.Fatalf("%s: %d files, want 1", dir, len(files))
		}
		splitReceived(t, files[0], "mx.example.test", []byte(message))
	}
}
