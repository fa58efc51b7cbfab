package filtertest

import (
	"encoding/binary"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"
)

// TestRspamd: the launched rspamd answers its HTTP protocol on the normal
// worker (GTUBE is "reject" with rspamd's message; a clean message gets
// the headers milter_headers asks for) and milter's option negotiation on
// the proxy worker; asked again, StartRspamd returns the same rspamd.
func TestRspamd(t *testing.T) {
	r := StartRspamd(t)
	t.Logf("rspamd took %s to start", r.Startup)

	check := func(body string) map[string]any {
		t.Helper()
		req, _ := http.NewRequest("POST", r.URL+"/checkv2", strings.NewReader(body))
		req.Header.Set("IP", "192.0.2.1")
		req.Header.Set("From", "a@example.org")
		req.Header.Add("Rcpt", "b@example.net")
		req.Header.Set("Queue-Id", "Q1")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var v map[string]any
		if err := json.NewDecoder(resp.Body).Decode(&v); err != nil {
			t.Fatal(err)
		}
		return v
	}
	head := "From: a@example.org\r\nTo: b@example.net\r\nSubject: hi\r\nMessage-ID: <1@example.org>\r\n\r\n"
	v := check(head + GTUBE + "\r\n")
	if v["action"] != "reject" || v["messages"].(map[string]any)["smtp_message"] != "Gtube pattern" {
		t.Errorf("GTUBE: %v", v)
	}
	v = check(head + "Hello, a clean message.\r\n")
	milter, _ := v["milter"].(map[string]any)
	add, _ := milter["add_headers"].(map[string]any)
	for _, h := range []string{"X-Spamd-Result", "X-Rspamd-Queue-Id", "Authentication-Results"} {
		if add[h] == nil {
			t.Errorf("clean message: no %s in milter.add_headers: %v", h, v)
		}
	}

	// Milter: SMFIC_OPTNEG (version 6, every action, no protocol step
	// left out) is answered with an SMFIC_OPTNEG.
	c, err := net.Dial("tcp", r.Milter)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(30 * time.Second))
	pkt := binary.BigEndian.AppendUint32(nil, 13)
	pkt = append(pkt, 'O')
	pkt = binary.BigEndian.AppendUint32(pkt, 6)
	pkt = binary.BigEndian.AppendUint32(pkt, 0x1ff)
	pkt = binary.BigEndian.AppendUint32(pkt, 0)
	if _, err := c.Write(pkt); err != nil {
		t.Fatal(err)
	}
	var hdr [5]byte
	if _, err := io.ReadFull(c, hdr[:]); err != nil {
		t.Fatalf("milter: no answer to OPTNEG: %v\n%s", err, r.Output())
	}
	if n := binary.BigEndian.Uint32(hdr[:4]); hdr[4] != 'O' || n < 13 {
		t.Fatalf("milter: answer to OPTNEG is %q (length %d)", hdr[4], n)
	}

	if again := StartRspamd(t); again != r {
		t.Error("StartRspamd started a second rspamd")
	}
}
