package integration_test

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// proxyCaddyfile has a listener with caddy-l4's proxy_protocol handler in
// front of esmtp, and one where a proxy may use XCLIENT; logs go to %LOG%.
const proxyCaddyfile = `{
	admin off
	persist_config off
	log {
		output file %LOG%
		level INFO
	}
	layer4 {
		127.0.0.1:%PORT% {
			route {
				proxy_protocol {
					allow 127.0.0.1/32
				}
				esmtp {
					hostname mx.example.test
					xclient_networks 127.0.0.1/32
					maildir %MAIL%
				}
			}
		}
		127.0.0.1:%PORT2% {
			route {
				esmtp {
					hostname mx.example.test
					xclient_networks 192.0.2.0/24 127.0.0.1/32
					maildir %MAIL%
				}
			}
		}
	}
}
`

// startProxyCaddy starts proxyCaddyfile and returns the proxy_protocol
// listener, the XCLIENT listener, the Maildir and the log file.
func startProxyCaddy(t *testing.T) (proxied, xclient, maildir, logFile string) {
	t.Helper()
	logFile = filepath.Join(t.TempDir(), "esmtp.log")
	port2 := freePort(t)
	cf := strings.NewReplacer("%LOG%", logFile, "%PORT2%", fmt.Sprint(port2)).Replace(proxyCaddyfile)
	proxied, maildir = startCaddyfile(t, cf)
	xclient = fmt.Sprintf("127.0.0.1:%d", port2)
	waitListening(t, xclient)
	return proxied, xclient, maildir, logFile
}

// logEntries returns the JSON log lines of file with the message msg.
func logEntries(t *testing.T, file, msg string) []map[string]any {
	t.Helper()
	data, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	var out []map[string]any
	for _, l := range bytes.Split(data, []byte("\n")) {
		var e map[string]any
		if json.Unmarshal(l, &e) == nil && e["msg"] == msg {
			out = append(out, e)
		}
	}
	return out
}

// messageLog returns the per-message log line of queue id id.
func messageLog(t *testing.T, file, id string) map[string]any {
	t.Helper()
	for _, e := range logEntries(t, file, "message") {
		if e["queue_id"] == id {
			return e
		}
	}
	data, _ := os.ReadFile(file)
	t.Fatalf("no message log line for queue id %s in:\n%s", id, data)
	return nil
}

// sendOne runs one transaction on c (greeting already read, no EHLO yet)
// and returns the queue id from the 250 reply.
func sendOne(c *conn, helo string) string {
	c.t.Helper()
	if helo != "" {
		c.send("EHLO " + helo + "\r\n")
		c.expect("250 ")
	}
	c.send("MAIL FROM:<a@client.test>\r\nRCPT TO:<b@example.test>\r\nDATA\r\n")
	c.expect("250 2.1.0")
	c.expect("250 2.1.5")
	c.expect("354 ")
	c.send(stuffed(message) + ".\r\n")
	return strings.Fields(c.expect("250 2.0.0 ")[0])[2]
}

// receivedFor returns the Received: field of the delivered message with
// queue id id, after checking that the rest is the message sent.
func receivedFor(t *testing.T, maildir, id string) string {
	t.Helper()
	for _, f := range delivered(t, maildir) {
		if bytes.Contains(f, []byte(" id "+id+"\r\n")) {
			return splitReceived(t, f, "mx.example.test", []byte(message))
		}
	}
	t.Fatalf("no message with queue id %s delivered", id)
	return ""
}

// proxyV2 builds a PROXY protocol version 2 header (PROXY command, TCP)
// for the given addresses, by hand as the spec lays it out.
func proxyV2(src, dst netip.AddrPort) []byte {
	b := []byte("\r\n\r\n\x00\r\nQUIT\n")
	b = append(b, 0x21) // version 2, PROXY
	if src.Addr().Is4() {
		b = append(b, 0x11) // AF_INET, STREAM
		b = binary.BigEndian.AppendUint16(b, 12)
	} else {
		b = append(b, 0x21) // AF_INET6, STREAM
		b = binary.BigEndian.AppendUint16(b, 36)
	}
	b = append(b, src.Addr().AsSlice()...)
	b = append(b, dst.Addr().AsSlice()...)
	b = binary.BigEndian.AppendUint16(b, src.Port())
	return binary.BigEndian.AppendUint16(b, dst.Port())
}

// TestProxyProtocol: behind caddy-l4's proxy_protocol handler, Received:
// and the per-message log line show the client the PROXY header names,
// for version 1 and version 2 headers, IPv4 and IPv6.
func TestProxyProtocol(t *testing.T) {
	proxied, _, maildir, logFile := startProxyCaddy(t)
	for _, tc := range []struct {
		header   []byte
		literal  string // in Received:
		remote   string // in the log line
		protocol string
	}{
		{[]byte("PROXY TCP4 198.51.100.9 127.0.0.1 5555 25\r\n"), "[198.51.100.9]", "198.51.100.9:5555", "ESMTP"},
		{proxyV2(netip.MustParseAddrPort("198.51.100.10:6666"), netip.MustParseAddrPort("127.0.0.1:25")), "[198.51.100.10]", "198.51.100.10:6666", "ESMTP"},
		{proxyV2(netip.MustParseAddrPort("[2001:db8::9]:7777"), netip.MustParseAddrPort("[::1]:25")), "[IPv6:2001:db8::9]", "[2001:db8::9]:7777", "ESMTP"},
		{[]byte("PROXY TCP6 2001:db8::a ::1 8888 25\r\n"), "[IPv6:2001:db8::a]", "[2001:db8::a]:8888", "ESMTP"},
	} {
		c := dial(t, proxied)
		c.send(string(tc.header))
		c.expect("220 mx.example.test ESMTP")
		id := sendOne(c, "client.test")
		c.send("QUIT\r\n")
		c.expect("221 ")

		rcv := receivedFor(t, maildir, id)
		if !strings.Contains(rcv, "from client.test ("+tc.literal+")") || strings.Contains(rcv, "127.0.0.1") {
			t.Errorf("header %q: Received: %q, want the client %s", tc.header, rcv, tc.literal)
		}
		if e := messageLog(t, logFile, id); e["remote"] != tc.remote {
			t.Errorf("header %q: message log line has remote %v, want %s", tc.header, e["remote"], tc.remote)
		}
	}

	// XCLIENT is judged by the real client's address, not the proxy's:
	// 198.51.100.9 is not in xclient_networks although 127.0.0.1 is.
	c := dial(t, proxied)
	c.send("PROXY TCP4 198.51.100.9 127.0.0.1 5555 25\r\n")
	c.expect("220 ")
	c.send("EHLO client.test\r\n")
	if ehlo := strings.Join(c.expect("250 "), "\n"); strings.Contains(ehlo, "XCLIENT") {
		t.Errorf("XCLIENT offered to the proxied client: %q", ehlo)
	}
	c.send("XCLIENT ADDR=192.0.2.7\r\n")
	c.expect("550 5.7.0 ")
}

// TestXClientOverCaddy: a proxy in xclient_networks passes on the original
// client; Received:, the log lines and the login follow it.
func TestXClientOverCaddy(t *testing.T) {
	_, xclient, maildir, logFile := startProxyCaddy(t)
	c := dial(t, xclient)
	c.expect("220 mx.example.test ESMTP")
	c.send("EHLO proxy.test\r\n")
	if ehlo := c.expect("250 "); ehlo[len(ehlo)-1] != "250 XCLIENT NAME ADDR PORT PROTO HELO LOGIN" {
		t.Fatalf("EHLO: %q, want XCLIENT advertised", ehlo)
	}
	c.send("XCLIENT ADDR=192.0.2.7 PORT=4321 HELO=orig.example LOGIN=bob\r\n")
	if g := c.expect("220 ")[0]; g != "220 mx.example.test ESMTP" {
		t.Fatalf("XCLIENT reply %q, want a new greeting", g)
	}
	id := sendOne(c, "orig.example")
	// the proxied client is in xclient_networks too (192.0.2.0/24)
	c.send("XCLIENT ADDR=IPV6:2001:db8::1 HELO=v6+2Eexample LOGIN=[UNAVAILABLE]\r\n")
	c.expect("220 ")
	id6 := sendOne(c, "")
	c.send("XCLIENT FOO=bar\r\n")
	c.expect("550 5.7.0 ") // 2001:db8::1 is not in xclient_networks
	c.send("QUIT\r\n")
	c.expect("221 ")

	files := delivered(t, maildir)
	if len(files) != 2 {
		t.Fatalf("%d messages delivered, want 2", len(files))
	}
	var rcvs []string
	for _, f := range files {
		rcvs = append(rcvs, splitReceived(t, f, "mx.example.test", []byte(message)))
	}
	all := strings.Join(rcvs, "\n")
	for _, want := range []string{"from orig.example ([192.0.2.7])", "from v6.example ([IPv6:2001:db8::1])"} {
		if !strings.Contains(all, want) {
			t.Errorf("no Received: with %q in %q", want, rcvs)
		}
	}
	if strings.Contains(all, "127.0.0.1") || strings.Count(all, " with ESMTPA id ") != 1 || strings.Count(all, " with ESMTP id ") != 1 {
		t.Errorf("Received: fields %q, want ESMTPA with LOGIN=bob, ESMTP with LOGIN=[UNAVAILABLE], no proxy address", rcvs)
	}

	if e := messageLog(t, logFile, id); e["remote"] != "192.0.2.7:4321" || e["auth"] != "bob" || e["helo"] != "orig.example" {
		t.Errorf("message log line %v, want remote 192.0.2.7:4321, auth bob, helo orig.example", e)
	}
	if e := messageLog(t, logFile, id6); e["remote"] != "[2001:db8::1]:0" {
		t.Errorf("message log line %v, want remote [2001:db8::1]:0", e)
	}
	found := false
	for _, e := range logEntries(t, logFile, "xclient") {
		if e["remote"] == "192.0.2.7:4321" && e["login"] == "bob" && e["helo"] == "orig.example" {
			found = true
		}
	}
	if !found {
		t.Errorf("no xclient log line for 192.0.2.7:4321: %v", logEntries(t, logFile, "xclient"))
	}
}
