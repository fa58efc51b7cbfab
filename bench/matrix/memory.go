package main

import (
	"fmt"
	"log"
	"time"

	"github.com/caddy-esmtp/caddy-esmtp/bench/internal/loadgen"
)

// idleResult is the resident memory of one server with n idle connections.
type idleResult struct {
	Server     string  `json:"server"`
	Conns      int     `json:"conns"`
	BaseKiB    int64   `json:"rss_before_kib"`
	LoadedKiB  int64   `json:"rss_with_conns_kib"`
	PerConnB   float64 `json:"per_conn_bytes"`
	OpenSecs   float64 `json:"open_s"`
	Error      string  `json:"error,omitempty"`
	Confirmed  string  `json:"confirmed_by"`
	HWMKiB     int64   `json:"hwm_kib"`
	AfterClose int64   `json:"rss_after_close_kib"`
	// Placement is where the server and the harness ran: split or shared.
	Placement placement `json:"placement"`
}

// measureIdle starts def fresh, reads VmRSS, opens n connections that the
// server has answered (greeting, or the echo of a probe), waits for the
// server to settle and reads VmRSS again.
func (h *harness) measureIdle(def *serverDef, n int) idleResult {
	res := idleResult{Server: def.Name, Placement: h.cpu.place, Conns: n, Confirmed: "220 greeting"}
	mode := loadgen.IdleGreeting
	if def.Echo {
		mode, res.Confirmed = loadgen.IdleEcho, "echoed probe"
	}
	s, err := h.startServer(def)
	if err != nil {
		res.Error = err.Error()
		return res
	}
	defer s.stop()
	time.Sleep(time.Second)
	res.BaseKiB, _ = procStatus(s.pid(), "VmRSS")
	start := time.Now()
	conns, err := loadgen.OpenIdle(s.addr, n, mode, 60*time.Second)
	res.OpenSecs = time.Since(start).Seconds()
	if err != nil {
		res.Error = err.Error()
		return res
	}
	time.Sleep(3 * time.Second)
	res.LoadedKiB, _ = procStatus(s.pid(), "VmRSS")
	res.HWMKiB, _ = procStatus(s.pid(), "VmHWM")
	res.PerConnB = float64(res.LoadedKiB-res.BaseKiB) * 1024 / float64(n)
	loadgen.CloseAll(conns)
	time.Sleep(time.Second)
	res.AfterClose, _ = procStatus(s.pid(), "VmRSS")
	log.Printf("idle %s: %d conns, RSS %d -> %d KiB, %.0f B/conn", def.Name, n, res.BaseKiB, res.LoadedKiB, res.PerConnB)
	return res
}

// bigResult is the peak memory of a server that received one message.
type bigResult struct {
	Server   string  `json:"server"`
	Size     int64   `json:"size"`
	HWMKiB   int64   `json:"hwm_kib"`
	RSSKiB   int64   `json:"rss_kib"`
	Seconds  float64 `json:"seconds"`
	MBPerSec float64 `json:"mb_per_s"`
	Error    string  `json:"error,omitempty"`
	// Placement is where the server and the harness ran: split or shared.
	Placement placement `json:"placement"`
}

// measureBig starts def fresh, sends one message of size bytes and reads
// the peak resident memory (VmHWM) of the server's life.
func (h *harness) measureBig(def *serverDef, size int64) bigResult {
	res := bigResult{Server: def.Name, Placement: h.cpu.place, Size: size}
	s, err := h.startServer(def)
	if err != nil {
		res.Error = err.Error()
		return res
	}
	defer s.stop()
	time.Sleep(500 * time.Millisecond)
	r, err := loadgen.Run(loadgen.Config{Addr: s.addr, Conns: 1, Messages: 1, Size: size,
		Duration: 10 * time.Minute, Timeout: 2 * time.Minute})
	if err == nil && (r.Messages != 1 || r.Errors != 0) {
		err = fmt.Errorf("not accepted: %v", r.ErrorKinds)
	}
	if err != nil {
		res.Error = err.Error()
		return res
	}
	time.Sleep(200 * time.Millisecond)
	res.Seconds = r.Elapsed
	res.MBPerSec = float64(size) / r.Elapsed / 1e6
	res.HWMKiB, _ = procStatus(s.pid(), "VmHWM")
	res.RSSKiB, _ = procStatus(s.pid(), "VmRSS")
	log.Printf("big %s: %s in %.2fs, VmHWM %d KiB", def.Name, sizeName(size), r.Elapsed, res.HWMKiB)
	return res
}
