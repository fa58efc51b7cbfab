package loadgen

import (
	"bufio"
	"bytes"
	"fmt"
	"testing"
)

// TestMessageSize checks that a message is exactly its size, prebuilt or
// streamed, with CRLF line ends only and nothing to dot-stuff.
func TestMessageSize(t *testing.T) {
	for _, size := range []int64{0, 100, 1 << 10, 10 << 10, 65519, 65520, 65521, 1 << 20, prebuiltMax + 12345} {
		m := NewMessage(size, "a@example.test", "b@example.test")
		var buf bytes.Buffer
		w := bufio.NewWriter(&buf)
		if err := m.WriteTo(w); err != nil {
			t.Fatal(err)
		}
		w.Flush()
		b := buf.Bytes()
		if int64(len(b)) != m.Size() {
			t.Errorf("size %d: wrote %d bytes, Size() %d", size, len(b), m.Size())
		}
		if size >= int64(len(m.header))+2 && m.Size() != size {
			t.Errorf("size %d: Size() %d", size, m.Size())
		}
		if !bytes.HasSuffix(b, []byte("\r\n")) {
			t.Errorf("size %d: does not end in CRLF", size)
		}
		for i, c := range b {
			switch {
			case c == '\r' && (i+1 == len(b) || b[i+1] != '\n'):
				t.Fatalf("size %d: bare CR at %d", size, i)
			case c == '\n' && (i == 0 || b[i-1] != '\r'):
				t.Fatalf("size %d: bare LF at %d", size, i)
			case c == '.' && i > 0 && b[i-1] == '\n':
				t.Fatalf("size %d: line starting with a dot at %d", size, i)
			}
		}
	}
}

// TestNumberedMessage checks that a numbered message keeps its exact size
// and carries the number given in its Message-ID, prebuilt or streamed.
func TestNumberedMessage(t *testing.T) {
	for _, size := range []int64{10 << 10, prebuiltMax + 12345} {
		m, err := NewNumberedMessage(size, "a@example.test", "b@example.test", "a1b2c3d4")
		if err != nil {
			t.Fatal(err)
		}
		for _, n := range []uint32{0, 0x2a, 0xffffffff} {
			var buf bytes.Buffer
			w := bufio.NewWriter(&buf)
			if err := m.WriteNumbered(w, n); err != nil {
				t.Fatal(err)
			}
			w.Flush()
			b := buf.Bytes()
			if int64(len(b)) != size {
				t.Errorf("size %d, n %x: wrote %d bytes", size, n, len(b))
			}
			want := fmt.Sprintf("\r\nMessage-ID: <bench-a1b2c3d4-%08x@example.test>\r\n", n)
			if !bytes.Contains(b, []byte(want)) {
				t.Errorf("size %d: no %q in %q", size, want, b[:300])
			}
		}
	}
	if _, err := NewNumberedMessage(100, "a@example.test", "b@example.test", "a>b"); err == nil {
		t.Error("prefix a>b accepted")
	}
}
