package main

// The "inbound MX with authentication" cell (go run ./bench/matrix -auth):
// issue 13's target, caddy-esmtp with spf, dkim and dmarc into a Maildir on
// disk at ≥ 3x the messages per second of Postfix with policyd-spf,
// OpenDKIM and OpenDMARC into a Maildir, with the same DKIM-signed 10 KiB
// messages and the same local authoritative DNS server for both.

import (
	"bytes"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"fmt"
	"log"
	"maps"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/caddy-esmtp/caddy-esmtp/bench/internal/loadgen"
	"github.com/emersion/go-msgauth/dkim"
	"github.com/miekg/dns"
)

const (
	authDomain   = "example.com" // From: and MAIL FROM domain (RFC 2606, served only by the harness's DNS)
	authSelector = "bench"
	authFrom     = "bench@" + authDomain
	authDNSAddr  = "127.0.0.1:53"
	authServID   = "postfix.example.test"
	authMsgSize  = 10 << 10
)

// authServers are the servers of the -auth cell.
func authServers() []*serverDef {
	return []*serverDef{
		{Name: "caddy-auth", Ours: true, logTmpfs: true, start: startCaddy("auth", ""),
			What: "caddy-esmtp in Caddy, `esmtp { resolvers 127.0.0.1:53  spf  dkim  dmarc  maildir <dir> }`, Maildir on disk, Caddy's default logging (to /dev/shm)"},
		{Name: "postfix-auth", Peer: true, logTmpfs: true, start: startPostfixAuth, stopHook: stopPostfixAuth,
			What: "the `-pipeline` Postfix instance (smtpd -> cleanup -> qmgr -> virtual into a Maildir on disk) plus policyd-spf (spawn, `check_policy_service`), OpenDKIM (Mode v) and OpenDMARC (RejectFailures) as smtpd_milters, all in a mount namespace whose /etc/resolv.conf is `nameserver 127.0.0.1`"},
	}
}

// --- the DNS server ---

// authDNS is a tiny authoritative DNS server for the cell's records.
type authDNS struct {
	txt     map[string][]string
	ptr     map[string]string
	a       map[string]net.IP
	queries atomic.Int64
	servers []*dns.Server
}

func newAuthDNS(pub *rsa.PublicKey) (*authDNS, error) {
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		return nil, err
	}
	key := "v=DKIM1; k=rsa; p=" + base64.StdEncoding.EncodeToString(der)
	var chunks []string // a TXT string is at most 255 bytes
	for len(key) > 255 {
		chunks, key = append(chunks, key[:255]), key[255:]
	}
	chunks = append(chunks, key)
	return &authDNS{
		txt: map[string][]string{
			authDomain + ".": {"v=spf1 ip4:127.0.0.1 -all"},
			authSelector + "._domainkey." + authDomain + ".": chunks,
			"_dmarc." + authDomain + ".":                     {"v=DMARC1; p=reject"},
		},
		ptr: map[string]string{"1.0.0.127.in-addr.arpa.": "mx-out." + authDomain + "."},
		a:   map[string]net.IP{"mx-out." + authDomain + ".": net.IPv4(127, 0, 0, 1)},
	}, nil
}

func (d *authDNS) ServeDNS(w dns.ResponseWriter, req *dns.Msg) {
	d.queries.Add(1)
	m := new(dns.Msg)
	m.SetReply(req)
	m.Authoritative = true
	// Unbound (OpenDKIM's resolver) forwards with RD set and wants RA back.
	m.RecursionAvailable = true
	if len(req.Question) != 1 {
		m.Rcode = dns.RcodeFormatError
		w.WriteMsg(m)
		return
	}
	q := req.Question[0]
	name := strings.ToLower(q.Name)
	hdr := dns.RR_Header{Name: q.Name, Class: dns.ClassINET, Ttl: 300}
	known := false
	if t, ok := d.txt[name]; ok {
		known = true
		if q.Qtype == dns.TypeTXT || q.Qtype == dns.TypeANY {
			hdr.Rrtype = dns.TypeTXT
			m.Answer = append(m.Answer, &dns.TXT{Hdr: hdr, Txt: t})
		}
	}
	if p, ok := d.ptr[name]; ok {
		known = true
		if q.Qtype == dns.TypePTR {
			hdr.Rrtype = dns.TypePTR
			m.Answer = append(m.Answer, &dns.PTR{Hdr: hdr, Ptr: p})
		}
	}
	if ip, ok := d.a[name]; ok {
		known = true
		if q.Qtype == dns.TypeA {
			hdr.Rrtype = dns.TypeA
			m.Answer = append(m.Answer, &dns.A{Hdr: hdr, A: ip})
		}
	}
	if !known {
		m.Rcode = dns.RcodeNameError
	}
	if len(m.Answer) == 0 && strings.HasSuffix("."+name, "."+authDomain+".") {
		// NODATA / NXDOMAIN: the zone's SOA for negative caching.
		m.Ns = []dns.RR{&dns.SOA{Hdr: dns.RR_Header{Name: authDomain + ".", Rrtype: dns.TypeSOA, Class: dns.ClassINET, Ttl: 300},
			Ns: "ns." + authDomain + ".", Mbox: "hostmaster." + authDomain + ".", Serial: 1, Refresh: 3600, Retry: 600, Expire: 86400, Minttl: 300}}
	}
	w.WriteMsg(m)
}

// start serves UDP and TCP on addr; both must bind.
func (d *authDNS) start(addr string) error {
	for _, netw := range []string{"udp", "tcp"} {
		ready := make(chan error, 1)
		srv := &dns.Server{Addr: addr, Net: netw, Handler: d, NotifyStartedFunc: func() { ready <- nil }}
		go func() {
			if err := srv.ListenAndServe(); err != nil {
				select {
				case ready <- err:
				default:
				}
			}
		}()
		select {
		case err := <-ready:
			if err != nil {
				d.stop()
				return fmt.Errorf("DNS on %s/%s: %v", addr, netw, err)
			}
		case <-time.After(5 * time.Second):
			d.stop()
			return fmt.Errorf("DNS on %s/%s: did not start", addr, netw)
		}
		d.servers = append(d.servers, srv)
	}
	return nil
}

func (d *authDNS) stop() {
	for _, s := range d.servers {
		s.Shutdown()
	}
	d.servers = nil
}

// --- the message ---

// signedMessage is loadgen's message from authFrom, DKIM-signed (relaxed/
// relaxed, rsa-sha256, go-msgauth's default header fields), authMsgSize
// bytes in all with the signature.
func signedMessage(key *rsa.PrivateKey) ([]byte, error) {
	sign := func(size int64) ([]byte, error) {
		m := loadgen.NewMessage(size, authFrom, "sink@example.test")
		var out bytes.Buffer
		err := dkim.Sign(&out, bytes.NewReader(m.Bytes()), &dkim.SignOptions{
			Domain: authDomain, Selector: authSelector, Signer: key,
			HeaderCanonicalization: dkim.CanonicalizationRelaxed, BodyCanonicalization: dkim.CanonicalizationRelaxed,
		})
		return out.Bytes(), err
	}
	b, err := sign(authMsgSize)
	if err != nil {
		return nil, err
	}
	sig := len(b) - authMsgSize
	if b, err = sign(int64(authMsgSize - sig)); err != nil {
		return nil, err
	}
	if _, err := loadgen.MessageFromBytes(b); err != nil {
		return nil, err
	}
	return b, nil
}

// --- Postfix with policyd-spf, OpenDKIM, OpenDMARC ---

var authBins = []string{"/usr/sbin/opendkim", "/usr/sbin/opendmarc", "/usr/bin/policyd-spf", "/usr/bin/unshare", "/usr/bin/mount"}

// authToolsMissing says whether a program of the Postfix side is missing.
func authToolsMissing() bool {
	return slices.ContainsFunc(authBins, func(b string) bool { _, err := os.Stat(b); return err != nil })
}

func startPostfixAuth(h *harness, s *server) (*exec.Cmd, error) {
	for _, b := range authBins {
		if _, err := os.Stat(b); err != nil {
			return nil, fmt.Errorf("%s missing (bench/setup.sh installs opendkim, opendmarc, postfix-policyd-spf-python)", b)
		}
	}
	if _, err := startPostfix(h, s); err != nil {
		return nil, err
	}
	conf := s.postfixConf
	dkimAddr, err := freePort()
	if err != nil {
		return nil, err
	}
	dmarcAddr, err := freePort()
	if err != nil {
		return nil, err
	}
	port := func(a string) string { _, p, _ := net.SplitHostPort(a); return p }
	files := map[string]string{
		// Both filters skip 127.0.0.1 by default (InternalHosts: sign
		// instead of verify; IgnoreHosts: no DMARC): name another host.
		"internal-hosts": "192.0.2.1\n",
		"resolv.conf":    "nameserver 127.0.0.1\noptions timeout:2 attempts:2\n",
		"opendkim.conf": `# Written by bench/matrix for the postfix-auth cell.
Syslog no
Background no
UserID opendkim:opendkim
Mode v
Socket inet:` + port(dkimAddr) + `@127.0.0.1
Nameservers 127.0.0.1
AuthservID ` + authServID + `
InternalHosts ` + filepath.Join(conf, "internal-hosts") + `
ExternalIgnoreList ` + filepath.Join(conf, "internal-hosts") + `
UMask 022
`,
		"opendmarc.conf": `# Written by bench/matrix for the postfix-auth cell.
Syslog false
Background false
UserID opendmarc:opendmarc
Socket inet:` + port(dmarcAddr) + `@127.0.0.1
AuthservID ` + authServID + `
TrustedAuthservIDs ` + authServID + `
IgnoreHosts ` + filepath.Join(conf, "internal-hosts") + `
PublicSuffixList /usr/share/publicsuffix/public_suffix_list.dat
RejectFailures true
SPFIgnoreResults false
SPFSelfValidate false
FailureReports false
`,
		"policyd-spf.conf": `# Written by bench/matrix for the postfix-auth cell.
debugLevel = 0
TestOnly = 1
HELO_reject = No_Check
Mail_From_reject = Fail
PermError_reject = False
TempError_Defer = False
skip_addresses = 192.0.2.1/32
Authserv_Id = ` + authServID + `
`,
	}
	for name, body := range files {
		if err := os.WriteFile(filepath.Join(conf, name), []byte(body), 0o644); err != nil {
			return nil, err
		}
	}
	mainCF := `
# -auth: SPF by policyd-spf, DKIM by OpenDKIM, DMARC by OpenDMARC.
smtpd_recipient_restrictions = check_policy_service unix:private/policyd-spf, permit
policyd-spf_time_limit = 3600
smtpd_milters = inet:` + dkimAddr + `, inet:` + dmarcAddr + `
non_smtpd_milters =
milter_default_action = tempfail
`
	masterCF := `policyd-spf unix - n n - 0 spawn
  user=policyd-spf argv=/usr/bin/policyd-spf ` + filepath.Join(conf, "policyd-spf.conf") + `
`
	for name, add := range map[string]string{"main.cf": mainCF, "master.cf": masterCF} {
		f, err := os.OpenFile(filepath.Join(conf, name), os.O_APPEND|os.O_WRONLY, 0)
		if err != nil {
			return nil, err
		}
		_, err = f.WriteString(add)
		f.Close()
		if err != nil {
			return nil, err
		}
	}
	// One mount namespace for the whole instance: its own /etc/resolv.conf
	// (the system's is not touched), the milters as children of the shell
	// that then becomes postfix-script, so every process is under the PID
	// the harness reads CPU time from.
	script := `mount --bind "$1/resolv.conf" /etc/resolv.conf || exit 1
/usr/sbin/opendkim -x "$1/opendkim.conf" &
/usr/sbin/opendmarc -c "$1/opendmarc.conf" &
exec ` + postfixBin + ` -c "$1" start-fg`
	s.milters = []string{dkimAddr, dmarcAddr}
	return exec.Command("/usr/bin/unshare", "-m", "--propagation", "private", "/bin/sh", "-c", script, "sh", conf), nil
}

// stopPostfixAuth stops Postfix, then the milters (found in the process
// tree before Postfix goes, since they are orphaned after).
func stopPostfixAuth(s *server) {
	var pids []int
	for _, p := range treePIDs(s.pid()) {
		if c, _ := os.ReadFile(fmt.Sprintf("/proc/%d/comm", p)); slices.Contains([]string{"opendkim", "opendmarc"}, strings.TrimSpace(string(c))) {
			pids = append(pids, p)
		}
	}
	stopPostfix(s)
	for _, p := range pids {
		syscall.Kill(p, syscall.SIGTERM)
	}
	end := time.Now().Add(5 * time.Second)
	for _, p := range pids {
		for syscall.Kill(p, 0) == nil && time.Now().Before(end) {
			time.Sleep(50 * time.Millisecond)
		}
		syscall.Kill(p, syscall.SIGKILL)
	}
}

// treePIDs is root and every process below it.
func treePIDs(root int) []int {
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
	var out []int
	queue := []int{root}
	for len(queue) > 0 {
		p := queue[0]
		queue = queue[1:]
		out = append(out, p)
		queue = append(queue, children[p]...)
	}
	return out
}

// waitMilters waits until every milter of s accepts connections.
func waitMilters(s *server, timeout time.Duration) error {
	end := time.Now().Add(timeout)
	for _, a := range s.milters {
		for {
			c, err := net.DialTimeout("tcp", a, time.Second)
			if err == nil {
				c.Close()
				break
			}
			if time.Now().After(end) {
				return fmt.Errorf("milter %s: %v", a, err)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	return nil
}

// --- checking that each side really authenticated ---

// authCheck reads one delivered message of s and checks its trace fields.
func authCheck(s *server) (ok bool, note string, fields []string) {
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
	// Unfold, then keep the trace fields.
	unfolded := strings.ReplaceAll(strings.ReplaceAll(string(head), "\n\t", " "), "\n ", " ")
	var ar []string
	for l := range strings.SplitSeq(unfolded, "\n") {
		lo := strings.ToLower(l)
		if strings.HasPrefix(lo, "authentication-results:") || strings.HasPrefix(lo, "received-spf:") {
			fields = append(fields, strings.Join(strings.Fields(l), " "))
			ar = append(ar, lo)
		}
	}
	has := func(prefix, sub string) bool {
		return slices.ContainsFunc(ar, func(l string) bool { return strings.HasPrefix(l, prefix) && strings.Contains(l, sub) })
	}
	var missing []string
	want := [][2]string{{"authentication-results:", "spf=pass"}, {"authentication-results:", "dkim=pass"}, {"authentication-results:", "dmarc=pass"}}
	if s.Name == "postfix-auth" {
		// policyd-spf's Received-SPF, OpenDKIM's and OpenDMARC's A-R.
		want = [][2]string{{"received-spf:", "received-spf: pass"}, {"authentication-results:", "dkim=pass"}, {"authentication-results:", "dmarc=pass"}}
	}
	for _, w := range want {
		if !has(w[0], w[1]) {
			missing = append(missing, w[1])
		}
	}
	if len(missing) > 0 {
		return false, "delivered message lacks " + strings.Join(missing, ", "), fields
	}
	return true, "", fields
}

// --- the cell ---

type authRun struct {
	pipeRun
	// DNSQueries is the queries the harness's DNS server answered during
	// the run, per accepted message.
	DNSQueries float64 `json:"dns_queries_per_msg"`
}

type authServerCheck struct {
	Server string   `json:"server"`
	OK     bool     `json:"ok"`
	Note   string   `json:"note,omitempty"`
	Fields []string `json:"trace_fields"`
}

type authReport struct {
	Env        map[string]string `json:"env"`
	Runs       int               `json:"runs"`
	RunSeconds float64           `json:"run_seconds"`
	Minutes    float64           `json:"minutes"`
	Placement  placement         `json:"placement"`
	Where      string            `json:"placement_means"`
	MsgBytes   int               `json:"message_bytes"`
	Servers    []serverInfo      `json:"servers"`
	Checks     []authServerCheck `json:"checks"`
	Results    []authRun         `json:"results"`
	Error      string            `json:"error,omitempty"`
}

func (h *harness) auth(defs []*serverDef, place placement, mdPath, jsonPath, where string) error {
	started := time.Now()
	h.setPlacement(place)
	rep := &authReport{Env: h.environment(), Runs: h.runs, RunSeconds: h.dur.Seconds(), Placement: h.cpu.place, Where: where}
	for _, d := range defs {
		rep.Servers = append(rep.Servers, serverInfo{Name: d.Name, What: d.What, Ours: d.Ours, Peer: d.Peer})
	}
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		return err
	}
	msg, err := signedMessage(key)
	if err != nil {
		return fmt.Errorf("signing the message: %v", err)
	}
	rep.MsgBytes = len(msg)
	msgFile := filepath.Join(h.work, "signed.eml")
	if err := os.WriteFile(msgFile, msg, 0o644); err != nil {
		return err
	}
	d, err := newAuthDNS(&key.PublicKey)
	if err != nil {
		return err
	}
	if err := d.start(authDNSAddr); err != nil {
		return fmt.Errorf("%v (the cell needs 127.0.0.1:53: OpenDKIM's Nameservers and resolv.conf take no port)", err)
	}
	defer d.stop()

	var servers []*server
	for _, def := range defs {
		s, err := h.startServer(def)
		if err != nil {
			log.Printf("skipped: %v", err)
			rep.Checks = append(rep.Checks, authServerCheck{Server: def.Name, Note: "did not start: " + err.Error()})
			continue
		}
		defer s.stop()
		s.loadExtra = []string{"-message", msgFile, "-from", authFrom}
		if err := waitMilters(s, 15*time.Second); err != nil {
			rep.Checks = append(rep.Checks, authServerCheck{Server: def.Name, Note: err.Error()})
			continue
		}
		servers = append(servers, s)
	}
	var checked []*server
	for _, s := range servers {
		log.Printf("warm-up %s", s.Name)
		r := h.pipeRunOnce(s, cell{Size: authMsgSize, Conns: 20, Reuse: true}, time.Second)
		ok, note, fields := authCheck(s)
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
	var runs []authRun
	for _, c := range pipelineCells() {
		log.Printf("inbound MX with authentication: %s", c)
		for round := range h.runs {
			for i := range checked {
				s := checked[(i+round)%len(checked)]
				q0 := d.queries.Load()
				r := authRun{pipeRun: h.pipeRunOnce(s, c, h.dur)}
				if r.Accepted > 0 {
					r.DNSQueries = float64(d.queries.Load()-q0) / float64(r.Accepted)
				}
				r.Rep = round
				s.clean()
				runs = append(runs, r)
				log.Printf("  %-14s %6.0f msg/s delivered (250s at %6.0f/s, last in new/ %.2fs after), %5.0f µs CPU/msg over %d processes, %.2f DNS queries/msg %s",
					s.Name, r.Rate, r.AcceptRate, r.DrainS, r.ServerCPU, r.Procs, r.DNSQueries, r.Note)
			}
		}
	}
	rep.Results = runs
	rep.Minutes = time.Since(started).Minutes()
	if err := rep.write(mdPath, jsonPath); err != nil {
		return err
	}
	log.Printf("wrote %s and %s in %.1f min", mdPath, jsonPath, rep.Minutes)
	return nil
}

func (r *authReport) write(mdPath, jsonPath string) error {
	return writeReport(mdPath, jsonPath, r, r.markdown)
}

func (r *authReport) pick(server string, c cell) []pipeRun {
	var out []pipeRun
	for _, x := range r.Results {
		if x.Server == server && x.Cell == c {
			out = append(out, x.pipeRun)
		}
	}
	return out
}

func (r *authReport) markdown(jsonName string) string {
	var b strings.Builder
	b.WriteString("# Inbound MX with authentication: SPF, DKIM, DMARC into a Maildir on disk\n\n")
	fmt.Fprintf(&b, "Written by `go run ./bench/matrix -auth` (see [README.md](README.md#inbound-mx-with-authentication--auth)); raw numbers, every run: [%s](%s).\n\n", jsonName, jsonName)
	var env []string
	for _, k := range slices.Sorted(maps.Keys(r.Env)) {
		env = append(env, fmt.Sprintf("%s: %s", k, r.Env[k]))
	}
	fmt.Fprintf(&b, "%s. Placement `%s`: %s. %d runs per cell of %.1f s of load each (the median is shown); %.1f min in all.\n\n",
		strings.Join(env, "; "), r.Placement, r.Where, r.Runs, r.RunSeconds, r.Minutes)
	fmt.Fprintf(&b, "Both servers get the same message: loadgen's message from `%s`, DKIM-signed once by the harness (go-msgauth `dkim.Sign`, rsa-sha256 with an RSA 2048 key generated at start, relaxed/relaxed, d=%s s=%s), %d bytes with the signature, `MAIL FROM:<%s>` from 127.0.0.1; and the same DNS: the harness's authoritative server on %s (SPF `v=spf1 ip4:127.0.0.1 -all`, the DKIM key, `_dmarc` `v=DMARC1; p=reject`). 20 sessions, PIPELINING. **msgs/s** counts a message once it is a file in `new/`; **CPU** is user + system time of every process of the server per message (Postfix: master and all its children, policyd-spf, OpenDKIM and OpenDMARC included); **DNS q/msg** is the queries the harness's DNS server answered per message.\n\n",
		authFrom, authDomain, authSelector, r.MsgBytes, authFrom, authDNSAddr)
	b.WriteString("## Did each side really check?\n\nOne delivered message of each server after its warm-up, its trace fields (a server that fails this is not measured):\n\n")
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
		b.WriteString("| server | msgs/s delivered | 250s/s | last in new/ after the generator | CPU µs/msg | written B/msg | DNS q/msg | processes | notes |\n|---|---:|---:|---:|---:|---:|---:|---:|---|\n")
		for _, sv := range r.Servers {
			rs := r.pick(sv.Name, c)
			if len(rs) == 0 {
				continue
			}
			var notes []string
			var qs []float64
			for _, x := range r.Results {
				if x.Server == sv.Name && x.Cell == c {
					qs = append(qs, x.DNSQueries)
					if x.Note != "" {
						notes = append(notes, x.Note)
					}
				}
			}
			fmt.Fprintf(&b, "| %s | %.0f | %.0f | %.2f s | %.0f | %.0f | %.2f | %d | %s |\n", sv.Name,
				medianOf(rs, func(x pipeRun) float64 { return x.Rate }),
				medianOf(rs, func(x pipeRun) float64 { return x.AcceptRate }),
				medianOf(rs, func(x pipeRun) float64 { return x.DrainS }),
				medianOf(rs, func(x pipeRun) float64 { return x.ServerCPU }),
				medianOf(rs, func(x pipeRun) float64 { return x.WriteBytes }),
				median(qs), rs[len(rs)-1].Procs, strings.Join(notes, "; "))
		}
		b.WriteString("\n")
		pr := &pipeReport{}
		for _, x := range r.Results {
			pr.Results = append(pr.Results, x.pipeRun)
		}
		if x, ok := pr.ratio("caddy-auth", "postfix-auth", c, func(x pipeRun) float64 { return x.Rate }); ok {
			met := "met"
			if x < 3 {
				met = "**not met**"
			}
			fmt.Fprintf(&b, "- caddy-auth / postfix-auth, msgs/s delivered: **%.2fx** (issue 13's target ≥ 3x: %s)\n", x, met)
		}
		if x, ok := pr.ratio("caddy-auth", "postfix-auth", c, func(x pipeRun) float64 { return x.ServerCPU }); ok {
			fmt.Fprintf(&b, "- server CPU per message, caddy-auth / postfix-auth: %.2fx\n", x)
		}
		b.WriteString("\n")
	}
	b.WriteString("## The servers\n\n| name | what |\n|---|---|\n")
	for _, sv := range r.Servers {
		fmt.Fprintf(&b, "| `%s` | %s |\n", sv.Name, sv.What)
	}
	return b.String()
}
