package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/caddy-esmtp/caddy-esmtp/bench/internal/loadgen"
)

// cell is one point of the matrix.
type cell struct {
	Size  int64 `json:"size"`
	Conns int   `json:"conns"`
	Reuse bool  `json:"reuse"`
}

func (c cell) mode() string {
	if c.Reuse {
		return "reuse"
	}
	return "per-connection"
}

func (c cell) String() string {
	return fmt.Sprintf("%s x %d sessions, %s", sizeName(c.Size), c.Conns, c.mode())
}

func sizeName(n int64) string {
	switch {
	case n >= 1<<30 && n%(1<<30) == 0:
		return fmt.Sprintf("%d GiB", n>>30)
	case n >= 1<<20 && n%(1<<20) == 0:
		return fmt.Sprintf("%d MiB", n>>20)
	case n >= 1<<10 && n%(1<<10) == 0:
		return fmt.Sprintf("%d KiB", n>>10)
	}
	return fmt.Sprintf("%d B", n)
}

// runResult is one measurement by one generator.
type runResult struct {
	Gen      string  `json:"gen"`
	Server   string  `json:"server"`
	Cell     cell    `json:"cell"`
	Rep      int     `json:"rep"`
	Messages int64   `json:"messages"`
	Errors   int64   `json:"errors"`
	Elapsed  float64 `json:"elapsed_s"`
	Rate     float64 `json:"msgs_per_s"`
	P50ms    float64 `json:"p50_ms,omitempty"`
	P99ms    float64 `json:"p99_ms,omitempty"`
	// ServerCPU is the server process's CPU time per message, in µs.
	ServerCPU float64 `json:"server_cpu_us_per_msg"`
	Note      string  `json:"note,omitempty"`
	// Placement is where the server and the generator ran: split or shared.
	Placement placement `json:"placement"`
	// GenCPU is the generator process's CPU time over the run's wall time,
	// in percent of one CPU: near 100 for the single-threaded smtp-source,
	// the run measured the generator's limit more than the server's.
	GenCPU float64 `json:"generator_cpu_pct"`
}

// genCPU is the CPU time a finished generator used, in percent of one CPU
// over elapsed seconds of wall time.
func genCPU(cmd *exec.Cmd, elapsed float64) float64 {
	ps := cmd.ProcessState
	if ps == nil || elapsed <= 0 {
		return 0
	}
	return (ps.UserTime() + ps.SystemTime()).Seconds() / elapsed * 100
}

const (
	genLoad   = "load"
	genSource = "smtp-source"
	genEcho   = "echo"
)

// runLoad runs bench/load (built) against s for the harness's run time.
func (h *harness) runLoad(s *server, c cell, d time.Duration) runResult {
	return h.loadArgs(s, c, d, genLoad, s.loadExtra...)
}

// runEcho runs bench/load -echo: connect, probe echoed, close.
func (h *harness) runEcho(s *server, c cell, d time.Duration) runResult {
	return h.loadArgs(s, c, d, genEcho, "-echo")
}

func (h *harness) loadArgs(s *server, c cell, d time.Duration, gen string, extra ...string) runResult {
	r := runResult{Gen: gen, Server: s.Name, Placement: h.cpu.place, Cell: c}
	args := []string{"-addr", s.addr, "-c", strconv.Itoa(c.Conns), "-size", strconv.FormatInt(c.Size, 10),
		"-n", "0", "-duration", d.String(), "-timeout", "30s", "-json"}
	if c.Reuse {
		args = append(args, "-reuse")
	}
	args = append(args, extra...)
	ctx, cancel := context.WithTimeout(context.Background(), d+90*time.Second)
	defer cancel()
	var out, errb bytes.Buffer
	cmd := exec.CommandContext(ctx, h.bin("load"), args...)
	h.pin(cmd, false)
	cmd.Stdout, cmd.Stderr = &out, &errb
	runErr := cmd.Run()
	var res loadgen.Result
	if err := json.Unmarshal(out.Bytes(), &res); err != nil {
		r.Note = fmt.Sprintf("load failed: %v %s", runErr, strings.TrimSpace(errb.String()))
		r.Errors = 1
		return r
	}
	r.Messages, r.Errors, r.Elapsed, r.Rate = res.Messages, res.Errors, res.Elapsed, res.MsgsPerSec
	r.GenCPU = genCPU(cmd, res.Elapsed)
	r.P50ms, r.P99ms = res.P50ms, res.P99ms
	if len(res.ErrorKinds) > 0 {
		kinds, _ := json.Marshal(res.ErrorKinds)
		r.Note = string(kinds)
	}
	if !res.Pipelining && gen == genLoad {
		r.Note = strings.TrimSpace(r.Note + " no PIPELINING")
	}
	return r
}

var counterRE = regexp.MustCompile(`\d+`)

// runSource runs Postfix's smtp-source for about count messages. It has no
// time limit of its own: the harness sizes count from an earlier rate and
// kills it after a bound; -c's running counter gives the messages done.
func (h *harness) runSource(s *server, c cell, count int64, d time.Duration) runResult {
	r := runResult{Gen: genSource, Server: s.Name, Placement: h.cpu.place, Cell: c}
	if count < int64(c.Conns) {
		count = int64(c.Conns)
	}
	// -l is the payload without smtp-source's own header lines (~130
	// bytes with these options).
	payload := max(c.Size-130, 1)
	args := []string{"-c", "-s", strconv.Itoa(c.Conns), "-m", strconv.FormatInt(count, 10),
		"-l", strconv.FormatInt(payload, 10), "-f", "bench@example.test", "-t", "sink@example.test",
		"-M", "source.example.test"}
	if c.Reuse {
		args = append(args, "-d")
	}
	args = append(args, s.addr)
	limit := 4*d + 20*time.Second
	ctx, cancel := context.WithTimeout(context.Background(), limit)
	defer cancel()
	var out, errb bytes.Buffer
	cmd := exec.CommandContext(ctx, h.smtpSource, args...)
	h.pin(cmd, false)
	cmd.Stdout, cmd.Stderr = &out, &errb
	start := time.Now()
	runErr := cmd.Run()
	r.Elapsed = time.Since(start).Seconds()
	r.GenCPU = genCPU(cmd, r.Elapsed)
	if m := counterRE.FindAll(out.Bytes(), -1); len(m) > 0 {
		r.Messages, _ = strconv.ParseInt(string(m[len(m)-1]), 10, 64)
	}
	r.Rate = float64(r.Messages) / r.Elapsed
	switch {
	case ctx.Err() != nil:
		r.Note = fmt.Sprintf("killed after %s", limit)
	case runErr != nil:
		r.Errors = 1
		r.Note = fmt.Sprintf("smtp-source: %v %s", runErr, firstLine(errb.String()))
	case r.Messages < count:
		r.Note = fmt.Sprintf("%d of %d messages", r.Messages, count)
	}
	return r
}

func firstLine(s string) string {
	s = strings.TrimSpace(s)
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		s = s[:i]
	}
	return s
}
