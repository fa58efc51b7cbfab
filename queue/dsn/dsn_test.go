package dsn

import (
	"bytes"
	"encoding/json"
	"io"
	"mime"
	"mime/multipart"
	"net/mail"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"
)

const original = "From: Alice <alice@example.net>\r\n" +
	"To: bob@example.com\r\n" +
	"Subject: lunch\r\n" +
	"Message-ID: <1@example.net>\r\n" +
	"\r\n" +
	"See you at noon.\r\n"

var (
	arrival = time.Date(2026, 3, 1, 10, 0, 0, 0, time.UTC)
	attempt = time.Date(2026, 3, 1, 10, 5, 0, 0, time.UTC)
)

func failedReport() *Report {
	return &Report{
		ReportingMTA: "mx.example.org", ReceivedFromMTA: "client.example.net",
		EnvID: "QQ+2B314", Arrival: arrival, Date: attempt, To: "alice@example.net", QueueID: "06ABCDEF",
		Return: ReturnFull,
		Recipients: []Recipient{
			{Final: "bob@example.com", Original: "rfc822;bob+2Bx@example.com", Action: Failed, Status: "5.1.1",
				RemoteMTA: "mx.example.com", Diagnostic: "550 5.1.1 <bob@example.com>: Recipient address rejected: User unknown in virtual mailbox table", LastAttempt: attempt},
			{Final: "carol@example.com", Action: Failed, Status: "5.4.7", Diagnostic: "451 4.4.1 connection timed out", LastAttempt: attempt},
		},
	}
}

// part is one MIME part of a built report, as Go's mime/multipart reads it.
type part struct {
	typ  string
	hdr  map[string][]string
	body []byte
}

// parseGo checks the report's form (CRLF everywhere, line lengths, the
// multipart structure) with the standard library and returns its parts.
func parseGo(t testing.TB, raw []byte) (*mail.Message, []part) {
	t.Helper()
	for i, l := range bytes.Split(raw, []byte("\r\n")) {
		if bytes.IndexByte(l, '\n') >= 0 {
			t.Fatalf("line %d has a bare LF: %q", i+1, l)
		}
		if len(l) > 998 {
			t.Fatalf("line %d is %d bytes long", i+1, len(l))
		}
	}
	if !bytes.HasSuffix(raw, []byte("\r\n")) {
		t.Fatal("report does not end with CRLF")
	}
	m, err := mail.ReadMessage(bytes.NewReader(raw))
	if err != nil {
		t.Fatalf("reading the report: %v", err)
	}
	mt, params, err := mime.ParseMediaType(m.Header.Get("Content-Type"))
	if err != nil || mt != "multipart/report" || params["report-type"] != "delivery-status" {
		t.Fatalf("Content-Type %q: %v", m.Header.Get("Content-Type"), err)
	}
	mr := multipart.NewReader(m.Body, params["boundary"])
	var parts []part
	for {
		p, err := mr.NextRawPart()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatalf("reading parts: %v", err)
		}
		body, err := io.ReadAll(p)
		if err != nil {
			t.Fatal(err)
		}
		pt, _, _ := mime.ParseMediaType(p.Header.Get("Content-Type"))
		parts = append(parts, part{typ: pt, hdr: p.Header, body: body})
	}
	return m, parts
}

func build(t testing.TB, r *Report, orig string) []byte {
	t.Helper()
	var b bytes.Buffer
	var in io.Reader
	if r.Return != ReturnNone {
		in = strings.NewReader(orig)
	}
	if err := Build(&b, r, in); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

func TestFailedFull(t *testing.T) {
	raw := build(t, failedReport(), original)
	m, parts := parseGo(t, raw)
	if got := m.Header.Get("To"); got != "<alice@example.net>" {
		t.Errorf("To = %q", got)
	}
	if got := m.Header.Get("Auto-Submitted"); got != "auto-replied" {
		t.Errorf("Auto-Submitted = %q", got)
	}
	if len(parts) != 3 || parts[0].typ != "text/plain" || parts[1].typ != "message/delivery-status" || parts[2].typ != "message/rfc822" {
		t.Fatalf("parts: %+v", parts)
	}
	st, err := ParseDeliveryStatus(parts[1].body)
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]string{"Reporting-MTA": "dns; mx.example.org", "Original-Envelope-Id": "QQ+314",
		"Received-From-MTA": "dns; client.example.net", "Arrival-Date": arrival.Format(time.RFC1123Z)}
	for k, v := range want {
		if got, _ := st.Message.Get(k); got != v {
			t.Errorf("%s = %q, want %q", k, got, v)
		}
	}
	if len(st.Recipients) != 2 {
		t.Fatalf("%d recipient blocks", len(st.Recipients))
	}
	r0 := st.Recipients[0]
	for k, v := range map[string]string{"Final-Recipient": "rfc822; bob@example.com", "Original-Recipient": "rfc822; bob+x@example.com",
		"Action": "failed", "Status": "5.1.1", "Remote-MTA": "dns; mx.example.com",
		"Diagnostic-Code":   "smtp; 550 5.1.1 <bob@example.com>: Recipient address rejected: User unknown in virtual mailbox table",
		"Last-Attempt-Date": attempt.Format(time.RFC1123Z)} {
		if got, _ := r0.Get(k); got != v {
			t.Errorf("recipient 1 %s = %q, want %q", k, got, v)
		}
	}
	// A status of the wrong class for the action is replaced by the
	// action's generic one.
	if got, _ := st.Recipients[1].Get("Status"); got != "5.4.7" {
		t.Errorf("recipient 2 Status = %q", got)
	}
	if string(parts[2].body) != original {
		t.Errorf("attached original:\n%q\nwant\n%q", parts[2].body, original)
	}
	if !strings.Contains(string(parts[0].body), "could not be delivered") || !strings.Contains(string(parts[0].body), "06ABCDEF") {
		t.Errorf("text part: %s", parts[0].body)
	}
}

func TestStatusClass(t *testing.T) {
	for _, c := range []struct {
		s    string
		a    Action
		want string
	}{
		{"5.1.1", Failed, "5.1.1"}, {"4.4.1", Failed, "5.0.0"}, {"", Delayed, "4.0.0"},
		{"4.4.7", Delayed, "4.4.7"}, {"2.0.0", Delivered, "2.0.0"}, {"2.1.5", Relayed, "2.1.5"},
		{"5.1.1", Delivered, "2.0.0"}, {"5.1111.1", Failed, "5.0.0"}, {"5..1", Failed, "5.0.0"},
	} {
		if got := status(c.s, c.a); got != c.want {
			t.Errorf("status(%q, %s) = %q, want %q", c.s, c.a, got, c.want)
		}
	}
}

// shapes are the report shapes cross-checked with Python.
func shapes() map[string]*Report {
	full := failedReport()
	hdrs := failedReport()
	hdrs.Return = ReturnHeaders
	none := failedReport()
	none.Return = ReturnNone
	delayed := failedReport()
	delayed.Return = ReturnHeaders
	for i := range delayed.Recipients {
		delayed.Recipients[i].Action = Delayed
		delayed.Recipients[i].Status = "4.4.1"
		delayed.Recipients[i].WillRetryUntil = arrival.Add(5 * 24 * time.Hour)
	}
	success := failedReport()
	success.Return = ReturnHeaders
	success.Recipients[0].Action, success.Recipients[0].Status, success.Recipients[0].Diagnostic = Delivered, "2.0.0", "250 2.0.0 Ok: queued as 1234"
	success.Recipients[1].Action, success.Recipients[1].Status, success.Recipients[1].Diagnostic = Relayed, "2.0.0", "250 ok"
	utf := failedReport()
	utf.UTF8 = true
	utf.To = "álice@exämple.net"
	utf.Recipients[0].Final = "bøb@example.com"
	utfHdrs := failedReport()
	utfHdrs.UTF8, utfHdrs.Return = true, ReturnHeaders
	return map[string]*Report{"full": full, "headers": hdrs, "none": none, "delayed": delayed,
		"success": success, "utf8": utf, "utf8-headers": utfHdrs}
}

type pyResult struct {
	Defects         []string     `json:"defects"`
	ContentType     string       `json:"content_type"`
	ReportType      string       `json:"report_type"`
	To              string       `json:"to"`
	From            string       `json:"from"`
	Subject         string       `json:"subject"`
	AutoSubmitted   string       `json:"auto_submitted"`
	Parts           []string     `json:"parts"`
	Blocks          [][][]string `json:"blocks"`
	OriginalSubject *string      `json:"original_subject"`
	OriginalBody    *string      `json:"original_body"`
	OriginalHeaders *string      `json:"original_headers"`
	Text            *string      `json:"text"`
}

func python(t *testing.T) string {
	t.Helper()
	p, err := exec.LookPath("python3")
	if err != nil {
		if os.Getenv("ESMTP_REQUIRE_CLIENTS") == "1" {
			t.Fatal("python3 is missing and ESMTP_REQUIRE_CLIENTS=1")
		}
		t.Skip("python3 is missing")
	}
	return p
}

func blockGet(b [][]string, name string) string {
	for _, kv := range b {
		if strings.EqualFold(kv[0], name) {
			return kv[1]
		}
	}
	return ""
}

// TestPythonEmail parses every shape with Python's email package (policy
// default) and checks what it found against the report.
func TestPythonEmail(t *testing.T) {
	py := python(t)
	for name, r := range shapes() {
		t.Run(name, func(t *testing.T) {
			raw := build(t, r, original)
			parseGo(t, raw)
			cmd := exec.Command(py, "testdata/parse_dsn.py")
			cmd.Stdin = bytes.NewReader(raw)
			out, err := cmd.Output()
			if err != nil {
				t.Fatalf("python: %v\n%s", err, err.(*exec.ExitError).Stderr)
			}
			var got pyResult
			if err := json.Unmarshal(out, &got); err != nil {
				t.Fatalf("%v: %s", err, out)
			}
			if len(got.Defects) != 0 {
				t.Errorf("defects: %v\n%s", got.Defects, raw)
			}
			if got.ContentType != "multipart/report" || got.ReportType != "delivery-status" {
				t.Errorf("content type %q report-type %q", got.ContentType, got.ReportType)
			}
			if got.To != "<"+r.To+">" && got.To != r.To {
				t.Errorf("To = %q", got.To)
			}
			if got.Subject != r.Subject() || got.AutoSubmitted != "auto-replied" {
				t.Errorf("Subject %q Auto-Submitted %q", got.Subject, got.AutoSubmitted)
			}
			wantParts := []string{"text/plain", "message/delivery-status"}
			if r.UTF8 {
				wantParts[1] = "message/global-delivery-status"
			}
			switch {
			case r.Return == ReturnFull && r.UTF8:
				wantParts = append(wantParts, "message/global")
			case r.Return == ReturnFull:
				wantParts = append(wantParts, "message/rfc822")
			case r.Return == ReturnHeaders && r.UTF8:
				wantParts = append(wantParts, "message/global-headers")
			case r.Return == ReturnHeaders:
				wantParts = append(wantParts, "text/rfc822-headers")
			}
			if strings.Join(got.Parts, " ") != strings.Join(wantParts, " ") {
				t.Fatalf("parts %v, want %v", got.Parts, wantParts)
			}
			if len(got.Blocks) != 1+len(r.Recipients) {
				t.Fatalf("%d blocks: %v", len(got.Blocks), got.Blocks)
			}
			if v := blockGet(got.Blocks[0], "Reporting-MTA"); v != "dns; mx.example.org" {
				t.Errorf("Reporting-MTA %q", v)
			}
			if v := blockGet(got.Blocks[0], "Original-Envelope-Id"); v != "QQ+314" {
				t.Errorf("Original-Envelope-Id %q", v)
			}
			for i, rc := range r.Recipients {
				b := got.Blocks[i+1]
				final := "rfc822; " + rc.Final
				if !isASCII(rc.Final) {
					final = "utf-8; " + rc.Final
				}
				if v := blockGet(b, "Final-Recipient"); v != final {
					t.Errorf("recipient %d Final-Recipient %q, want %q", i, v, final)
				}
				if v := blockGet(b, "Action"); v != string(rc.Action) {
					t.Errorf("recipient %d Action %q", i, v)
				}
				if v := blockGet(b, "Status"); v != status(rc.Status, rc.Action) {
					t.Errorf("recipient %d Status %q", i, v)
				}
				if v := blockGet(b, "Diagnostic-Code"); v != "smtp; "+rc.Diagnostic {
					t.Errorf("recipient %d Diagnostic-Code %q", i, v)
				}
				if rc.RemoteMTA != "" && blockGet(b, "Remote-MTA") != "dns; "+rc.RemoteMTA {
					t.Errorf("recipient %d Remote-MTA %q", i, blockGet(b, "Remote-MTA"))
				}
				if rc.Original != "" && blockGet(b, "Original-Recipient") != "rfc822; bob+x@example.com" {
					t.Errorf("recipient %d Original-Recipient %q", i, blockGet(b, "Original-Recipient"))
				}
				if rc.Action == Delayed && blockGet(b, "Will-Retry-Until") == "" {
					t.Errorf("recipient %d: no Will-Retry-Until", i)
				}
			}
			switch r.Return {
			case ReturnFull:
				if got.OriginalSubject == nil || *got.OriginalSubject != "lunch" ||
					got.OriginalBody == nil || *got.OriginalBody != "See you at noon.\r\n" {
					t.Errorf("original: subject %v body %v", got.OriginalSubject, got.OriginalBody)
				}
			case ReturnHeaders:
				h, _, _ := strings.Cut(original, "\r\n\r\n")
				if got.OriginalHeaders == nil || strings.ReplaceAll(*got.OriginalHeaders, "\r\n", "\n") != strings.ReplaceAll(h+"\r\n\r\n", "\r\n", "\n") {
					t.Errorf("original headers %v", got.OriginalHeaders)
				}
			}
			if got.Text == nil || !strings.Contains(*got.Text, "mx.example.org") {
				t.Errorf("text part %v", got.Text)
			}
		})
	}
}

// TestHostileValues: values from the outside cannot add a header field, a
// delivery-status field or a MIME part.
func TestHostileValues(t *testing.T) {
	evil := "x\r\nBcc: victim@example.com\r\n\r\n--=_dsn_\r\nContent-Type: text/html\r\n\n\rFinal-Recipient: rfc822; z\x00\xff"
	r := &Report{ReportingMTA: "mx\r\nX-Evil: 1", ReceivedFromMTA: evil, EnvID: "a+0D+0AX-Evil:+201", Arrival: arrival,
		To: evil, QueueID: evil, Return: ReturnHeaders,
		Recipients: []Recipient{{Final: evil, Original: "rfc822;" + evil, Action: Failed, Status: evil, RemoteMTA: evil,
			Diagnostic: evil + strings.Repeat("long ", 400) + strings.Repeat("y", 2000)}}}
	raw := build(t, r, "Subject: x\r\n\r\nbody\r\n")
	m, parts := parseGo(t, raw)
	if len(m.Header) != 8 {
		t.Errorf("header fields: %v", m.Header)
	}
	if len(parts) != 3 {
		t.Fatalf("%d parts", len(parts))
	}
	for _, p := range parts[:2] {
		if len(p.hdr) > 3 {
			t.Errorf("part header: %v", p.hdr)
		}
	}
	st, err := ParseDeliveryStatus(parts[1].body)
	if err != nil {
		t.Fatal(err)
	}
	if len(st.Recipients) != 1 || len(st.Recipients[0]) != 5 || len(st.Message) != 4 {
		t.Errorf("delivery status: %+v", st)
	}
	if v, _ := st.Message.Get("Original-Envelope-Id"); strings.ContainsAny(v, "\r\n") || v != "a+0D+0AX-Evil:+201" {
		t.Errorf("Original-Envelope-Id %q", v)
	}
	if v, _ := st.Recipients[0].Get("Status"); v != "5.0.0" {
		t.Errorf("Status %q", v)
	}
}

func TestParseDeliveryStatus(t *testing.T) {
	st, err := ParseDeliveryStatus([]byte("Reporting-MTA: dns; a\n\nFinal-Recipient: rfc822; b\nAction: failed\nStatus: 5.0.0\nDiagnostic-Code: smtp; 550\n  folded\n\n"))
	if err != nil {
		t.Fatal(err)
	}
	if v, _ := st.Recipients[0].Get("diagnostic-code"); v != "smtp; 550 folded" {
		t.Errorf("unfolded %q", v)
	}
	for _, bad := range []string{"", "Reporting-MTA: a\n", "Reporting-MTA: a\n\nAction: failed\n", " x\n",
		"Reporting-MTA a\n\nFinal-Recipient: a\nAction: b\nStatus: c\n", "Reporting-MTA: a\r\r\n\nFinal-Recipient: a\nAction: b\nStatus: c\n"} {
		if _, err := ParseDeliveryStatus([]byte(bad)); err == nil {
			t.Errorf("%q parsed", bad)
		}
	}
}

func TestHeadersOnlyEdgeCases(t *testing.T) {
	for in, want := range map[string]string{
		"A: 1\nB: 2\n\nbody\n": "A: 1\r\nB: 2\r\n\r\n",
		"A: 1\r\n":             "A: 1\r\n",
		"A: 1":                 "A: 1\r\n",
		"A: 1\rB: 2\r\n\r\nx":  "A: 1\r\nB: 2\r\n\r\n",
		"":                     "",
	} {
		var b bytes.Buffer
		w := bufioWriter(&b)
		if err := copyOriginal(w, strings.NewReader(in), true); err != nil {
			t.Fatal(err)
		}
		w.Flush()
		if b.String() != want {
			t.Errorf("headers of %q = %q, want %q", in, b.String(), want)
		}
	}
}
