package esmtp

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
	_ "github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	_ "github.com/mholt/caddy-l4/layer4"
)

// TestCaddyfileAdaptToJSON adapts each testdata/caddyfile_adapt/*.caddytest
// (a Caddyfile, a line of dashes, the expected JSON) as caddy-l4 does.
func TestCaddyfileAdaptToJSON(t *testing.T) {
	files, err := filepath.Glob("testdata/caddyfile_adapt/*.caddytest")
	if err != nil || len(files) == 0 {
		t.Fatalf("no .caddytest files: %v", err)
	}
	for _, f := range files {
		t.Run(filepath.Base(f), func(t *testing.T) {
			data, err := os.ReadFile(f)
			if err != nil {
				t.Fatal(err)
			}
			in, want, ok := strings.Cut(string(data), "\n----------\n")
			if !ok {
				t.Fatal("no ---------- separator")
			}
			got := adaptCaddyfile(t, in)
			if !jsonEqual(t, got, []byte(want)) {
				var pretty bytes.Buffer
				json.Indent(&pretty, got, "", "\t")
				t.Errorf("adapted JSON differs\n got: %s\nwant: %s", pretty.String(), want)
			}
		})
	}
}

func adaptCaddyfile(t *testing.T, in string) []byte {
	t.Helper()
	out, _, err := caddyconfig.GetAdapter("caddyfile").Adapt([]byte(in), nil)
	if err != nil {
		t.Fatalf("adapt: %v", err)
	}
	return out
}

func jsonEqual(t *testing.T, a, b []byte) bool {
	t.Helper()
	var x, y any
	if err := json.Unmarshal(a, &x); err != nil {
		t.Fatalf("got invalid JSON: %v", err)
	}
	if err := json.Unmarshal(b, &y); err != nil {
		t.Fatalf("want invalid JSON: %v", err)
	}
	xa, _ := json.Marshal(x)
	ya, _ := json.Marshal(y)
	return bytes.Equal(xa, ya)
}

// TestCaddyfileErrorsNameTheField checks that bad Caddyfile input fails
// with a message naming the option and what it allows.
func TestCaddyfileErrorsNameTheField(t *testing.T) {
	for _, tc := range []struct{ body, want string }{
		{"max_message_size lots", "max_message_size: must be a positive size"},
		{"max_recipients -3", "max_recipients: must be a positive integer"},
		{"command_timeout soon", "command_timeout: must be a positive duration"},
		{"bare_line_endings maybe", "bare_line_endings: must be reject or normalize"},
		{"hostname", "wrong argument count"},
		{"no_such_thing 1", `unknown esmtp option or sub-handler "no_such_thing"`},
		{"maildir", "maildir: path is required"},
	} {
		cf := "{\n layer4 {\n  :2525 {\n   route {\n    esmtp {\n     " + tc.body + "\n    }\n   }\n  }\n }\n}\n"
		_, _, err := caddyconfig.GetAdapter("caddyfile").Adapt([]byte(cf), nil)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%q: got error %v, want one containing %q", tc.body, err, tc.want)
		}
	}
}

// TestProvisionErrorsNameTheField checks that a bad JSON config fails at
// provision time with the field's name.
func TestProvisionErrorsNameTheField(t *testing.T) {
	for _, tc := range []struct{ field, want string }{
		{`"chunk_size": 10`, "chunk_size: must be between"},
		{`"bare_line_endings": "keep"`, "bare_line_endings: must be"},
		{`"hostname": "bad host name"`, "hostname:"},
		{`"handlers": [{"handler": "nonexistent"}]`, "esmtp.handlers.nonexistent"},
		{`"handlers": [{"handler": "maildir"}]`, "maildir: path is required"},
	} {
		ctx, cancel := caddy.NewContext(caddy.Context{Context: t.Context()})
		h := new(Handler)
		if err := json.Unmarshal([]byte("{"+tc.field+"}"), h); err != nil {
			t.Fatal(err)
		}
		err := h.Provision(ctx)
		cancel()
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: got error %v, want one containing %q", tc.field, err, tc.want)
		}
	}
}
