package integration_test

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

const crashCaddyfile = `{
	admin off
	persist_config off
	layer4 {
		127.0.0.1:%PORT% {
			route {
				esmtp {
					hostname crash.example.test
					max_message_size 4MiB
					handler_timeout 10m
					spool_dir %MAIL%-spool
					@held rcpt straggler@example.test
					example_judge
					maildir %MAIL%
					maildir %MAIL%-copy
					exec @held %HOLD% {
						timeout 10m
					}
				}
			}
		}
	}
}
`

// holdScript is a command for exec that holds a delivery open until
// Caddy is gone: it reads the message, then writes to its standard error
// (which Caddy reads) until that fails.
const holdScript = `#!/bin/sh
cat >/dev/null
while echo holding >&2; do
	sleep 0.1
done
exit 75
`

// crashKillPoints is how many times Caddy is killed during the load.
const crashKillPoints = 3

// TestCrashNothingAcknowledgedIsLost runs the real Caddy binary with a
// judge and two Maildirs in its list, sends mail from 8 parallel clients,
// and kills Caddy with SIGKILL at a random moment (after a random number of
// 250s, with the clients anywhere in their transactions, one client known
// to be in the middle of DATA with a message big enough to be spooled to a
// file, and one message prepared in tmp/ and held there by a third
// delivery), then starts it again; three times, then a last round ends
// with a graceful stop. Then: every message that got a 250 is in both
// Maildirs' new/ byte for byte (with the judge's field), every file in
// new/ is a complete message that was sent, the spool directory never
// shows a file (spool files are unlinked at once), and the tmp/ files each
// kill left were removed when Caddy started again.
func TestCrashNothingAcknowledgedIsLost(t *testing.T) {
	t.Parallel()
	seed := uint64(time.Now().UnixNano())
	t.Logf("seed %d", seed)
	rng := rand.New(rand.NewPCG(seed, 1))
	dir := t.TempDir()
	maildir := filepath.Join(dir, "mail")
	copyDir, spoolDir := maildir+"-copy", maildir+"-spool"
	if err := os.Mkdir(spoolDir, 0o700); err != nil {
		t.Fatal(err)
	}
	// Where the file system has unnamed files (O_TMPFILE), maildir
	// prepares into those and a kill leaves no name in tmp/; elsewhere
	// it leaves named files that the restart removes.
	unnamed := hasUnnamedFiles(dir)
	t.Logf("unnamed tmp/ files (O_TMPFILE) on this file system: %v", unnamed)
	port := freePort(t)
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	hold := filepath.Join(dir, "hold.sh")
	if err := os.WriteFile(hold, []byte(holdScript), 0o700); err != nil {
		t.Fatal(err)
	}
	config := processCaddyfile(t, dir, strings.ReplaceAll(crashCaddyfile, "%HOLD%", hold), 0, port, maildir)
	logPath := filepath.Join(dir, "caddy.log")

	const clients = 8
	l := newLedger()
	var nextID atomic.Int64
	type killFigures struct {
		leftovers, afterRestart int
	}
	kills := make([]killFigures, crashKillPoints)

	for phase := 0; phase <= crashKillPoints; phase++ {
		proc := startCaddyProc(t, config, logPath, addr)
		if phase > 0 {
			// Caddy serves, so Provision has run; no client has sent yet.
			left := append(tmpFiles(t, maildir), tmpFiles(t, copyDir)...)
			kills[phase-1].afterRestart = len(left)
			if len(left) > 0 {
				t.Errorf("after restart %d tmp/ still holds %q", phase, left)
			}
			l.nextPhase()
		}
		last := phase == crashKillPoints
		target := 150 + rng.IntN(350) // 250s before the kill
		if last {
			target = 150
		}

		var stop atomic.Bool
		var wg sync.WaitGroup
		var errMu sync.Mutex
		var clientErrs []error
		fail := func(err error) {
			errMu.Lock()
			clientErrs = append(clientErrs, err)
			errMu.Unlock()
		}
		failed := func() bool {
			errMu.Lock()
			defer errMu.Unlock()
			return len(clientErrs) > 0
		}
		for c := range clients {
			crng := rand.New(rand.NewPCG(seed, uint64(100*phase+c+2)))
			wg.Add(1)
			go func() {
				defer wg.Done()
				sc, err := dialSMTP(addr, "load.client.test")
				if err != nil {
					fail(fmt.Errorf("client %d: connect: %w", c, err))
					return
				}
				defer sc.c.Close()
				for !stop.Load() {
					m := newLoadMsg(crng, fmt.Sprintf("p%dc%dm%d", phase, c, nextID.Add(1)))
					r := sc.send(m, func() { l.start(m) })
					switch {
					case r.err != nil && stop.Load():
						l.count("connection ended by the kill")
						return
					case r.err != nil:
						fail(fmt.Errorf("client %d: message %s: %s: %w", c, m.id, r.stage, r.err))
						return
					case r.code != 250:
						fail(fmt.Errorf("client %d: message %s: %s answered %s", c, m.id, r.stage, r.text))
						return
					}
					l.ack(m)
				}
				if last {
					sc.cmd("QUIT")
				}
			}()
		}

		if !last {
			// One client stops in the middle of DATA; another sends a
			// whole message to straggler@, which a second delivery (a
			// command that never ends) holds after maildir has
			// prepared it: each kill surely leaves an unfinished
			// delivery in tmp/.
			straggler, err := dialSMTP(addr, "straggler.client.test")
			if err != nil {
				t.Fatal(err)
			}
			defer straggler.c.Close()
			// Past the 1 MiB a message may be spooled in memory: its
			// spool is a file, which the kill cuts.
			if err := straggler.begin(sizedLoadMsg(rng, fmt.Sprintf("in-data%d", phase), 2<<20), 3<<19); err != nil {
				t.Fatalf("straggler: %v", err)
			}
			waitFor(t, "the straggler's spool file", func() bool { return holdsFileIn(proc.cmd.Process.Pid, spoolDir) })
			sid := fmt.Sprintf("straggler%d", phase)
			held, err := dialSMTP(addr, "held.client.test")
			if err != nil {
				t.Fatal(err)
			}
			defer held.c.Close()
			for _, c := range []struct {
				line string
				want int
			}{{"MAIL FROM:<load@client.test>", 250}, {"RCPT TO:<straggler@example.test>", 250}, {"DATA", 354}} {
				if code, text, err := held.cmd(c.line); err != nil || code != c.want {
					t.Fatalf("held message: %s: %d %s %v", c.line, code, text, err)
				}
			}
			if _, err := held.c.Write(dotStuff(sizedLoadMsg(rng, sid, 20<<10).data)); err != nil {
				t.Fatal(err)
			}
			waitFor(t, "the held message's file in tmp/", func() bool {
				// Named, or unnamed and open in the Caddy process.
				return tmpHolds(maildir, sid) || holdsFileIn(proc.cmd.Process.Pid, filepath.Join(maildir, "tmp"))
			})
		}
		waitFor(t, fmt.Sprintf("%d messages in phase %d", target, phase), func() bool {
			return failed() || l.phaseAcked() >= target
		})
		stop.Store(true)
		if last {
			wg.Wait()
			proc.cmd.Process.Signal(os.Interrupt)
			if err := proc.wait(); err != nil {
				t.Errorf("caddy exit after SIGINT: %v", err)
			}
		} else {
			proc.kill9()
			wg.Wait()
			kills[phase].leftovers = len(tmpFiles(t, maildir)) + len(tmpFiles(t, copyDir))
			switch {
			case unnamed && kills[phase].leftovers > 0:
				t.Errorf("kill %d left %d named file(s) in tmp/; prepared deliveries are unnamed files here", phase+1, kills[phase].leftovers)
			case !unnamed && kills[phase].leftovers == 0:
				t.Errorf("kill %d left nothing in tmp/, though a delivery was held after maildir prepared it", phase+1)
			}
			if left, _ := os.ReadDir(spoolDir); len(left) > 0 {
				t.Errorf("kill %d left %d visible file(s) in the spool directory", phase+1, len(left))
			}
		}
		for _, err := range clientErrs {
			t.Errorf("phase %d: %v", phase, err)
		}
		if t.Failed() {
			t.FailNow()
		}
	}

	res := checkMaildir(t, maildir, l)
	for _, b := range res.bad {
		t.Errorf("new/: %s", b)
	}
	copyRes := checkMaildir(t, copyDir, l)
	for _, b := range copyRes.bad {
		t.Errorf("copy's new/: %s", b)
	}
	for id := range l.acked {
		if res.found[id] != copyRes.found[id] {
			t.Errorf("message %s: %d in the first Maildir, %d in the second", id, res.found[id], copyRes.found[id])
		}
	}
	for id := range copyRes.found {
		if res.found[id] == 0 {
			t.Errorf("message %s is only in the second Maildir", id)
		}
	}
	ackedPer := make([]int, crashKillPoints+1)
	foundPer := make([]int, crashKillPoints+1)
	unackedFound := make([]int, crashKillPoints+1)
	lost := 0
	for id, phase := range l.acked {
		ackedPer[phase]++
		switch n := res.found[id]; {
		case n == 0:
			lost++
			if lost <= 10 {
				t.Errorf("message %s got 250 in phase %d but is not in new/", id, phase)
			}
		default:
			foundPer[phase]++
		}
	}
	for id, n := range res.found {
		if n > 1 {
			t.Errorf("message %s is in new/ %d times", id, n)
		}
		if _, ok := l.acked[id]; !ok {
			unackedFound[l.started[id].phase]++
		}
	}
	if lost > 0 {
		t.Errorf("%d acknowledged messages lost", lost)
	}
	for k := range crashKillPoints {
		t.Logf("figures: kill point %d: %d acknowledged, %d of them found byte for byte; %d delivered without "+
			"the 250 reaching the client; %d file(s) left in tmp/ by the kill, %d after the restart",
			k+1, ackedPer[k], foundPer[k], unackedFound[k], kills[k].leftovers, kills[k].afterRestart)
	}
	t.Logf("figures: after the last restart: %d acknowledged, %d found; a graceful stop",
		ackedPer[crashKillPoints], foundPer[crashKillPoints])
	t.Logf("figures: total %d messages started, %d acknowledged, %d files in new/, %d partial or unknown, %d lost",
		len(l.started), len(l.acked), res.delivered, len(res.bad), lost)
}

// tmpHolds reports whether a file in dir/tmp contains s in its first 8 KiB.
func tmpHolds(dir, s string) bool {
	entries, _ := os.ReadDir(filepath.Join(dir, "tmp"))
	for _, e := range entries {
		f, err := os.Open(filepath.Join(dir, "tmp", e.Name()))
		if err != nil {
			continue
		}
		b := make([]byte, 8<<10)
		n, _ := f.Read(b)
		f.Close()
		if bytes.Contains(b[:n], []byte(s)) {
			return true
		}
	}
	return false
}

// holdsFileIn reports whether process pid has a file of dir open (its
// name unlinked or not), as /proc shows it.
func holdsFileIn(pid int, dir string) bool {
	fds, _ := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	for _, fd := range fds {
		target, err := os.Readlink(fmt.Sprintf("/proc/%d/fd/%s", pid, fd.Name()))
		if err == nil && strings.HasPrefix(target, dir+"/") {
			return true
		}
	}
	return false
}
