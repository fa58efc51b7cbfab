package main

import (
	"bufio"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

const (
	caddyModule = "github.com/caddyserver/caddy/v2"
	l4Module    = "github.com/mholt/caddy-l4"
	selfModule  = "github.com/caddy-esmtp/caddy-esmtp"
)

// goModRequires returns the versions required in go.mod, by a simple line
// scan of both the block and the single-line require forms.
func goModRequires(t *testing.T, path string) map[string]string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	reqs := make(map[string]string)
	inBlock := false
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line, _, _ := strings.Cut(sc.Text(), "//")
		fields := strings.Fields(line)
		switch {
		case len(fields) == 0:
		case inBlock && fields[0] == ")":
			inBlock = false
		case inBlock && len(fields) == 2:
			reqs[fields[0]] = fields[1]
		case fields[0] == "require" && len(fields) == 2 && fields[1] == "(":
			inBlock = true
		case fields[0] == "require" && len(fields) == 3:
			reqs[fields[1]] = fields[2]
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return reqs
}

func TestManifestMatchesGoMod(t *testing.T) {
	root, err := filepath.Abs("../../..")
	if err != nil {
		t.Fatal(err)
	}
	b, err := loadManifest("../../../xcaddy.json")
	if err != nil {
		t.Fatal(err)
	}
	reqs := goModRequires(t, filepath.Join(root, "go.mod"))

	if want := reqs[caddyModule]; want == "" || b.CaddyVersion != want {
		t.Errorf("caddy_version = %q, go.mod requires %s %q", b.CaddyVersion, caddyModule, want)
	}

	var l4Version string
	var l4Found, selfFound bool
	for _, p := range b.Plugins {
		switch p.PackagePath {
		case l4Module:
			l4Found, l4Version = true, p.Version
		case selfModule:
			selfFound = true
		}
	}
	if want := reqs[l4Module]; !l4Found || want == "" || l4Version != want {
		t.Errorf("plugin %s version = %q (listed: %v), go.mod requires %q", l4Module, l4Version, l4Found, want)
	}
	if !selfFound {
		t.Errorf("plugin %s not listed", selfModule)
	}

	var repl string
	for _, r := range b.Replacements {
		if string(r.Old) == selfModule {
			repl = string(r.New)
		}
	}
	if repl != root {
		t.Errorf("replacement for %s = %q, want repo root %q", selfModule, repl, root)
	}
}

func TestManifestMissingCaddyVersion(t *testing.T) {
	path := filepath.Join(t.TempDir(), "xcaddy.json")
	if err := os.WriteFile(path, []byte(`{"plugins":[{"module_path":"`+l4Module+`"}]}`), 0o644); err != nil {
		t.Fatal(err)
	}
	_, err := loadManifest(path)
	if err == nil || !strings.Contains(err.Error(), "caddy_version") {
		t.Fatalf("loadManifest error = %v, want one naming caddy_version", err)
	}
}
