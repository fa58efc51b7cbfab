package main

// The filter cell (go run ./bench/matrix -filter): issue 14's cost of the
// filter round trips per message. One rspamd (the tests' private
// configuration, internal/filtertest.NewRspamdConfig) serves every server
// of the run: caddy-esmtp through `milter` (rspamd's proxy worker in milter
// mode) and through `rspamd` (its HTTP protocol, the normal worker), and
// Postfix with the same proxy worker as its smtpd_milters; each next to
// its own run without a filter, all into a Maildir on disk. Reported:
// messages per second, the server's CPU per message and rspamd's CPU per
// message, from the same runs.

import (
	"bytes"
	"fmt"
	"log"
	"maps"
	"net/http"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/caddy-esmtp/caddy-esmtp/internal/filtertest"
)

// filterRspamd is the run's rspamd, set before the servers start (their
// configurations name its addresses).
var filterRspamd struct {
	url, milter string
	cmd         *exec.Cmd
}

// filterServers are the servers of the -filter cell, in table order.
func filterServers() []*serverDef {
	return []*serverDef{
		{Name: "caddy-maildir", logTmpfs: true, start: startCaddy("maildir-disk", ""),
			What: "caddy-esmtp in Caddy, `esmtp { maildir <dir> }` on disk: no filter (the baseline)"},
		{Name: "caddy-milter", Ours: true, logTmpfs: true, start: startCaddy("filter-milter", ""),
			What: "caddy-esmtp, `esmtp { milter 127.0.0.1:<rspamd proxy>  maildir <dir> }`: rspamd's proxy worker in milter mode (self_scan)"},
		{Name: "caddy-rspamd", logTmpfs: true, start: startCaddy("filter-rspamd", ""),
			What: "caddy-esmtp, `esmtp { rspamd http://127.0.0.1:<rspamd normal>  maildir <dir> }`: rspamd's HTTP protocol (/checkv2) to its normal worker"},
		{Name: "postfix-virtual", logTmpfs: true, start: startPostfix, stopHook: stopPostfix,
			What: "the `-pipeline` Postfix instance (smtpd -> cleanup -> qmgr -> virtual into a Maildir on disk): no filter (the baseline)"},
		{Name: "postfix-milter", Peer: true, logTmpfs: true, start: startPostfixMilter, stopHook: stopPostfix,
			What: "the same Postfix with `smtpd_milters = inet:127.0.0.1:<rspamd proxy>` (the same rspamd proxy worker), `milter_default_action = tempfail`"},
	}
}

// startPostfixMilter is the -pipeline Postfix with rspamd's proxy worker
// as its milter.
func startPostfixMilter(h *harness, s *server) (*exec.Cmd, error) {
	cmd, err := startPostfix(h, s)
	if err != nil {
		return nil, err
	}
	f, err := os.OpenFile(filepath.Join(s.postfixConf, "main.cf"), os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	_, err = f.WriteString(`
# -filter: rspamd's proxy worker in milter mode.
smtpd_milters = inet:` + filterRspamd.milter + `
non_smtpd_milters =
milter_default_action = tempfail
milter_protocol = 6
`)
	return cmd, err
}

// startFilterRspamd starts the private rspamd of the cell, as _rspamd when
// the harness runs as root, and waits until both workers answer.
func (h *harness) startFilterRspamd() error {
	bin, err := exec.LookPath("rspamd")
	if err != nil {
		return fmt.Errorf("rspamd is not installed (Debian package rspamd): %v", err)
	}
	dir, err := os.MkdirTemp(h.work, "rspamd-")
	if err != nil {
		return err
	}
	if err := os.Chmod(dir, 0o755); err != nil {
		return err
	}
	normal, err := freePort()
	if err != nil {
		return err
	}
	milter, err := freePort()
	if err != nil {
		return err
	}
	uid, gid := -1, -1
	var runAs []string
	if os.Geteuid() == 0 {
		u, err := user.Lookup("_rspamd")
		if err != nil {
			return fmt.Errorf("no _rspamd user (Debian package rspamd): %v", err)
		}
		uid, _ = strconv.Atoi(u.Uid)
		gid, _ = strconv.Atoi(u.Gid)
		runAs = []string{"-u", "_rspamd", "-g", "_rspamd"}
	}
	cfg := filtertest.NewRspamdConfig(dir, normal, milter)
	for _, d := range cfg.Dirs {
		if err := os.Mkdir(d, 0o755); err != nil {
			return err
		}
		os.Lchown(d, uid, gid)
	}
	for name, text := range cfg.Files {
		if err := os.WriteFile(name, []byte(text), 0o644); err != nil {
			return err
		}
		os.Lchown(name, uid, gid)
	}
	os.Lchown(dir, uid, gid)
	logf, err := os.Create(filepath.Join(h.work, "rspamd.log"))
	if err != nil {
		return err
	}
	cmd := exec.Command(bin, append(append([]string{"-f"}, cfg.Args...), runAs...)...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	h.pin(cmd, true) // on the servers' CPU: the filter is part of the server side
	if err := cmd.Start(); err != nil {
		return err
	}
	filterRspamd.url, filterRspamd.milter, filterRspamd.cmd = "http://"+normal, milter, cmd
	start := time.Now()
	for {
		resp, err := http.Get(filterRspamd.url + "/ping")
		if err == nil {
			resp.Body.Close()
			if filtertest.Dials("tcp", milter)() == nil {
				log.Printf("rspamd ready in %s: %s, milter %s", time.Since(start).Round(time.Millisecond), filterRspamd.url, milter)
				return nil
			}
		}
		if time.Since(start) > 90*time.Second {
			h.stopFilterRspamd()
			out, _ := os.ReadFile(logf.Name())
			return fmt.Errorf("rspamd not ready after 90 s:\n%s", out)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

func (h *harness) stopFilterRspamd() {
	cmd := filterRspamd.cmd
	if cmd == nil || cmd.Process == nil {
		return
	}
	syscall.Kill(-cmd.Process.Pid, syscall.SIGTERM)
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		<-done
	}
}

// filterCheck reads one delivered message of s: a filtered server's must
// carry rspamd's fields (X-Rspamd-Queue-Id, X-Spamd-Result), a baseline's
// must not.
func filterCheck(s *server) (ok bool, note string, fields []string) {
	md := s.maildirs[0]
	ents, _ := os.ReadDir(filepath.Join(md, "new"))
	if len(ents) == 0 {
		return false, "no message in new/ to check", nil
	}
	b, err := os.ReadFile(filepath.Join(md, "new", ents[0].Name()))
	if err != nil {
		return false, err.Error(), nil
	}
	head, _, _ := bytes.Cut(bytes.ReplaceAll(b, []byte("\r\n"), []byte("\n")), []byte("\n\n"))
	unfolded := strings.ReplaceAll(strings.ReplaceAll(string(head), "\n\t", " "), "\n ", " ")
	for l := range strings.SplitSeq(unfolded, "\n") {
		lo := strings.ToLower(l)
		if strings.HasPrefix(lo, "x-rspamd-") || strings.HasPrefix(lo, "x-spamd-result:") {
			fields = append(fields, strings.Join(strings.Fields(l), " "))
		}
	}
	filtered := s.Name != "caddy-maildir" && s.Name != "postfix-virtual"
	switch {
	case filtered && len(fields) == 0:
		return false, "the delivered message has no rspamd field: not filtered", nil
	case !filtered && len(fields) > 0:
		return false, "a baseline's message has rspamd's fields", fields
	}
	return true, "", fields
}

// filterRun is one run of the cell: the pipeline's figures and rspamd's
// CPU time per message over the same run.
type filterRun struct {
	pipeRun
	RspamdCPU float64 `json:"rspamd_cpu_us_per_msg"`
}

type filterReport struct {
	Env        map[string]string `json:"env"`
	Runs       int               `json:"runs"`
	RunSeconds float64           `json:"run_seconds"`
	Minutes    float64           `json:"minutes"`
	Placement  placement         `json:"placement"`
	Where      string            `json:"placement_means"`
	Servers    []serverInfo      `json:"servers"`
	Checks     []authServerCheck `json:"checks"`
	Results    []filterRun       `json:"results"`
}

func (h *harness) filter(defs []*serverDef, place placement, mdPath, jsonPath, where string) error {
	started := time.Now()
	h.setPlacement(place)
	rep := &filterReport{Env: h.environment(), Runs: h.runs, RunSeconds: h.dur.Seconds(), Placement: h.cpu.place, Where: where}
	for _, d := range defs {
		rep.Servers = append(rep.Servers, serverInfo{Name: d.Name, What: d.What, Ours: d.Ours, Peer: d.Peer})
	}
	if err := h.startFilterRspamd(); err != nil {
		return err
	}
	defer h.stopFilterRspamd()
	rspamdPID := filterRspamd.cmd.Process.Pid

	var servers []*server
	for _, def := range defs {
		s, err := h.startServer(def)
		if err != nil {
			log.Printf("skipped: %v", err)
			rep.Checks = append(rep.Checks, authServerCheck{Server: def.Name, Note: "did not start: " + err.Error()})
			continue
		}
		defer s.stop()
		servers = append(servers, s)
	}
	var checked []*server
	for _, s := range servers {
		log.Printf("warm-up %s", s.Name)
		r := h.pipeRunOnce(s, cell{Size: 10 << 10, Conns: 20, Reuse: true}, time.Second)
		ok, note, fields := filterCheck(s)
		if r.Accepted == 0 {
			ok, note = false, strings.TrimSpace("no message accepted in the warm-up "+r.Note+" "+note)
		}
		log.Printf("check %s: ok=%v %s %q", s.Name, ok, note, fields)
		rep.Checks = append(rep.Checks, authServerCheck{Server: s.Name, OK: ok, Note: note, Fields: fields})
		s.clean()
		if ok {
			checked = append(checked, s)
		}
	}
	for _, c := range pipelineCells() {
		log.Printf("filter round trips: %s", c)
		for round := range h.runs {
			for i := range checked {
				s := checked[(i+round)%len(checked)]
				r0 := treeUsage(rspamdPID)
				r := filterRun{pipeRun: h.pipeRunOnce(s, c, h.dur)}
				r1 := treeUsage(rspamdPID)
				if r.Accepted > 0 {
					r.RspamdCPU = float64(r1.ticks-r0.ticks) * 1e4 / float64(r.Accepted)
				}
				r.Rep = round
				s.clean()
				rep.Results = append(rep.Results, r)
				log.Printf("  %-16s %6.0f msg/s delivered (250s at %6.0f/s), %5.0f µs server CPU/msg over %d processes, %5.0f µs rspamd CPU/msg %s",
					s.Name, r.Rate, r.AcceptRate, r.ServerCPU, r.Procs, r.RspamdCPU, r.Note)
			}
		}
	}
	rep.Minutes = time.Since(started).Minutes()
	if err := writeReport(mdPath, jsonPath, rep, rep.markdown); err != nil {
		return err
	}
	log.Printf("wrote %s and %s in %.1f min", mdPath, jsonPath, rep.Minutes)
	return nil
}

func (r *filterReport) pick(server string, c cell) []filterRun { return pickRuns(r.Results, server, c) }

// med is the median of f over the runs of server in cell c, and whether
// there were any.
func (r *filterReport) med(server string, c cell, f func(filterRun) float64) (float64, bool) {
	rs := r.pick(server, c)
	if len(rs) == 0 {
		return 0, false
	}
	var xs []float64
	for _, x := range rs {
		xs = append(xs, f(x))
	}
	return median(xs), true
}

func (r *filterReport) markdown(jsonName string) string {
	var b strings.Builder
	b.WriteString("# Filters: the cost of the rspamd round trips per message\n\n")
	fmt.Fprintf(&b, "Written by `go run ./bench/matrix -filter` (see [README.md](README.md)); raw numbers, every run: [%s](%s).\n\n", jsonName, jsonName)
	var env []string
	for _, k := range slices.Sorted(maps.Keys(r.Env)) {
		env = append(env, fmt.Sprintf("%s: %s", k, r.Env[k]))
	}
	fmt.Fprintf(&b, "%s. Placement `%s`: %s. %d runs per cell of %.1f s of load each (the median is shown); %.1f min in all.\n\n",
		strings.Join(env, "; "), r.Placement, r.Where, r.Runs, r.RunSeconds, r.Minutes)
	b.WriteString("One rspamd (Debian's 3.x with the tests' private configuration: `internal/filtertest.NewRspamdConfig`, one normal and one proxy worker, hyperscan and network checks off, `milter_headers` on) serves every filtered server of the run, which all deliver into a Maildir on disk; each is measured next to its own baseline without a filter. **msgs/s** counts a message once it is a file in `new/`; **server CPU** is user + system time of every process of the server per message (Postfix: master and all its children); **rspamd CPU** is rspamd's (main process and workers) over the same run, per message.\n\n")
	b.WriteString("## Did each server really filter?\n\nOne delivered message of each server after its warm-up, its rspamd fields (a server that fails this is not measured):\n\n")
	for _, c := range r.Checks {
		state := "**ok**"
		if !c.OK {
			state = "**FAILED**: " + c.Note
		}
		fmt.Fprintf(&b, "- `%s`: %s\n", c.Server, state)
		for _, f := range c.Fields {
			fmt.Fprintf(&b, "  - `%s`\n", f)
		}
	}
	b.WriteString("\n")
	for _, c := range pipelineCells() {
		fmt.Fprintf(&b, "## %s\n\n", c)
		b.WriteString("| server | msgs/s delivered | 250s/s | server CPU µs/msg | rspamd CPU µs/msg | processes | notes |\n|---|---:|---:|---:|---:|---:|---|\n")
		for _, sv := range r.Servers {
			rs := r.pick(sv.Name, c)
			if len(rs) == 0 {
				continue
			}
			var notes []string
			for _, x := range rs {
				if x.Note != "" {
					notes = append(notes, x.Note)
				}
			}
			rate, _ := r.med(sv.Name, c, func(x filterRun) float64 { return x.Rate })
			acc, _ := r.med(sv.Name, c, func(x filterRun) float64 { return x.AcceptRate })
			cpu, _ := r.med(sv.Name, c, func(x filterRun) float64 { return x.ServerCPU })
			rcpu, _ := r.med(sv.Name, c, func(x filterRun) float64 { return x.RspamdCPU })
			fmt.Fprintf(&b, "| %s | %.0f | %.0f | %.0f | %.0f | %d | %s |\n", sv.Name, rate, acc, cpu, rcpu, rs[len(rs)-1].Procs, strings.Join(notes, "; "))
		}
		b.WriteString("\n")
		ratio := func(a, bn string, f func(filterRun) float64) (float64, bool) {
			x, ok1 := r.med(a, c, f)
			y, ok2 := r.med(bn, c, f)
			return x / y, ok1 && ok2 && y > 0
		}
		rate := func(x filterRun) float64 { return x.Rate }
		cpu := func(x filterRun) float64 { return x.ServerCPU }
		if x, ok := ratio("caddy-milter", "postfix-milter", rate); ok {
			fmt.Fprintf(&b, "- caddy-milter / postfix-milter, msgs/s delivered: **%.2fx**\n", x)
		}
		if x, ok := ratio("caddy-milter", "postfix-milter", cpu); ok {
			fmt.Fprintf(&b, "- server CPU per message, caddy-milter / postfix-milter: %.2fx\n", x)
		}
		if x, ok := ratio("caddy-rspamd", "postfix-milter", rate); ok {
			fmt.Fprintf(&b, "- caddy-rspamd (HTTP) / postfix-milter, msgs/s delivered: %.2fx\n", x)
		}
		for _, p := range [][2]string{{"caddy-milter", "caddy-maildir"}, {"caddy-rspamd", "caddy-maildir"}, {"postfix-milter", "postfix-virtual"}} {
			f, ok1 := r.med(p[0], c, cpu)
			base, ok2 := r.med(p[1], c, cpu)
			if ok1 && ok2 {
				fmt.Fprintf(&b, "- the filter's cost in the server, %s - %s: %+.0f µs CPU per message\n", p[0], p[1], f-base)
			}
		}
		b.WriteString("\n")
	}
	b.WriteString("## The servers\n\n| name | what |\n|---|---|\n")
	for _, sv := range r.Servers {
		fmt.Fprintf(&b, "| `%s` | %s |\n", sv.Name, sv.What)
	}
	return b.String()
}
