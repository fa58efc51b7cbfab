package integration_test

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"
)

// relayCaddyfile is two mail servers in one Caddy (caddy.Load runs one
// configuration per process): A on %PORTA% is the README's submission
// example: STARTTLS required, AUTH for alice, relay to a smart host, which
// is B on %PORTB%: STARTTLS, AUTH for the relay's own account, mail for
// example.test only, into a Maildir. The relay verifies B's certificate
// against Caddy's local CA (%ROOT%) and logs in with a password from the
// environment.
const relayCaddyfile = `{
	admin off
	persist_config off
	local_certs
	skip_install_trust
	storage file_system {
		root %STORAGE%
	}
	layer4 {
		127.0.0.1:%PORTA% {
			route {
				esmtp {
					hostname relay.example.test
					starttls
					require_tls
					auth {
						alice %HASH%
					}
					relay smtp://127.0.0.1:%PORTB% {
						tls_server_name mx.example.test
						tls_ca %ROOT%
						auth_user relayer
						auth_password {env.ESMTP_TEST_RELAY_PASSWORD}
					}
				}
			}
		}
		127.0.0.1:%PORTB% {
			route {
				esmtp {
					hostname mx.example.test
					starttls
					auth {
						relayer %HASH%
					}
					recipients example.test
					maildir %MAIL%
				}
			}
		}
	}
}
`

// TestRelayToSecondCaddy sends a message through A to B: the client gets
// A's DSN, B's per-recipient replies through A, and B's Maildir holds the
// message byte for byte, with A's Received: field and B's on top.
func TestRelayToSecondCaddy(t *testing.T) {
	t.Setenv("ESMTP_TEST_RELAY_PASSWORD", testPassword)
	dir := t.TempDir()
	storage := filepath.Join(dir, "caddy")
	maildir := filepath.Join(dir, "mail")
	portA, portB := freePort(t), freePort(t)
	root := localRoot(storage)
	cfg := strings.NewReplacer("%PORTA%", fmt.Sprint(portA), "%PORTB%", fmt.Sprint(portB), "%STORAGE%", storage,
		"%HASH%", testHash, "%MAIL%", maildir, "%ROOT%", root).Replace(relayCaddyfile)

	// The relay reads tls_ca when it is provisioned: load B alone first,
	// so that Caddy's local CA exists, then both.
	onlyB := cfg[:strings.Index(cfg, "\t\t127.0.0.1:"+fmt.Sprint(portA))] + cfg[strings.Index(cfg, "\t\t127.0.0.1:"+fmt.Sprint(portB)):]
	load(t, adapt(t, onlyB))
	waitCertificate(t, "mx.example.test")
	load(t, adapt(t, cfg))
	addrA := fmt.Sprintf("127.0.0.1:%d", portA)
	waitListening(t, addrA)
	waitListening(t, fmt.Sprintf("127.0.0.1:%d", portB))
	waitCertificate(t, "relay.example.test")

	c, err := smtp.DialStartTLS(addrA, tlsConfig(t, root, "relay.example.test"))
	if err != nil {
		t.Fatalf("STARTTLS to A: %v", err)
	}
	defer c.Close()
	if err := c.Hello("client.test"); err != nil {
		t.Fatal(err)
	}
	if ok, _ := c.Extension("DSN"); !ok {
		t.Error("A does not advertise DSN")
	}
	if err := c.Auth(sasl.NewPlainClient("", "alice", testPassword)); err != nil {
		t.Fatalf("AUTH as alice: %v", err)
	}
	// AUTH= as Exim and sendmail send it after logging in (RFC 4954 5):
	// accepted by A, passed on to B, which offers AUTH, and accepted there.
	authParam := "alice@client.test"
	if err := c.Mail("alice@client.test", &smtp.MailOptions{Return: smtp.DSNReturnHeaders, EnvelopeID: "env-1", Auth: &authParam}); err != nil {
		t.Fatalf("MAIL: %v", err)
	}
	if err := c.Rcpt("bob@example.test", &smtp.RcptOptions{Notify: []smtp.DSNNotify{smtp.DSNNotifyFailure}}); err != nil {
		t.Fatalf("RCPT bob: %v", err)
	}
	// B's answer for a recipient it does not take, passed through by A.
	err = c.Rcpt("carol@foreign.test", nil)
	if se, ok := err.(*smtp.SMTPError); !ok || se.Code != 554 || se.EnhancedCode != (smtp.EnhancedCode{5, 7, 1}) {
		t.Fatalf("RCPT carol@foreign.test: got %v, want B's 554 5.7.1", err)
	}
	w, err := c.Data()
	if err != nil {
		t.Fatalf("DATA: %v", err)
	}
	if _, err := w.Write([]byte(message)); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatalf("end of data: %v", err)
	}
	c.Quit()

	files := delivered(t, maildir)
	if len(files) != 1 {
		t.Fatalf("%d files in B's Maildir, want 1", len(files))
	}
	first, rest := cutField(t, files[0])
	if !strings.HasPrefix(first, "Received: from relay.example.test ([127.0.0.1])\r\n\tby mx.example.test with ESMTPSA ") {
		t.Errorf("B's Received: field: %q", first)
	}
	splitReceived(t, rest, "relay.example.test", []byte(message))
	if !strings.HasPrefix(string(rest), "Received: from client.test ([127.0.0.1])\r\n\tby relay.example.test with ESMTPSA ") {
		t.Errorf("A's Received: field: %q", rest[:min(len(rest), 120)])
	}

	// Without AUTH, A relays for nobody: not even for example.test, which
	// B would take.
	c2, err := smtp.DialStartTLS(addrA, tlsConfig(t, root, "relay.example.test"))
	if err != nil {
		t.Fatalf("STARTTLS to A: %v", err)
	}
	defer c2.Close()
	if err := c2.Mail("mallory@client.test", nil); err != nil {
		t.Fatalf("MAIL: %v", err)
	}
	err = c2.Rcpt("bob@example.test", nil)
	if se, ok := err.(*smtp.SMTPError); !ok || se.Code != 554 || se.Message != "Relay access denied" {
		t.Fatalf("unauthenticated RCPT: got %v, want 554 5.7.1 Relay access denied", err)
	}
	if files := delivered(t, maildir); len(files) != 1 {
		t.Fatalf("%d files in B's Maildir, want 1", len(files))
	}
}

// cutField splits the first header field (with its folded lines) off b.
func cutField(t *testing.T, b []byte) (string, []byte) {
	t.Helper()
	end := 0
	for {
		i := bytes.Index(b[end:], []byte("\r\n"))
		if i < 0 {
			t.Fatalf("unterminated field in %q", b)
		}
		end += i + 2
		if end >= len(b) || (b[end] != '\t' && b[end] != ' ') {
			return string(b[:end]), b[end:]
		}
	}
}

// TestRelaySmtpSink relays to Postfix's smtp-sink, which dumps what it
// gets: the DSN parameters passed on, the message with our Received:
// field, dot-unstuffed by smtp-sink as it should be, and the field that
// example_judge adds: it comes after relay in the list, and relay sends
// the final message (judges run before every delivery).
func TestRelaySmtpSink(t *testing.T) {
	sink := need(t, "smtp-sink")
	// Not under t.TempDir (mode 0700): smtp-sink may run as nobody.
	dumps, err := os.MkdirTemp("", "esmtp-smtp-sink-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dumps) })
	sinkPort := freePort(t)
	args := []string{"-d", dumps + "/%M.", "-h", "sink.test"}
	if os.Geteuid() == 0 {
		// smtp-sink refuses to keep root privileges.
		if err := os.Chmod(dumps, 0o777); err != nil {
			t.Fatal(err)
		}
		args = append(args, "-u", "nobody")
	}
	args = append(args, fmt.Sprintf("127.0.0.1:%d", sinkPort), "10")
	cmd := exec.Command(sink, args...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatalf("starting smtp-sink: %v", err)
	}
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
		if t.Failed() {
			t.Logf("smtp-sink output: %s", out.String())
		}
	})
	waitListening(t, fmt.Sprintf("127.0.0.1:%d", sinkPort))

	addr, _ := startCaddyfile(t, fmt.Sprintf(`{
	admin off
	persist_config off
	layer4 {
		127.0.0.1:%%PORT%% {
			route {
				esmtp {
					hostname relay.example.test
					relay smtp://127.0.0.1:%d {
						domains example.test
						require_tls off
					}
					example_judge
				}
			}
		}
	}
}
`, sinkPort))
	c := dial(t, addr)
	c.expect("220 ")
	c.send("EHLO client.test\r\n")
	if lines := c.expect("250 "); !containsLine(lines, "250-DSN") && !containsLine(lines, "250 DSN") {
		t.Errorf("no DSN in %q", lines)
	}
	c.send("MAIL FROM:<a@client.test> RET=HDRS ENVID=env+2B1\r\n")
	c.expect("250 2.1.0")
	c.send("RCPT TO:<bob@example.test> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;bob+40example.test\r\n")
	c.expect("250 2.1.5")
	c.send("RCPT TO:<eve@foreign.test>\r\n")
	c.expect("554 5.7.1 Relay access denied")
	c.send("DATA\r\n")
	c.expect("354 ")
	c.send(stuffed(message) + ".\r\nQUIT\r\n")
	c.expect("250 2.0.0")
	c.expect("221 ")

	var dump []byte
	deadline := time.Now().Add(30 * time.Second)
	for {
		entries, _ := os.ReadDir(dumps)
		if len(entries) == 1 {
			dump, _ = os.ReadFile(filepath.Join(dumps, entries[0].Name()))
			if bytes.HasSuffix(dump, []byte("\n\n")) {
				break
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("no complete dump from smtp-sink: %d files, %q", len(entries), dump)
		}
		time.Sleep(20 * time.Millisecond)
	}
	text := string(dump)
	for _, want := range []string{
		"X-Helo-Args: relay.example.test\n",
		"X-Mail-Args: <a@client.test> BODY=8BITMIME RET=HDRS ENVID=env+2B1\n",
		"X-Rcpt-Args: <bob@example.test> NOTIFY=SUCCESS,FAILURE ORCPT=RFC822;bob@example.test\n",
	} {
		if !strings.Contains(text, want) {
			t.Errorf("smtp-sink dump lacks %q:\n%s", want, text)
		}
	}
	if strings.Count(text, "X-Rcpt-Args:") != 1 {
		t.Errorf("the refused recipient reached smtp-sink:\n%s", text)
	}
	// smtp-sink writes lines with LF: back to CRLF, without the dump's
	// final empty line, then its own three-line Received: field.
	i := strings.Index(text, "\nReceived: from relay.example.test ")
	if i < 0 {
		t.Fatalf("no Received: field of smtp-sink in:\n%s", text)
	}
	msg := []byte(strings.ReplaceAll(strings.TrimSuffix(text[i+1:], "\n"), "\n", "\r\n"))
	_, msg = cutField(t, msg)
	judged, msg := cutField(t, msg)
	if !strings.HasPrefix(judged, "X-Example-Judge: passed; ") {
		t.Errorf("the judge's field did not reach the upstream: %q", judged)
	}
	splitReceived(t, msg, "relay.example.test", []byte(message))
}

func containsLine(lines []string, l string) bool {
	for _, x := range lines {
		if x == l {
			return true
		}
	}
	return false
}
