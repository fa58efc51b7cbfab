package main

// The "message pipeline" cells (go run ./bench/matrix -pipeline):
//
//   - maildir on disk, end to end: caddy-esmtp's maildir against Postfix
//     delivering into a Maildir through its real path (smtpd -> cleanup ->
//     qmgr -> virtual), messages per second until the last message is in
//     new/, CPU of every process of the server per message, and disk bytes
//     written per message (also for caddy-esmtp with two maildirs);
//   - memory: N sessions held in DATA at once, each with a 4 KiB message
//     half sent, against caddy-esmtp's maildir on disk: RSS per session.

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"log"
	"maps"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/caddy-esmtp/caddy-esmtp/bench/internal/loadgen"
)

// pipelineServers are the servers of the pipeline cells, in table order.
func pipelineServers() []*serverDef {
	return []*serverDef{
		{Name: "caddy-maildir", Ours: true, logTmpfs: true, start: startCaddy("maildir-disk", ""),
			What: "caddy-esmtp in Caddy, `esmtp { maildir <dir> }` on disk (fsync, link into new/, dir fsync before the 250), Caddy's default logging (to /dev/shm)"},
		{Name: "caddy-maildir2", logTmpfs: true, start: startCaddy("maildir-disk2", ""),
			What: "the same with two maildirs in one esmtp block (`maildir <dir1>` and `maildir <dir2>`): every message delivered twice"},
		{Name: "postfix-virtual", Peer: true, logTmpfs: true, start: startPostfix, stopHook: stopPostfix,
			What: "Postfix (Debian's package) in a private instance, `postfix -c <dir> start-fg`: smtpd -> cleanup -> qmgr -> virtual(8) into one Maildir on disk, no chroot, no DNS, maillog_file on /dev/shm"},
	}
}

const postfixBin = "/usr/sbin/postfix"

// postfixConf is the main.cf of the benchmark's Postfix instance. Every
// path is its own: nothing of the system's /etc/postfix (which Debian's
// "No configuration" leaves without a main.cf) is read or changed.
func postfixConf(dir, logDir string, uid, gid int) string {
	return `# Written by bench/matrix for the postfix-virtual cell.
compatibility_level = 3.6
queue_directory = ` + dir + `/queue
data_directory = ` + dir + `/data
mail_owner = postfix
setgid_group = postdrop
syslog_name = postfix-bench
maillog_file = ` + logDir + `/maillog
maillog_file_prefixes = /dev/shm, /tmp, /var
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
myhostname = postfix.example.test
mydomain = example.test
myorigin = $myhostname
mydestination =
relay_domains =
local_recipient_maps =
alias_maps =
alias_database =
mynetworks = 127.0.0.0/8
smtpd_relay_restrictions = permit_mynetworks, reject_unauth_destination
smtpd_recipient_restrictions = permit
smtpd_peername_lookup = no
smtp_dns_support_level = disabled
# Nothing leaves: a recipient outside example.test would bounce locally.
default_transport = error:bench instance, no relay
relay_transport = error:bench instance, no relay
virtual_mailbox_domains = example.test
virtual_mailbox_base = ` + dir + `/mail
# static: every recipient into one Maildir (a path ending in /).
virtual_mailbox_maps = static:example.test/Maildir/
virtual_uid_maps = static:` + strconv.Itoa(uid) + `
virtual_gid_maps = static:` + strconv.Itoa(gid) + `
virtual_minimum_uid = 100
biff = no
append_dot_mydomain = no
smtputf8_enable = no
`
}

// postfixMaster is its master.cf: the services the path smtpd -> cleanup
// -> qmgr -> virtual needs (and those qmgr and smtpd talk to), chroot off,
// smtpd on the harness's port.
func postfixMaster(addr string) string {
	return `# service type  private unpriv  chroot  wakeup  maxproc command
` + addr + ` inet n - n - - smtpd
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
virtual   unix  -       n       n       -       -       virtual
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
`
}

// startPostfix writes a private Postfix instance into a directory on disk
// and starts it in the foreground: `postfix -c <conf> start-fg` execs
// postfix-script, which runs master as its child, so every process of the
// instance is under the PID the harness started.
func startPostfix(h *harness, s *server) (*exec.Cmd, error) {
	if _, err := os.Stat(postfixBin); err != nil {
		return nil, errors.New("postfix is not installed (bench/setup.sh)")
	}
	pf, err := user.Lookup("postfix")
	if err != nil {
		return nil, fmt.Errorf("no postfix user (Debian package postfix): %v", err)
	}
	pfUID, _ := strconv.Atoi(pf.Uid)
	// Mail is delivered as nobody: virtual(8) never delivers as root.
	vuid, vgid := 65534, 65534
	if u, err := user.Lookup("nobody"); err == nil {
		vuid, _ = strconv.Atoi(u.Uid)
		vgid, _ = strconv.Atoi(u.Gid)
	}
	d, err := os.MkdirTemp(h.diskDir, "bench-postfix-")
	if err != nil {
		return nil, err
	}
	h.removeLater(d)
	// Postfix's daemons (user postfix) and virtual (nobody) must reach
	// their directories: open the path down to d for traversal.
	for p := d; p != "/" && p != "."; p = filepath.Dir(p) {
		st, err := os.Stat(p)
		if err != nil {
			return nil, err
		}
		if st.Mode().Perm()&0o001 == 0 {
			if err := os.Chmod(p, st.Mode().Perm()|0o011); err != nil {
				return nil, err
			}
		}
	}
	conf := filepath.Join(d, "conf")
	for _, sub := range []string{"conf", "queue", "data", "mail"} {
		if err := os.MkdirAll(filepath.Join(d, sub), 0o755); err != nil {
			return nil, err
		}
	}
	if err := os.Chown(filepath.Join(d, "data"), pfUID, -1); err != nil {
		return nil, err
	}
	if err := os.Chown(filepath.Join(d, "mail"), vuid, vgid); err != nil {
		return nil, err
	}
	if err := os.Chmod(s.logDir, 0o755); err != nil {
		return nil, err
	}
	if err := os.WriteFile(filepath.Join(conf, "main.cf"), []byte(postfixConf(d, s.logDir, vuid, vgid)), 0o644); err != nil {
		return nil, err
	}
	if err := os.WriteFile(filepath.Join(conf, "master.cf"), []byte(postfixMaster(s.addr)), 0o644); err != nil {
		return nil, err
	}
	s.maildirs = []string{filepath.Join(d, "mail", "example.test", "Maildir")}
	s.postfixConf = conf
	return exec.Command(postfixBin, "-c", conf, "start-fg"), nil
}

// stopPostfix stops the instance the way its admin would: `postfix stop`
// signals master, which ends its children; then postfix-script exits.
func stopPostfix(s *server) {
	if s.postfixConf == "" {
		return
	}
	cmd := exec.Command(postfixBin, "-c", s.postfixConf, "stop")
	cmd.Stdout, cmd.Stderr = s.logFile, s.logFile
	done := make(chan struct{})
	go func() { cmd.Run(); close(done) }()
	select {
	case <-done:
	case <-time.After(20 * time.Second):
		if cmd.Process != nil {
			cmd.Process.Kill()
		}
	}
}

// --- what a process tree uses ---

// usage is what a server's processes used: CPU clock ticks (user + system,
// with those of reaped children), and bytes written to storage.
type usage struct {
	ticks      int64
	writeBytes int64 // /proc/<pid>/io write_bytes
	cancelled  int64 // cancelled_write_bytes (dirty pages dropped before writeback)
	procs      int
}

// treeUsage sums the usage of root and every process below it. A process's
// stat and io count its own threads and, once it has reaped them, its dead
// children (cutime/cstime; the kernel adds a reaped child's I/O accounting
// to its parent's too), so processes that came and went between two
// samples (an smtpd that served its max_use) are not lost: they move from
// their own line into master's.
func treeUsage(root int) usage {
	ents, _ := os.ReadDir("/proc")
	children := map[int][]int{}
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if f := procStatFields(pid); len(f) > 1 {
			ppid, _ := strconv.Atoi(f[1])
			children[ppid] = append(children[ppid], pid)
		}
	}
	var u usage
	queue := []int{root}
	seen := map[int]bool{}
	for len(queue) > 0 {
		pid := queue[0]
		queue = queue[1:]
		if seen[pid] {
			continue
		}
		seen[pid] = true
		f := procStatFields(pid)
		if len(f) < 15 {
			continue
		}
		u.procs++
		for _, i := range []int{11, 12, 13, 14} { // utime stime cutime cstime
			v, _ := strconv.ParseInt(f[i], 10, 64)
			u.ticks += v
		}
		w, c := procIO(pid)
		u.writeBytes += w
		u.cancelled += c
		queue = append(queue, children[pid]...)
	}
	return u
}

// procStatFields are the fields of /proc/<pid>/stat after the command name
// (f[0] is the state, f[1] the parent's PID, f[11] utime).
func procStatFields(pid int) []string {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return nil
	}
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return nil
	}
	return strings.Fields(string(b[i+1:]))
}

func procIO(pid int) (write, cancelled int64) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/io", pid))
	if err != nil {
		return 0, 0
	}
	for l := range strings.Lines(string(b)) {
		k, v, _ := strings.Cut(l, ":")
		n, _ := strconv.ParseInt(strings.TrimSpace(v), 10, 64)
		switch k {
		case "write_bytes":
			write = n
		case "cancelled_write_bytes":
			cancelled = n
		}
	}
	return
}

// countNew is the number of files in a Maildir's new/.
func countNew(maildir string) int {
	f, err := os.Open(filepath.Join(maildir, "new"))
	if err != nil {
		return 0
	}
	defer f.Close()
	names, _ := f.Readdirnames(-1)
	return len(names)
}

// delivered is the fewest files in new/ over the server's maildirs (each
// maildir gets every message).
func (s *server) delivered() int {
	if s.countDelivered != nil {
		return s.countDelivered()
	}
	n := -1
	for _, md := range s.maildirs {
		if c := countNew(md); n < 0 || c < n {
			n = c
		}
	}
	return max(n, 0)
}

// --- maildir on disk, end to end ---

// pipeRun is one end-to-end run of one server.
type pipeRun struct {
	Server    string    `json:"server"`
	Cell      cell      `json:"cell"`
	Rep       int       `json:"rep"`
	Placement placement `json:"placement"`
	// Accepted is the messages the server answered 250 to; AcceptRate
	// that over the generator's own time.
	Accepted   int64   `json:"accepted"`
	Errors     int64   `json:"errors"`
	AcceptRate float64 `json:"accept_msgs_per_s"`
	// Delivered is the files in new/ (the fewest over the maildirs) when
	// the run ended; Elapsed from the generator's start until every
	// accepted message was there; Rate = Accepted / Elapsed.
	Delivered int64   `json:"delivered"`
	Elapsed   float64 `json:"elapsed_s"`
	Rate      float64 `json:"msgs_per_s"`
	// DrainS is how long after the generator's last reply the last
	// message reached new/.
	DrainS float64 `json:"drain_s"`
	// ServerCPU is the CPU time of every process of the server per
	// accepted message, in µs; WriteBytes and Cancelled are the server
	// processes' write_bytes and cancelled_write_bytes per message.
	ServerCPU  float64 `json:"server_cpu_us_per_msg"`
	WriteBytes float64 `json:"write_bytes_per_msg"`
	Cancelled  float64 `json:"cancelled_write_bytes_per_msg"`
	Procs      int     `json:"server_processes"`
	GenCPU     float64 `json:"generator_cpu_pct"`
	Note       string  `json:"note,omitempty"`
}

// pipeRunOnce runs the generator against s for d, then waits until every
// accepted message is in new/ of each of its maildirs.
func (h *harness) pipeRunOnce(s *server, c cell, d time.Duration) pipeRun {
	r := pipeRun{Server: s.Name, Cell: c, Placement: h.cpu.place}
	u0 := treeUsage(s.pid())
	start := time.Now()
	lr := h.runLoad(s, c, d)
	genEnd := time.Now()
	r.Accepted, r.Errors, r.AcceptRate, r.GenCPU, r.Note = lr.Messages, lr.Errors, lr.Rate, lr.GenCPU, lr.Note
	// Poll new/ until every accepted message is there; bounded.
	limit := genEnd.Add(30*time.Second + 10*d)
	end := genEnd
	for {
		n := int64(s.delivered())
		end = time.Now()
		if n >= r.Accepted {
			r.Delivered = n
			break
		}
		if end.After(limit) {
			r.Delivered = n
			r.Note = strings.TrimSpace(r.Note + fmt.Sprintf(" only %d of %d delivered after %.0fs", n, r.Accepted, end.Sub(genEnd).Seconds()))
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	r.Elapsed = end.Sub(start).Seconds()
	r.DrainS = end.Sub(genEnd).Seconds()
	if r.Elapsed > 0 {
		r.Rate = float64(min(r.Delivered, r.Accepted)) / r.Elapsed
	}
	// What the server does right after the last delivery (Postfix's qmgr
	// removing the queue file) is part of the message's cost.
	time.Sleep(300 * time.Millisecond)
	u1 := treeUsage(s.pid())
	r.Procs = u1.procs
	if r.Accepted > 0 {
		m := float64(r.Accepted)
		r.ServerCPU = float64(u1.ticks-u0.ticks) * 1e4 / m
		r.WriteBytes = float64(u1.writeBytes-u0.writeBytes) / m
		r.Cancelled = float64(u1.cancelled-u0.cancelled) / m
	}
	return r
}

// pipelineThroughput runs the maildir-on-disk cells: 10 KiB x 20 sessions,
// both modes, -runs rounds, servers in a rotating order.
func (h *harness) pipelineThroughput(defs []*serverDef) []pipeRun {
	var servers []*server
	for _, d := range defs {
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
	for _, s := range servers {
		log.Printf("warm-up %s", s.Name)
		h.pipeRunOnce(s, cell{Size: 10 << 10, Conns: 20, Reuse: true}, time.Second)
		s.clean()
	}
	var runs []pipeRun
	for _, c := range pipelineCells() {
		log.Printf("maildir on disk: %s", c)
		for rep := range h.runs {
			for i := range servers {
				s := servers[(i+rep)%len(servers)]
				r := h.pipeRunOnce(s, c, h.dur)
				r.Rep = rep
				s.clean()
				runs = append(runs, r)
				log.Printf("  %-16s %6.0f msg/s delivered (250s at %6.0f/s, last in new/ %.2fs after the generator), %5.0f µs CPU/msg over %d processes, %6.0f B written/msg %s",
					s.Name, r.Rate, r.AcceptRate, r.DrainS, r.ServerCPU, r.Procs, r.WriteBytes, r.Note)
			}
		}
	}
	return runs
}

func pipelineCells() []cell {
	return []cell{{Size: 10 << 10, Conns: 20, Reuse: true}, {Size: 10 << 10, Conns: 20, Reuse: false}}
}

// --- memory: N sessions in DATA at once ---

// inDataResult is the memory of a server holding N sessions in DATA.
type inDataResult struct {
	Server    string    `json:"server"`
	Sessions  int       `json:"sessions"`
	Size      int64     `json:"size"`
	Cut       int       `json:"bytes_sent_before_sample"`
	Placement placement `json:"placement"`
	BaseKiB   int64     `json:"rss_idle_kib"`
	// InDataKiB is VmRSS with every session held in DATA; HWMKiB the
	// server's VmHWM once all messages were finished (its peak).
	InDataKiB  int64   `json:"rss_in_data_kib"`
	HWMKiB     int64   `json:"hwm_kib"`
	AfterKiB   int64   `json:"rss_after_kib"`
	PerSession float64 `json:"per_session_bytes"` // (HWM - idle) / N
	InDataPer  float64 `json:"in_data_per_session_bytes"`
	TmpFiles   int     `json:"tmp_files_in_data"` // files in the maildir's tmp/ while held
	Threads    int64   `json:"threads_in_data"`
	// FDs is the server's open file descriptors with every session held,
	// FDLimit its RLIMIT_NOFILE (the harness cannot raise it past the
	// hard limit it inherited).
	FDs        int            `json:"fds_in_data"`
	FDLimit    int            `json:"fd_limit"`
	OpenS      float64        `json:"open_s"`
	FinishS    float64        `json:"finish_s"`
	Accepted   int            `json:"accepted"`
	Delivered  int            `json:"delivered"`
	ErrorKinds map[string]int `json:"error_kinds,omitempty"`
	Error      string         `json:"error,omitempty"`
}

// measureInData starts def fresh, delivers one message (so the idle
// baseline has the delivery path warmed up), reads VmRSS, opens n sessions
// that each get to the middle of a size-byte message in DATA, reads VmRSS
// with them all held, then finishes them all at once and reads VmHWM.
func (h *harness) measureInData(def *serverDef, n int, size int64) inDataResult {
	res := inDataResult{Server: def.Name, Sessions: n, Size: size, Cut: int(size / 2), Placement: h.cpu.place}
	s, err := h.startServer(def)
	if err != nil {
		res.Error = err.Error()
		return res
	}
	defer s.stop()
	if r, err := loadgen.Run(loadgen.Config{Addr: s.addr, Conns: 1, Messages: 1, Size: size, Duration: 30 * time.Second, Timeout: 30 * time.Second}); err != nil || r.Messages != 1 {
		res.Error = fmt.Sprintf("warm-up message not accepted: %v", err)
		return res
	}
	s.clean()
	time.Sleep(time.Second)
	res.BaseKiB, _ = procStatus(s.pid(), "VmRSS")
	res.FDLimit = openFilesLimit(s.pid())
	if res.FDLimit > 0 && res.FDLimit < 2*n+100 {
		log.Printf("in DATA %s: the server may open %d files; %d sessions each with a socket and a file in tmp/ need about %d (the hard limit the harness inherited caps RLIMIT_NOFILE)", def.Name, res.FDLimit, n, 2*n+100)
	}
	start := time.Now()
	held, err := loadgen.OpenInData(s.addr, n, size, res.Cut, 256, 60*time.Second)
	res.OpenS = time.Since(start).Seconds()
	if err != nil {
		res.Error = err.Error()
		return res
	}
	time.Sleep(3 * time.Second)
	res.InDataKiB, _ = procStatus(s.pid(), "VmRSS")
	res.Threads, _ = procStatus(s.pid(), "Threads")
	if ents, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", s.pid())); err == nil {
		res.FDs = len(ents)
	}
	for _, md := range s.maildirs {
		if f, err := os.Open(filepath.Join(md, "tmp")); err == nil {
			names, _ := f.Readdirnames(-1)
			res.TmpFiles += len(names)
			f.Close()
		}
	}
	start = time.Now()
	ok, kinds := held.Finish(3 * time.Minute)
	res.FinishS = time.Since(start).Seconds()
	res.Accepted = ok
	if len(kinds) > 0 {
		res.ErrorKinds = kinds
	}
	time.Sleep(500 * time.Millisecond)
	res.HWMKiB, _ = procStatus(s.pid(), "VmHWM")
	res.AfterKiB, _ = procStatus(s.pid(), "VmRSS")
	res.Delivered = s.delivered()
	res.PerSession = float64(res.HWMKiB-res.BaseKiB) * 1024 / float64(n)
	res.InDataPer = float64(res.InDataKiB-res.BaseKiB) * 1024 / float64(n)
	if ok != n {
		res.Error = fmt.Sprintf("%d of %d sessions got 250", ok, n)
	}
	log.Printf("in DATA %s: %d sessions (open %.1fs, finish %.1fs), RSS idle %d KiB, in DATA %d KiB, peak %d KiB: %.0f B/session at peak, %.0f B/session in DATA; %d x 250, %d in new/ %v",
		def.Name, n, res.OpenS, res.FinishS, res.BaseKiB, res.InDataKiB, res.HWMKiB, res.PerSession, res.InDataPer, ok, res.Delivered, kinds)
	return res
}

// openFilesLimit is a process's soft RLIMIT_NOFILE, 0 if unknown.
func openFilesLimit(pid int) int {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/limits", pid))
	if err != nil {
		return 0
	}
	for l := range strings.Lines(string(b)) {
		if rest, ok := strings.CutPrefix(l, "Max open files"); ok {
			if f := strings.Fields(rest); len(f) > 0 {
				n, _ := strconv.Atoi(f[0])
				return n
			}
		}
	}
	return 0
}

// --- the report ---

type pipeReport struct {
	Env        map[string]string `json:"env"`
	Runs       int               `json:"runs"`
	RunSeconds float64           `json:"run_seconds"`
	Minutes    float64           `json:"minutes"`
	Placement  placement         `json:"placement"`
	Where      string            `json:"placement_means"`
	Servers    []serverInfo      `json:"servers"`
	Results    []pipeRun         `json:"results"`
	InData     []inDataResult    `json:"in_data,omitempty"`
}

func (r *pipeReport) pick(server string, c cell) []pipeRun { return pickRuns(r.Results, server, c) }

func medianOf(rs []pipeRun, f func(pipeRun) float64) float64 {
	var xs []float64
	for _, x := range rs {
		xs = append(xs, f(x))
	}
	return median(xs)
}

// ratio is the median over rounds of a/b in the same round.
func (r *pipeReport) ratio(a, b string, c cell, f func(pipeRun) float64) (float64, bool) {
	return ratioRuns(r.Results, a, b, c, f)
}

func (r *pipeReport) has(name string) bool {
	return slices.ContainsFunc(r.Servers, func(s serverInfo) bool { return s.Name == name })
}

func (r *pipeReport) write(mdPath, jsonPath string) error {
	return writeReport(mdPath, jsonPath, r, r.markdown)
}

func (r *pipeReport) markdown(jsonName string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "# Message pipeline: maildir on disk end to end, and sessions in DATA\n\n")
	fmt.Fprintf(&b, "Written by `go run ./bench/matrix -pipeline` (see [README.md](README.md#the-message-pipeline-cells--pipeline)); raw numbers, every run: [%s](%s).\n\n", jsonName, jsonName)
	keys := slices.Sorted(maps.Keys(r.Env))
	var env []string
	for _, k := range keys {
		env = append(env, fmt.Sprintf("%s: %s", k, r.Env[k]))
	}
	fmt.Fprintf(&b, "%s. Placement `%s`: %s. %d runs per cell of %.1f s of load each (the median is shown); %.1f min in all.\n\n",
		strings.Join(env, "; "), r.Placement, r.Where, r.Runs, r.RunSeconds, r.Minutes)

	if len(r.Results) > 0 {
		b.WriteString("## Maildir on disk, end to end\n\n")
		b.WriteString("`bench/load` with PIPELINING, 10 KiB messages, 20 sessions. **msgs/s** counts a message once it is a file in `new/` of every Maildir of the server: from the generator's start until the last accepted message is there (for Postfix the 250 only means queued). **250s/s** is the rate of 250 replies the generator saw. **CPU** is user + system time of every process of the server (Postfix: master and all its children, reaped ones included) per message. **written** is `write_bytes` of the server's processes per message: bytes of page cache dirtied for storage, page-granular (file data; the file system's journal and inode writes, done by kernel threads, are mostly not in it); logs go to /dev/shm and are not counted.\n\n")
		for _, c := range pipelineCells() {
			fmt.Fprintf(&b, "### %s\n\n", c)
			b.WriteString("| server | msgs/s delivered | 250s/s | last in new/ after the generator | CPU µs/msg | written B/msg | processes | notes |\n|---|---:|---:|---:|---:|---:|---:|---|\n")
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
				fmt.Fprintf(&b, "| %s | %.0f | %.0f | %.2f s | %.0f | %.0f | %d | %s |\n", sv.Name,
					medianOf(rs, func(x pipeRun) float64 { return x.Rate }),
					medianOf(rs, func(x pipeRun) float64 { return x.AcceptRate }),
					medianOf(rs, func(x pipeRun) float64 { return x.DrainS }),
					medianOf(rs, func(x pipeRun) float64 { return x.ServerCPU }),
					medianOf(rs, func(x pipeRun) float64 { return x.WriteBytes }),
					rs[len(rs)-1].Procs, strings.Join(notes, "; "))
			}
			b.WriteString("\n")
			if r.has("caddy-maildir") && r.has("postfix-virtual") {
				if x, ok := r.ratio("caddy-maildir", "postfix-virtual", c, func(x pipeRun) float64 { return x.Rate }); ok {
					met := "met"
					if x < 3 {
						met = "**not met**"
					}
					fmt.Fprintf(&b, "- caddy-maildir / postfix-virtual, msgs/s delivered: **%.2fx** (target ≥ 3x: %s)\n", x, met)
				}
				if x, ok := r.ratio("caddy-maildir", "postfix-virtual", c, func(x pipeRun) float64 { return x.ServerCPU }); ok {
					fmt.Fprintf(&b, "- CPU per message, caddy-maildir / postfix-virtual: %.2fx\n", x)
				}
			}
			if r.has("caddy-maildir") && r.has("caddy-maildir2") {
				one := medianOf(r.pick("caddy-maildir", c), func(x pipeRun) float64 { return x.WriteBytes })
				two := medianOf(r.pick("caddy-maildir2", c), func(x pipeRun) float64 { return x.WriteBytes })
				if one > 0 {
					fmt.Fprintf(&b, "- bytes written per message, two maildirs / one: %.0f / %.0f = %.2fx (a 10 KiB message is %d bytes of page cache, 3 pages)\n", two, one, two/one, 3*4096)
				}
			}
			b.WriteString("\n")
		}
	}
	if len(r.InData) > 0 {
		b.WriteString("## Memory: sessions in DATA at once\n\n")
		b.WriteString("Each session: greeting, EHLO, MAIL, RCPT, DATA answered 354, the first half of a 4 KiB message sent; all held at once, VmRSS read after 3 s; then every session sends the rest and the dot at the same time, each must get 250, and VmHWM (the peak of the server's life) is read. Idle baseline: VmRSS of the fresh server after one delivered message. Per session = (peak - idle) / N; in DATA = (VmRSS held - idle) / N.\n\n")
		b.WriteString("| server | sessions | RSS idle | RSS, all in DATA | peak (VmHWM) | per session (peak) | per session (in DATA) | tmp/ files while held | open fds while held (limit) | 250s | in new/ | set up | finished in | notes |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|\n")
		for _, m := range r.InData {
			note := m.Error
			if len(m.ErrorKinds) > 0 {
				k, _ := json.Marshal(m.ErrorKinds)
				note = strings.TrimSpace(note + " " + string(k))
			}
			fmt.Fprintf(&b, "| %s | %d | %s | %s | %s | %.1f KiB | %.1f KiB | %d | %d (%d) | %d | %d | %.1f s | %.1f s | %s |\n", m.Server, m.Sessions,
				kib(m.BaseKiB), kib(m.InDataKiB), kib(m.HWMKiB), m.PerSession/1024, m.InDataPer/1024, m.TmpFiles, m.FDs, m.FDLimit, m.Accepted, m.Delivered, m.OpenS, m.FinishS, note)
		}
		b.WriteString("\n")
	}
	b.WriteString("## The servers\n\n| name | what |\n|---|---|\n")
	for _, sv := range r.Servers {
		fmt.Fprintf(&b, "| `%s` | %s |\n", sv.Name, sv.What)
	}
	return b.String()
}

// pipeline runs the pipeline cells and writes their report.
func (h *harness) pipeline(defs []*serverDef, place placement, doThroughput, doMem bool, sessions []int, mdPath, jsonPath string, where string) error {
	started := time.Now()
	h.setPlacement(place)
	rep := &pipeReport{Env: h.environment(), Runs: h.runs, RunSeconds: h.dur.Seconds(), Placement: h.cpu.place, Where: where}
	for _, d := range defs {
		rep.Servers = append(rep.Servers, serverInfo{Name: d.Name, What: d.What, Ours: d.Ours, Peer: d.Peer})
	}
	if doThroughput {
		rep.Results = h.pipelineThroughput(defs)
	}
	if doMem {
		for _, d := range defs {
			if d.Name == "caddy-maildir" {
				for _, n := range sessions {
					rep.InData = append(rep.InData, h.measureInData(d, n, 4096))
				}
			}
		}
	}
	rep.Minutes = time.Since(started).Minutes()
	if err := rep.write(mdPath, jsonPath); err != nil {
		return err
	}
	log.Printf("wrote %s and %s in %.1f min", mdPath, jsonPath, rep.Minutes)
	return nil
}
