// Command build builds a Caddy binary with caddy-l4 and caddy-esmtp from the
// build manifest xcaddy.json, using xcaddy's Go API.
//
// Usage (from the repository root):
//
//	go run ./internal/cmd/build [-manifest xcaddy.json] [-o ./caddy]
//
// Flags:
//
//	-manifest  path of the build manifest, the JSON form of xcaddy.Builder
//	           (default "xcaddy.json")
//	-o         path of the Caddy binary to write (default "./caddy")
//
// Relative local replacement paths in the manifest (such as "." for this
// repository) are resolved against the directory containing the manifest,
// because xcaddy builds in a temporary directory.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"log"
	"os"
	"os/signal"
	"path/filepath"
	"strings"

	"github.com/caddyserver/xcaddy"
)

func main() {
	manifest := flag.String("manifest", "xcaddy.json", "path of the build manifest (JSON form of xcaddy.Builder)")
	output := flag.String("o", "./caddy", "path of the Caddy binary to write")
	flag.Parse()
	if flag.NArg() > 0 {
		log.Fatalf("unexpected arguments: %q", flag.Args())
	}

	builder, err := loadManifest(*manifest)
	if err != nil {
		log.Fatal(err)
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	if err := builder.Build(ctx, *output); err != nil {
		log.Fatalf("build failed: %v", err)
	}
}

// loadManifest reads the xcaddy.Builder manifest at path, validates it and
// turns relative local replacement paths into absolute ones, resolved
// against the directory containing the manifest. Errors name the offending
// field.
func loadManifest(path string) (xcaddy.Builder, error) {
	var b xcaddy.Builder
	f, err := os.Open(path)
	if err != nil {
		return b, err
	}
	defer f.Close()
	dec := json.NewDecoder(f)
	dec.DisallowUnknownFields() // catch misspelled fields
	if err := dec.Decode(&b); err != nil {
		return b, fmt.Errorf("%s: %w", path, err)
	}

	if b.CaddyVersion == "" {
		return b, fmt.Errorf("%s: caddy_version is required", path)
	}
	for i, p := range b.Plugins {
		if p.PackagePath == "" {
			return b, fmt.Errorf("%s: plugins[%d].module_path is required", path, i)
		}
	}

	dir, err := filepath.Abs(filepath.Dir(path))
	if err != nil {
		return b, err
	}
	for i, r := range b.Replacements {
		if r.Old == "" {
			return b, fmt.Errorf("%s: replacements[%d].old is required", path, i)
		}
		if r.New == "" {
			return b, fmt.Errorf("%s: replacements[%d].new is required", path, i)
		}
		if isRelativeDir(string(r.New)) {
			b.Replacements[i].New = xcaddy.ReplacementPath(filepath.Join(dir, string(r.New)))
		}
	}
	return b, nil
}

// isRelativeDir reports whether a go.mod replacement target is a relative
// directory path, which Go recognizes by a leading "./" or "../".
func isRelativeDir(p string) bool {
	p = filepath.ToSlash(p)
	return p == "." || p == ".." || strings.HasPrefix(p, "./") || strings.HasPrefix(p, "../")
}
