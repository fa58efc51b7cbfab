package integration_test

import (
	"fmt"
	"net/smtp"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// message is a test message with a dot-leading line and a folded header,
// CRLF line ends as on the wire (after unstuffing).
const message = "From: a@client.test\r\n" +
	"To: b@example.test\r\n" +
	"Subject: a folded\r\n subject\r\n" +
	"\r\n" +
	"first line\r\n" +
	".a line that starts with a dot\r\n" +
	"..two dots\r\n" +
	"last line\r\n"

// stuffed dot-stuffs a message for DATA (RFC 5321 4.5.2).
func stuffed(m string) string {
	if strings.HasPrefix(m, ".") {
		m = "." + m
	}
	return strings.ReplaceAll(m, "\r\n.", "\r\n..")
}

func TestCaddyfileNetSMTP(t *testing.T) {
	addr, maildir := startCaddyfile(t, issueCaddyfile)
	err := smtp.SendMail(addr, nil, "a@client.test", []string{"b@example.test", "c@example.test"}, []byte(message))
	if err != nil {
		t.Fatalf("net/smtp SendMail: %v", err)
	}
	files := delivered(t, maildir)
	if len(files) != 1 {
		t.Fatalf("%d files delivered, want 1 (one file for two recipients of one Maildir)", len(files))
	}
	rcv := splitReceived(t, files[0], "mx.example.test", []byte(message))
	// Go's net/smtp asks for SMTPUTF8 when it is advertised (RFC 6531: UTF8SMTP).
	if !strings.Contains(rcv, "from localhost ([127.0.0.1])") || !strings.Contains(rcv, "with UTF8SMTP id ") {
		t.Errorf("Received: field = %q", rcv)
	}
}

func TestJSONConfig(t *testing.T) {
	port := freePort(t)
	maildir := filepath.Join(t.TempDir(), "mail")
	cfg := fmt.Sprintf(`{
		"admin": {"disabled": true, "config": {"persist": false}},
		"apps": {"layer4": {"servers": {"smtp": {
			"listen": ["127.0.0.1:%d"],
			"routes": [{"handle": [{
				"handler": "esmtp",
				"hostname": "json.example.test",
				"max_message_size": 10485760,
				"max_recipients": 2,
				"command_timeout": "2m",
				"handlers": [{"handler": "maildir", "path": %q}]
			}]}]
		}}}}
	}`, port, maildir)
	load(t, []byte(cfg))
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	waitListening(t, addr)

	c := dial(t, addr)
	if g := c.expect("220 ")[0]; g != "220 json.example.test ESMTP" {
		t.Errorf("greeting %q", g)
	}
	c.send("EHLO client.test\r\n")
	ehlo := c.expect("250 ")
	if !strings.Contains(strings.Join(ehlo, "\n"), "SIZE 10485760") {
		t.Errorf("EHLO reply does not advertise the configured SIZE: %q", ehlo)
	}
	c.send("MAIL FROM:<a@client.test>\r\n")
	c.expect("250 2.1.0")
	for _, r := range []string{"b", "c"} {
		c.send("RCPT TO:<" + r + "@example.test>\r\n")
		c.expect("250 2.1.5")
	}
	c.send("RCPT TO:<d@example.test>\r\n")
	c.expect("452 4.5.3") // max_recipients 2
	c.send("DATA\r\n")
	c.expect("354 ")
	c.send(stuffed(message) + ".\r\n")
	c.expect("250 2.0.0")
	c.send("QUIT\r\n")
	c.expect("221 2.0.0")

	files := delivered(t, maildir)
	if len(files) != 1 {
		t.Fatalf("%d files delivered, want 1", len(files))
	}
	splitReceived(t, files[0], "json.example.test", []byte(message))
}

// TestPipelined sends whole batches in one write, as a PIPELINING client
// does, then a BDAT transaction.
func TestPipelined(t *testing.T) {
	addr, maildir := startCaddyfile(t, issueCaddyfile)
	c := dial(t, addr)
	c.expect("220 ")
	c.send("EHLO client.test\r\n")
	if !strings.Contains(strings.Join(c.expect("250 "), "\n"), "PIPELINING") {
		t.Fatal("PIPELINING not advertised")
	}
	c.send("MAIL FROM:<a@client.test> BODY=8BITMIME\r\nRCPT TO:<b@example.test>\r\nRCPT TO:<bad address>\r\nDATA\r\n")
	c.expect("250 2.1.0")
	c.expect("250 2.1.5")
	c.expect("501 5.1.3")
	c.expect("354 ")
	c.send(stuffed(message) + ".\r\nMAIL FROM:<>\r\nRCPT TO:<c@example.test>\r\nBDAT 15\r\nSubject: bdat\r\nBDAT 8 LAST\r\n\r\nbody\r\nQUIT\r\n")
	c.expect("250 2.0.0")
	c.expect("250 2.1.0")
	c.expect("250 2.1.5")
	c.expect("250 2.0.0")
	c.expect("250 2.0.0")
	c.expect("221 2.0.0")

	files := delivered(t, maildir)
	if len(files) != 2 {
		t.Fatalf("%d files delivered, want 2", len(files))
	}
	var sawData, sawBdat bool
	for _, f := range files {
		if strings.Contains(string(f), "Subject: bdat") {
			splitReceived(t, f, "mx.example.test", []byte("Subject: bdat\r\n\r\nbody\r\n"))
			sawBdat = true
		} else {
			splitReceived(t, f, "mx.example.test", []byte(message))
			sawData = true
		}
	}
	if !sawData || !sawBdat {
		t.Errorf("delivered DATA message: %v, BDAT message: %v", sawData, sawBdat)
	}
}

// TestSmugglingRefused sends the SMTP smuggling payload of 2023 through real
// Caddy: the bare-LF "end of data" and the smuggled command are message
// bytes, the message is refused after the real end, and nothing is stored.
func TestSmugglingRefused(t *testing.T) {
	addr, maildir := startCaddyfile(t, issueCaddyfile)
	c := dial(t, addr)
	c.expect("220 ")
	c.send("EHLO client.test\r\n")
	c.expect("250 ")
	c.send("MAIL FROM:<a@client.test>\r\n")
	c.expect("250 ")
	c.send("RCPT TO:<b@example.test>\r\n")
	c.expect("250 ")
	c.send("DATA\r\n")
	c.expect("354 ")
	c.send("Subject: x\r\n\r\nhello\n.\nMAIL FROM:<admin@example.test>\r\nRCPT TO:<victim@example.test>\r\nDATA\r\nsmuggled\r\n.\r\n")
	c.expect("550 5.5.2")
	c.send("NOOP\r\n")
	c.expect("250 2.0.0") // the next reply is the NOOP's: nothing smuggled was answered
	if files := delivered(t, maildir); len(files) != 0 {
		t.Fatalf("%d messages delivered from a smuggling attempt", len(files))
	}
}

func TestExampleCaddyfile(t *testing.T) {
	src, err := os.ReadFile("../examples/Caddyfile")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(src), "127.0.0.1:2525") || !strings.Contains(string(src), "maildir ./mail") {
		t.Fatal("examples/Caddyfile no longer listens on 127.0.0.1:2525 with maildir ./mail, as README says")
	}
	cf := strings.NewReplacer("127.0.0.1:2525", "127.0.0.1:%PORT%", "maildir ./mail", "maildir %MAIL%").Replace(string(src))
	cf = strings.Replace(cf, "{\n", "{\n\tadmin off\n\tpersist_config off\n", 1)
	addr, maildir := startCaddyfile(t, cf)
	if err := smtp.SendMail(addr, nil, "a@client.test", []string{"b@example.test"}, []byte(message)); err != nil {
		t.Fatal(err)
	}
	if files := delivered(t, maildir); len(files) != 1 {
		t.Fatalf("%d files delivered, want 1", len(files))
	}
}

func TestPythonSmtplib(t *testing.T) {
	python := need(t, "python3")
	addr, maildir := startCaddyfile(t, issueCaddyfile)
	host, port, _ := strings.Cut(addr, ":")
	script := `
import smtplib, sys
s = smtplib.SMTP(sys.argv[1], int(sys.argv[2]))
code, ehlo = s.ehlo("python.test")
assert code == 250, code
assert s.has_extn("smtputf8") and s.has_extn("pipelining") and s.has_extn("chunking"), ehlo
msg = open(sys.argv[3], "rb").read()
refused = s.sendmail("a@client.test", ["b@example.test"], msg)
assert refused == {}, refused
# An internationalised address (RFC 6531).
refused = s.sendmail("jos\u00e9@client.test", ["m\u00fcller@b\u00fccher.example"], msg, mail_options=["SMTPUTF8"])
assert refused == {}, refused
try:
    s.sendmail("jos\u00e9@client.test", ["b@example.test"], msg)
    raise SystemExit("UTF-8 sender without SMTPUTF8 was accepted")
except smtplib.SMTPSenderRefused as e:
    assert e.smtp_code == 553, e
s.quit()
print("ok")
`
	msgFile := filepath.Join(t.TempDir(), "msg")
	os.WriteFile(msgFile, []byte(message), 0o600)
	out, err := exec.Command(python, "-c", script, host, port, msgFile).CombinedOutput()
	if err != nil || strings.TrimSpace(string(out)) != "ok" {
		t.Fatalf("python smtplib: %v\n%s", err, out)
	}
	files := delivered(t, maildir)
	if len(files) != 2 {
		t.Fatalf("%d files delivered, want 2", len(files))
	}
	var utf8Seen bool
	for _, f := range files {
		rcv := splitReceived(t, f, "mx.example.test", []byte(message))
		if strings.Contains(rcv, "with UTF8SMTP ") {
			utf8Seen = true
		}
	}
	if !utf8Seen {
		t.Error("no Received: field says UTF8SMTP for the SMTPUTF8 transaction")
	}
}

func TestSwaks(t *testing.T) {
	swaks := need(t, "swaks")
	addr, maildir := startCaddyfile(t, issueCaddyfile)
	host, port, _ := strings.Cut(addr, ":")
	// swaks ends the data with "\r\n.\r\n" itself, so the file holds the
	// message without its last CRLF.
	msgFile := filepath.Join(t.TempDir(), "msg")
	os.WriteFile(msgFile, []byte(strings.TrimSuffix(message, "\r\n")), 0o600)
	for _, extra := range [][]string{nil, {"--pipeline"}} {
		args := append([]string{"--server", host, "--port", port, "--helo", "swaks.test",
			"--from", "a@client.test", "--to", "b@example.test", "--data", "@" + msgFile}, extra...)
		out, err := exec.Command(swaks, args...).CombinedOutput()
		if err != nil {
			t.Fatalf("swaks %v: %v\n%s", extra, err, out)
		}
		if !strings.Contains(string(out), "<-  250 2.0.0 ") {
			t.Fatalf("swaks %v: no 250 2.0.0 after data:\n%s", extra, out)
		}
	}
	files := delivered(t, maildir)
	if len(files) != 2 {
		t.Fatalf("%d files delivered, want 2", len(files))
	}
	for _, f := range files {
		splitReceived(t, f, "mx.example.test", []byte(message))
	}
}
