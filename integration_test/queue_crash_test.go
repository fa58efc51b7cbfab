package integration_test

import (
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

const queueCrashCaddyfile = `{
	admin off
	persist_config off
	layer4 {
		127.0.0.1:%PORT% {
			route {
				esmtp {
					hostname crash.example.test
					handler_timeout 10m
					queue %MAIL%-queue {
						retry_interval 1s
						workers 4
					}
					@held rcpt straggler@example.test
					@rest rcpt rcpt@example.test
					maildir @rest %MAIL%
					exec @held %HOLD% {
						timeout 10m
					}
				}
			}
		}
	}
}
`

// queueCrashKills is how many times Caddy is killed during the load.
const queueCrashKills = 2

// TestQueueCrashNothingAcknowledgedIsLost runs the real Caddy binary with
// a queue in front of a Maildir, sends mail from 8 parallel clients and
// kills Caddy with SIGKILL after a random number of 250s (messages in
// every state: being queued, queued, being delivered, one delivery held
// open by a command that never ends), twice, then starts it once more and
// lets the queue drain. Every message that got a 250 must be in new/
// byte for byte (at least once: a delivery the kill cut may be made
// again, and the figures say how often), every file in new/ must be a
// complete message that was sent, and the held message must still be in
// the queue, not lost.
func TestQueueCrashNothingAcknowledgedIsLost(t *testing.T) {
	t.Parallel()
	seed := uint64(time.Now().UnixNano())
	t.Logf("seed %d", seed)
	rng := rand.New(rand.NewPCG(seed, 7))
	dir := t.TempDir()
	maildir := filepath.Join(dir, "mail")
	qdir := maildir + "-queue"
	port := freePort(t)
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	hold := filepath.Join(dir, "hold.sh")
	if err := os.WriteFile(hold, []byte(holdScript), 0o700); err != nil {
		t.Fatal(err)
	}
	config := processCaddyfile(t, dir, strings.ReplaceAll(queueCrashCaddyfile, "%HOLD%", hold), 0, port, maildir)
	logPath := filepath.Join(dir, "caddy.log")
	l := newLedger()
	var nextID atomic.Int64
	heldIDs := map[string]bool{}

	for phase := 0; phase <= queueCrashKills; phase++ {
		proc := startCaddyProc(t, config, logPath, addr)
		if phase > 0 {
			l.nextPhase()
		}
		last := phase == queueCrashKills
		target := 100 + rng.IntN(300)
		if last {
			target = 100
		}
		var stop atomic.Bool
		var wg sync.WaitGroup
		var errMu sync.Mutex
		var clientErrs []error
		for c := range 8 {
			crng := rand.New(rand.NewPCG(seed, uint64(100*phase+c+2)))
			wg.Add(1)
			go func() {
				defer wg.Done()
				sc, err := dialSMTP(addr, "load.client.test")
				if err != nil {
					errMu.Lock()
					clientErrs = append(clientErrs, fmt.Errorf("client %d: connect: %w", c, err))
					errMu.Unlock()
					return
				}
				defer sc.c.Close()
				for !stop.Load() {
					m := newLoadMsg(crng, fmt.Sprintf("q%dc%dm%d", phase, c, nextID.Add(1)))
					r := sc.send(m, func() { l.start(m) })
					switch {
					case r.err != nil && stop.Load():
						return
					case r.err != nil || r.code != 250:
						errMu.Lock()
						clientErrs = append(clientErrs, fmt.Errorf("client %d: message %s: %s: %d %s %v", c, m.id, r.stage, r.code, r.text, r.err))
						errMu.Unlock()
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
			// A message whose delivery a command holds open: the kill
			// cuts it, and the queue must keep it.
			held, err := dialSMTP(addr, "held.client.test")
			if err != nil {
				t.Fatal(err)
			}
			sid := fmt.Sprintf("held%d", phase)
			m := sizedLoadMsg(rng, sid, 20<<10)
			for _, c := range []struct {
				line string
				want int
			}{{"MAIL FROM:<load@client.test>", 250}, {"RCPT TO:<straggler@example.test>", 250}, {"DATA", 354}} {
				if code, text, err := held.cmd(c.line); err != nil || code != c.want {
					t.Fatalf("held message: %s: %d %s %v", c.line, code, text, err)
				}
			}
			if _, err := held.c.Write(dotStuff(m.data)); err != nil {
				t.Fatal(err)
			}
			if code, text, err := held.reply(); err != nil || code != 250 {
				t.Fatalf("held message: end of data: %d %s %v", code, text, err)
			}
			held.c.Close()
			heldIDs[sid] = true
		}
		waitFor(t, fmt.Sprintf("%d messages in phase %d", target, phase), func() bool {
			errMu.Lock()
			defer errMu.Unlock()
			return len(clientErrs) > 0 || l.phaseAcked() >= target
		})
		stop.Store(true)
		if !last {
			proc.kill9()
			wg.Wait()
		} else {
			wg.Wait()
			// Let the queue drain (the held messages stay), then stop.
			waitFor(t, "the queue to deliver every acknowledged message", func() bool {
				msgs, _ := filepath.Glob(filepath.Join(qdir, "*.msg"))
				return len(msgs) <= len(heldIDs)
			})
			proc.cmd.Process.Signal(os.Interrupt)
			if err := proc.wait(); err != nil {
				t.Errorf("caddy exit after SIGINT: %v", err)
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
	lost, twice := 0, 0
	for id := range l.acked {
		switch n := res.found[id]; {
		case n == 0:
			lost++
			if lost <= 10 {
				t.Errorf("message %s got 250 but is not in new/", id)
			}
		case n > 1:
			twice++
		}
	}
	// The held messages are still queued, whole.
	queued := 0
	msgs, _ := filepath.Glob(filepath.Join(qdir, "*.msg"))
	for _, p := range msgs {
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		for id := range heldIDs {
			if strings.Contains(string(b), "X-Test-Id: "+id+"\r\n") {
				queued++
			}
		}
	}
	if queued != len(heldIDs) {
		t.Errorf("%d of the %d held messages are still in the queue", queued, len(heldIDs))
	}
	if lost > 0 {
		t.Errorf("%d acknowledged messages lost", lost)
	}
	t.Logf("figures: %d messages started, %d acknowledged, %d files in new/, %d delivered more than once (deliveries the kills cut), %d held and still queued, %d lost",
		len(l.started), len(l.acked), res.delivered, twice, queued, lost)
}
