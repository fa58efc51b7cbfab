package main

import (
	"bufio"
	"errors"
	"fmt"
	"log"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// serverDef describes one server under test.
type serverDef struct {
	Name  string // short name in tables
	What  string // one line for the README table
	Ours  bool   // caddy-esmtp (the side the ratios are about)
	Peer  bool   // an outside server the ratios compare with
	Echo  bool   // speaks no SMTP (caddy-l4 echo): memory only
	start func(h *harness, s *server) (*exec.Cmd, error)
	// stopHook, if set, runs before the server's process is signalled
	// (Postfix: `postfix -c <dir> stop`, since its master is a child).
	stopHook func(s *server)
	// logTmpfs puts the server's log on /dev/shm, so that its log lines
	// are not in the disk bytes the pipeline cells count.
	logTmpfs bool
	// maildirs are set for servers that store messages, to empty between
	// runs (and, in the pipeline cells, to count deliveries in).
	maildirs []string
}

// server is a running serverDef.
type server struct {
	*serverDef
	addr   string
	admin  string // Caddy's admin address, for pprof
	dir    string
	logDir string // where its logs go: dir, or on /dev/shm with logTmpfs
	// postfixConf is the configuration directory of a Postfix instance.
	postfixConf string
	cmd         *exec.Cmd
	logFile     *os.File
	exited      chan struct{}
	cpus        string // the CPUs it may run on (Cpus_allowed_list), once started
	// loadExtra are more arguments for bench/load against this server
	// (-auth: the signed message, its sender).
	loadExtra []string
	// milters are the addresses of the milters a Postfix instance uses.
	milters []string
	// sink is the counting SMTP server a relaying server (-queue) sends
	// its messages to.
	sink *countSink
	// countDelivered, if set, counts the messages delivered so far in the
	// current run instead of the files in new/ of maildirs (-queue: the
	// distinct messages of the run at the sink).
	countDelivered func() int
}

func (s *server) pid() int { return s.cmd.Process.Pid }

// allServers lists every server the harness knows, in table order.
func allServers() []*serverDef {
	return []*serverDef{
		{Name: "caddy-discard", Ours: true, What: "caddy-esmtp in Caddy (`cmd/caddy`), `discard` sub-handler, Caddy's default logging (INFO: one line per message, to a file)", start: startCaddy("discard", "")},
		{Name: "caddy-discard-quiet", What: "the same with `log { level ERROR }`: what the INFO log lines cost", start: startCaddy("discard", "ERROR")},
		{Name: "caddy-maildir-tmpfs", What: "caddy-esmtp, `maildir` (fsync, link, dir fsync before 250) on tmpfs (/dev/shm)", start: startCaddy("maildir-tmpfs", "")},
		{Name: "caddy-maildir-disk", What: "caddy-esmtp, `maildir` on disk (the temp dir's file system)", start: startCaddy("maildir-disk", "")},
		{Name: "smtp-sink", Peer: true, What: "Postfix smtp-sink (C, one process, event loop), PIPELINING and 8BITMIME on (default), `-m 20000` connections", start: startSink},
		{Name: "go-smtp", Peer: true, What: "emersion/go-smtp v0.25.1 server, discards the data (`bench/peers/gosmtp`)", start: startGoSMTP},
		{Name: "go-minimal", What: "not a real server: the least a Go SMTP responder can do (`bench/peers/minimal`: fixed replies, data skipped to the final dot, no parsing, limits, timeouts or logs), the floor for any Go server", start: startMinimal},
		{Name: "haraka", Peer: true, What: "Haraka 3.3.4 (Node.js, nodes=0: one process), plugins rcpt_to.in_host_list + queue/discard, a local plugin turns rDNS off and sets TCP_NODELAY, log level WARN", start: startHaraka},
		{Name: "caddy-l4-echo", Echo: true, What: "bare caddy-l4 `echo` route (not SMTP): Caddy's and caddy-l4's own per-connection cost", start: startCaddy("echo", "ERROR")},
		{Name: "go-echo", Echo: true, What: "bare Go TCP echo server (`bench/peers/echo`): the floor under caddy-l4-echo", start: startGoEcho},
	}
}

func freePort() (string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer l.Close()
	return l.Addr().String(), nil
}

// startServer starts def on a fresh loopback port and waits until it serves.
func (h *harness) startServer(def *serverDef) (*server, error) {
	addr, err := freePort()
	if err != nil {
		return nil, err
	}
	s := &server{serverDef: def, addr: addr, exited: make(chan struct{})}
	s.dir, err = os.MkdirTemp(h.work, def.Name+"-")
	if err != nil {
		return nil, err
	}
	s.logDir = s.dir
	if def.logTmpfs {
		if s.logDir, err = os.MkdirTemp("/dev/shm", "bench-log-"+def.Name+"-"); err != nil {
			return nil, err
		}
		if h.keep {
			log.Printf("%s logs to %s (kept: -keep)", def.Name, s.logDir)
		} else {
			h.removeLater(s.logDir)
		}
	}
	// O_APPEND, so clean can truncate the log under a running server.
	s.logFile, err = os.OpenFile(filepath.Join(s.logDir, "server.log"), os.O_WRONLY|os.O_CREATE|os.O_TRUNC|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	cmd, err := def.start(h, s)
	if err != nil {
		return nil, fmt.Errorf("%s: %v", def.Name, err)
	}
	h.pin(cmd, true)
	cmd.Stdout, cmd.Stderr = s.logFile, s.logFile
	if cmd.Dir == "" {
		cmd.Dir = s.dir
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("%s: %v", def.Name, err)
	}
	s.cmd = cmd
	go func() { cmd.Wait(); close(s.exited) }()
	if err := s.waitReady(30 * time.Second); err != nil {
		s.stop()
		return nil, fmt.Errorf("%s did not start (log %s): %v", def.Name, s.logFile.Name(), err)
	}
	// The PID is the server's own (taskset execs it): check its affinity.
	s.cpus = statusField(fmt.Sprintf("/proc/%d/status", s.pid()), "Cpus_allowed_list")
	if want := h.cpu.serverCPUs; h.cpu.place == placeSplit && s.cpus != want {
		log.Printf("%s (pid %d) runs on CPUs %q, not %q", def.Name, s.pid(), s.cpus, want)
	}
	return s, nil
}

// waitReady dials until the server greets (or, for echo, echoes).
func (s *server) waitReady(timeout time.Duration) error {
	end := time.Now().Add(timeout)
	var last error
	for time.Now().Before(end) {
		select {
		case <-s.exited:
			return errors.New("exited")
		default:
		}
		c, err := net.DialTimeout("tcp", s.addr, time.Second)
		if err == nil {
			c.SetDeadline(time.Now().Add(5 * time.Second))
			if s.Echo {
				c.Write([]byte("ping\r\n"))
			}
			line, rerr := bufio.NewReader(c).ReadString('\n')
			if rerr == nil && s.Echo && line == "ping\r\n" {
				c.Close()
				return nil
			}
			if rerr == nil && strings.HasPrefix(line, "220") {
				c.Write([]byte("QUIT\r\n"))
				c.Close()
				return nil
			}
			c.Close()
			err = fmt.Errorf("first line %q, %v", line, rerr)
		}
		last = err
		time.Sleep(100 * time.Millisecond)
	}
	return last
}

// stop ends the server: SIGTERM, then SIGKILL after a few seconds.
func (s *server) stop() {
	if s.sink != nil {
		defer s.sink.close()
	}
	if s.cmd == nil || s.cmd.Process == nil {
		return
	}
	if s.stopHook != nil {
		s.stopHook(s)
		select {
		case <-s.exited:
		case <-time.After(10 * time.Second):
		}
	}
	s.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-s.exited:
	case <-time.After(5 * time.Second):
		s.cmd.Process.Kill()
		<-s.exited
	}
	s.logFile.Close()
}

// clean runs between measurements: it truncates the server's log (Caddy's
// INFO lines add up to gigabytes over the full matrix) and empties a
// maildir so tmpfs and disk do not fill up. After a maildir on disk it
// syncs and pauses, so that writeback does not land in the next server's run.
func (s *server) clean() {
	s.logFile.Truncate(0)
	if len(s.maildirs) == 0 {
		return
	}
	onDisk := false
	for _, md := range s.maildirs {
		for _, sub := range []string{"new", "cur", "tmp"} {
			d := filepath.Join(md, sub)
			ents, _ := os.ReadDir(d)
			for _, e := range ents {
				os.Remove(filepath.Join(d, e.Name()))
			}
		}
		onDisk = onDisk || !strings.HasPrefix(md, "/dev/shm/")
	}
	if onDisk {
		syscall.Sync()
		time.Sleep(300 * time.Millisecond)
	}
}

// procStatus reads a field of /proc/<pid>/status in KiB (VmRSS, VmHWM).
func procStatus(pid int, field string) (int64, error) {
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(sc.Text(), field+":"); ok {
			kb := strings.Fields(rest)
			if len(kb) > 0 {
				return strconv.ParseInt(kb[0], 10, 64)
			}
		}
	}
	return 0, fmt.Errorf("no %s in /proc/%d/status", field, pid)
}

// --- the servers ---

func startCaddy(variant, logLevel string) func(h *harness, s *server) (*exec.Cmd, error) {
	return func(h *harness, s *server) (*exec.Cmd, error) {
		admin, err := freePort()
		if err != nil {
			return nil, err
		}
		s.admin = admin
		var handler string
		switch variant {
		case "discard":
			handler = "discard"
		case "maildir-tmpfs":
			d, err := os.MkdirTemp("/dev/shm", "bench-maildir-")
			if err != nil {
				return nil, err
			}
			h.removeLater(d)
			s.maildirs = []string{filepath.Join(d, "mail")}
			handler = "maildir " + s.maildirs[0]
		case "queue":
			// -queue: store in a queue on disk, relay to the harness's
			// counting sink (no TLS: loopback; relayed for 127.0.0.1).
			d, err := os.MkdirTemp(h.diskDir, "bench-queue-")
			if err != nil {
				return nil, err
			}
			h.removeLater(d)
			if err := h.startCountSink(s); err != nil {
				return nil, err
			}
			handler = "queue " + filepath.Join(d, "queue") + " {\n" +
				"\t\t\t\t\t\tworkers 16\n" +
				"\t\t\t\t\t}\n" +
				"\t\t\t\t\trelay smtp://" + s.sink.addr + " {\n" +
				"\t\t\t\t\t\trequire_tls off\n" +
				"\t\t\t\t\t\trelay_networks 127.0.0.1/32\n" +
				"\t\t\t\t\t}"
		case "maildir-disk", "maildir-disk2", "auth", "filter-milter", "filter-rspamd":
			// maildir-disk2: two maildir sub-handlers in one esmtp
			// block, every message delivered into both.
			d, err := os.MkdirTemp(h.diskDir, "bench-maildir-")
			if err != nil {
				return nil, err
			}
			h.removeLater(d)
			s.maildirs = []string{filepath.Join(d, "mail")}
			if variant == "maildir-disk2" {
				s.maildirs = append(s.maildirs, filepath.Join(d, "mail2"))
			}
			var lines []string
			for _, md := range s.maildirs {
				lines = append(lines, "maildir "+md)
			}
			if variant == "auth" {
				// -auth: the harness's DNS server, SPF, DKIM, then the
				// DMARC judge (after them), then delivery.
				lines = append([]string{"resolvers " + authDNSAddr, "spf", "dkim", "dmarc"}, lines...)
			}
			switch variant {
			case "filter-milter": // -filter: rspamd's proxy worker, then delivery
				lines = append([]string{"milter " + filterRspamd.milter}, lines...)
			case "filter-rspamd": // -filter: rspamd's HTTP protocol, then delivery
				lines = append([]string{"rspamd " + filterRspamd.url}, lines...)
			}
			handler = strings.Join(lines, "\n\t\t\t\t\t")
		}
		global := ""
		if logLevel != "" {
			global = "\tlog {\n\t\tlevel " + logLevel + "\n\t}\n"
		}
		route := "\t\t\t\tesmtp {\n" +
			"\t\t\t\t\thostname caddy.example.test\n" +
			"\t\t\t\t\tmax_message_size 2GiB\n" +
			"\t\t\t\t\tgrace_period 2s\n" +
			// The engine's defaults (1000 sessions per port, 20 per
			// client IP) would answer 421 to the benchmark's sessions,
			// which all come from 127.0.0.1.
			"\t\t\t\t\tmax_connections unlimited\n" +
			"\t\t\t\t\tmax_connections_per_ip unlimited\n" +
			"\t\t\t\t\t" + handler + "\n" +
			"\t\t\t\t}\n"
		if variant == "echo" {
			route = "\t\t\t\techo\n"
		}
		caddyfile := "{\n" +
			"\tadmin " + admin + "\n" +
			"\tpersist_config off\n" +
			global +
			"\tlayer4 {\n" +
			"\t\t" + s.addr + " {\n" +
			"\t\t\troute {\n" + route + "\t\t\t}\n" +
			"\t\t}\n" +
			"\t}\n" +
			"}\n"
		path := filepath.Join(s.dir, "Caddyfile")
		if err := os.WriteFile(path, []byte(caddyfile), 0o644); err != nil {
			return nil, err
		}
		cmd := exec.Command(h.bin("caddy"), "run", "--config", path, "--adapter", "caddyfile")
		cmd.Env = append(os.Environ(),
			"XDG_CONFIG_HOME="+filepath.Join(s.dir, "config"),
			"XDG_DATA_HOME="+filepath.Join(s.dir, "data"))
		return cmd, nil
	}
}

func startSink(h *harness, s *server) (*exec.Cmd, error) {
	// -m: connections handled at once (default 256); -u: required as root.
	args := []string{"-m", "20000"}
	if os.Geteuid() == 0 {
		args = append(args, "-u", "nobody")
	}
	args = append(args, "-h", "sink.example.test", s.addr, "4096")
	return exec.Command(h.smtpSink, args...), nil
}

func startMinimal(h *harness, s *server) (*exec.Cmd, error) {
	return exec.Command(h.bin("minimal"), "-addr", s.addr), nil
}

func startGoEcho(h *harness, s *server) (*exec.Cmd, error) {
	return exec.Command(h.bin("echo"), "-addr", s.addr), nil
}

func startGoSMTP(h *harness, s *server) (*exec.Cmd, error) {
	return exec.Command(h.bin("gosmtp"), "-addr", s.addr), nil
}

// harakaBench is a local plugin for the benchmark: it answers Haraka's
// reverse-DNS lookup itself (the benchmark never leaves loopback and
// measures no DNS), and turns Nagle's algorithm off on each connection: Node
// leaves it on, so the second of several pipelined replies waits for the
// client's delayed ACK (about 40 ms) and a pipelining client measures that
// timer instead of Haraka.
const harakaBench = `exports.hook_connect_init = function (next, connection) {
    // connection.client wraps the socket, and its setNoDelay does nothing.
    const sock = connection.client.targetsocket || connection.client
    if (sock.setNoDelay) sock.setNoDelay(true)
    next()
}
exports.hook_lookup_rdns = function (next) {
    next(OK, 'localhost')
}
`

func startHaraka(h *harness, s *server) (*exec.Cmd, error) {
	if h.haraka == "" {
		return nil, errors.New("haraka (Haraka) is not installed (bench/setup.sh)")
	}
	// Haraka's own defaults first (connection.ini and the rest), then ours.
	defaults := filepath.Join(filepath.Dir(filepath.Dir(h.haraka)), "config")
	if err := os.CopyFS(filepath.Join(s.dir, "config"), os.DirFS(defaults)); err != nil {
		return nil, err
	}
	files := map[string]string{
		"config/smtp.ini":  "[main]\nlisten=" + s.addr + "\nnodes=0\ninactivity_timeout=300\n",
		"config/plugins":   "bench\nrcpt_to.in_host_list\nqueue/discard\n",
		"config/host_list": "example.test\n",
		"config/me":        "haraka.example.test\n",
		"config/log.ini":   "[main]\nlevel=warn\ntimestamps=false\nformat=default\n",
		"plugins/bench.js": harakaBench,
	}
	for name, text := range files {
		p := filepath.Join(s.dir, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			return nil, err
		}
		if err := os.WriteFile(p, []byte(text), 0o644); err != nil {
			return nil, err
		}
	}
	cmd := exec.Command(h.node, h.haraka, "-c", s.dir)
	cmd.Env = append(os.Environ(), "YES_REALLY_DO_DISCARD=1")
	return cmd, nil
}
