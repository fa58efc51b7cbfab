package session

import (
	"bytes"
	"context"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"
	"unicode/utf8"
)

// checker is a sub-handler that checks the invariants of the streamed
// events while a fuzzed session runs (in the fuzz goroutine: memConn needs
// no other).
type checker struct {
	t         *testing.T
	chunkSize int
}

func (c *checker) Header(ctx context.Context, s *Session, h HeaderField) error {
	if !bytes.HasSuffix(h.Raw, crlf) {
		// a BDAT message's last line may lack CRLF, but it is body
		c.t.Errorf("header raw %q does not end with CRLF", h.Raw)
	}
	if strings.ContainsAny(h.Value, "\r\n") {
		c.t.Errorf("header value %q has CR or LF", h.Value)
	}
	if h.Name == "" || FieldNameLen([]byte(h.Name+":")) != len(h.Name) {
		c.t.Errorf("header name %q", h.Name)
	}
	return nil
}

func (c *checker) Body(ctx context.Context, s *Session, chunk []byte) error {
	if len(chunk) == 0 || len(chunk) > c.chunkSize {
		c.t.Errorf("body chunk of %d bytes", len(chunk))
	}
	return nil
}

// FuzzCommandLine feeds arbitrary bytes as commands to a session after EHLO:
// the engine must not panic and every reply must be a well-formed SMTP
// reply line.
func FuzzCommandLine(f *testing.F) {
	for _, s := range []string{
		"NOOP",
		"MAIL FROM:<a@b.example> SIZE=100 BODY=8BITMIME\r\nRCPT TO:<c@d.example>\r\nDATA",
		"MAIL FROM:<a@b.example>\r\nRCPT TO:<c@d.example>\r\nBDAT 5 LAST\r\nhello",
		"XYZZY \xff\xfe\x00",
		"RCPT TO:<\"q\\\"x\"@[IPv6:::1]> NOTIFY=NEVER",
		"HELO (x)\r\nMAIL FROM:<> SMTPUTF8",
		"BDAT 99999999999999999999",
		"VRFY \x7f\r\nEXPN x\r\nHELP\r\nRSET\r\nQUIT",
	} {
		f.Add([]byte(s))
	}
	ck := &checker{chunkSize: 512}
	srv, err := newServer(Config{ChunkSize: 512, MaxMessageSize: 4096, MaxErrors: 1000,
		Handlers: []SubHandler{{Name: "check", Handler: ck}}})
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		ck.t = t // a worker runs one input at a time
		in := append([]byte("EHLO fuzz.example\r\n"), data...)
		in = append(in, "\r\nNOOP\r\n"...)
		var out bytes.Buffer
		conn := &memConn{r: bytes.NewReader(in), w: &out}
		if err := srv.Serve(context.Background(), conn, ConnInfo{}); err != nil {
			t.Fatalf("Serve: %v", err)
		}
		replies, err := checkReplies(out.Bytes())
		if err != nil {
			t.Fatalf("%v\nin %q\nout %q", err, in, out.Bytes())
		}
		if len(replies) < 2 || replies[0].code != 220 || replies[1].code != 250 {
			t.Fatalf("replies %q", out.Bytes())
		}
		for _, r := range replies[1:] {
			for _, text := range r.texts {
				if e := enhancedRE.FindString(text); e != "" && r.code/100 != 1 && e[0] != byte('0'+r.code/100) {
					t.Fatalf("reply %q: enhanced code of another class", r.raw)
				}
			}
		}
	})
}

// FuzzParsePathArg checks the MAIL/RCPT argument parser: no panic, and a
// parsed path and parameters render back to an argument that parses the
// same.
func FuzzParsePathArg(f *testing.F) {
	for _, s := range []string{
		"<a@b.example>", "<>", "<Postmaster>", " <@h1.example,@h2.example:u@d.example> SIZE=10 BODY=8BITMIME",
		"<\"quoted >\\\" local\"@[192.0.2.1]>", "<ü@exämple.com> SMTPUTF8", "<a@[IPv6:2001:db8::1]> X-A=b",
		"a@b", "<a@b", "<a@b>x", "<a@b> =v", "<a@b> K=v=w",
	} {
		f.Add(s, true, true)
	}
	f.Fuzz(func(t *testing.T, arg string, allowNull, allowPostmaster bool) {
		p, ps, err := ParsePathArg(arg, allowNull, allowPostmaster)
		if err != nil {
			return
		}
		if strings.ContainsAny(p.Mailbox, "\r\n\x00") {
			t.Fatalf("mailbox %q has CR, LF or NUL", p.Mailbox)
		}
		if len(p.Mailbox) > maxPath-2 {
			t.Fatalf("mailbox of %d octets", len(p.Mailbox))
		}
		switch {
		case p.Mailbox == "":
			if !allowNull {
				t.Fatalf("null path accepted for %q", arg)
			}
		case p.Domain == "":
			if !allowPostmaster || !strings.EqualFold(p.Mailbox, "postmaster") {
				t.Fatalf("mailbox %q without a domain", p.Mailbox)
			}
		default:
			if p.Local+"@"+p.Domain != p.Mailbox {
				t.Fatalf("local %q domain %q mailbox %q", p.Local, p.Domain, p.Mailbox)
			}
			if len(p.Local) > maxLocalPart {
				t.Fatalf("local part of %d octets", len(p.Local))
			}
		}
		if p.UTF8 != !isASCII(p.Mailbox) || (p.UTF8 && !utf8.ValidString(p.Mailbox)) {
			t.Fatalf("UTF8 flag %v for %q", p.UTF8, p.Mailbox)
		}
		var b strings.Builder
		b.WriteString(p.String())
		for _, q := range ps {
			if q.Key != strings.ToUpper(q.Key) || q.Key == "" || strings.ContainsAny(q.Key+q.Value, " =\r\n\x00") {
				t.Fatalf("param %+v", q)
			}
			if q.Value != "" && !q.HasValue {
				t.Fatalf("param %+v has a value but HasValue false", q)
			}
			b.WriteString(" " + q.Key)
			if q.HasValue {
				b.WriteString("=" + q.Value)
			}
		}
		p2, ps2, err := ParsePathArg(b.String(), allowNull, allowPostmaster)
		if err != nil {
			t.Fatalf("rendered %q (from %q) does not parse: %v", b.String(), arg, err)
		}
		if p2 != p || len(ps2) != len(ps) {
			t.Fatalf("round trip %q -> %+v %+v, was %+v %+v", b.String(), p2, ps2, p, ps)
		}
		for i := range ps {
			if ps[i] != ps2[i] {
				t.Fatalf("round trip params %+v vs %+v", ps2, ps)
			}
		}
	})
}

// refData is the obviously-correct reference for DATA decoding: the end
// is the first "\r\n.\r\n" of the data as if preceded by CRLF; lines are the
// CRLF-delimited pieces before it, each losing one leading dot; any CR not
// before LF, LF not after CR, or NUL is a problem. With normalize the bare
// CRs and LFs become CRLF instead (NUL is still a problem).
//
// When no end is found, end is -1 and a CR at the very end of in is not
// counted (the next byte decides).
func refData(in []byte, dot, normalize bool) (end int, out []byte, problem bool) {
	content := in
	end = -1
	if dot {
		if i := bytes.Index(append([]byte("\r\n"), in...), []byte("\r\n.\r\n")); i >= 0 {
			end = i + 3
			content = in[:i]
		}
	}
	for i, c := range content {
		switch c {
		case 0:
			problem = true
		case '\r':
			if i+1 < len(content) && content[i+1] != '\n' {
				problem = true
			}
		case '\n':
			if i == 0 || content[i-1] != '\r' {
				problem = true
			}
		}
	}
	lines := bytes.Split(content, crlf)
	for i, l := range lines {
		if dot && len(l) > 0 && l[0] == '.' {
			l = l[1:]
		}
		if normalize {
			var n []byte
			for _, c := range l {
				if c == '\r' || c == '\n' {
					n = append(n, crlf...)
				} else {
					n = append(n, c)
				}
			}
			l = n
		}
		if i > 0 {
			out = append(out, crlf...)
		}
		out = append(out, l...)
	}
	if normalize {
		problem = bytes.IndexByte(content, 0) >= 0
	}
	return end, out, problem
}

// checkSink collects decoded bytes and fails if any arrive after a problem
// was flagged ("after a problem is flagged nothing more is written").
type checkSink struct {
	t   *testing.T
	d   *decoder
	out []byte
	asm *assembler
}

func (s *checkSink) write(p []byte) {
	if s.d.problem != problemNone {
		s.t.Fatalf("decoder wrote %q after flagging %v", p, s.d.problem)
	}
	s.out = append(s.out, p...)
	if s.asm != nil {
		s.asm.write(p)
	}
}

// pieces splits in at random points.
func pieces(in []byte, seed uint64) [][]byte {
	rng := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	var ps [][]byte
	for len(in) > 0 {
		n := 1 + rng.IntN(min(len(in), 1+rng.IntN(64)))
		ps = append(ps, in[:n])
		in = in[n:]
	}
	return ps
}

func FuzzDecoder(f *testing.F) {
	for _, s := range []string{
		"Subject: x\r\n\r\nbody\r\n.\r\n",
		".\r\n",
		"..\r\n.\r\n",
		"a\n.\nb\r\n.\r\n",
		"a\r.\rb\r\n.\r\n",
		"a\r\n.\r\r\n.\r\n",
		"a\r\n\x00.\r\n.\r\n",
		"x\r\r\ny\r\n.\r\nMAIL FROM:<a@b>\r\n",
		"no end\r\n.",
		"no end\r",
		".\r",
		"\n.\r\n",
	} {
		f.Add([]byte(s), uint64(len(s)), false)
		f.Add([]byte(s), uint64(len(s)), true)
	}
	f.Fuzz(func(t *testing.T, in []byte, seed uint64, normalize bool) {
		wantEnd, wantOut, wantProblem := refData(in, true, normalize)
		var d decoder
		d.reset(true, normalize, 1<<30)
		sink := &checkSink{t: t, d: &d}
		consumed, ended := 0, false
		for _, p := range pieces(in, seed) {
			n, end := d.decode(p, sink)
			consumed += n
			if end {
				ended = true
				break
			}
			if n != len(p) {
				t.Fatalf("decode used %d of %d bytes without an end", n, len(p))
			}
		}
		gotProblem := d.problem != problemNone
		if !ended {
			if wantEnd >= 0 {
				t.Fatalf("no end found in %q, want one at %d", in, wantEnd)
			}
			if gotProblem && !wantProblem || !gotProblem && wantProblem {
				t.Fatalf("%q: problem %v, reference %v", in, d.problem, wantProblem)
			}
			if !gotProblem && (!bytes.HasPrefix(wantOut, sink.out) || len(wantOut)-len(sink.out) > 2) {
				t.Fatalf("%q: partial output %q, reference %q", in, sink.out, wantOut)
			}
			return
		}
		if consumed != wantEnd {
			t.Fatalf("%q: end after %d bytes, reference %d", in, consumed, wantEnd)
		}
		if gotProblem != wantProblem {
			t.Fatalf("%q (normalize %v): problem %v, reference %v", in, normalize, d.problem, wantProblem)
		}
		if !gotProblem && !bytes.Equal(sink.out, wantOut) {
			t.Fatalf("%q: output %q, reference %q", in, sink.out, wantOut)
		}
	})
}

// FuzzBdatDecoder checks BDAT decoding (no dot-stuffing, no end sequence)
// against the reference, and that the header/body split of the result
// reassembles byte for byte.
func FuzzBdatDecoder(f *testing.F) {
	for _, s := range []string{
		"Subject: x\r\n\r\nbody\r\n.\r\n",
		"Subject: a\r\n folded\r\nTo: b\r\n\r\n" + strings.Repeat("body line\r\n", 60),
		"no blank line\r\nbody",
		"Subject: no newline",
		"a\nb", "a\rb", "a\x00b", "trailing\r", "\r\n\r\n",
		" continuation first\r\n",
	} {
		f.Add([]byte(s), uint64(len(s)), false)
		f.Add([]byte(s), uint64(len(s)), true)
	}
	rec := &recorder{}
	srv, err := newServer(Config{ChunkSize: 512, Handlers: []SubHandler{{Name: "rec", Handler: rec}}})
	if err != nil {
		f.Fatal(err)
	}
	s := newSession(srv, &memConn{}, ConnInfo{})
	s.ctx = context.Background()
	f.Fuzz(func(t *testing.T, in []byte, seed uint64, normalize bool) {
		_, wantOut, wantProblem := refData(in, false, normalize)
		if !normalize && len(in) > 0 && in[len(in)-1] == '\r' {
			wantProblem = true // the last chunk's trailing CR is bare
		}
		rec.reset() // a worker runs one input at a time
		s.asm.reset(s, s.ctx, nil)
		var d decoder
		d.reset(false, normalize, 1<<30)
		sink := &checkSink{t: t, d: &d, asm: &s.asm}
		for _, p := range pieces(in, seed) {
			n, end := d.decode(p, sink)
			if end || n != len(p) {
				t.Fatalf("BDAT decode used %d of %d bytes, end %v", n, len(p), end)
			}
		}
		d.finishChunks(sink)
		s.asm.finish()
		gotProblem := d.problem != problemNone
		if gotProblem != wantProblem {
			t.Fatalf("%q (normalize %v): problem %v, reference %v", in, normalize, d.problem, wantProblem)
		}
		if gotProblem {
			return
		}
		if !bytes.Equal(sink.out, wantOut) {
			t.Fatalf("%q: output %q, reference %q", in, sink.out, wantOut)
		}
		if s.asm.failure != nil || s.asm.tooBig {
			t.Fatalf("assembler failed: %v", s.asm.failure)
		}
		if got := rec.content(); !bytes.Equal(got, sink.out) {
			t.Fatalf("%q: hooks reassemble to %q", sink.out, got)
		}
		if rec.count("eoh") != 1 {
			t.Fatalf("%d end-of-headers events", rec.count("eoh"))
		}
		for _, e := range rec.events() {
			if e.kind == "body" && (len(e.raw) == 0 || len(e.raw) > 512) {
				t.Fatalf("body chunk of %d bytes", len(e.raw))
			}
			if e.kind == "header" && (!bytes.HasSuffix(e.raw, crlf) || strings.ContainsAny(e.value, "\r\n")) {
				t.Fatalf("header %+v", e)
			}
		}
	})
}

// FuzzSpoolEdits feeds a message through the assembler into a spool (in
// memory or, with a tiny budget, a file), applies edits derived from the
// input, and checks the rendered message against a plain reference: the
// header split into fields, the edits applied to that list, the body kept
// or replaced. Without edits the message comes back byte for byte.
func FuzzSpoolEdits(f *testing.F) {
	for _, s := range []string{
		"Subject: x\r\n\r\nbody\r\n",
		"Subject: a\r\n folded\r\nTo: b\r\nsubject: two\r\n\r\n" + strings.Repeat("body line\r\n", 60),
		"no blank line\r\nbody",
		"Subject: only headers\r\n",
		"",
		"\r\nbody only\r\n",
	} {
		f.Add([]byte(s), []byte{0, 1, 2}, uint64(3), false)
		f.Add([]byte(s), []byte{3, 4, 5, 6, 7, 8}, uint64(7), true)
	}
	f.Fuzz(func(t *testing.T, in []byte, ops []byte, seed uint64, toFile bool) {
		if len(ops) > 16 || bytes.ContainsAny(in, "\x00") {
			return
		}
		// The decoder hands the assembler CRLF lines only; keep the
		// input to that form.
		in = bytes.ReplaceAll(bytes.ReplaceAll(in, []byte("\r"), nil), []byte("\n"), crlf)
		budget := int64(0)
		if toFile {
			budget = 1
		}
		srv, err := newServer(Config{SpoolMemory: budget, SpoolDir: t.TempDir()})
		if err != nil {
			t.Fatal(err)
		}
		s := newSession(srv, &memConn{}, ConnInfo{})
		s.ctx = context.Background()
		sp := newSpool(srv)
		defer sp.release()
		s.asm.reset(s, s.ctx, sp)
		s.asm.stream = true
		for _, p := range pieces(in, seed) {
			s.asm.write(p)
		}
		s.asm.finish()
		if s.asm.failure != nil {
			return // too many fields, or a field over MaxHeaderSize
		}
		if sp.err != nil {
			t.Fatal(sp.err)
		}
		txn := &Transaction{sp: sp}
		fields, sep, body := refSplit(in)
		names := []string{"Subject", "X-A", "to", "Received"}
		for i, op := range ops {
			name := names[int(op)%len(names)]
			value := fmt.Sprintf("v%d\r\n\tfold", i)
			switch op % 5 {
			case 0:
				txn.PrependHeader(name, value)
				fields = slices.Insert(fields, 0, refField{name, renderField(name, value)})
			case 1:
				txn.InsertHeader(int(op/5)%4, name, value)
				fields = slices.Insert(fields, min(int(op/5)%4, len(fields)), refField{name, renderField(name, value)})
			case 2:
				txn.ChangeHeader(name, 1+int(op/5)%2, value)
				fields = refChange(fields, name, 1+int(op/5)%2, value)
			case 3:
				txn.DeleteHeader(name, 1)
				fields = refChange(fields, name, 1, "")
			case 4:
				txn.AppendHeader(name, value)
				fields = append(fields, refField{name, renderField(name, value)})
			}
		}
		var want []byte
		for _, fl := range fields {
			want = append(want, fl.raw...)
		}
		want = append(append(want, sep...), body...)
		got, err := txn.Message().Bytes()
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, want) {
			t.Fatalf("in %q ops %v:\ngot  %q\nwant %q", in, ops, got, want)
		}
		if len(ops) == 0 && !bytes.Equal(got, in) {
			t.Fatalf("without edits %q came back as %q", in, got)
		}
	})
}

// refField is a header field of the reference split.
type refField struct {
	name string
	raw  []byte
}

// refSplit splits a CRLF message the plain way: fields (a line with a
// name and a colon, and the lines starting with white space after it)
// until the blank line (the separator) or a line that is neither (the
// body starts there).
func refSplit(in []byte) ([]refField, []byte, []byte) {
	var fields []refField
	rest := in
	for len(rest) > 0 {
		i := bytes.Index(rest, crlf)
		if i < 0 {
			return fields, nil, rest // a last line without CRLF starts the body
		}
		line := rest[:i+2]
		switch {
		case i == 0:
			return fields, crlf, rest[2:]
		case (line[0] == ' ' || line[0] == '\t') && len(fields) > 0:
			last := &fields[len(fields)-1]
			last.raw = append(last.raw, line...)
		case FieldNameLen(line) > 0:
			fields = append(fields, refField{string(line[:FieldNameLen(line)]), append([]byte(nil), line...)})
		default:
			return fields, nil, rest
		}
		rest = rest[i+2:]
	}
	return fields, nil, nil
}

// refChange is ChangeHeader on the reference list.
func refChange(fields []refField, name string, n int, value string) []refField {
	seen := 0
	for i, f := range fields {
		if strings.EqualFold(f.name, name) {
			if seen++; seen == n {
				if value == "" {
					return slices.Delete(fields, i, i+1)
				}
				fields[i] = refField{f.name, renderField(f.name, value)}
				return fields
			}
		}
	}
	if value != "" {
		fields = append(fields, refField{name, renderField(name, value)})
	}
	return fields
}
