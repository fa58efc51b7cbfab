package dsn

import (
	"bufio"
	"bytes"
	"io"
	"strings"
	"testing"
	"time"
)

func bufioWriter(w io.Writer) *bufio.Writer { return bufio.NewWriter(w) }

// FuzzBuild builds reports from arbitrary values and checks that the
// result always parses (CRLF, line lengths, the MIME structure, the
// delivery-status blocks) with exactly the parts and fields asked for: no
// input adds a header field, a part or a recipient block.
func FuzzBuild(f *testing.F) {
	f.Add("mx.example.org", "alice@example.net", "bob@example.com", "rfc822;bob@example.com", "550 5.1.1 no", "ENV+2B1", "5.1.1", "Subject: x\r\n\r\nbody\r\n", uint8(0))
	f.Add("a\r\nb", "x\r\nBcc: y", "\xff\x00", "rfc822;+0D+0A", strings.Repeat("w ", 600), "+", "5.", "\n\r\n.\r\n", uint8(7))
	f.Fuzz(func(t *testing.T, mta, to, rcpt, orcpt, diag, envid, st, orig string, flags uint8) {
		actions := []Action{Failed, Delayed, Delivered, Relayed}
		r := &Report{ReportingMTA: mta, ReceivedFromMTA: mta, EnvID: envid, To: to, QueueID: envid,
			Arrival: time.Unix(0, 0), Date: time.Unix(1, 0), Return: Return(flags % 3), UTF8: flags&4 != 0, EightBit: flags&8 != 0,
			Recipients: []Recipient{
				{Final: rcpt, Original: orcpt, Action: actions[(flags>>4)%4], Status: st, RemoteMTA: mta, Diagnostic: diag},
				{Final: to, Action: Failed, Diagnostic: diag + diag},
			}}
		var b bytes.Buffer
		if err := Build(&b, r, strings.NewReader(orig)); err != nil {
			t.Fatal(err)
		}
		m, parts := parseGo(t, b.Bytes())
		if len(m.Header) != 8 {
			t.Fatalf("%d header fields: %v", len(m.Header), m.Header)
		}
		want := 2
		if r.Return != ReturnNone {
			want = 3
		}
		if len(parts) != want {
			t.Fatalf("%d parts, want %d", len(parts), want)
		}
		ds, err := ParseDeliveryStatus(parts[1].body)
		if err != nil {
			t.Fatal(err)
		}
		if len(ds.Recipients) != 2 {
			t.Fatalf("%d recipient blocks", len(ds.Recipients))
		}
		for _, blk := range append([]Fields{ds.Message}, ds.Recipients...) {
			seen := map[string]bool{}
			for _, fl := range blk {
				k := strings.ToLower(fl.Name)
				if seen[k] {
					t.Fatalf("field %s twice", fl.Name)
				}
				seen[k] = true
			}
		}
		if v, _ := ds.Recipients[0].Get("Action"); v != string(r.Recipients[0].Action) {
			t.Fatalf("Action %q", v)
		}
		if !r.UTF8 {
			for i := 0; i < 2; i++ {
				if p := parts[i].body; !isASCII(string(p)) {
					t.Fatalf("part %d is not 7bit: %q", i, p)
				}
			}
		}
	})
}

// FuzzParseDeliveryStatus: the parser never panics, and what it accepts
// has a Reporting-MTA and complete recipient blocks.
func FuzzParseDeliveryStatus(f *testing.F) {
	f.Add([]byte("Reporting-MTA: dns; a\r\n\r\nFinal-Recipient: rfc822; b\r\nAction: failed\r\nStatus: 5.0.0\r\n"))
	f.Add([]byte("Reporting-MTA: dns; a\n\nFinal-Recipient: rfc822; b\nAction: failed\nStatus: 5.0.0\n x\n\n\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		st, err := ParseDeliveryStatus(b)
		if err != nil {
			return
		}
		if _, ok := st.Message.Get("reporting-mta"); !ok || len(st.Recipients) == 0 {
			t.Fatalf("accepted %q", b)
		}
	})
}
