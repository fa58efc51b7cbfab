package main

import (
	"fmt"
	"io"
	"log"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"
)

// profile runs bench/load (10 KiB x 20 sessions) against caddy-esmtp with
// the discard sub-handler, once per mode, and takes a CPU profile from
// Caddy's admin endpoint (/debug/pprof/profile) while the load runs. The
// profiles and `go tool pprof -top` of each go to bench/.cache/profiles.
func (h *harness) profile(secs int) error {
	dir := filepath.Join(h.root, "bench", ".cache", "profiles")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	for _, name := range []string{"caddy-discard", "caddy-discard-quiet"} {
		var def *serverDef
		for _, d := range allServers() {
			if d.Name == name {
				def = d
			}
		}
		s, err := h.startServer(def)
		if err != nil {
			return err
		}
		for _, reuse := range []bool{true, false} {
			c := cell{Size: 10 << 10, Conns: 20, Reuse: reuse}
			h.runLoad(s, c, time.Second) // warm up
			done := make(chan runResult)
			go func() { done <- h.runLoad(s, c, time.Duration(secs+2)*time.Second) }()
			time.Sleep(time.Second)
			base := fmt.Sprintf("%s-%s", name, c.mode())
			prof := filepath.Join(dir, base+".pprof")
			allocs := filepath.Join(dir, base+".allocs.pprof")
			allocErr := make(chan error, 1)
			go func() {
				allocErr <- fetch(fmt.Sprintf("http://%s/debug/pprof/allocs?seconds=%d", s.admin, secs), allocs)
			}()
			if err := fetch(fmt.Sprintf("http://%s/debug/pprof/profile?seconds=%d", s.admin, secs), prof); err != nil {
				s.stop()
				return err
			}
			if err := <-allocErr; err != nil {
				s.stop()
				return err
			}
			res := <-done
			log.Printf("%s %s: %.0f msgs/s during the profile", name, c.mode(), res.Rate)
			top, err := exec.Command("go", "tool", "pprof", "-top", "-nodecount=40", h.bin("caddy"), prof).CombinedOutput()
			if err != nil {
				log.Printf("go tool pprof: %v", err)
			}
			cum, _ := exec.Command("go", "tool", "pprof", "-top", "-cum", "-nodecount=60", h.bin("caddy"), prof).CombinedOutput()
			al, _ := exec.Command("go", "tool", "pprof", "-top", "-sample_index=alloc_space", "-nodecount=30", h.bin("caddy"), allocs).CombinedOutput()
			alo, _ := exec.Command("go", "tool", "pprof", "-top", "-sample_index=alloc_objects", "-nodecount=30", h.bin("caddy"), allocs).CombinedOutput()
			text := fmt.Sprintf("%s, %s, %.0f msgs/s\n\n%s\n\n--- by cumulative ---\n%s\n\n--- allocated bytes ---\n%s\n\n--- allocated objects ---\n%s", name, c, res.Rate, top, cum, al, alo)
			if err := os.WriteFile(filepath.Join(dir, base+".top.txt"), []byte(text), 0o644); err != nil {
				return err
			}
			fmt.Println(strings.Join(strings.SplitN(text, "\n", 50)[:min(50, strings.Count(text, "\n"))], "\n"))
		}
		// Keep the binary beside the profiles: pprof needs it for symbols.
		if b, err := os.ReadFile(h.bin("caddy")); err == nil {
			os.WriteFile(filepath.Join(dir, "caddy"), b, 0o755)
		}
		s.stop()
	}
	log.Printf("profiles in %s (go tool pprof -http=: %s <file>.pprof)", dir, filepath.Join(dir, "caddy"))
	return nil
}

func fetch(url, path string) error {
	resp, err := http.Get(url)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(resp.Body)
		return fmt.Errorf("%s: %s %s", url, resp.Status, b)
	}
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if _, err := io.Copy(f, resp.Body); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}
