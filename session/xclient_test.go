package session

import (
	"net"
	"net/netip"
	"strings"
	"testing"

	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"
)

var (
	proxyAddr    = &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 50000}
	strangerAddr = &net.TCPAddr{IP: net.IPv4(203, 0, 113, 9), Port: 50000}
	xclientNets  = []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8"), netip.MustParsePrefix("::1/128")}
)

// startXClient runs a session from remote on a server that trusts
// xclientNets, with a recorder and an AuthUser watcher.
func startXClient(t *testing.T, remote net.Addr, logger *zap.Logger) (*testSession, *recorder, *authUserSeen) {
	t.Helper()
	rec, seen := &recorder{}, &authUserSeen{}
	srv := mustServer(t, Config{Hostname: "mx.example.org", XClientNetworks: xclientNets, Logger: logger,
		Handlers: []SubHandler{{Name: "rec", Handler: rec}, {Name: "seen", Handler: seen}}})
	return startOn(t, srv, ConnInfo{RemoteAddr: remote}), rec, seen
}

func TestXClientRefused(t *testing.T) {
	ts, rec, _ := startXClient(t, strangerAddr, nil)
	r := ts.cmd("EHLO client.example", 250, "")
	if hasKeyword(r, "XCLIENT") {
		t.Fatalf("XCLIENT advertised to a client outside xclient_networks: %q", r.raw)
	}
	ts.cmd("XCLIENT ADDR=192.0.2.7", 550, "5.7.0")
	ts.cmd("XCLIENT FOO=bar", 550, "5.7.0")
	sendMessage(t, ts.testClient)
	if rcv := receivedValue(t, rec); !strings.Contains(rcv, "[203.0.113.9]") || strings.Contains(rcv, "192.0.2.7") {
		t.Fatalf("Received: %q", rcv)
	}

	// no xclient_networks at all: refused even from loopback
	ts2 := startOn(t, mustServer(t, Config{}), ConnInfo{RemoteAddr: proxyAddr})
	if r := ts2.cmd("EHLO client.example", 250, ""); hasKeyword(r, "XCLIENT") {
		t.Fatalf("XCLIENT advertised without xclient_networks: %q", r.raw)
	}
	ts2.cmd("XCLIENT ADDR=192.0.2.7", 550, "5.7.0")
}

func TestXClient(t *testing.T) {
	core, logs := observer.New(zap.DebugLevel)
	ts, rec, seen := startXClient(t, proxyAddr, zap.New(core))
	r := ts.cmd("EHLO proxy.example", 250, "")
	if !hasKeyword(r, "XCLIENT") || r.texts[len(r.texts)-1] != "XCLIENT NAME ADDR PORT PROTO HELO LOGIN" {
		t.Fatalf("EHLO reply %q, want XCLIENT advertised", r.raw)
	}
	g := ts.cmd("XCLIENT ADDR=192.0.2.7 PORT=4321 HELO=orig.example LOGIN=bob", 220, "")
	if g.texts[0] != "mx.example.org ESMTP" {
		t.Fatalf("XCLIENT reply %q, want a new greeting", g.raw)
	}
	if rec.count("connect") != 2 {
		t.Errorf("connect hooks not asked again for the new greeting: %v", rec.kinds())
	}
	// the HELO name given by XCLIENT stands without another EHLO
	sendMessage(t, ts.testClient)
	rcv := receivedValue(t, rec)
	if !strings.Contains(rcv, "from orig.example ([192.0.2.7])") || !strings.Contains(rcv, " with ESMTPA id ") {
		t.Errorf("Received: %q, want from orig.example ([192.0.2.7]) with ESMTPA", rcv)
	}
	if seen.last() != "bob" {
		t.Errorf("AuthUser after XCLIENT LOGIN=bob: %q", seen.last())
	}
	// the new address is outside xclient_networks
	if r := ts.cmd("EHLO orig.example", 250, ""); hasKeyword(r, "XCLIENT") {
		t.Errorf("XCLIENT still advertised for the proxied client: %q", r.raw)
	}
	ts.cmd("QUIT", 221, "2.0.0")
	ts.wait()

	for _, msg := range []string{"xclient", "message", "session closed"} {
		entries := logs.FilterMessage(msg).All()
		if len(entries) != 1 {
			t.Fatalf("%d %q log lines, want 1: %v", len(entries), msg, logs.All())
		}
		if got := entries[0].ContextMap()["remote"]; got != "192.0.2.7:4321" {
			t.Errorf("%q log line has remote %v, want 192.0.2.7:4321", msg, got)
		}
	}
	if got := logs.FilterMessage("message").All()[0].ContextMap()["auth"]; got != "bob" {
		t.Errorf("message log line auth = %v", got)
	}
}

func TestXClientAttributes(t *testing.T) {
	for _, tc := range []struct {
		xclient  string
		received []string // in the Received: field
		login    string
	}{
		{"XCLIENT ADDR=IPV6:2001:db8::1 PORT=25", []string{"from client.example ([IPv6:2001:db8::1])", " with ESMTP id "}, ""},
		{"XCLIENT ADDR=ipv6:2001:DB8::2", []string{"([IPv6:2001:db8::2])"}, ""},
		{"XCLIENT NAME=orig.example ADDR=192.0.2.8 HELO=a+2Bb.example LOGIN=bob+2Bmail+40example.org",
			[]string{"from a+b.example ([192.0.2.8])", " with ESMTPA id "}, "bob+mail@example.org"},
		{"xclient addr=192.0.2.9 proto=SMTP", []string{"([192.0.2.9])", " with SMTP id "}, ""},
		{"XCLIENT ADDR=[UNAVAILABLE] HELO=[UNAVAILABLE] LOGIN=[UNAVAILABLE] NAME=[TEMPUNAVAIL]", []string{"from client.example ([127.0.0.1])"}, ""},
	} {
		t.Run(tc.xclient, func(t *testing.T) {
			ts, rec, seen := startXClient(t, proxyAddr, nil)
			ts.ehlo()
			ts.cmd(tc.xclient, 220, "")
			sendMessage(t, ts.testClient)
			rcv := receivedValue(t, rec)
			for _, w := range tc.received {
				if !strings.Contains(rcv, w) {
					t.Errorf("Received: %q lacks %q", rcv, w)
				}
			}
			if seen.last() != tc.login {
				t.Errorf("AuthUser %q, want %q", seen.last(), tc.login)
			}
		})
	}
}

func TestXClientSyntax(t *testing.T) {
	for _, bad := range []string{
		"XCLIENT",
		"XCLIENT FOO=bar",
		"XCLIENT ADDR",
		"XCLIENT ADDR=192.0.2.300",
		"XCLIENT ADDR=IPV6:192.0.2.x",
		"XCLIENT PORT=65536",
		"XCLIENT PORT=-1",
		"XCLIENT PROTO=LMTP",
		"XCLIENT HELO=bad+2",
		"XCLIENT HELO=bad+ZZ",
		"XCLIENT ADDR=192.0.2.7 DESTROY=1",
	} {
		ts, rec, _ := startXClient(t, proxyAddr, nil)
		ts.ehlo()
		ts.cmd(bad, 501, "5.5.4")
		// nothing of a refused XCLIENT is applied
		sendMessage(t, ts.testClient)
		if rcv := receivedValue(t, rec); !strings.Contains(rcv, "from client.example ([127.0.0.1])") {
			t.Errorf("after %q: Received: %q", bad, rcv)
		}
	}
	ts, _, _ := startXClient(t, proxyAddr, nil)
	ts.ehlo()
	ts.cmd("MAIL FROM:<a@client.example>", 250, "2.1.0")
	ts.cmd("XCLIENT ADDR=192.0.2.7", 503, "5.5.1") // not in a transaction
	ts.cmd("RSET", 250, "2.0.0")
	ts.cmd("XCLIENT ADDR=192.0.2.7", 220, "")
}
