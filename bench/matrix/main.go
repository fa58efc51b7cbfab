// Command matrix runs the whole benchmark and writes bench/RESULTS.md (and
// the raw numbers to bench/RESULTS.json):
//
//	go run ./bench/matrix            # full matrix, < 30 min on 2 cores
//	go run ./bench/matrix -quick     # 10 KiB x 20 sessions only, a few minutes
//	go run ./bench/matrix -profile   # CPU profiles of caddy-esmtp under load
//
// It builds Caddy (cmd/caddy), the go-smtp peer and the load generator,
// installs what is missing (bench/setup.sh: Postfix for smtp-sink and
// smtp-source, Haraka from npm), starts every server on its own loopback
// port, and measures each matrix cell with both load generators (bench/load
// with PIPELINING, Postfix's smtp-source without), the median of -runs
// runs, servers interleaved so our ratio to each peer comes from the same
// run. Then memory: resident memory per idle connection (10,000 of them)
// and the peak resident memory while one 1 GiB message streams in.
// Everything runs on 127.0.0.1 and stops by itself.
//
// -cpus places the processes: split (servers on the last CPU, generators
// on the others, with taskset), shared (no pinning) or both (the
// throughput matrix once per placement).
package main

import (
	"bytes"
	"errors"
	"flag"
	"fmt"
	"log"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"
)

type harness struct {
	root       string // module root
	work       string // temp dir for binaries, configs, logs
	diskDir    string // a directory on a real disk, for maildir-disk and the pipeline cells
	smtpSink   string
	smtpSource string
	node       string
	haraka     string // Haraka's bin/haraka, "" if not installed
	later      []string

	quick bool
	keep  bool // -keep: keep the work directory and the logs on /dev/shm
	runs  int
	dur   time.Duration
	cpu   cpuSet // CPU placement (cpus.go)
}

func (h *harness) bin(name string) string { return filepath.Join(h.work, "bin", name) }

// path resolves p against the module root unless it is absolute.
func (h *harness) path(p string) string {
	if filepath.IsAbs(p) {
		return p
	}
	return filepath.Join(h.root, p)
}

func (h *harness) removeLater(dir string) { h.later = append(h.later, dir) }

func main() {
	log.SetFlags(log.Ltime)
	quick := flag.Bool("quick", false, "only 10 KiB x 20 sessions (both modes, every server): a few minutes")
	runs := flag.Int("runs", 3, "runs per cell (the median is reported)")
	dur := flag.Duration("d", 0, "time per run (default 2s with -quick, 1.2s for the full matrix)")
	out := flag.String("out", "", "report to write, relative to the module root (default bench/RESULTS.md, with -quick bench/RESULTS-quick.md)")
	jsonOut := flag.String("json", "", "raw results to write, relative to the module root (default bench/RESULTS.json, with -quick bench/RESULTS-quick.json)")
	only := flag.String("servers", "", "comma-separated server names to run (default: all)")
	doThroughput := flag.Bool("throughput", true, "run the throughput matrix")
	doMem := flag.Bool("mem", true, "run the memory measurements")
	idleConns := flag.Int("idle-conns", 10000, "idle connections for the memory measurement")
	bigSize := flag.Int64("big", 1<<30, "size of the large message for peak memory")
	profile := flag.Bool("profile", false, "instead of the matrix: CPU profiles of caddy-esmtp (discard) under 10 KiB x 20 load, both modes, into bench/.cache/profiles")
	pipeline := flag.Bool("pipeline", false, "instead of the matrix: the message pipeline cells (maildir on disk end to end against Postfix's virtual(8), bytes written per message, RSS of -pipeline-sessions sessions in DATA) into bench/RESULTS-pipeline.md")
	auth := flag.Bool("auth", false, "instead of the matrix: the inbound MX with authentication cell (spf, dkim, dmarc into a Maildir on disk vs Postfix with policyd-spf, OpenDKIM, OpenDMARC; needs 127.0.0.1:53) into bench/RESULTS-auth.md")
	filter := flag.Bool("filter", false, "instead of the matrix: the filter cell (caddy-esmtp with milter and with rspamd, Postfix with the same rspamd as its milter, each beside its own run without a filter; Maildir on disk) into bench/RESULTS-filter.md")
	queue := flag.Bool("queue", false, "instead of the matrix: the queue cell (caddy-esmtp queueing on disk and relaying to a counting sink vs Postfix relaying to the same kind of sink, end to end) into bench/RESULTS-queue.md")
	pipeSessions := flag.String("pipeline-sessions", "10000", "sessions held in DATA at once for -pipeline's memory cell (a comma-separated list: one measurement each)")
	profSecs := flag.Int("profile-seconds", 10, "length of each profile")
	keep := flag.Bool("keep", false, "keep the work directory (configs, server logs)")
	setup := flag.Bool("setup", true, "run bench/setup.sh when smtp-sink, smtp-source or Haraka is missing")
	cpus := flag.String("cpus", "", "CPU placement: split (servers pinned to the last CPU, generators to the others), shared (no pinning) or both (the throughput matrix once per placement); default both with -quick, split otherwise")
	flag.Parse()

	h := &harness{quick: *quick, runs: *runs, dur: *dur, keep: *keep}
	if h.dur == 0 {
		h.dur = 1200 * time.Millisecond
		if h.quick {
			h.dur = 2 * time.Second
		}
	}
	if *out == "" {
		*out = "bench/RESULTS.md"
		if *quick {
			*out = "bench/RESULTS-quick.md"
		}
		if *pipeline {
			*out = "bench/RESULTS-pipeline.md"
		}
		if *auth {
			*out = "bench/RESULTS-auth.md"
		}
		if *filter {
			*out = "bench/RESULTS-filter.md"
		}
		if *queue {
			*out = "bench/RESULTS-queue.md"
		}
	}
	if *jsonOut == "" {
		*jsonOut = strings.TrimSuffix(*out, ".md") + ".json"
	}
	if *cpus == "" {
		*cpus = "split"
		if h.quick {
			*cpus = "both"
		}
	}
	h.initCPUs()
	places, err := h.placements(*cpus)
	if err != nil {
		log.Fatal(err)
	}
	if err := h.init(*setup); err != nil {
		if h.work != "" {
			os.RemoveAll(h.work)
		}
		log.Fatal(err)
	}
	cleanup := func() {
		for _, d := range h.later {
			os.RemoveAll(d)
		}
		if *keep {
			log.Printf("work directory kept: %s", h.work)
		} else {
			os.RemoveAll(h.work)
		}
	}
	defer cleanup()
	fatal := func(err error) {
		cleanup()
		log.Fatal(err)
	}

	defs := allServers()
	if *pipeline {
		defs = pipelineServers()
	}
	if *auth {
		defs = authServers()
	}
	if *filter {
		defs = filterServers()
	}
	if *queue {
		defs = queueServers()
	}
	if *only != "" {
		want := strings.Split(*only, ",")
		defs = slices.DeleteFunc(defs, func(d *serverDef) bool { return !slices.Contains(want, d.Name) })
	}
	if h.haraka == "" {
		log.Printf("Haraka is not installed: skipped")
		defs = slices.DeleteFunc(defs, func(d *serverDef) bool { return d.Name == "haraka" })
	}

	if *profile {
		if err := h.profile(*profSecs); err != nil {
			fatal(err)
		}
		return
	}
	if *queue {
		r := &report{Env: map[string]string{"cpus": fmt.Sprint(runtime.NumCPU())}, ServerCPUs: h.cpu.serverCPUs, GeneratorCPUs: h.cpu.genCPUs}
		if err := h.queue(defs, places[0], h.path(*out), h.path(*jsonOut), r.describe(places[0])); err != nil {
			fatal(err)
		}
		return
	}
	if *filter {
		r := &report{Env: map[string]string{"cpus": fmt.Sprint(runtime.NumCPU())}, ServerCPUs: h.cpu.serverCPUs, GeneratorCPUs: h.cpu.genCPUs}
		if err := h.filter(defs, places[0], h.path(*out), h.path(*jsonOut), r.describe(places[0])); err != nil {
			fatal(err)
		}
		return
	}
	if *auth {
		r := &report{Env: map[string]string{"cpus": fmt.Sprint(runtime.NumCPU())}, ServerCPUs: h.cpu.serverCPUs, GeneratorCPUs: h.cpu.genCPUs}
		if err := h.auth(defs, places[0], h.path(*out), h.path(*jsonOut), r.describe(places[0])); err != nil {
			fatal(err)
		}
		return
	}
	if *pipeline {
		r := &report{Env: map[string]string{"cpus": fmt.Sprint(runtime.NumCPU())}, ServerCPUs: h.cpu.serverCPUs, GeneratorCPUs: h.cpu.genCPUs}
		var sessions []int
		for _, f := range strings.Split(*pipeSessions, ",") {
			n, err := strconv.Atoi(strings.TrimSpace(f))
			if err != nil || n <= 0 {
				fatal(fmt.Errorf("-pipeline-sessions %q: want positive numbers", *pipeSessions))
			}
			sessions = append(sessions, n)
		}
		if err := h.pipeline(defs, places[0], *doThroughput, *doMem, sessions, h.path(*out), h.path(*jsonOut), r.describe(places[0])); err != nil {
			fatal(err)
		}
		return
	}

	started := time.Now()
	rep := &report{Env: h.environment(), Quick: h.quick, Runs: h.runs, RunSeconds: h.dur.Seconds(),
		CPUsFlag: *cpus, ServerCPUs: h.cpu.serverCPUs, GeneratorCPUs: h.cpu.genCPUs, NoSplit: h.cpu.noSplit}
	for _, d := range defs {
		if !d.Echo {
			rep.Servers = append(rep.Servers, serverInfo{Name: d.Name, What: d.What, Ours: d.Ours, Peer: d.Peer})
		}
	}
	if *doThroughput {
		rep.Placements = places
		for _, pl := range places {
			h.setPlacement(pl)
			log.Printf("throughput, placement %s: %s", pl, rep.describe(pl))
			cells, results := h.throughput(defs)
			rep.Cells, rep.Results = cells, append(rep.Results, results...)
		}
	}
	// What runs once (the connection cost, memory) runs in split placement
	// unless -cpus shared asked for no pinning at all.
	once := places[0]
	if *doThroughput || *doMem {
		h.setPlacement(once)
	}
	if *doThroughput {
		rep.OverheadPlacement = once
		rep.Overhead = h.overhead(defs)
	}
	if *doMem {
		rep.MemoryPlacement = once
		rep.Idle, rep.Big = h.memory(defs, *idleConns, *bigSize)
	}
	rep.Minutes = time.Since(started).Minutes()
	if err := rep.write(h.path(*out), h.path(*jsonOut)); err != nil {
		fatal(err)
	}
	log.Printf("wrote %s and %s in %.1f min", *out, *jsonOut, rep.Minutes)
}

// init finds the tools, raises the file limit and builds the binaries.
func (h *harness) init(setup bool) error {
	out, err := exec.Command("go", "env", "GOMOD").Output()
	if err != nil || strings.TrimSpace(string(out)) == "" || strings.TrimSpace(string(out)) == os.DevNull {
		return errors.New("run from inside the caddy-esmtp module")
	}
	h.root = filepath.Dir(strings.TrimSpace(string(out)))
	if err := raiseFileLimit(); err != nil {
		log.Printf("file limit: %v", err)
	}
	h.findTools()
	if setup && (h.smtpSink == "" || h.smtpSource == "" || h.haraka == "" || authToolsMissing()) {
		log.Printf("running bench/setup.sh")
		cmd := exec.Command("sh", filepath.Join(h.root, "bench", "setup.sh"))
		cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
		if err := cmd.Run(); err != nil {
			log.Printf("setup.sh: %v", err)
		}
		h.findTools()
	}
	if h.smtpSink == "" || h.smtpSource == "" {
		return errors.New("smtp-sink and smtp-source are needed: run bench/setup.sh (Debian package postfix)")
	}
	h.work, err = os.MkdirTemp("", "esmtp-bench-")
	if err != nil {
		return err
	}
	h.diskDir = h.work
	if onTmpfs(h.work) {
		h.diskDir = filepath.Join(h.root, "bench", ".cache", "disk")
		if err := os.MkdirAll(h.diskDir, 0o755); err != nil {
			return err
		}
	}
	for name, pkg := range map[string]string{"caddy": "./cmd/caddy", "load": "./bench/load", "gosmtp": "./bench/peers/gosmtp", "minimal": "./bench/peers/minimal", "echo": "./bench/peers/echo"} {
		log.Printf("building %s", pkg)
		cmd := exec.Command("go", "build", "-o", h.bin(name), pkg)
		cmd.Dir = h.root
		cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
		if err := cmd.Run(); err != nil {
			return fmt.Errorf("go build %s: %v", pkg, err)
		}
	}
	return nil
}

func (h *harness) findTools() {
	find := func(paths ...string) string {
		for _, p := range paths {
			if st, err := os.Stat(p); err == nil && st.Mode()&0o111 != 0 {
				return p
			}
		}
		return ""
	}
	h.smtpSink = find("/usr/sbin/smtp-sink", "/usr/bin/smtp-sink")
	h.smtpSource = find("/usr/sbin/smtp-source", "/usr/bin/smtp-source")
	h.node, _ = exec.LookPath("node")
	h.haraka = ""
	if p := filepath.Join(h.root, "bench", ".cache", "haraka", "node_modules", "Haraka", "bin", "haraka"); h.node != "" && find(p) != "" {
		h.haraka = p
	}
}

// raiseFileLimit lifts RLIMIT_NOFILE (inherited by the servers) so 10,000
// idle connections fit on both sides.
func raiseFileLimit() error {
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		return err
	}
	want := uint64(200000)
	if lim.Max < want {
		try := syscall.Rlimit{Cur: want, Max: want}
		if syscall.Setrlimit(syscall.RLIMIT_NOFILE, &try) == nil {
			return nil
		}
		want = lim.Max
	}
	lim.Cur = want
	return syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim)
}

func onTmpfs(dir string) bool {
	var st syscall.Statfs_t
	return syscall.Statfs(dir, &st) == nil && st.Type == 0x01021994 // TMPFS_MAGIC
}

// throughput runs the matrix in the current placement, with servers
// started for it: for each cell, runs rounds; in each round every server
// once with each generator, in a rotating order.
func (h *harness) throughput(defs []*serverDef) ([]cell, []runResult) {
	sizes := []int64{1 << 10, 10 << 10, 1 << 20}
	conns := []int{1, 20, 200}
	if h.quick {
		sizes, conns = []int64{10 << 10}, []int{20}
	}
	var cells []cell
	for _, sz := range sizes {
		for _, c := range conns {
			for _, reuse := range []bool{false, true} {
				cells = append(cells, cell{Size: sz, Conns: c, Reuse: reuse})
			}
		}
	}

	var servers []*server
	for _, d := range defs {
		if d.Echo {
			continue
		}
		s, err := h.startServer(d)
		if err != nil {
			log.Printf("skipped: %v", err)
			continue
		}
		defer s.stop()
		servers = append(servers, s)
	}
	// Warm up each server (Go heaps, Node's JIT) outside the measurements.
	for _, s := range servers {
		h.runLoad(s, cell{Size: 10 << 10, Conns: 20, Reuse: true}, time.Second)
		h.runLoad(s, cell{Size: 10 << 10, Conns: 20}, 500*time.Millisecond)
		s.clean()
	}

	var results []runResult
	lastSource := map[string]float64{} // server|cell -> smtp-source rate
	for ci, c := range cells {
		log.Printf("cell %d/%d: %s", ci+1, len(cells), c)
		for rep := range h.runs {
			for i := range servers {
				s := servers[(i+rep)%len(servers)]
				cpu0 := cpuTicks(s.pid())
				lr := h.runLoad(s, c, h.dur)
				lr.Rep = rep
				lr.ServerCPU = cpuPerMsg(cpuTicks(s.pid())-cpu0, lr.Messages)
				s.clean()
				results = append(results, lr)

				key := s.Name + "|" + c.String()
				rate := lastSource[key]
				if rate == 0 {
					rate = lr.Rate * 0.6
				}
				count := int64(rate * h.dur.Seconds())
				if count < 20 {
					count = 20
				}
				cpu0 = cpuTicks(s.pid())
				sr := h.runSource(s, c, count, h.dur)
				sr.Rep = rep
				sr.ServerCPU = cpuPerMsg(cpuTicks(s.pid())-cpu0, sr.Messages)
				s.clean()
				results = append(results, sr)
				if sr.Rate > 0 {
					lastSource[key] = sr.Rate
				}
				log.Printf("  %-20s load %8.0f msg/s (p50 %.2f ms, p99 %.2f ms)   smtp-source %8.0f msg/s %s %s",
					s.Name, lr.Rate, lr.P50ms, lr.P99ms, sr.Rate, lr.Note, sr.Note)
				time.Sleep(100 * time.Millisecond)
			}
		}
	}
	return cells, results
}

// overhead measures what a bare connection costs (connect, a probe echoed,
// close) on a plain Go echo server and on a caddy-l4 echo route, so the
// report can tell Caddy's and caddy-l4's share of a connection from ours.
func (h *harness) overhead(defs []*serverDef) []runResult {
	var servers []*server
	for _, d := range defs {
		if !d.Echo {
			continue
		}
		s, err := h.startServer(d)
		if err != nil {
			log.Printf("skipped: %v", err)
			continue
		}
		defer s.stop()
		servers = append(servers, s)
	}
	if len(servers) == 0 {
		return nil
	}
	log.Printf("connection overhead (echo)")
	c := cell{Size: 6, Conns: 20}
	for _, s := range servers {
		h.runEcho(s, c, 500*time.Millisecond) // warm up
	}
	var results []runResult
	for rep := range h.runs {
		for i := range servers {
			s := servers[(i+rep)%len(servers)]
			cpu0 := cpuTicks(s.pid())
			r := h.runEcho(s, c, h.dur)
			r.Rep = rep
			r.ServerCPU = cpuPerMsg(cpuTicks(s.pid())-cpu0, r.Messages)
			results = append(results, r)
			log.Printf("  %-20s %8.0f connections/s, %.0f µs server CPU per connection %s", s.Name, r.Rate, r.ServerCPU, r.Note)
		}
	}
	return results
}

// cpuTicks is a process's user+system CPU time in clock ticks.
func cpuTicks(pid int) int64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	// Fields after the command name, which is in parentheses.
	i := bytes.LastIndexByte(b, ')')
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 13 {
		return 0
	}
	var u, s int64
	fmt.Sscan(f[11], &u)
	fmt.Sscan(f[12], &s)
	return u + s
}

// cpuPerMsg is CPU microseconds per message (clock ticks are 1/100 s on
// Linux).
func cpuPerMsg(ticks, msgs int64) float64 {
	if msgs == 0 {
		return 0
	}
	return float64(ticks) * 1e4 / float64(msgs)
}

// memory measures idle connections and the large message.
func (h *harness) memory(defs []*serverDef, idleConns int, bigSize int64) ([]idleResult, []bigResult) {
	byName := map[string]*serverDef{}
	for _, d := range defs {
		byName[d.Name] = d
	}
	var idle []idleResult
	for _, name := range []string{"caddy-discard", "caddy-l4-echo", "go-smtp", "smtp-sink", "haraka"} {
		if d := byName[name]; d != nil {
			idle = append(idle, h.measureIdle(d, idleConns))
		}
	}
	var big []bigResult
	for _, name := range []string{"caddy-discard", "caddy-maildir-disk", "go-smtp", "smtp-sink"} {
		if d := byName[name]; d != nil {
			big = append(big, h.measureBig(d, 1<<10), h.measureBig(d, bigSize))
		}
	}
	return idle, big
}

// environment describes the machine and the code measured.
func (h *harness) environment() map[string]string {
	env := map[string]string{
		"date":   time.Now().UTC().Format("2006-01-02 15:04 UTC"),
		"cpus":   fmt.Sprint(runtime.NumCPU()),
		"go":     runtime.Version(),
		"disk":   h.diskDir,
		"haraka": "3.3.4",
	}
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for l := range strings.Lines(string(b)) {
			if v, ok := strings.CutPrefix(l, "model name"); ok {
				env["cpu"] = strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(v), ":"))
				break
			}
		}
	}
	if b, err := os.ReadFile("/proc/meminfo"); err == nil {
		env["memory"] = strings.Join(strings.Fields(firstLine(string(b)))[1:], " ")
	}
	run := func(name string, args ...string) string {
		cmd := exec.Command(name, args...)
		cmd.Dir = h.root
		b, _ := cmd.Output()
		return strings.TrimSpace(string(b))
	}
	env["kernel"] = run("uname", "-r")
	env["commit"] = run("git", "rev-parse", "--short", "HEAD")
	if run("git", "status", "--porcelain", "--untracked-files=no") != "" {
		env["commit"] += " + uncommitted changes"
	}
	env["postfix"] = run("dpkg-query", "-W", "-f", "${Version}", "postfix")
	if h.node != "" {
		env["node"] = run(h.node, "--version")
	}
	return env
}
