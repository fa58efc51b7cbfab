package clientnet

import (
	"net/netip"
	"strings"
	"testing"
)

func TestParsePrefix(t *testing.T) {
	for _, tc := range []struct {
		in, want string // want "" for an error
	}{
		{"192.0.2.0/24", "192.0.2.0/24"},
		{"192.0.2.77/24", "192.0.2.0/24"}, // masked
		{"192.0.2.1", "192.0.2.1/32"},
		{"2001:db8::1", "2001:db8::1/128"},
		{"2001:db8::1/32", "2001:db8::/32"},
		{"::ffff:192.0.2.1", "192.0.2.1/32"},     // IPv4-mapped address
		{"::ffff:192.0.2.0/120", "192.0.2.0/24"}, // IPv4-mapped range
		{"::ffff:0.0.0.0/96", "0.0.0.0/0"},       // every IPv4 address, seen as such
		{"::ffff:0:0/95", "::fffe:0:0/95"},       // wider than the mapped space: stays IPv6
		{"nope", ""},
		{"192.0.2.0/33", ""},
		{"300.1.1.1", ""},
		{"fe80::1%eth0", ""},
		{"", ""},
	} {
		p, err := ParsePrefix(tc.in)
		if tc.want == "" {
			if err == nil || !strings.Contains(err.Error(), `"`+tc.in+`"`) {
				t.Errorf("ParsePrefix(%q) = %v, %v; want an error naming the value", tc.in, p, err)
			}
			continue
		}
		if err != nil || p.String() != tc.want {
			t.Errorf("ParsePrefix(%q) = %v, %v; want %s", tc.in, p, err, tc.want)
		}
	}
}

func TestParsePrefixes(t *testing.T) {
	ps, err := ParsePrefixes([]string{"10.0.0.0/8", "::ffff:192.0.2.1"})
	if err != nil || len(ps) != 2 || ps[0].String() != "10.0.0.0/8" || ps[1].String() != "192.0.2.1/32" {
		t.Fatalf("ParsePrefixes = %v, %v", ps, err)
	}
	if _, err := ParsePrefixes([]string{"10.0.0.0/8", "bad", "also bad"}); err == nil || !strings.Contains(err.Error(), `"bad"`) {
		t.Fatalf("ParsePrefixes with a bad value: %v; want an error naming it", err)
	}
	if ps, err := ParsePrefixes(nil); err != nil || ps != nil {
		t.Fatalf("ParsePrefixes(nil) = %v, %v", ps, err)
	}
}

func TestContains(t *testing.T) {
	ps, err := ParsePrefixes([]string{"192.0.2.0/24", "2001:db8::/32"})
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		ip   netip.Addr
		want bool
	}{
		{netip.MustParseAddr("192.0.2.9"), true},
		{netip.MustParseAddr("::ffff:192.0.2.9"), true}, // mapped, taken as IPv4
		{netip.MustParseAddr("198.51.100.1"), false},
		{netip.MustParseAddr("2001:db8::5"), true},
		{netip.MustParseAddr("2001:db9::5"), false},
		{netip.Addr{}, false}, // a unix socket
	} {
		if got := Contains(ps, tc.ip); got != tc.want {
			t.Errorf("Contains(%v) = %v, want %v", tc.ip, got, tc.want)
		}
	}
	if Contains(nil, netip.MustParseAddr("192.0.2.9")) {
		t.Error("Contains(nil, ip) = true")
	}
}

func TestNetwork(t *testing.T) {
	exempt, err := ParsePrefixes([]string{"10.0.0.0/8"})
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		ip     string
		want   string
		wantOK bool
	}{
		{"192.0.2.77", "192.0.2.0/24", true},
		{"::ffff:192.0.2.77", "192.0.2.0/24", true},
		{"2001:db8:1:2:3::1", "2001:db8:1::/48", true},
		{"10.1.2.3", "", false},
		{"::ffff:10.1.2.3", "", false},
	} {
		got, ok := Network(netip.MustParseAddr(tc.ip), exempt, 24, 48)
		if got != tc.want || ok != tc.wantOK {
			t.Errorf("Network(%s) = %q, %v; want %q, %v", tc.ip, got, ok, tc.want, tc.wantOK)
		}
	}
}

func TestOptions(t *testing.T) {
	v4, v6 := 0, 0
	if _, err := Options("greylist", &v4, &v6, 24, 64, []string{"10.0.0.0/8", "x"}); err == nil || !strings.Contains(err.Error(), `greylist: exempt[1]: "x"`) {
		t.Fatalf("Options with a bad exempt value: %v", err)
	}
	v4, v6 = 0, 200
	if _, err := Options("greylist", &v4, &v6, 24, 64, nil); err == nil || !strings.Contains(err.Error(), "ipv6_prefix") {
		t.Fatalf("Options with ipv6_prefix 200: %v", err)
	}
	v4, v6 = 0, 0
	exempt, err := Options("greylist", &v4, &v6, 24, 64, []string{"::ffff:10.0.0.0/104"})
	if err != nil || v4 != 24 || v6 != 64 || len(exempt) != 1 || exempt[0].String() != "10.0.0.0/8" {
		t.Fatalf("Options = %v, %v (v4 %d, v6 %d)", exempt, err, v4, v6)
	}
}
