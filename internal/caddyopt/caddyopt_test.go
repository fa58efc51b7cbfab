package caddyopt

import (
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
)

// TestOnce: a second option is refused naming the module and the option,
// a repeatable one and a first one are not, and Mark counts as given.
func TestOnce(t *testing.T) {
	d := caddyfile.NewTestDispenser("x {\n a 1\n b 2\n b 3\n a 4\n c 5\n}")
	d.Next()
	o := New("x", "b")
	o.Mark("c")
	var errs []string
	for n := d.Nesting(); d.NextBlock(n); {
		if err := o.Once(d); err != nil {
			errs = append(errs, err.Error())
		}
		d.RemainingArgs()
	}
	if len(errs) != 2 || !strings.Contains(errs[0], "x: a: given twice") || !strings.Contains(errs[1], "x: c: given twice") {
		t.Fatalf("errors %q", errs)
	}
}
