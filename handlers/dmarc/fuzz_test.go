package dmarc

import (
	"strings"
	"testing"
)

// FuzzFromDomains: any From: value gives either an error or domains that
// are normalized host names (normalize leaves them as they are), one per
// address; never a panic. Corpus: testdata/fuzz/FuzzFromDomains.
func FuzzFromDomains(f *testing.F) {
	for _, s := range []string{
		"alice@example.test",
		`"Doe, Alice" <alice@Example.Test.>`,
		"friends: a@one.test, b@two.test;",
		"=?utf-8?q?Al=C3=AFce?= <alice@bücher.example>",
		"Alice (the boss <alice@example.test>",
		"undisclosed-recipients:;",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, value string) {
		ds, err := fromDomains(value)
		if err != nil {
			if ds != nil {
				t.Fatalf("error %v with domains %q", err, ds)
			}
			return
		}
		if len(ds) == 0 {
			t.Fatalf("no error and no domain for %q", value)
		}
		for _, d := range ds {
			n, ok := normalize(d)
			if !ok || n != d || d == "" || len(d) > 253 || strings.ToLower(d) != d {
				t.Fatalf("fromDomains(%q) gives %q, not a normalized domain (%q, %v)", value, d, n, ok)
			}
		}
		// A lone address with that domain gives the same domain.
		if again, err := fromDomains("x@" + ds[0]); err != nil || len(again) != 1 || again[0] != ds[0] {
			t.Fatalf("x@%s gives %q, %v", ds[0], again, err)
		}
	})
}
