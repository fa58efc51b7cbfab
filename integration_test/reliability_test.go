package integration_test

import (
	"bytes"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// loadReloadConfig is configuration number i of the reload test: the
// hostname, greeting and limits change, the Maildir stays.
func loadReloadConfig(adminPort, smtpPort, i int, maildir string) []byte {
	return []byte(fmt.Sprintf(`{
		"admin": {"listen": "127.0.0.1:%d", "config": {"persist": false}},
		"apps": {"layer4": {"servers": {"smtp": {
			"listen": ["127.0.0.1:%d"],
			"routes": [{"handle": [{
				"handler": "esmtp",
				"hostname": "r%d.example.test",
				"greeting": "configuration %d",
				"max_recipients": %d,
				"max_message_size": %d,
				"handlers": [{"handler": "maildir", "path": %q}]
			}]}]
		}}}}
	}`, adminPort, smtpPort, i, i, 10+i, 4<<20+i, maildir))
}

// TestReloadUnderLoad changes the configuration ten times through the admin
// API (POST /load) and once with `caddy reload` while 8 clients send mail.
// Every message gets 250 or a 4xx (a client retries a 4xx; a session of a
// replaced configuration is closed with 421 4.3.2 between transactions),
// never a 5xx; no connection is cut inside a transaction; every 250 is in
// the Maildir, once, byte for byte.
func TestReloadUnderLoad(t *testing.T) {
	bin := caddyBinary(t) // for `caddy reload`
	seed := uint64(time.Now().UnixNano())
	t.Logf("seed %d", seed)
	adminPort, smtpPort := freePort(t), freePort(t)
	maildir := filepath.Join(t.TempDir(), "mail")
	load(t, loadReloadConfig(adminPort, smtpPort, 0, maildir))
	addr := fmt.Sprintf("127.0.0.1:%d", smtpPort)
	waitListening(t, addr)

	l := newLedger()
	var stop atomic.Bool
	var wg sync.WaitGroup
	var errMu sync.Mutex
	var clientErrs []error
	fail := func(err error) {
		errMu.Lock()
		clientErrs = append(clientErrs, err)
		errMu.Unlock()
	}
	var sessions atomic.Int64
	t.Cleanup(func() { stop.Store(true); wg.Wait() }) // before Caddy stops, also on failure
	for c := range 8 {
		rng := rand.New(rand.NewPCG(seed, uint64(c)))
		wg.Add(1)
		go func() {
			defer wg.Done()
			var pending *loadMsg
			n := 0
			for !stop.Load() {
				sc, err := dialSMTP(addr, "reload.client.test")
				var re *replyError
				switch {
				case errors.Is(err, errNoGreeting):
					// A connection the old listener had queued but not
					// accepted when it closed: no session began.
					kind := "EOF"
					if errors.Is(err, syscall.ECONNRESET) {
						kind = "reset"
					}
					l.count("connection closed before the greeting (" + kind + ")")
					time.Sleep(time.Millisecond)
					continue
				case errors.As(err, &re) && re.code/100 == 4:
					l.count("greeting " + replyKind(re.text))
					time.Sleep(time.Millisecond)
					continue
				case err != nil:
					fail(fmt.Errorf("client %d: connect: %w", c, err))
					return
				}
				sessions.Add(1)
				for range 1 + rng.IntN(15) {
					if stop.Load() {
						break
					}
					if pending == nil {
						n++
						m := newLoadMsg(rng, fmt.Sprintf("c%dm%d", c, n))
						pending = &m
					}
					m := *pending
					r := sc.send(m, func() { l.start(m) })
					switch {
					case r.err != nil && (r.inData || r.stage != "MAIL"):
						fail(fmt.Errorf("client %d: message %s: connection cut in a transaction at %s: %v", c, m.id, r.stage, r.err))
						return
					case r.err != nil:
						// Closed between transactions: a drained session's
						// 421 lost to the reset of our pipelined commands.
						l.count("connection closed between transactions")
					case r.code == 250:
						l.ack(m)
						l.count("250")
						pending = nil
						continue
					case r.code/100 == 4:
						l.count(replyKind(r.text))
						if r.code != 421 {
							sc.cmd("RSET")
							continue
						}
					default:
						fail(fmt.Errorf("client %d: message %s: %s answered %s", c, m.id, r.stage, r.text))
						return
					}
					break
				}
				sc.cmd("QUIT")
				sc.c.Close()
			}
		}()
	}

	acked := func() int {
		l.mu.Lock()
		defer l.mu.Unlock()
		return len(l.acked)
	}
	progress := func(what string) {
		t.Helper()
		want := acked() + 25
		waitFor(t, fmt.Sprintf("25 more messages (%s)", what), func() bool {
			errMu.Lock()
			bad := len(clientErrs) > 0
			errMu.Unlock()
			return bad || acked() >= want
		})
	}
	const reloads = 10
	for i := 1; i <= reloads; i++ {
		progress(fmt.Sprintf("before reload %d", i))
		resp, err := http.Post(fmt.Sprintf("http://127.0.0.1:%d/load", adminPort), "application/json",
			bytes.NewReader(loadReloadConfig(adminPort, smtpPort, i, maildir)))
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("POST /load %d: %s", i, resp.Status)
		}
	}
	progress("before caddy reload")
	cfgFile := filepath.Join(t.TempDir(), "caddy.json")
	if err := os.WriteFile(cfgFile, loadReloadConfig(adminPort, smtpPort, reloads+1, maildir), 0o600); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, "reload", "--config", cfgFile, "--address", fmt.Sprintf("127.0.0.1:%d", adminPort))
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("caddy reload: %v\n%s", err, out)
	}
	progress("after caddy reload")
	stop.Store(true)
	wg.Wait()
	for _, err := range clientErrs {
		t.Error(err)
	}

	// The last configuration serves.
	c := dial(t, addr)
	if g := c.expect("220 ")[0]; !strings.Contains(g, fmt.Sprintf("r%d.example.test", reloads+1)) {
		t.Errorf("greeting after the reloads: %q", g)
	}
	c.send("QUIT\r\n")
	c.expect("221 ")

	res := checkMaildir(t, maildir, l)
	for _, b := range res.bad {
		t.Errorf("new/: %s", b)
	}
	lost := 0
	for id := range l.acked {
		if res.found[id] == 0 {
			lost++
			t.Errorf("message %s got 250 but is not in the Maildir", id)
		}
	}
	for id, n := range res.found {
		if _, ok := l.acked[id]; !ok || n > 1 {
			t.Errorf("message %s is in the Maildir %d times, acknowledged: %v", id, n, ok)
		}
	}
	var kinds []string
	for k, n := range l.codes {
		kinds = append(kinds, fmt.Sprintf("%s: %d", k, n))
	}
	sort.Strings(kinds)
	t.Logf("figures: %d reloads (%d POST /load, 1 caddy reload) under load: %d sessions, %d messages acknowledged, "+
		"%d found byte for byte, %d lost; replies and events: %s",
		reloads+1, reloads, sessions.Load(), len(l.acked), len(res.found), lost, strings.Join(kinds, ", "))
}

const stopCaddyfile = `{
	admin 127.0.0.1:%ADMIN%
	persist_config off
	layer4 {
		127.0.0.1:%PORT% {
			route {
				esmtp {
					hostname stop.example.test
					grace_period %GRACE%
					maildir %MAIL%
				}
			}
		}
	}
}
`

// TestGracefulStop stops a real Caddy process with `caddy stop` while one
// session is in the middle of DATA, one has a transaction open before DATA,
// one is idle and one is in DATA and will hang up: the idle one gets
// 421 4.3.2 at once, the two transactions finish after the stop (250, then
// 421 4.3.2), the hung-up one delivers nothing, and Caddy exits cleanly.
func TestGracefulStop(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	maildir := filepath.Join(dir, "mail")
	adminPort, port := freePort(t), freePort(t)
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	config := processCaddyfile(t, dir, strings.ReplaceAll(stopCaddyfile, "%GRACE%", "5m"), adminPort, port, maildir)
	proc := startCaddyProc(t, config, filepath.Join(dir, "caddy.log"), addr)

	rng := rand.New(rand.NewPCG(1, 2))
	msgA, msgC := sizedLoadMsg(rng, "in-data", 20<<10), sizedLoadMsg(rng, "before-data", 2000)
	msgD := sizedLoadMsg(rng, "hangs-up", 100<<10)
	a, c, d, idle := dial(t, addr), dial(t, addr), dial(t, addr), dial(t, addr)
	for _, s := range []*conn{a, c, d, idle} {
		s.expect("220 ")
		s.send("EHLO stop.client.test\r\n")
		s.expect("250 ")
	}
	open := func(s *conn) {
		s.send("MAIL FROM:<a@client.test>\r\n")
		s.expect("250 ")
		s.send("RCPT TO:<b@example.test>\r\n")
		s.expect("250 ")
	}
	open(a)
	open(c)
	open(d)
	a.send("DATA\r\n")
	a.expect("354 ")
	wireA := string(dotStuff(msgA.data))
	a.send(wireA[:len(wireA)/2])
	d.send("DATA\r\n")
	d.expect("354 ")
	wireD := dotStuff(msgD.data)
	d.send(string(wireD[:80<<10])) // in DATA: spooled by the engine, nothing in the Maildir yet

	stopped := make(chan []byte, 1)
	bin := caddyBinary(t)
	go func() {
		out, _ := exec.Command(bin, "stop", "--address", fmt.Sprintf("127.0.0.1:%d", adminPort)).CombinedOutput()
		stopped <- out
	}()

	idle.expect("421 4.3.2")
	expectEOF(t, idle)
	// The listener is closed: a new client gets no session.
	if late, err := dialSMTP(addr, "late.client.test"); err == nil {
		late.c.Close()
		t.Errorf("a client connecting after the stop got a session")
	}

	a.send(wireA[len(wireA)/2:])
	a.expect("250 2.0.0")
	a.expect("421 4.3.2")
	expectEOF(t, a)

	c.send("DATA\r\n")
	c.expect("354 ")
	c.send(string(dotStuff(msgC.data)))
	c.expect("250 2.0.0")
	c.expect("421 4.3.2")
	expectEOF(t, c)

	d.c.Close() // hangs up mid-DATA: the last session ends, Caddy exits
	if err := proc.wait(); err != nil {
		t.Errorf("caddy exit: %v\n%s", err, proc.logTail())
	}
	t.Logf("caddy stop: %s", strings.TrimSpace(string(<-stopped)))

	l := newLedger()
	l.start(msgA)
	l.start(msgC)
	l.start(msgD)
	res := checkMaildir(t, maildir, l)
	for _, b := range res.bad {
		t.Errorf("new/: %s", b)
	}
	if res.found["in-data"] != 1 || res.found["before-data"] != 1 || res.found["hangs-up"] != 0 || res.delivered != 2 {
		t.Errorf("new/ holds %v (%d files), want in-data and before-data once", res.found, res.delivered)
	}
	if left := tmpFiles(t, maildir); len(left) > 0 {
		t.Errorf("tmp/ holds %q after the stop", left)
	}
}

// TestStopGraceEnds: a session stuck in DATA when Caddy gets SIGTERM is
// closed with 421 4.3.2 once grace_period is over; nothing is delivered
// and Caddy exits cleanly.
func TestStopGraceEnds(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	maildir := filepath.Join(dir, "mail")
	adminPort, port := freePort(t), freePort(t)
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	config := processCaddyfile(t, dir, strings.ReplaceAll(stopCaddyfile, "%GRACE%", "1s"), adminPort, port, maildir)
	proc := startCaddyProc(t, config, filepath.Join(dir, "caddy.log"), addr)

	s := dial(t, addr)
	s.expect("220 ")
	s.send("EHLO stuck.client.test\r\nMAIL FROM:<a@client.test>\r\nRCPT TO:<b@example.test>\r\nDATA\r\n")
	s.expect("250 ")
	s.expect("250 ")
	s.expect("250 ")
	s.expect("354 ")
	s.send("Subject: never finished\r\n\r\n" + strings.Repeat("a line of the body\r\n", 5000))
	proc.cmd.Process.Signal(syscall.SIGTERM)
	s.expect("421 4.3.2")
	expectEOF(t, s)
	if err := proc.wait(); err != nil {
		t.Errorf("caddy exit: %v\n%s", err, proc.logTail())
	}
	entries, _ := os.ReadDir(filepath.Join(maildir, "new"))
	if left := tmpFiles(t, maildir); len(entries) > 0 || len(left) > 0 {
		t.Errorf("after the stop new/ holds %d files, tmp/ %q; want nothing", len(entries), left)
	}
}

// replyKind is the code and enhanced code of a reply line ("421 4.3.2").
func replyKind(text string) string {
	if f := strings.Fields(text); len(f) >= 2 {
		return f[0] + " " + f[1]
	}
	return text
}

// expectEOF checks that the server closes the connection with nothing more.
func expectEOF(t *testing.T, c *conn) {
	t.Helper()
	if l, err := c.r.ReadString('\n'); err == nil || l != "" {
		t.Fatalf("got %q (%v), want the connection closed", l, err)
	}
}

// mountOrSkip runs mount(8) with args; when that is impossible (not root,
// no mount in a container) the test is skipped, or fails under
// ESMTP_REQUIRE_CLIENTS=1 as CI runs. A new mount (not a remount) is
// undone when the test ends.
func mountOrSkip(t *testing.T, target string, args ...string) {
	t.Helper()
	out, err := exec.Command("mount", append(args, target)...).CombinedOutput()
	if err != nil {
		msg := fmt.Sprintf("cannot mount (%v: %s): this test needs root and mount(8)", err, bytes.TrimSpace(out))
		if os.Getenv("ESMTP_REQUIRE_CLIENTS") == "1" {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
	if slices.ContainsFunc(args, func(a string) bool { return strings.HasPrefix(a, "remount") }) {
		return
	}
	t.Cleanup(func() {
		if out, err := exec.Command("umount", target).CombinedOutput(); err != nil {
			t.Errorf("umount %s: %v: %s", target, err, out)
		}
	})
}

const storeCaddyfile = `{
	admin off
	persist_config off
	layer4 {
		127.0.0.1:%PORT% {
			route {
				esmtp {
					hostname store.example.test
					maildir %MAIL%
				}
			}
		}
		127.0.0.1:%ROPORT% {
			route {
				esmtp {
					hostname store.example.test
					maildir %RO%
				}
			}
		}
	}
}
`

// TestFailingStore: a Maildir on a full file system (a 64 KiB tmpfs) or a
// read-only one answers 451, never 250, leaves no file behind, and the
// server goes on serving: once there is room, mail is accepted again.
func TestFailingStore(t *testing.T) {
	base := t.TempDir()
	small := filepath.Join(base, "small")
	roSrc, ro := filepath.Join(base, "ro-src"), filepath.Join(base, "ro")
	for _, d := range []string{small, ro, filepath.Join(roSrc, "mail", "tmp"), filepath.Join(roSrc, "mail", "new"),
		filepath.Join(roSrc, "mail", "cur")} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			t.Fatal(err)
		}
	}
	mountOrSkip(t, small, "-t", "tmpfs", "-o", "size=64k", "tmpfs")
	mountOrSkip(t, ro, "--bind", roSrc)
	mountOrSkip(t, ro, "-o", "remount,ro,bind")
	if err := os.WriteFile(filepath.Join(ro, "probe"), nil, 0o600); err == nil {
		t.Fatal("the read-only bind mount is writable")
	}

	maildir := filepath.Join(small, "mail")
	port, roPort := freePort(t), freePort(t)
	cf := strings.NewReplacer("%PORT%", fmt.Sprint(port), "%ROPORT%", fmt.Sprint(roPort), "%MAIL%", maildir,
		"%RO%", filepath.Join(ro, "mail")).Replace(storeCaddyfile)
	load(t, adapt(t, cf))
	addr, roAddr := fmt.Sprintf("127.0.0.1:%d", port), fmt.Sprintf("127.0.0.1:%d", roPort)
	waitListening(t, addr)

	rng := rand.New(rand.NewPCG(3, 4))
	big, smallMsg := sizedLoadMsg(rng, "too-big", 200<<10), sizedLoadMsg(rng, "small-1", 1000)
	l := newLedger()
	sc, err := dialSMTP(addr, "store.client.test")
	if err != nil {
		t.Fatal(err)
	}
	defer sc.c.Close()
	send := func(sc *smtpClient, m loadMsg, want ...int) {
		t.Helper()
		r := sc.send(m, func() { l.start(m) })
		if r.err != nil {
			t.Fatalf("%s: %s: %v", m.id, r.stage, r.err)
		}
		for _, w := range want {
			if r.code == w {
				if r.code == 250 {
					l.ack(m)
				}
				return
			}
		}
		t.Fatalf("%s: %s answered %s, want %v", m.id, r.stage, r.text, want)
	}

	// A message larger than the file system.
	send(sc, big, 451, 452)
	if left := tmpFiles(t, maildir); len(left) > 0 {
		t.Errorf("the failed delivery left %q in tmp/", left)
	}
	// The failed delivery freed its space: a small message fits.
	send(sc, smallMsg, 250)

	// Fill what is left, then free it.
	filler := filepath.Join(small, "filler")
	fillUp(t, filler)
	m2 := sizedLoadMsg(rng, "small-2", 1000)
	send(sc, m2, 451, 452)
	if code, text, err := sc.cmd("NOOP"); err != nil || code != 250 {
		t.Fatalf("NOOP after a failed delivery: %d %s %v", code, text, err)
	}
	os.Remove(filler)
	m3 := sizedLoadMsg(rng, "small-3", 1000)
	send(sc, m3, 250)
	sc.cmd("QUIT")

	// A read-only Maildir.
	roc, err := dialSMTP(roAddr, "store.client.test")
	if err != nil {
		t.Fatal(err)
	}
	defer roc.c.Close()
	send(roc, sizedLoadMsg(rng, "read-only", 1000), 451, 452)
	if code, _, err := roc.cmd("NOOP"); err != nil || code != 250 {
		t.Fatalf("NOOP after a failed delivery: %d %v", code, err)
	}

	res := checkMaildir(t, maildir, l)
	for _, b := range res.bad {
		t.Errorf("new/: %s", b)
	}
	if res.delivered != 2 || res.found["small-1"] != 1 || res.found["small-3"] != 1 {
		t.Errorf("new/ holds %v, want small-1 and small-3", res.found)
	}
	if left := tmpFiles(t, maildir); len(left) > 0 {
		t.Errorf("tmp/ holds %q", left)
	}
	// The server still serves on the full-disk listener.
	final, err := dialSMTP(addr, "store.client.test")
	if err != nil {
		t.Fatal(err)
	}
	final.cmd("QUIT")
	final.c.Close()
}

// fillUp writes path until the file system is full.
func fillUp(t *testing.T, path string) {
	t.Helper()
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	buf := make([]byte, 4096)
	for {
		if _, err := f.Write(buf); err != nil {
			if !errors.Is(err, syscall.ENOSPC) {
				t.Fatalf("filling the file system: %v", err)
			}
			return
		}
	}
}
