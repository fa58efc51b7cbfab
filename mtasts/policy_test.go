package mtasts

import (
	"testing"
	"time"
)

func TestParseRecord(t *testing.T) {
	for _, tc := range []struct {
		in, id string
	}{
		{"v=STSv1; id=20160831085700Z;", "20160831085700Z"},
		{"v=STSv1; id=20160831085700Z", "20160831085700Z"},
		{"v=STSv1;id=abc", "abc"},
		{"v=STSv1; id=abc; ext=x.y", "abc"},
		{"v=STSv1 ;\tid=abc ;", "abc"},
		{"v=STSv1; ext-1=v; id=A1", "A1"},
	} {
		id, err := ParseRecord(tc.in)
		if err != nil || id != tc.id {
			t.Errorf("ParseRecord(%q) = %q, %v; want %q", tc.in, id, err, tc.id)
		}
	}
	for _, in := range []string{
		"", "v=STSv1", "v=STSv1;", "v=STSv2; id=a", "v=STSv1x; id=a", " v=STSv1; id=a",
		"v=STSv1; id=", "v=STSv1; id=a-b", "v=STSv1; id=123456789012345678901234567890123",
		"v=STSv1; id=a; id=b", "v=STSv1; id=a;; ", "v=STSv1; id=a; ext=", "v=STSv1; id=a; =x",
		"v=STSv1; id=a; ext=a=b", "v=STSv1; id=a; x", "v=STSv1; id=a b",
	} {
		if id, err := ParseRecord(in); err == nil {
			t.Errorf("ParseRecord(%q) = %q, want an error", in, id)
		}
	}
}

func TestSelectRecord(t *testing.T) {
	if _, ok, err := SelectRecord([]string{"v=spf1 -all"}); ok || err != nil {
		t.Errorf("no STS record: ok %v err %v", ok, err)
	}
	if id, ok, err := SelectRecord([]string{"other", "v=STSv1; id=x"}); !ok || err != nil || id != "x" {
		t.Errorf("one record: %q %v %v", id, ok, err)
	}
	if _, ok, err := SelectRecord([]string{"v=STSv1; id=x", "v=STSv1; id=y"}); !ok || err == nil {
		t.Errorf("two records: ok %v err %v", ok, err)
	}
}

func TestParsePolicy(t *testing.T) {
	p, err := ParsePolicy([]byte("version: STSv1\r\nmode: enforce\r\nmx: mail.example.com\r\nmx: *.Example.net\r\nmx: backupmx.example.com\r\nmax_age: 604800\r\n"))
	if err != nil {
		t.Fatal(err)
	}
	if p.Mode != ModeEnforce || p.MaxAge != 604800*time.Second || len(p.MX) != 3 || p.MX[1] != "*.example.net" {
		t.Errorf("policy %+v", p)
	}
	for _, in := range []string{
		"version: STSv1\nmode: testing\nmx: a.example\nmax_age: 86400",
		"version:STSv1\nmode:testing\nmx:a.example\nmax_age:0\n",
		"version: STSv1\nmode: none\nmax_age: 31557600\n",
		"version: STSv1\nmode: enforce\nmx: a.example\nmax_age: 1\nfuture_key: some value\n\n",
	} {
		if _, err := ParsePolicy([]byte(in)); err != nil {
			t.Errorf("ParsePolicy(%q): %v", in, err)
		}
	}
	for _, in := range []string{
		"",
		"version: STSv2\nmode: enforce\nmx: a.example\nmax_age: 1",
		"mode: enforce\nmx: a.example\nmax_age: 1",
		"version: STSv1\nmx: a.example\nmax_age: 1",
		"version: STSv1\nmode: enforce\nmx: a.example",
		"version: STSv1\nmode: enforce\nmax_age: 1",
		"version: STSv1\nmode: Enforce\nmx: a.example\nmax_age: 1",
		"version: STSv1\nmode: enforce\nmx: a.example\nmax_age: 31557601",
		"version: STSv1\nmode: enforce\nmx: a.example\nmax_age: -1",
		"version: STSv1\nmode: enforce\nmx: a.example\nmax_age: 12345678901",
		"version: STSv1\nmode: enforce\nmode: testing\nmx: a.example\nmax_age: 1",
		"version: STSv1\nmode: enforce\nmx: a..example\nmax_age: 1",
		"version: STSv1\nmode: enforce\nmx: a.*.example\nmax_age: 1",
		"version: STSv1\nmode: enforce\nmx: *.\nmax_age: 1",
		"version: STSv1\n\nmode: enforce\nmx: a.example\nmax_age: 1",
		"version: STSv1\nmode: enforce\rmx: a.example\nmax_age: 1",
		"version STSv1\nmode: enforce\nmx: a.example\nmax_age: 1",
		"version: STSv1\nmode: enforce\nmx: a.example\nmax_age: 1\nx:\n",
	} {
		if p, err := ParsePolicy([]byte(in)); err == nil {
			t.Errorf("ParsePolicy(%q) = %+v, want an error", in, p)
		}
	}
}

func TestMatchMX(t *testing.T) {
	for _, tc := range []struct {
		pat, host string
		ok        bool
	}{
		{"mail.example.com", "mail.example.com", true},
		{"mail.example.com", "MAIL.Example.com.", true},
		{"mail.example.com", "mail2.example.com", false},
		{"*.example.com", "mx1.example.com", true},
		{"*.example.com", "example.com", false},
		{"*.example.com", "a.b.example.com", false},
		{"*.example.com", ".example.com", false},
		{"*.example.com", "mx1.example.net", false},
		{"", "", false},
	} {
		if got := MatchMX(tc.pat, tc.host); got != tc.ok {
			t.Errorf("MatchMX(%q, %q) = %v", tc.pat, tc.host, got)
		}
	}
}

func FuzzParseRecord(f *testing.F) {
	f.Add("v=STSv1; id=20160831085700Z;")
	f.Fuzz(func(t *testing.T, s string) {
		id, err := ParseRecord(s)
		if err == nil && (id == "" || len(id) > 32 || !allAlnum(id)) {
			t.Fatalf("ParseRecord(%q) = %q", s, id)
		}
	})
}

func FuzzParsePolicy(f *testing.F) {
	f.Add([]byte("version: STSv1\r\nmode: enforce\r\nmx: *.example.com\r\nmax_age: 604800\r\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		p, err := ParsePolicy(b)
		if err != nil {
			return
		}
		if p.MaxAge < 0 || p.MaxAge > MaxMaxAge*time.Second || (p.Mode != ModeNone && len(p.MX) == 0) {
			t.Fatalf("ParsePolicy(%q) = %+v", b, p)
		}
		for _, m := range p.MX {
			if !MatchMX(m, "x"+m[1:]) && !MatchMX(m, m) {
				t.Fatalf("pattern %q matches nothing", m)
			}
		}
	})
}
