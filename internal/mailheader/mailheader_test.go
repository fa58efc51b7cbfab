package mailheader

import (
	"fmt"
	"strings"
	"testing"
)

func scanAll(in string) []Field {
	var out []Field
	Scan(strings.NewReader(in), func(f Field) bool { out = append(out, f); return true })
	return out
}

func TestScan(t *testing.T) {
	got := scanAll("A: 1\r\nB :  two\r\n\tfolded \r\nno colon\r\nC: 3\r\n\r\nD: body\r\n")
	want := "[{A 1 false} {B two\tfolded false} {no colon  false} {C 3 false}]"
	if fmt.Sprint(got) != want {
		t.Errorf("got %v, want %s", got, want)
	}
	if got := scanAll("A: 1\r\nB: 2"); fmt.Sprint(got) != "[{A 1 false} {B 2 false}]" {
		t.Errorf("no blank line: %v", got)
	}
	long := scanAll("A: " + strings.Repeat("x", 2*MaxField) + "\r\nB: 2\r\n\r\n")
	if len(long) != 2 || !long[0].Truncated || len(long[0].Value) > MaxField || long[1].Value != "2" {
		t.Errorf("long field: %d fields", len(long))
	}
}

func FuzzScan(f *testing.F) {
	f.Add("A: 1\r\nB: 2\r\n\r\nbody")
	f.Fuzz(func(t *testing.T, in string) {
		for _, fl := range scanAll(in) {
			if len(fl.Value) > MaxField || strings.Contains(fl.Value, "\n") {
				t.Errorf("field %q", fl.Value)
			}
		}
	})
}
