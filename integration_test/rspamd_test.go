package integration_test

import (
	"strings"
	"testing"

	"github.com/caddy-esmtp/caddy-esmtp/internal/filtertest"
)

// TestRspamd: in real Caddy, the rspamd sub-handler has each message
// scanned by a real rspamd 3.x (its normal worker, HTTP /checkv2): the
// GTUBE test message is refused with 554 5.7.1 and rspamd's message and
// nothing is delivered; a clean message is delivered to the Maildir with
// the headers rspamd's milter_headers module asks for (X-Spamd-Result,
// X-Rspamd-Queue-Id naming our queue id, Authentication-Results) and no
// spam mark.
func TestRspamd(t *testing.T) {
	r := filtertest.StartRspamd(t)
	addr, maildir := startCaddyfile(t, esmtpCaddyfile(`
					rspamd `+r.URL+` {
						timeout 30s
					}
					maildir %MAIL%
`))
	c := dial(t, addr)
	c.expect("220 ")
	c.send("EHLO client.test\r\n")
	c.expect("250 ")

	gtube := "From: a@client.test\r\nTo: b@example.test\r\nSubject: test\r\n\r\n" + filtertest.GTUBE + "\r\n"
	c.send("MAIL FROM:<a@client.test>\r\nRCPT TO:<b@example.test>\r\nDATA\r\n")
	c.expect("250 2.1.0")
	c.expect("250 2.1.5")
	c.expect("354 ")
	c.send(stuffed(gtube) + ".\r\n")
	c.expect("554 5.7.1 Gtube pattern")

	c.send("MAIL FROM:<a@client.test>\r\nRCPT TO:<b@example.test>\r\nDATA\r\n")
	c.expect("250 2.1.0")
	c.expect("250 2.1.5")
	c.expect("354 ")
	c.send(stuffed(message) + ".\r\nQUIT\r\n")
	ok := c.expect("250 2.0.0")
	c.expect("221 ")
	qid := strings.Fields(ok[len(ok)-1])[2]

	files := delivered(t, maildir)
	if len(files) != 1 {
		t.Fatalf("%d messages delivered, want 1 (the clean one)", len(files))
	}
	got := string(files[0])
	head, body, _ := strings.Cut(got, "\r\n\r\n")
	for _, want := range []string{
		"\r\nX-Spamd-Result: default: False [",
		"\r\nX-Rspamd-Queue-Id: " + qid + "\r\n",
		"\r\nAuthentication-Results: mx.example.test;",
	} {
		if !strings.Contains("\r\n"+head+"\r\n", want) {
			t.Errorf("delivered copy lacks %q:\n%s", want, head)
		}
	}
	if strings.Contains(head, "\r\nX-Spam: ") || strings.Contains(head, "GTUBE") {
		t.Errorf("clean message marked as spam:\n%s", head)
	}
	_, sentBody, _ := strings.Cut(message, "\r\n\r\n")
	if body != sentBody || !strings.Contains(head, "\r\nFrom: a@client.test\r\nTo: b@example.test\r\nSubject: a folded\r\n subject\r\n") {
		t.Errorf("the message itself changed:\n%s", got)
	}
}

// TestRspamdMilter: in real Caddy, the milter sub-handler has each message
// scanned by the same real rspamd through its proxy worker in milter mode:
// GTUBE is refused with rspamd's 5xx and nothing is delivered; a clean
// message is delivered with the headers rspamd asks for through the
// milter's add-header actions (X-Rspamd-Queue-Id naming our queue id, sent
// as the milter macro i).
func TestRspamdMilter(t *testing.T) {
	r := filtertest.StartRspamd(t)
	addr, maildir := startCaddyfile(t, esmtpCaddyfile(`
					milter `+r.Milter+`
					maildir %MAIL%
`))
	c := dial(t, addr)
	c.expect("220 ")
	c.send("EHLO client.test\r\n")
	c.expect("250 ")

	gtube := "From: a@client.test\r\nTo: b@example.test\r\nSubject: test\r\n\r\n" + filtertest.GTUBE + "\r\n"
	c.send("MAIL FROM:<a@client.test>\r\nRCPT TO:<b@example.test>\r\nDATA\r\n")
	c.expect("250 2.1.0")
	c.expect("250 2.1.5")
	c.expect("354 ")
	c.send(stuffed(gtube) + ".\r\n")
	if last := c.expect("5"); !strings.Contains(last[len(last)-1], "Gtube pattern") {
		t.Errorf("GTUBE refused with %q, want rspamd's message", last)
	}

	c.send("MAIL FROM:<a@client.test>\r\nRCPT TO:<b@example.test>\r\nDATA\r\n")
	c.expect("250 2.1.0")
	c.expect("250 2.1.5")
	c.expect("354 ")
	c.send(stuffed(message) + ".\r\nQUIT\r\n")
	ok := c.expect("250 2.0.0")
	c.expect("221 ")
	qid := strings.Fields(ok[len(ok)-1])[2]

	files := delivered(t, maildir)
	if len(files) != 1 {
		t.Fatalf("%d messages delivered, want 1 (the clean one)", len(files))
	}
	head, body, _ := strings.Cut(string(files[0]), "\r\n\r\n")
	for _, want := range []string{
		"\r\nX-Spamd-Result: default: False [",
		"\r\nX-Rspamd-Queue-Id: " + qid + "\r\n",
	} {
		if !strings.Contains("\r\n"+head+"\r\n", want) {
			t.Errorf("delivered copy lacks %q:\n%s", want, head)
		}
	}
	if strings.Contains(head, "\r\n"+r.SpamHeader+": ") {
		t.Errorf("clean message marked as spam:\n%s", head)
	}
	if _, sentBody, _ := strings.Cut(message, "\r\n\r\n"); body != sentBody {
		t.Errorf("the body changed:\n%s", body)
	}
}
