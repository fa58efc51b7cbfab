package session

import (
	"bytes"
	"errors"
	"fmt"
	"math/rand/v2"
	"strings"
	"testing"
)

// sendData runs DATA and sends raw (which must include the end of data).
func (ts *testSession) sendData(raw string) {
	ts.t.Helper()
	ts.send("DATA")
	ts.expect(354, "")
	ts.sendRaw(raw)
}

// received returns the Received: raw of the recorded events and the rest of
// the content.
func splitReceived(t *testing.T, rec *recorder) (received []byte, rest []byte) {
	t.Helper()
	ev := rec.events()
	i := 0
	for i < len(ev) && ev[i].kind != "header" {
		i++
	}
	if i == len(ev) || ev[i].arg != "Received" {
		t.Fatalf("first header is not Received: %v", rec.kinds())
	}
	received = ev[i].raw
	for _, e := range ev[i+1:] {
		switch e.kind {
		case "header", "eoh", "body":
			rest = append(rest, e.raw...)
		}
	}
	return received, rest
}

func TestDotUnstuffingAndEnd(t *testing.T) {
	rec := &recorder{}
	ts := start(t, Config{Handlers: []SubHandler{{Name: "rec", Handler: rec}}})
	ts.ehlo()
	for _, c := range []struct{ raw, want string }{
		{".\r\n", ""},            // "." as the very first line
		{"..\r\n.\r\n", ".\r\n"}, // a stuffed dot line
		{"a\r\n..b\r\n...\r\n.\r\n", "a\r\n.b\r\n..\r\n"}, // dots unstuffed once
		{"a.\r\n.b\r\n.\r\n", "a.\r\nb\r\n"},              // unstuffing any leading dot
		{"\r\n\r\n.\r\n", "\r\n\r\n"},                     // empty lines
		{"x\r\n. \r\n.\r\n", "x\r\n \r\n"},                // ". " is not the end
		{"x\r\n.\r\r\n.\r\n", ""},                         // CRLF.CRCRLF is not the end (refused below)
	} {
		rec.reset()
		ts.mailTo("b@example.com")
		ts.sendData(c.raw)
		if strings.Contains(c.raw, "\r\r") {
			ts.expect(550, "5.5.2")
			continue
		}
		ts.expect(250, "2.0.0")
		_, got := splitReceived(t, rec)
		if string(got) != c.want {
			t.Errorf("data %q: hooks saw %q, want %q", c.raw, got, c.want)
		}
	}
	ts.cmd("NOOP", 250, "2.0.0")
}

func TestCRCRLFNotMerged(t *testing.T) {
	rec := &recorder{}
	ts := start(t, Config{BareLineEndings: BareNormalize, Handlers: []SubHandler{{Name: "rec", Handler: rec}}})
	ts.ehlo()
	ts.mailTo("b@example.com")
	ts.sendData("\r\nab\r\r\ncd\r\n.\r\n")
	ts.expect(250, "2.0.0")
	_, got := splitReceived(t, rec)
	if string(got) != "\r\nab\r\n\r\ncd\r\n" {
		t.Fatalf("hooks saw %q", got)
	}
	// in reject mode the same bytes are refused
	ts2 := start(t, Config{})
	ts2.ehlo()
	ts2.mailTo("b@example.com")
	ts2.sendData("\r\nab\r\r\ncd\r\n.\r\n")
	ts2.expect(550, "5.5.2")
}

// smuggling are the end-of-data look-alikes of SMTP smuggling (2023).
var smuggling = []struct{ name, seq string }{
	{"LF.LF", "\n.\n"},
	{"CR.CR", "\r.\r"},
	{"CR.LF", "\r.\n"},
	{"LF.CR", "\n.\r"},
	{"LF.CRLF", "\n.\r\n"},
	{"CRLF.LF", "\r\n.\n"},
	{"CR.CRLF", "\r.\r\n"},
	{"CRLF.CR", "\r\n.\r"},
	{"CRLF.CRCRLF", "\r\n.\r\r\n"},
	{"NUL before the dot", "\r\n\x00.\r\n"},
	{"CRLF NUL.CRLF", "\r\n.\x00\r\n"},
}

const smuggled = "MAIL FROM:<evil@attacker.example>\r\nRCPT TO:<victim@example.com>\r\nDATA\r\n" +
	"From: ceo@example.com\r\n\r\nsmuggled\r\n"

func TestSmugglingRejected(t *testing.T) {
	for _, v := range smuggling {
		t.Run(v.name, func(t *testing.T) {
			rec := &recorder{}
			ts := start(t, Config{Handlers: []SubHandler{{Name: "rec", Handler: rec}}})
			ts.ehlo()
			ts.mailTo("b@example.com")
			ts.sendData("Subject: hi\r\n\r\nbody" + v.seq + smuggled + ".\r\n")
			r := ts.expect(550, "5.5.2")
			if strings.Contains(v.name, "NUL") != strings.Contains(r.texts[0], "NUL") {
				t.Fatalf("reply %q", r.raw)
			}
			// nothing else was answered: the smuggled commands were data
			ts.cmd("NOOP", 250, "2.0.0")
			if rec.count("eom") != 0 || rec.count("abort") != 1 || rec.count("mail") != 1 {
				t.Fatalf("events %v", rec.kinds())
			}
			for _, e := range rec.events() {
				if e.kind == "abort" && !errors.Is(e.reason, errRejected) {
					t.Fatalf("abort reason %v", e.reason)
				}
			}
			// the session is still usable for a clean message
			ts.mailTo("b@example.com")
			ts.sendData("Subject: ok\r\n\r\nfine\r\n.\r\n")
			ts.expect(250, "2.0.0")
		})
	}
}

func TestSmugglingNormalized(t *testing.T) {
	for _, v := range smuggling {
		t.Run(v.name, func(t *testing.T) {
			rec := &recorder{}
			ts := start(t, Config{BareLineEndings: BareNormalize, Handlers: []SubHandler{{Name: "rec", Handler: rec}}})
			ts.ehlo()
			ts.mailTo("b@example.com")
			ts.sendData("Subject: hi\r\n\r\nbody" + v.seq + smuggled + ".\r\n")
			if strings.Contains(v.name, "NUL") {
				ts.expect(550, "5.5.2")
				if rec.count("eom") != 0 {
					t.Fatalf("NUL message delivered")
				}
				return
			}
			ts.expect(250, "2.0.0")
			ts.cmd("NOOP", 250, "2.0.0")
			_, got := splitReceived(t, rec)
			if bytes.ContainsAny(bytes.ReplaceAll(got, []byte("\r\n"), nil), "\r\n") {
				t.Fatalf("bare CR/LF left in %q", got)
			}
			if !bytes.Contains(got, []byte("MAIL FROM:<evil@attacker.example>")) {
				t.Fatalf("smuggled text not kept as data: %q", got)
			}
			if rec.count("mail") != 1 || rec.count("eom") != 1 {
				t.Fatalf("events %v", rec.kinds())
			}
		})
	}
}

func TestSmuggledCommandNeverAnswered(t *testing.T) {
	rec := &recorder{}
	ts := start(t, Config{Handlers: []SubHandler{{Name: "rec", Handler: rec}}})
	ts.ehlo()
	ts.mailTo("b@example.com")
	// the whole thing in one write, as an attacker would
	ts.sendRaw("DATA\r\n")
	ts.expect(354, "")
	ts.sendRaw("Subject: a\r\n\r\nx\n.\nMAIL FROM:<evil@attacker.example>\r\n" +
		"RCPT TO:<victim@example.com>\r\nDATA\r\nevil\r\n.\r\nQUIT\r\n")
	// the real end is the CRLF.CRLF after "evil": one refusal, then QUIT
	ts.expect(550, "5.5.2")
	ts.expect(221, "2.0.0")
	ts.expectClosed()
	if rec.count("mail") != 1 || rec.count("rcpt") != 1 {
		t.Fatalf("smuggled commands reached hooks: %v", rec.kinds())
	}
}

func TestPipelinedBatchOneWrite(t *testing.T) {
	ts := start(t, Config{})
	ts.ehlo()
	if len(ts.pending) != 0 {
		t.Fatalf("unread bytes %q", ts.pending)
	}
	ts.send("MAIL FROM:<a@example.com>", "RCPT TO:<b@example.com>", "RCPT TO:<c@example.com>", "DATA")
	chunk := string(ts.nextChunk())
	want := []string{"250 2.1.0 ", "250 2.1.5 ", "250 2.1.5 ", "354 "}
	lines := strings.Split(strings.TrimSuffix(chunk, "\r\n"), "\r\n")
	if len(lines) != len(want) {
		t.Fatalf("one read got %q, want the 4 replies together", chunk)
	}
	for i, w := range want {
		if !strings.HasPrefix(lines[i], w) {
			t.Fatalf("reply %d is %q, want %q...", i, lines[i], w)
		}
	}
	ts.sendRaw("\r\nhello\r\n.\r\n")
	ts.expect(250, "2.0.0")
	// a pipelined batch without DATA, with an error in it
	ts.send("MAIL FROM:<a@example.com>", "RCPT TO:<bad>", "RCPT TO:<c@example.com>", "RSET", "NOOP")
	chunk = string(ts.nextChunk())
	if n := strings.Count(chunk, "\r\n"); n != 5 {
		t.Fatalf("one read got %q, want 5 replies", chunk)
	}
	// the end of data and the next commands in one write
	ts.send("MAIL FROM:<a@example.com>", "RCPT TO:<b@example.com>", "DATA")
	ts.nextChunk()
	ts.sendRaw("\r\nx\r\n.\r\nMAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.com>\r\nNOOP\r\n")
	chunk = string(ts.nextChunk())
	if n := strings.Count(chunk, "\r\n"); n != 4 || !strings.HasPrefix(chunk, "250 2.0.0 ") {
		t.Fatalf("one read got %q, want 4 replies", chunk)
	}
}

func TestDataBefore354(t *testing.T) {
	rec := &recorder{}
	ts := start(t, Config{Handlers: []SubHandler{{Name: "rec", Handler: rec}}})
	ts.ehlo()
	ts.send("MAIL FROM:<a@example.com>", "RCPT TO:<b@example.com>", "DATA", "Subject: early", "", "body", ".")
	ts.expect(250, "2.1.0")
	ts.expect(250, "2.1.5")
	ts.expect(554, "5.5.0")
	ts.expectClosed()
	ts.wait()
	if rec.count("eom") != 0 || rec.count("abort") != 1 || rec.count("header") != 0 {
		t.Fatalf("events %v", rec.kinds())
	}
}

func TestSizeEnforcedWhileStreaming(t *testing.T) {
	rec := &recorder{}
	ts := start(t, Config{MaxMessageSize: 2000, ChunkSize: 512, Handlers: []SubHandler{{Name: "rec", Handler: rec}}})
	ts.ehlo()
	ts.mailTo("b@example.com")
	body := strings.Repeat(strings.Repeat("x", 70)+"\r\n", 100)
	ts.sendData("Subject: big\r\n\r\n" + body + ".\r\n")
	ts.expect(552, "5.3.4")
	if rec.count("eom") != 0 || rec.count("abort") != 1 {
		t.Fatalf("events %v", rec.kinds())
	}
	if n := len(rec.content()); n > 2000 {
		t.Fatalf("hooks got %d bytes, more than the limit", n)
	}
	// exactly at the limit is fine
	rec.reset()
	ts.mailTo("b@example.com")
	msg := "Subject: fits\r\n\r\n"
	msg += strings.Repeat("y", 2000-len(msg)-2) + "\r\n"
	ts.sendData(stuff(msg))
	ts.expect(250, "2.0.0")
	ts.cmd("NOOP", 250, "2.0.0") // orders the read below after the session's writes
	if ts.sess.txn != nil {
		t.Fatalf("transaction left after the message")
	}
	// SIZE= within the limit does not lift the limit
	rec.reset()
	ts.cmd("MAIL FROM:<a@example.com> SIZE=100", 250, "2.1.0")
	ts.cmd("RCPT TO:<b@example.com>", 250, "2.1.5")
	ts.sendData(stuff(msg + "z\r\n"))
	ts.expect(552, "5.3.4")
	if rec.count("eom") != 0 || rec.count("abort") != 1 {
		t.Fatalf("events %v", rec.kinds())
	}
}

func TestLongDataLine(t *testing.T) {
	rec := &recorder{}
	ts := start(t, Config{MaxLineLength: 1000, Handlers: []SubHandler{{Name: "rec", Handler: rec}}})
	ts.ehlo()
	ts.mailTo("b@example.com")
	ts.sendData("\r\n" + strings.Repeat("a", 1000) + "\r\n.\r\n")
	ts.expect(250, "2.0.0")
	ts.mailTo("b@example.com")
	ts.sendData("\r\n" + strings.Repeat("a", 1001) + "\r\n.\r\n")
	ts.expect(550, "5.5.2")
	if rec.count("abort") != 1 {
		t.Fatalf("events %v", rec.kinds())
	}
}

// bdat sends one BDAT chunk.
func (ts *testSession) bdat(chunk string, last bool) {
	ts.t.Helper()
	cmd := "BDAT " + itoa(len(chunk))
	if last {
		cmd += " LAST"
	}
	ts.sendRaw(cmd + "\r\n" + chunk)
}

func TestBdat(t *testing.T) {
	rec := &recorder{}
	ts := start(t, Config{ChunkSize: 512, Handlers: []SubHandler{{Name: "rec", Handler: rec}}})
	ts.ehlo()
	ts.mailTo("b@example.com")
	// byte-exact: dots are not unstuffed, "\r\n.\r\n" is not an end, and
	// a CRLF split across chunks is one line end
	parts := []string{"Subject: chunks\r\n", "\r\n..dots\r\n.\r\n", "more\r", "\nlast line\r\n"}
	for i, p := range parts {
		last := i == len(parts)-1
		ts.bdat(p, last)
		if !last {
			r := ts.expect(250, "2.0.0")
			if r.texts[0] != itoa(len(p))+" octets received" {
				t.Fatalf("BDAT reply %q", r.raw)
			}
		}
	}
	r := ts.expect(250, "2.0.0")
	if !strings.Contains(r.texts[0], "Message accepted") {
		t.Fatalf("BDAT LAST reply %q", r.raw)
	}
	_, got := splitReceived(t, rec)
	if string(got) != strings.Join(parts, "") {
		t.Fatalf("hooks saw %q, want %q", got, strings.Join(parts, ""))
	}
	if rec.count("data") != 1 || rec.count("eom") != 1 {
		t.Fatalf("events %v", rec.kinds())
	}

	// BDAT 0 LAST ends a message; BDAT 0 LAST alone is an empty message
	rec.reset()
	ts.mailTo("b@example.com")
	ts.bdat("Subject: x\r\n\r\nhi\r\n", false)
	ts.expect(250, "2.0.0")
	ts.bdat("", true)
	ts.expect(250, "2.0.0")
	if _, got := splitReceived(t, rec); string(got) != "Subject: x\r\n\r\nhi\r\n" {
		t.Fatalf("hooks saw %q", got)
	}
	rec.reset()
	ts.mailTo("b@example.com")
	ts.bdat("", true)
	ts.expect(250, "2.0.0")
	if _, got := splitReceived(t, rec); len(got) != 0 {
		t.Fatalf("empty message: hooks saw %q", got)
	}
	if rec.count("eoh") != 1 || rec.count("eom") != 1 {
		t.Fatalf("events %v", rec.kinds())
	}

	// a message that ends without CRLF is kept as it is
	rec.reset()
	ts.mailTo("b@example.com")
	ts.bdat("Subject: x\r\n\r\nno newline", true)
	ts.expect(250, "2.0.0")
	if _, got := splitReceived(t, rec); string(got) != "Subject: x\r\n\r\nno newline" {
		t.Fatalf("hooks saw %q", got)
	}
	rec.reset()
	ts.mailTo("b@example.com")
	ts.bdat("Subject: x", true)
	ts.expect(250, "2.0.0")
	if _, got := splitReceived(t, rec); string(got) != "Subject: x" {
		t.Fatalf("hooks saw %q", got)
	}

	// bare CR / LF in chunks are refused after the last chunk
	for _, bad := range []string{"a\nb\r\n", "a\rb\r\n", "a\x00\r\n", "trailing CR\r"} {
		rec.reset()
		ts.mailTo("b@example.com")
		ts.bdat("Subject: x\r\n\r\n", false)
		ts.expect(250, "2.0.0")
		ts.bdat(bad, true)
		ts.expect(550, "5.5.2")
		if rec.count("eom") != 0 || rec.count("abort") != 1 {
			t.Fatalf("%q: events %v", bad, rec.kinds())
		}
	}

	// a large message in many chunks, byte exact
	rec.reset()
	ts.mailTo("b@example.com")
	msg := testMessage(3*4096+17, 1)
	for i := 0; i < len(msg); i += 1000 {
		j := min(i+1000, len(msg))
		ts.bdat(msg[i:j], j == len(msg))
		ts.expect(250, "2.0.0")
	}
	if _, got := splitReceived(t, rec); string(got) != msg {
		t.Fatalf("large BDAT message differs")
	}
	for _, e := range rec.events() {
		if e.kind == "body" && len(e.raw) > 512 {
			t.Fatalf("body chunk of %d bytes", len(e.raw))
		}
	}
}

func TestBdatErrors(t *testing.T) {
	rec := &recorder{}
	ts := start(t, Config{MaxMessageSize: 1000, Handlers: []SubHandler{{Name: "rec", Handler: rec}}})
	ts.ehlo()
	ts.mailTo("b@example.com")
	ts.bdat(strings.Repeat("x", 600), false)
	ts.expect(250, "2.0.0")
	// over the limit: the chunk is still consumed
	ts.bdat(strings.Repeat("NOOP\r\n", 100), false)
	ts.expect(552, "5.3.4")
	if rec.count("eom") != 0 || rec.count("abort") != 1 {
		t.Fatalf("events %v", rec.kinds())
	}
	// the transaction is gone
	ts.bdat("abc", true)
	ts.expect(503, "5.5.1")
	ts.cmd("NOOP", 250, "2.0.0")
	// one chunk over the limit
	ts.mailTo("b@example.com")
	ts.bdat(strings.Repeat("y", 1001), true)
	ts.expect(552, "5.3.4")
	ts.cmd("NOOP", 250, "2.0.0")
	// DATA after BDAT
	ts.mailTo("b@example.com")
	ts.bdat("Subject: a\r\n", false)
	ts.expect(250, "2.0.0")
	ts.cmd("DATA", 503, "5.5.1")
	ts.bdat("\r\nbody\r\n", true)
	ts.expect(250, "2.0.0")
	// syntax errors close the connection: the chunk size is unknown
	ts.mailTo("b@example.com")
	ts.send("BDAT x12")
	ts.expect(501, "5.5.4")
	ts.expectClosed()
	for _, bad := range []string{"BDAT", "BDAT -1", "BDAT 10 FIRST", "BDAT 1234567890123456789", "BDAT 10 LAST x"} {
		ts := start(t, Config{})
		ts.ehlo()
		ts.send(bad)
		ts.expect(501, "5.5.4")
		ts.expectClosed()
	}
}

// testMessage builds a CRLF message of about n bytes with headers (one
// folded), lines starting with dots and some long lines.
func testMessage(n int, seed uint64) string {
	rng := rand.New(rand.NewPCG(seed, 42))
	var b strings.Builder
	b.WriteString("From: Alice <alice@example.com>\r\n")
	b.WriteString("To: bob@example.com\r\n")
	b.WriteString("Subject: a folded\r\n\tsubject line\r\n")
	b.WriteString("X-Empty:\r\n")
	b.WriteString("\r\n")
	for b.Len() < n {
		switch rng.IntN(8) {
		case 0:
			b.WriteString(".leading dot\r\n")
		case 1:
			b.WriteString("..two dots\r\n")
		case 2:
			b.WriteString("\r\n")
		case 3:
			b.WriteString(strings.Repeat("long ", 150) + "\r\n")
		default:
			fmt.Fprintf(&b, "line %d of the body with some text\r\n", rng.IntN(100000))
		}
	}
	return b.String()
}

// TestLargeReaderSwap sends messages larger than the data reader with the
// next commands in the same write, so that the session swaps between its
// command reader and its data reader with bytes of both kinds in flight:
// every byte must reach the hooks or the command parser, in order.
func TestLargeReaderSwap(t *testing.T) {
	rec := &recorder{}
	ts := start(t, Config{Handlers: []SubHandler{{Name: "rec", Handler: rec}}})
	ts.ehlo()
	var body strings.Builder
	for i := 0; body.Len() < 3*dataReaderSize+100; i++ {
		fmt.Fprintf(&body, "line %d %s\r\n", i, strings.Repeat("y", i%90))
	}
	msg := "Subject: big\r\n\r\n" + body.String()
	for round := range 3 {
		rec.reset()
		ts.mailTo("b@example.com")
		ts.send("DATA")
		ts.expect(354, "")
		// the end of data, then a whole BDAT transaction, in one write
		ts.sendRaw(msg + ".\r\nMAIL FROM:<a@example.com>\r\nRCPT TO:<c@example.com>\r\n" +
			"BDAT " + itoa(len(msg)) + " LAST\r\n" + msg + "NOOP\r\n")
		ts.expect(250, "2.0.0")
		ts.expect(250, "2.1.0")
		ts.expect(250, "2.1.5")
		ts.expect(250, "2.0.0")
		ts.expect(250, "2.0.0") // NOOP
		if n := rec.count("eom"); n != 2 {
			t.Fatalf("round %d: %d messages ended, want 2: %v", round, n, rec.kinds())
		}
		var got [2][]byte
		i := -1
		for _, e := range rec.events() {
			switch e.kind {
			case "data":
				i++
			case "header", "eoh", "body":
				if i >= 0 && !(e.kind == "header" && e.arg == "Received") {
					got[i] = append(got[i], e.raw...)
				}
			}
		}
		for k, g := range got {
			if string(g) != msg {
				t.Fatalf("round %d, message %d: hooks saw %d bytes, want %d (first difference at %d)",
					round, k, len(g), len(msg), firstDiff(g, []byte(msg)))
			}
		}
	}
}

func firstDiff(a, b []byte) int {
	for i := range min(len(a), len(b)) {
		if a[i] != b[i] {
			return i
		}
	}
	return min(len(a), len(b))
}
