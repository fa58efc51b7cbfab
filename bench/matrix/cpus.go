package main

import (
	"fmt"
	"log"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
)

// placement is where the servers and the load generators run.
type placement string

const (
	// placeSplit pins every server process to the last CPU and every
	// generator process (and the harness itself) to the others, with
	// taskset: neither takes CPU time from the other. Go programs read
	// their affinity at start, so a pinned Go server runs with
	// GOMAXPROCS=1.
	placeSplit placement = "split"
	// placeShared pins nothing: servers and generators share every CPU.
	placeShared placement = "shared"
)

// cpuSet is the harness's CPU placement state.
type cpuSet struct {
	taskset    string    // path of taskset, "" if missing
	allowed    []int     // the CPUs the harness may use, at start
	serverCPUs string    // split: the server's CPU list (the last CPU)
	genCPUs    string    // split: the generators' CPU list (the others)
	noSplit    string    // why split is not possible, "" if it is
	place      placement // the placement of what starts now
}

// initCPUs finds taskset and the CPUs the harness may use, and decides
// whether split placement is possible.
func (h *harness) initCPUs() {
	h.cpu.taskset, _ = exec.LookPath("taskset")
	h.cpu.allowed = allowedCPUs(os.Getpid())
	if len(h.cpu.allowed) == 0 {
		for i := range runtime.NumCPU() {
			h.cpu.allowed = append(h.cpu.allowed, i)
		}
	}
	n := len(h.cpu.allowed)
	switch {
	case h.cpu.taskset == "":
		h.cpu.noSplit = "taskset (util-linux) is not installed"
	case n < 2:
		h.cpu.noSplit = fmt.Sprintf("only %d CPU available", n)
	default:
		h.cpu.serverCPUs = cpuList(h.cpu.allowed[n-1:])
		h.cpu.genCPUs = cpuList(h.cpu.allowed[:n-1])
	}
	h.cpu.place = placeShared
}

// placements resolves the -cpus flag (split, shared or both) into the
// placements the throughput matrix runs in, falling back to shared when
// split is not possible.
func (h *harness) placements(flag string) ([]placement, error) {
	var want []placement
	switch flag {
	case "split":
		want = []placement{placeSplit}
	case "shared":
		want = []placement{placeShared}
	case "both":
		want = []placement{placeSplit, placeShared}
	default:
		return nil, fmt.Errorf("-cpus %q: want split, shared or both", flag)
	}
	if want[0] == placeSplit && h.cpu.noSplit != "" {
		log.Printf("-cpus %s: split placement is not possible (%s): shared only", flag, h.cpu.noSplit)
		return []placement{placeShared}, nil
	}
	return want, nil
}

// setPlacement makes p the placement of the servers and generators started
// from now on, and pins the harness itself (every thread: it is the
// generator of the memory measurements) to the generators' CPUs for split,
// or back to every CPU it started with for shared. Children inherit that
// affinity; those started through pin get theirs from taskset.
func (h *harness) setPlacement(p placement) {
	if p == placeSplit && h.cpu.noSplit != "" {
		p = placeShared
	}
	h.cpu.place = p
	if h.cpu.taskset == "" {
		return
	}
	want := cpuList(h.cpu.allowed)
	if p == placeSplit {
		want = h.cpu.genCPUs
	}
	// taskset -a walks /proc/<pid>/task; a thread the Go runtime starts
	// meanwhile from an unpinned thread would be missed, so check and retry.
	pid := os.Getpid()
	for try := 0; ; try++ {
		out, err := exec.Command(h.cpu.taskset, "-a", "-p", "-c", want, strconv.Itoa(pid)).CombinedOutput()
		if err != nil {
			log.Printf("taskset -a -p -c %s %d: %v %s", want, pid, err, strings.TrimSpace(string(out)))
			return
		}
		bad := threadsNotOn(pid, want)
		if bad == 0 {
			return
		}
		if try == 3 {
			log.Printf("placement %s: %d harness threads not on CPUs %s", p, bad, want)
			return
		}
	}
}

// pin makes cmd start through taskset, on the server's CPU (server true) or
// the generators' CPUs, when the placement is split. taskset execs the
// command in place, so cmd's PID is the command's (/proc/<pid>/stat and
// status stay the server's).
func (h *harness) pin(cmd *exec.Cmd, server bool) {
	if h.cpu.place != placeSplit || h.cpu.noSplit != "" || cmd.Err != nil {
		return
	}
	cpus := h.cpu.genCPUs
	if server {
		cpus = h.cpu.serverCPUs
	}
	cmd.Args = append([]string{h.cpu.taskset, "-c", cpus, cmd.Path}, cmd.Args[1:]...)
	cmd.Path = h.cpu.taskset
}

// describe says in words where the servers and generators run in p.
func (r *report) describe(p placement) string {
	switch p {
	case placeSplit:
		return fmt.Sprintf("server on %s, generators on %s", cpuWord(r.ServerCPUs), cpuWord(r.GeneratorCPUs))
	case placeShared:
		switch r.Env["cpus"] {
		case "1":
			return "server and generators share the one CPU"
		case "2":
			return "server and generators share both CPUs"
		}
		return fmt.Sprintf("server and generators share all %s CPUs", r.Env["cpus"])
	}
	return string(p)
}

// cpuWord is "CPU 1" or "CPUs 0-2".
func cpuWord(list string) string {
	if strings.ContainsAny(list, ",-") {
		return "CPUs " + list
	}
	return "CPU " + list
}

// allowedCPUs is the Cpus_allowed_list of a process, expanded.
func allowedCPUs(pid int) []int {
	return parseCPUList(statusField(fmt.Sprintf("/proc/%d/status", pid), "Cpus_allowed_list"))
}

// threadsNotOn counts the threads of pid whose CPU list is not want.
func threadsNotOn(pid int, want string) int {
	tasks, _ := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/status", pid))
	bad := 0
	for _, t := range tasks {
		if got := statusField(t, "Cpus_allowed_list"); got != "" && got != want {
			bad++
		}
	}
	return bad
}

// statusField is one field of a /proc status file, as text.
func statusField(path, field string) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return ""
	}
	for l := range strings.Lines(string(b)) {
		if v, ok := strings.CutPrefix(l, field+":"); ok {
			return strings.TrimSpace(v)
		}
	}
	return ""
}

// parseCPUList expands a Linux CPU list ("0-2,4") into CPU numbers.
func parseCPUList(s string) []int {
	var cpus []int
	for part := range strings.SplitSeq(strings.TrimSpace(s), ",") {
		if part == "" {
			continue
		}
		lo, hi, isRange := strings.Cut(part, "-")
		a, err := strconv.Atoi(lo)
		if err != nil {
			return nil
		}
		b := a
		if isRange {
			if b, err = strconv.Atoi(hi); err != nil {
				return nil
			}
		}
		for i := a; i <= b; i++ {
			cpus = append(cpus, i)
		}
	}
	return cpus
}

// cpuList formats CPU numbers (ascending) as a Linux CPU list, the form
// taskset -c takes and /proc/<pid>/status shows.
func cpuList(cpus []int) string {
	var parts []string
	for i := 0; i < len(cpus); {
		j := i
		for j+1 < len(cpus) && cpus[j+1] == cpus[j]+1 {
			j++
		}
		if j == i {
			parts = append(parts, strconv.Itoa(cpus[i]))
		} else {
			parts = append(parts, fmt.Sprintf("%d-%d", cpus[i], cpus[j]))
		}
		i = j + 1
	}
	return strings.Join(parts, ",")
}
