package main

// The queue cell (go run ./bench/matrix -queue): issue 15's target,
// caddy-esmtp storing every message in its queue on disk and relaying it
// to a local sink, against Postfix relaying to the same kind of sink
// (smtpd -> cleanup -> qmgr -> smtp client), at ≥ 2x Postfix's messages per
// second end to end, with the server CPU per message beside it.
//
// Each server relays to a counting sink of its own in the harness process
// (emersion/go-smtp v0.25.1 on 127.0.0.1): bench/load numbers the messages
// of each run (-id-prefix: every message has its own Message-ID), and the
// sink counts the distinct Message-IDs of the run and every duplicate. A
// message counts once the sink has it; the run's end-to-end rate is the
// messages the server accepted over the time from the generator's start
// until the sink has them all.

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"log"
	"maps"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/emersion/go-smtp"
)

// queueTarget is issue 15's target: caddy-queue / postfix-relay, messages
// per second end to end.
const queueTarget = 2.0

// queueServers are the servers of the -queue cell, in table order.
func queueServers() []*serverDef {
	return []*serverDef{
		{Name: "caddy-queue", Ours: true, logTmpfs: true, start: startCaddy("queue", ""),
			What: "caddy-esmtp in Caddy, `esmtp { queue <dir on disk> { workers 16 }  relay smtp://127.0.0.1:<sink> { require_tls off  relay_networks 127.0.0.1/32 } }`: the 250 once the message and its state are fsynced in the queue, then 16 workers relay it (the relay's defaults otherwise: `max_idle 4` idle connections to the smart host kept, RSET before each reuse), Caddy's default logging (INFO, to /dev/shm)"},
		{Name: "postfix-relay", Peer: true, logTmpfs: true, start: startPostfixRelay, stopHook: stopPostfix,
			What: "the `-pipeline` Postfix instance (private, chroot off, queue on the same disk) relaying instead of delivering: smtpd -> cleanup -> qmgr -> smtp(8) to `relayhost = [127.0.0.1]:<sink>`; `default_transport = smtp`, `relay_transport = smtp`, `virtual_mailbox_domains =` (nothing local), `mynetworks = 127.0.0.0/8` with `smtpd_relay_restrictions = permit_mynetworks, reject_unauth_destination`, `smtp_dns_support_level = disabled`, `smtp_host_lookup = native`, `smtp_tls_security_level = none`, `smtpd_tls_security_level = none`; everything else Postfix's defaults (connection cache on demand through scache, destination concurrency 20, `in_flow_delay = 1s`)"},
	}
}

// --- the counting sink ---

// countSink is an SMTP server (go-smtp) that accepts every message and
// counts it by its numbered Message-ID (loadgen's -id-prefix).
type countSink struct {
	addr string
	ln   net.Listener
	srv  *smtp.Server

	mu sync.Mutex
	// ids: prefix -> message number -> times received.
	ids map[string]map[uint32]int32
	// others are messages without a numbered Message-ID (a bounce, a
	// delay notice), samples a few of their senders.
	others  int64
	samples []string
	total   atomic.Int64
}

func (h *harness) startCountSink(s *server) error {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	k := &countSink{addr: ln.Addr().String(), ln: ln, ids: map[string]map[uint32]int32{}}
	srv := smtp.NewServer(k)
	srv.Domain = "sink.example.test"
	srv.MaxMessageBytes = 64 << 20
	srv.MaxRecipients = 1000
	srv.ReadTimeout = 5 * time.Minute
	srv.WriteTimeout = 5 * time.Minute
	srv.ErrorLog = log.New(io.Discard, "", 0)
	k.srv = srv
	go srv.Serve(ln)
	s.sink = k
	return nil
}

func (k *countSink) close() { k.srv.Close() }

func (k *countSink) NewSession(*smtp.Conn) (smtp.Session, error) {
	return &sinkSession{k: k}, nil
}

type sinkSession struct {
	k    *countSink
	from string
}

func (s *sinkSession) Mail(from string, _ *smtp.MailOptions) error {
	s.from = from
	return nil
}
func (*sinkSession) Rcpt(string, *smtp.RcptOptions) error { return nil }
func (*sinkSession) Reset()                               {}
func (*sinkSession) Logout() error                        { return nil }

// Data reads the header up to its end, takes the numbered Message-ID
// (<bench-PREFIX-NNNNNNNN@example.test>) from it and discards the rest.
func (s *sinkSession) Data(r io.Reader) error {
	br := bufio.NewReaderSize(r, 8192)
	prefix, num, ok := "", uint32(0), false
	for {
		line, err := br.ReadSlice('\n')
		if len(bytes.TrimRight(line, "\r\n")) == 0 || err != nil && err != bufio.ErrBufferFull {
			break
		}
		if len(line) > 11 && bytes.EqualFold(line[:11], []byte("message-id:")) {
			prefix, num, ok = parseBenchID(string(line[11:]))
		}
	}
	if _, err := io.Copy(io.Discard, br); err != nil {
		return err
	}
	k := s.k
	k.total.Add(1)
	k.mu.Lock()
	defer k.mu.Unlock()
	if !ok {
		k.others++
		if len(k.samples) < 5 {
			k.samples = append(k.samples, "MAIL FROM:<"+s.from+">")
		}
		return nil
	}
	m := k.ids[prefix]
	if m == nil {
		m = map[uint32]int32{}
		k.ids[prefix] = m
	}
	m[num]++
	return nil
}

// parseBenchID reads " <bench-PREFIX-NNNNNNNN@example.test>\r\n".
func parseBenchID(v string) (prefix string, num uint32, ok bool) {
	v = strings.TrimSpace(v)
	v, found := strings.CutPrefix(v, "<bench-")
	if !found {
		return "", 0, false
	}
	v, found = strings.CutSuffix(v, "@example.test>")
	i := strings.LastIndexByte(v, '-')
	if !found || i < 0 || len(v)-i-1 != 8 {
		return "", 0, false
	}
	n, err := strconv.ParseUint(v[i+1:], 16, 32)
	if err != nil {
		return "", 0, false
	}
	return v[:i], uint32(n), true
}

// count is the distinct messages of a run (its prefix) the sink got, and
// all of them, duplicates included.
func (k *countSink) count(prefix string) (distinct, received int64) {
	k.mu.Lock()
	defer k.mu.Unlock()
	m := k.ids[prefix]
	for _, n := range m {
		received += int64(n)
	}
	return int64(len(m)), received
}

func (k *countSink) foreign() (int64, []string) {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.others, slices.Clone(k.samples)
}

// --- Postfix relaying ---

// startPostfixRelay is the -pipeline Postfix instance relaying everything
// to the server's counting sink instead of delivering into a Maildir.
func startPostfixRelay(h *harness, s *server) (*exec.Cmd, error) {
	cmd, err := startPostfix(h, s)
	if err != nil {
		return nil, err
	}
	s.maildirs = nil // nothing is delivered locally
	if err := h.startCountSink(s); err != nil {
		return nil, err
	}
	mainCF := filepath.Join(s.postfixConf, "main.cf")
	b, err := os.ReadFile(mainCF)
	if err != nil {
		return nil, err
	}
	// The settings below replace those of the -pipeline instance.
	replaced := map[string]bool{"default_transport": true, "relay_transport": true, "virtual_mailbox_domains": true}
	var conf []string
	for l := range strings.Lines(string(b)) {
		key, _, _ := strings.Cut(l, " =")
		if replaced[key] || strings.HasPrefix(l, "# Nothing leaves") {
			continue
		}
		conf = append(conf, l)
	}
	conf = append(conf, `
# -queue: relay everything to the harness's counting sink.
# Nothing is delivered locally: example.test is not a virtual domain now.
virtual_mailbox_domains =
relayhost = [`+s.sink.addr[:strings.LastIndexByte(s.sink.addr, ':')]+`]:`+s.sink.addr[strings.LastIndexByte(s.sink.addr, ':')+1:]+`
default_transport = smtp
relay_transport = smtp
# No DNS (smtp_dns_support_level = disabled above, the current spelling
# of disable_dns_lookups = yes), host names through the system's resolver.
smtp_host_lookup = native
# No TLS on loopback, either way.
smtp_tls_security_level = none
smtpd_tls_security_level = none
`)
	if err := os.WriteFile(mainCF, []byte(strings.Join(conf, "")), 0o644); err != nil {
		return nil, err
	}
	f, err := os.OpenFile(filepath.Join(s.postfixConf, "master.cf"), os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	// Debian's master.cf lines for the SMTP client, chroot off as the rest.
	_, err = f.WriteString(`smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
`)
	return cmd, err
}

// --- the cell ---

// queueRun is one run of one server: the pipeline's figures with the sink
// as the destination, and what the sink got.
type queueRun struct {
	pipeRun
	// IDPrefix numbers the run's messages (bench/load -id-prefix).
	IDPrefix string `json:"id_prefix"`
	// Distinct and Received are the run's messages the sink got when the
	// cell ended (late ones included): distinct Message-IDs, and all of
	// them; Duplicates = Received - Distinct.
	Distinct   int64 `json:"sink_distinct"`
	Received   int64 `json:"sink_received"`
	Duplicates int64 `json:"duplicates"`
	// HarnessCPU is the harness process's CPU per message over the run:
	// the sink's work, and the harness polling it.
	HarnessCPU float64 `json:"harness_cpu_us_per_msg"`
}

// queueRunOnce runs the generator against s with numbered messages for d,
// then waits until the sink has every accepted one.
func (h *harness) queueRunOnce(s *server, c cell, d time.Duration) queueRun {
	prefix := fmt.Sprintf("%08x", rand.Uint32())
	s.loadExtra = []string{"-id-prefix", prefix}
	s.countDelivered = func() int {
		n, _ := s.sink.count(prefix)
		return int(n)
	}
	c0 := selfTicks()
	r := queueRun{pipeRun: h.pipeRunOnce(s, c, d), IDPrefix: prefix}
	if r.Accepted > 0 {
		r.HarnessCPU = float64(selfTicks()-c0) * 1e4 / float64(r.Accepted)
	}
	r.Distinct, r.Received = s.sink.count(prefix)
	r.Duplicates = r.Received - r.Distinct
	// The queues are on disk: write back what the run left, so that it
	// does not land in the next server's run.
	s.clean()
	syscall.Sync()
	time.Sleep(300 * time.Millisecond)
	return r
}

// selfTicks is the harness process's own CPU time in clock ticks.
func selfTicks() int64 { return cpuTicks(os.Getpid()) }

type queueCheck struct {
	Server   string  `json:"server"`
	OK       bool    `json:"ok"`
	Note     string  `json:"note,omitempty"`
	Accepted int64   `json:"accepted"`
	Distinct int64   `json:"sink_distinct"`
	Received int64   `json:"sink_received"`
	Foreign  int64   `json:"sink_foreign"`
	DrainS   float64 `json:"drain_s"`
}

type queueReport struct {
	Env        map[string]string `json:"env"`
	Runs       int               `json:"runs"`
	RunSeconds float64           `json:"run_seconds"`
	Minutes    float64           `json:"minutes"`
	Placement  placement         `json:"placement"`
	Where      string            `json:"placement_means"`
	Servers    []serverInfo      `json:"servers"`
	Checks     []queueCheck      `json:"checks"`
	Results    []queueRun        `json:"results"`
	// Foreign is, per server, the messages its sink got without a
	// numbered Message-ID over the whole cell (bounces, delay notices).
	Foreign map[string]int64    `json:"sink_foreign"`
	Samples map[string][]string `json:"sink_foreign_samples,omitempty"`
}

func (h *harness) queue(defs []*serverDef, place placement, mdPath, jsonPath, where string) error {
	started := time.Now()
	h.setPlacement(place)
	rep := &queueReport{Env: h.environment(), Runs: h.runs, RunSeconds: h.dur.Seconds(), Placement: h.cpu.place, Where: where,
		Foreign: map[string]int64{}, Samples: map[string][]string{}}
	for _, d := range defs {
		rep.Servers = append(rep.Servers, serverInfo{Name: d.Name, What: d.What, Ours: d.Ours, Peer: d.Peer})
	}
	var servers []*server
	for _, def := range defs {
		s, err := h.startServer(def)
		if err != nil {
			log.Printf("skipped: %v", err)
			rep.Checks = append(rep.Checks, queueCheck{Server: def.Name, Note: "did not start: " + err.Error()})
			continue
		}
		defer s.stop()
		servers = append(servers, s)
	}
	// Warm-up, and the check: the sink got every message the server
	// accepted, once each (a second later too), and nothing else.
	var checked []*server
	for _, s := range servers {
		log.Printf("warm-up %s", s.Name)
		r := h.queueRunOnce(s, cell{Size: 10 << 10, Conns: 20, Reuse: true}, time.Second)
		time.Sleep(time.Second)
		distinct, received := s.sink.count(r.IDPrefix)
		foreign, samples := s.sink.foreign()
		ck := queueCheck{Server: s.Name, Accepted: r.Accepted, Distinct: distinct, Received: received, Foreign: foreign, DrainS: r.DrainS}
		switch {
		case r.Accepted == 0:
			ck.Note = strings.TrimSpace("no message accepted in the warm-up " + r.Note)
		case distinct != r.Accepted:
			ck.Note = fmt.Sprintf("the sink got %d distinct messages of the %d accepted %s", distinct, r.Accepted, r.Note)
		case received != distinct:
			ck.Note = fmt.Sprintf("%d duplicates at the sink", received-distinct)
		case foreign > 0:
			ck.Note = fmt.Sprintf("the sink got %d other messages: %s", foreign, strings.Join(samples, ", "))
		default:
			ck.OK = true
		}
		log.Printf("check %s: ok=%v accepted %d, at the sink %d distinct, %d received, %d others %s", s.Name, ck.OK, r.Accepted, distinct, received, foreign, ck.Note)
		rep.Checks = append(rep.Checks, ck)
		if ck.OK {
			checked = append(checked, s)
		}
	}
	for _, c := range pipelineCells() {
		log.Printf("queue, relay to a sink: %s", c)
		for round := range h.runs {
			for i := range checked {
				s := checked[(i+round)%len(checked)]
				r := h.queueRunOnce(s, c, h.dur)
				r.Rep = round
				rep.Results = append(rep.Results, r)
				log.Printf("  %-14s %6.0f msg/s end to end (250s at %6.0f/s, last at the sink %.2fs after the generator), %5.0f µs server CPU/msg over %d processes, %6.0f B written/msg, %d duplicates, harness %3.0f µs/msg %s",
					s.Name, r.Rate, r.AcceptRate, r.DrainS, r.ServerCPU, r.Procs, r.WriteBytes, r.Duplicates, r.HarnessCPU, r.Note)
			}
		}
	}
	// Late arrivals: recount every run at the sink once the cell is done.
	time.Sleep(2 * time.Second)
	byName := map[string]*server{}
	for _, s := range servers {
		byName[s.Name] = s
		rep.Foreign[s.Name], rep.Samples[s.Name] = s.sink.foreign()
	}
	for i := range rep.Results {
		x := &rep.Results[i]
		if s := byName[x.Server]; s != nil {
			x.Distinct, x.Received = s.sink.count(x.IDPrefix)
			x.Duplicates = x.Received - x.Distinct
		}
	}
	rep.Minutes = time.Since(started).Minutes()
	if err := writeReport(mdPath, jsonPath, rep, rep.markdown); err != nil {
		return err
	}
	log.Printf("wrote %s and %s in %.1f min", mdPath, jsonPath, rep.Minutes)
	return nil
}

func (r *queueReport) pick(server string, c cell) []queueRun { return pickRuns(r.Results, server, c) }

func (r *queueReport) med(server string, c cell, f func(queueRun) float64) float64 {
	var xs []float64
	for _, x := range r.pick(server, c) {
		xs = append(xs, f(x))
	}
	return median(xs)
}

// ratio is the median over rounds of a/b in the same round.
func (r *queueReport) ratio(a, b string, c cell, f func(queueRun) float64) (float64, bool) {
	return ratioRuns(r.Results, a, b, c, f)
}

func (r *queueReport) markdown(jsonName string) string {
	var b strings.Builder
	b.WriteString("# The queue: relaying to a sink, end to end\n\n")
	fmt.Fprintf(&b, "Written by `go run ./bench/matrix -queue` (see [README.md](README.md#the-queue-relaying-to-a-sink--queue)); raw numbers, every run: [%s](%s).\n\n", jsonName, jsonName)
	var env []string
	for _, k := range slices.Sorted(maps.Keys(r.Env)) {
		env = append(env, fmt.Sprintf("%s: %s", k, r.Env[k]))
	}
	fmt.Fprintf(&b, "%s. Placement `%s`: %s. %d runs per cell of %.1f s of load each (the median is shown); %.1f min in all.\n\n",
		strings.Join(env, "; "), r.Placement, r.Where, r.Runs, r.RunSeconds, r.Minutes)
	b.WriteString("Each server queues every message on disk and relays it to a counting SMTP sink of its own (emersion/go-smtp v0.25.1 in the harness process, on the generators' CPU, on 127.0.0.1). `bench/load` sends 10 KiB messages over 20 sessions with PIPELINING, each with its own Message-ID (`-id-prefix`: `<bench-<run>-<number>@example.test>`); the sink counts the distinct Message-IDs of the run and every copy. **msgs/s end to end** = messages the server accepted / time from the generator's start until the sink has every one of them. **250s/s** is the rate of 250 replies the generator saw. **server CPU** is user + system time of every process of the server (Postfix: master and all its children, reaped ones included) per accepted message, up to 300 ms after the last message reached the sink. **written** is `write_bytes` of the server's processes per message (page cache dirtied for storage). **duplicates** are copies of a message the sink got more than once (counted again after the whole cell, so late copies count). **harness CPU** is the harness process per message (the sink's work and the polling).\n\n")

	b.WriteString("## Target: caddy-queue ≥ 2x postfix-relay, msgs/s end to end\n\n| cell | caddy-queue | postfix-relay | ratio (median of per-round ratios) | target | server CPU µs/msg, caddy / postfix |\n|---|---:|---:|---:|---|---|\n")
	rate := func(x queueRun) float64 { return x.Rate }
	cpu := func(x queueRun) float64 { return x.ServerCPU }
	for _, c := range pipelineCells() {
		x, ok := r.ratio("caddy-queue", "postfix-relay", c, rate)
		if !ok {
			continue
		}
		met := "met"
		if x < queueTarget {
			met = "**not met**"
		}
		cr, _ := r.ratio("caddy-queue", "postfix-relay", c, cpu)
		fmt.Fprintf(&b, "| %s | %.0f | %.0f | **%.2fx** | %s | %.0f / %.0f (%.2fx) |\n", c,
			r.med("caddy-queue", c, rate), r.med("postfix-relay", c, rate), x, met,
			r.med("caddy-queue", c, cpu), r.med("postfix-relay", c, cpu), cr)
	}
	b.WriteString("\n## Did the sink get every message, once?\n\nAfter each server's warm-up (1 s of load, then 1 s more): the messages it accepted, the distinct ones and all copies at its sink, and messages without a numbered Message-ID (a bounce, a delay notice). A server that fails this is not measured.\n\n")
	b.WriteString("| server | check | accepted | at the sink: distinct | received | other messages | last at the sink after the generator |\n|---|---|---:|---:|---:|---:|---:|\n")
	for _, c := range r.Checks {
		state := "**ok**"
		if !c.OK {
			state = "**FAILED**: " + c.Note
		}
		fmt.Fprintf(&b, "| `%s` | %s | %d | %d | %d | %d | %.2f s |\n", c.Server, state, c.Accepted, c.Distinct, c.Received, c.Foreign, c.DrainS)
	}
	b.WriteString("\n")
	for _, c := range pipelineCells() {
		fmt.Fprintf(&b, "## %s\n\n", c)
		b.WriteString("| server | msgs/s end to end | 250s/s | last at the sink after the generator | server CPU µs/msg | written B/msg | duplicates | harness CPU µs/msg | processes | notes |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|---|\n")
		for _, sv := range r.Servers {
			rs := r.pick(sv.Name, c)
			if len(rs) == 0 {
				continue
			}
			var notes []string
			var dups int64
			for _, x := range rs {
				dups += x.Duplicates
				if x.Note != "" {
					notes = append(notes, x.Note)
				}
			}
			fmt.Fprintf(&b, "| %s | %.0f | %.0f | %.2f s | %.0f | %.0f | %d | %.0f | %d | %s |\n", sv.Name,
				r.med(sv.Name, c, rate),
				r.med(sv.Name, c, func(x queueRun) float64 { return x.AcceptRate }),
				r.med(sv.Name, c, func(x queueRun) float64 { return x.DrainS }),
				r.med(sv.Name, c, cpu),
				r.med(sv.Name, c, func(x queueRun) float64 { return x.WriteBytes }),
				dups,
				r.med(sv.Name, c, func(x queueRun) float64 { return x.HarnessCPU }),
				rs[len(rs)-1].Procs, strings.Join(notes, "; "))
		}
		b.WriteString("\n")
		if x, ok := r.ratio("caddy-queue", "postfix-relay", c, rate); ok {
			met := "met"
			if x < queueTarget {
				met = "**not met**"
			}
			fmt.Fprintf(&b, "- caddy-queue / postfix-relay, msgs/s end to end: **%.2fx** (issue 15's target ≥ %.0fx: %s)\n", x, queueTarget, met)
		}
		if x, ok := r.ratio("caddy-queue", "postfix-relay", c, func(x queueRun) float64 { return x.AcceptRate }); ok {
			fmt.Fprintf(&b, "- 250s/s, caddy-queue / postfix-relay: %.2fx\n", x)
		}
		if x, ok := r.ratio("caddy-queue", "postfix-relay", c, cpu); ok {
			fmt.Fprintf(&b, "- server CPU per message, caddy-queue / postfix-relay: %.2fx\n", x)
		}
		b.WriteString("\n")
	}
	var foreign []string
	for _, name := range slices.Sorted(maps.Keys(r.Foreign)) {
		if n := r.Foreign[name]; n > 0 {
			foreign = append(foreign, fmt.Sprintf("`%s`: %d (%s)", name, n, strings.Join(r.Samples[name], ", ")))
		}
	}
	if len(foreign) > 0 {
		fmt.Fprintf(&b, "Messages at the sinks without a numbered Message-ID over the whole cell: %s.\n\n", strings.Join(foreign, "; "))
	} else {
		b.WriteString("No sink got a message without a numbered Message-ID (no bounce, no delay notice) over the whole cell.\n\n")
	}
	b.WriteString("## The servers\n\n| name | what |\n|---|---|\n")
	for _, sv := range r.Servers {
		fmt.Fprintf(&b, "| `%s` | %s |\n", sv.Name, sv.What)
	}
	return b.String()
}
