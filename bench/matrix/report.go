package main

import (
	"encoding/json"
	"fmt"
	"os"
	"slices"
	"sort"
	"strings"
)

type serverInfo struct {
	Name string `json:"name"`
	What string `json:"what"`
	Ours bool   `json:"ours"`
	Peer bool   `json:"peer"`
}

// report is everything one harness run measured.
type report struct {
	Env        map[string]string `json:"env"`
	Quick      bool              `json:"quick"`
	Runs       int               `json:"runs"`
	RunSeconds float64           `json:"run_seconds"`
	Minutes    float64           `json:"minutes"`
	Servers    []serverInfo      `json:"servers"`
	Cells      []cell            `json:"cells"`
	Results    []runResult       `json:"results"`
	Overhead   []runResult       `json:"overhead"`
	Idle       []idleResult      `json:"idle"`
	Big        []bigResult       `json:"big"`
	// CPUsFlag is -cpus; Placements are the throughput matrix's, in the
	// order run; ServerCPUs and GeneratorCPUs are the CPU lists of split
	// placement, NoSplit why it was not possible.
	CPUsFlag      string      `json:"cpus_flag"`
	Placements    []placement `json:"placements"`
	ServerCPUs    string      `json:"server_cpus,omitempty"`
	GeneratorCPUs string      `json:"generator_cpus,omitempty"`
	NoSplit       string      `json:"no_split,omitempty"`
	// OverheadPlacement and MemoryPlacement: where the measurements that
	// run once ran.
	OverheadPlacement placement `json:"overhead_placement,omitempty"`
	MemoryPlacement   placement `json:"memory_placement,omitempty"`
}

func median(xs []float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	s := slices.Clone(xs)
	sort.Float64s(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

// pick returns the runs of one server, cell and generator in one
// placement, by round.
func (r *report) pick(pl placement, server string, c cell, gen string) []runResult {
	var out []runResult
	for _, x := range r.Results {
		if x.Placement == pl && x.Server == server && x.Cell == c && x.Gen == gen {
			out = append(out, x)
		}
	}
	return out
}

type stat struct {
	n                   int
	rate, p50, p99, cpu float64
	genCPU              float64 // the generator's CPU use, % of one CPU
	errors              int64
	notes               []string
}

func (r *report) stat(pl placement, server string, c cell, gen string) stat {
	runs := r.pick(pl, server, c, gen)
	var st stat
	var rates, p50s, p99s, cpus, gens []float64
	for _, x := range runs {
		rates = append(rates, x.Rate)
		gens = append(gens, x.GenCPU)
		p50s = append(p50s, x.P50ms)
		p99s = append(p99s, x.P99ms)
		cpus = append(cpus, x.ServerCPU)
		st.errors += x.Errors
		if x.Note != "" {
			st.notes = append(st.notes, x.Note)
		}
	}
	st.n = len(runs)
	st.rate, st.p50, st.p99, st.cpu = median(rates), median(p50s), median(p99s), median(cpus)
	st.genCPU = median(gens)
	return st
}

// ratio is the median over rounds of ours/peer measured in the same round
// of the same placement.
func (r *report) ratio(pl placement, ours, peer string, c cell, gen string) (float64, bool) {
	a, b := r.pick(pl, ours, c, gen), r.pick(pl, peer, c, gen)
	var rs []float64
	for _, x := range a {
		for _, y := range b {
			if x.Rep == y.Rep && y.Rate > 0 {
				rs = append(rs, x.Rate/y.Rate)
			}
		}
	}
	if len(rs) == 0 {
		return 0, false
	}
	return median(rs), true
}

func (r *report) oursName() string {
	for _, s := range r.Servers {
		if s.Ours {
			return s.Name
		}
	}
	return ""
}

func (r *report) peers() []string {
	var p []string
	for _, s := range r.Servers {
		if s.Peer {
			p = append(p, s.Name)
		}
	}
	return p
}

func (r *report) hasServer(name string) bool {
	return slices.ContainsFunc(r.Servers, func(s serverInfo) bool { return s.Name == name })
}

func rate(x float64) string {
	if x == 0 {
		return "–"
	}
	return fmt.Sprintf("%.0f", x)
}

func kib(k int64) string { return fmt.Sprintf("%.1f MiB", float64(k)/1024) }

func (r *report) write(mdPath, jsonPath string) error {
	js, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return err
	}
	if err := os.WriteFile(jsonPath, append(js, '\n'), 0o644); err != nil {
		return err
	}
	return os.WriteFile(mdPath, []byte(r.markdown()), 0o644)
}

func (r *report) markdown() string {
	var b strings.Builder
	p := func(format string, args ...any) { fmt.Fprintf(&b, format, args...) }
	e := r.Env
	cmd := "go run ./bench/matrix"
	if r.Quick {
		cmd += " -quick"
	}
	p("# Benchmark results\n\n")
	p("Written by `%s` (%.1f min) on %s. What each column means: [README.md](README.md).\n\n", cmd, r.Minutes, e["date"])
	p("- Machine: %s CPUs (%s), %s RAM, Linux %s; %s; Postfix %s, Node %s, Haraka %s.\n",
		e["cpus"], e["cpu"], e["memory"], e["kernel"], e["go"], e["postfix"], e["node"], e["haraka"])
	p("- Code: %s.\n", e["commit"])
	p("- Every server runs on 127.0.0.1 at the same time (idle when not measured); each figure is the median of %d runs of %.1f s; within a round every server is measured once with each generator, in an order that rotates between rounds. Ratios are medians of per-round ratios.\n", r.Runs, r.RunSeconds)
	p("- `load` = `bench/load` (Go, PIPELINING: MAIL+RCPT+DATA in one write); `smtp-source` = Postfix's generator (C, no pipelining, HELO, one command per round trip).\n")
	r.placementBullets(&b)
	p("\n")

	p("## Servers\n\n| server | what |\n|---|---|\n")
	for _, s := range r.Servers {
		p("| %s | %s |\n", s.Name, s.What)
	}
	p("\n")

	ours := r.oursName()
	if len(r.Cells) > 0 {
		for _, pl := range r.Placements {
			r.targets(&b, ours, pl)
		}
		for _, pl := range r.Placements {
			r.glance(&b, ours, pl)
		}
		r.cellTables(&b, ours)
	}
	r.overheadTable(&b, ours)
	if len(r.Idle) > 0 || len(r.Big) > 0 {
		r.memoryTables(&b)
	}
	r.notes(&b)
	return b.String()
}

// placementBullets tell where the servers and generators ran: the
// throughput matrix's placements, and the one of what ran once.
func (r *report) placementBullets(b *strings.Builder) {
	p := func(format string, args ...any) { fmt.Fprintf(b, format, args...) }
	what := func(pl placement) string {
		switch pl {
		case placeSplit:
			gen := len(parseCPUList(r.GeneratorCPUs))
			return fmt.Sprintf("`split`: %s. Every server process is started with `taskset -c %s`, every generator process (`load`, `smtp-source`, `load -echo`) with `taskset -c %s`, and the harness itself (which opens the idle connections and sends the large message) runs on %s too: neither side takes CPU time from the other. Go reads its CPU affinity at start, so the Go servers (Caddy, go-smtp, go-echo) run with GOMAXPROCS=1 and `load` with GOMAXPROCS=%d; smtp-sink and Haraka are single-threaded and use one CPU anyway.",
				r.describe(pl), r.ServerCPUs, r.GeneratorCPUs, cpuWord(r.GeneratorCPUs), gen)
		case placeShared:
			return fmt.Sprintf("`shared`: %s, nothing pinned. A multi-threaded server (Go's scheduler spinning idle threads) then takes CPU time from the generator, the single-threaded `smtp-source` most of all, so these figures mix the server's efficiency with CPU contention.", r.describe(pl))
		}
		return "`" + string(pl) + "`"
	}
	switch len(r.Placements) {
	case 0:
	case 1:
		p("- CPU placement, `-cpus %s`. %s\n", r.CPUsFlag, what(r.Placements[0]))
	default:
		p("- CPU placement (`-cpus %s`): the throughput matrix ran once per placement, every server started fresh for each; a ratio compares runs of the same placement only.\n", r.CPUsFlag)
		for _, pl := range r.Placements {
			p("  - %s\n", what(pl))
		}
	}
	var once []string
	pl := r.OverheadPlacement
	if len(r.Overhead) > 0 {
		once = append(once, "the cost of one connection (echo)")
	}
	if len(r.Idle) > 0 || len(r.Big) > 0 {
		once, pl = append(once, "memory"), r.MemoryPlacement
	}
	if len(once) > 0 {
		if len(r.Placements) == 0 {
			p("- CPU placement, `-cpus %s`. %s\n", r.CPUsFlag, what(pl))
		}
		again := ""
		if len(r.Placements) > 1 {
			again = "once, not per placement, "
		}
		p("- Measured %sin placement `%s` (%s): %s.\n", again, pl, r.describe(pl), strings.Join(once, " and "))
	}
	if r.NoSplit != "" && r.CPUsFlag != string(placeShared) {
		p("- `split` placement was asked for but is not possible here (%s): everything ran `shared`.\n", r.NoSplit)
	}
}

// targets checks issue 5's throughput targets at 10 KiB x 20 sessions in
// one placement.
func (r *report) targets(b *strings.Builder, ours string, pl placement) {
	p := func(format string, args ...any) { fmt.Fprintf(b, format, args...) }
	type target struct {
		peer string
		min  float64
	}
	// go-minimal has no target: it is the floor under any Go server,
	// shown so the ratios above it can be read against it.
	ts := []target{{"go-smtp", 1.25}, {"smtp-sink", 0.9}, {"go-minimal", 0}}
	p("## Targets (issue 5): 10 KiB messages, 20 sessions, %s (`%s`)\n\n", r.describe(pl), pl)
	p("| %s vs | wanted | per-connection, load | per-connection, smtp-source | reuse, load | reuse, smtp-source |\n|---|---|---|---|---|---|\n", ours)
	for _, t := range ts {
		if !r.hasServer(t.peer) {
			continue
		}
		if t.min > 0 {
			p("| %s | ≥ %.2fx |", t.peer, t.min)
		} else {
			p("| %s | (reference) |", t.peer)
		}
		for _, reuse := range []bool{false, true} {
			for _, gen := range []string{genLoad, genSource} {
				x, ok := r.ratio(pl, ours, t.peer, cell{Size: 10 << 10, Conns: 20, Reuse: reuse}, gen)
				switch {
				case !ok:
					p(" – |")
				case t.min == 0:
					p(" %.2fx |", x)
				case x >= t.min:
					p(" %.2fx ✅ |", x)
				default:
					p(" %.2fx ❌ |", x)
				}
			}
		}
		p("\n")
	}
	p("\n")
	// How busy the generator was tells whether a cell measured the server
	// or the generator: a single-threaded smtp-source near 100%% of its CPU
	// is the limit, and every server's rate is pressed toward the same value.
	p("The generator's own CPU use in these runs (%% of one CPU, median), against each server:\n\n| generator, mode |")
	names := append([]string{ours}, r.peers()...)
	if r.hasServer("go-minimal") {
		names = append(names, "go-minimal")
	}
	for _, n := range names {
		p(" %s |", n)
	}
	p("\n|---|%s\n", strings.Repeat("---|", len(names)))
	for _, reuse := range []bool{false, true} {
		for _, gen := range []string{genLoad, genSource} {
			c := cell{Size: 10 << 10, Conns: 20, Reuse: reuse}
			p("| %s, %s |", gen, c.mode())
			for _, n := range names {
				if st := r.stat(pl, n, c, gen); st.n > 0 && st.genCPU > 0 {
					p(" %.0f%% |", st.genCPU)
				} else {
					p(" – |")
				}
			}
			p("\n")
		}
	}
	p("\n")
}

// glance is one line per cell: our rate and our ratio to every peer, in
// one placement.
func (r *report) glance(b *strings.Builder, ours string, pl placement) {
	p := func(format string, args ...any) { fmt.Fprintf(b, format, args...) }
	peers := r.peers()
	for _, gen := range []string{genLoad, genSource} {
		p("## At a glance, %s (`%s`), generator %s: %s msgs/s and its ratio to each peer\n\n| cell | %s msgs/s |", r.describe(pl), pl, gen, ours, ours)
		for _, pe := range peers {
			p(" vs %s |", pe)
		}
		p("\n|---|---|%s\n", strings.Repeat("---|", len(peers)))
		for _, c := range r.Cells {
			p("| %s | %s |", c, rate(r.stat(pl, ours, c, gen).rate))
			for _, pe := range peers {
				if x, ok := r.ratio(pl, ours, pe, c, gen); ok {
					p(" %.2fx |", x)
				} else {
					p(" – |")
				}
			}
			p("\n")
		}
		p("\n")
	}
}

// cellTables shows every server in each (size, sessions) pair, both modes,
// one table per placement.
func (r *report) cellTables(b *strings.Builder, ours string) {
	p := func(format string, args ...any) { fmt.Fprintf(b, format, args...) }
	p("## Every server, every cell\n\nmsgs/s (median); p50/p99 = latency of the end-of-message reply seen by `load`, in ms; CPU = the server process's CPU time per message (µs) during the `load` run (with `split` the server has one CPU to itself; with `shared` this includes what a multi-threaded server spends on idle threads spinning).\n\n")
	for _, pl := range r.Placements {
		if len(r.Placements) > 1 {
			p("### Placement `%s`: %s\n\n", pl, r.describe(pl))
		}
		r.cellTablesIn(b, ours, pl)
	}
}

// cellTablesIn is cellTables for one placement.
func (r *report) cellTablesIn(b *strings.Builder, ours string, pl placement) {
	p := func(format string, args ...any) { fmt.Fprintf(b, format, args...) }
	// Under a placement's own heading a short tag is enough.
	heading, where := "###", fmt.Sprintf("%s (`%s`)", r.describe(pl), pl)
	if len(r.Placements) > 1 {
		heading, where = "####", fmt.Sprintf("`%s`", pl)
	}
	seen := map[[2]int64]bool{}
	for _, c := range r.Cells {
		k := [2]int64{c.Size, int64(c.Conns)}
		if seen[k] {
			continue
		}
		seen[k] = true
		pc, ru := cell{Size: c.Size, Conns: c.Conns}, cell{Size: c.Size, Conns: c.Conns, Reuse: true}
		p("%s %s messages, %d sessions, %s\n\n", heading, sizeName(c.Size), c.Conns, where)
		p("| server | per-conn load | p50 / p99 | CPU | per-conn smtp-source | reuse load | p50 / p99 | CPU | reuse smtp-source |\n|---|---|---|---|---|---|---|---|---|\n")
		for _, s := range r.Servers {
			a, a2 := r.stat(pl, s.Name, pc, genLoad), r.stat(pl, s.Name, pc, genSource)
			c1, c2 := r.stat(pl, s.Name, ru, genLoad), r.stat(pl, s.Name, ru, genSource)
			name := s.Name
			if s.Name == ours {
				name = "**" + name + "**"
			}
			p("| %s | %s | %.2f / %.2f | %.0f | %s | %s | %.2f / %.2f | %.0f | %s |\n", name,
				rate(a.rate), a.p50, a.p99, a.cpu, rate(a2.rate), rate(c1.rate), c1.p50, c1.p99, c1.cpu, rate(c2.rate))
		}
		p("\n")
	}
}

// overheadTable puts the bare cost of a connection (echo servers) beside
// the cost of a whole SMTP session with one message.
func (r *report) overheadTable(b *strings.Builder, ours string) {
	if len(r.Overhead) == 0 {
		return
	}
	p := func(format string, args ...any) { fmt.Fprintf(b, format, args...) }
	p("## What one connection costs, and whose cost it is\n\n")
	pl := r.OverheadPlacement
	p("Server CPU time per connection (µs, median of %d runs, 20 sessions), placement `%s` (%s). The echo rows do only connect, a 6-byte probe echoed, close (`load -echo`); the SMTP rows are one whole session with one 10 KiB message (greeting, EHLO, MAIL/RCPT/DATA, data, QUIT), from the per-connection `load` runs above in the same placement.\n\n", r.Runs, pl, r.describe(pl))
	p("| server | what the connection does | connections/s | server CPU µs per connection |\n|---|---|---|---|\n")
	var names []string
	for _, x := range r.Overhead {
		if !slices.Contains(names, x.Server) {
			names = append(names, x.Server)
		}
	}
	for _, n := range names {
		var rates, cpus []float64
		for _, x := range r.Overhead {
			if x.Server == n {
				rates, cpus = append(rates, x.Rate), append(cpus, x.ServerCPU)
			}
		}
		p("| %s | echo | %s | %.0f |\n", n, rate(median(rates)), median(cpus))
	}
	c := cell{Size: 10 << 10, Conns: 20}
	for _, n := range []string{ours, "caddy-discard-quiet", "go-minimal", "smtp-sink", "go-smtp"} {
		if st := r.stat(pl, n, c, genLoad); st.n > 0 {
			p("| %s | SMTP session, one 10 KiB message | %s | %.0f |\n", n, rate(st.rate), st.cpu)
		}
	}
	p("\n")
}

func (r *report) memoryTables(b *strings.Builder) {
	p := func(format string, args ...any) { fmt.Fprintf(b, format, args...) }
	if len(r.Idle) > 0 {
		p("## Memory per idle connection\n\nPlacement `%s` (%s). Each server started fresh; VmRSS from /proc/<pid>/status before and 3 s after opening the connections from the harness (each confirmed served: greeting read, or the echo probe returned). Per connection = difference / connections. Target (issue 5): ≤ 16 KiB.\n\n", r.MemoryPlacement, r.describe(r.MemoryPlacement))
		p("| server | connections | RSS before | RSS with them | per connection | after closing | confirmed by |\n|---|---|---|---|---|---|---|\n")
		for _, x := range r.Idle {
			if x.Error != "" {
				p("| %s | %d | failed: %s | | | | |\n", x.Server, x.Conns, x.Error)
				continue
			}
			p("| %s | %d | %s | %s | %.1f KiB | %s | %s |\n", x.Server, x.Conns, kib(x.BaseKiB), kib(x.LoadedKiB), x.PerConnB/1024, kib(x.AfterClose), x.Confirmed)
		}
		p("\n")
	}
	if len(r.Big) > 0 {
		p("## Peak memory for one large message\n\nPlacement `%s` (%s). Each server started fresh per row and given one message over one connection; VmHWM (peak RSS of the process's life) read after the 250. Target (issue 5): the 1 GiB peak within 8 MiB of the 1 KiB peak.\n\n", r.MemoryPlacement, r.describe(r.MemoryPlacement))
		p("| server | message | VmHWM | VmRSS after | time | MB/s |\n|---|---|---|---|---|---|\n")
		for _, x := range r.Big {
			if x.Error != "" {
				p("| %s | %s | failed: %s | | | |\n", x.Server, sizeName(x.Size), x.Error)
				continue
			}
			if x.Size < 1<<20 {
				p("| %s | %s | %s | %s | | |\n", x.Server, sizeName(x.Size), kib(x.HWMKiB), kib(x.RSSKiB))
				continue
			}
			p("| %s | %s | %s | %s | %.2f s | %.0f |\n", x.Server, sizeName(x.Size), kib(x.HWMKiB), kib(x.RSSKiB), x.Seconds, x.MBPerSec)
		}
		p("\n")
		byServer := map[string][]bigResult{}
		var order []string
		for _, x := range r.Big {
			if _, ok := byServer[x.Server]; !ok {
				order = append(order, x.Server)
			}
			byServer[x.Server] = append(byServer[x.Server], x)
		}
		p("| server | peak growth, largest vs 1 KiB message |\n|---|---|\n")
		for _, s := range order {
			xs := byServer[s]
			if len(xs) == 2 && xs[0].Error == "" && xs[1].Error == "" {
				p("| %s | %+.1f MiB |\n", s, float64(xs[1].HWMKiB-xs[0].HWMKiB)/1024)
			}
		}
		p("\n")
	}
}

// notes lists runs with errors or remarks.
func (r *report) notes(b *strings.Builder) {
	var lines []string
	for _, x := range r.Results {
		if x.Errors > 0 || x.Note != "" {
			lines = append(lines, fmt.Sprintf("- %s, %s, %s, `%s`, round %d: %d errors %s", x.Server, x.Cell, x.Gen, x.Placement, x.Rep+1, x.Errors, x.Note))
		}
	}
	if len(lines) == 0 {
		return
	}
	fmt.Fprintf(b, "## Runs with errors or remarks\n\n%s\n", strings.Join(lines, "\n"))
}
