package queue

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"
)

const crashChildEnv = "ESMTP_QUEUE_CRASH_CHILD"

// crashRecipients are the recipients of message i of a child: "ok@x" is
// delivered at once, "later@x" is deferred (for an hour).
func crashRecipients(i int) []Recipient {
	switch i % 3 {
	case 0:
		return rcpts("ok@x")
	case 1:
		return rcpts("later@x")
	}
	return rcpts("ok@x", "later@x")
}

// crashChild enqueues messages as fast as it can, printing "ACK id sha256"
// once Enqueue returned (when a session would answer 250) and "DELIVERED
// id rcpt" before a delivery returns 250, until it is killed.
func crashChild(dir string) {
	store, err := OpenDir(dir, nil)
	if err != nil {
		fmt.Println("ERROR", err)
		os.Exit(1)
	}
	var out sync.Mutex
	say := func(format string, args ...any) {
		out.Lock()
		fmt.Fprintf(os.Stdout, format+"\n", args...) // one write: atomic on a pipe
		out.Unlock()
	}
	q, err := New(store, Options{RetryInterval: time.Hour, Workers: 4,
		Deliver: func(ctx context.Context, e *Entry, rs []Recipient, msg Message) []Outcome {
			io.Copy(io.Discard, Reader(msg))
			var outs []Outcome
			for _, r := range rs {
				if r.Addr == "ok@x" {
					say("DELIVERED %s %s", e.ID, r.Addr)
					outs = append(outs, Outcome{Code: 250})
				} else {
					outs = append(outs, Outcome{Code: 451, Text: "later"})
				}
			}
			return outs
		}})
	if err != nil {
		fmt.Println("ERROR", err)
		os.Exit(1)
	}
	if err := q.Start(context.Background()); err != nil {
		fmt.Println("ERROR", err)
		os.Exit(1)
	}
	for i := 0; ; i++ {
		body := make([]byte, rand.IntN(300<<10))
		for j := range body {
			body[j] = 'a' + byte(rand.IntN(26))
		}
		msg := append([]byte("Subject: crash test\r\n\r\n"), body...)
		id, err := q.Enqueue(context.Background(), Envelope{From: "s@y", Recipients: crashRecipients(i)}, strings.NewReader(string(msg)))
		if err != nil {
			say("ERROR %v", err)
			os.Exit(1)
		}
		sum := sha256.Sum256(msg)
		say("ACK %s %s %d", id, hex.EncodeToString(sum[:]), i%3)
	}
}

type acked struct {
	sum  string
	kind string
}

// TestCrashSafety runs a child process that enqueues and delivers, kills
// it with SIGKILL at a random point, a bounded number of times over one
// directory, and checks after each kill: nothing half-written remains, and
// every message the child acknowledged is either in the store, complete,
// or was delivered to all of its recipients. Then a queue resumes the
// directory: the deferred entries are delivered, and a recipient already
// delivered is not delivered again.
func TestCrashSafety(t *testing.T) {
	if dir := os.Getenv(crashChildEnv); dir != "" {
		crashChild(dir)
		return
	}
	dir := t.TempDir()
	acks := map[string]acked{}
	delivered := map[string]map[string]bool{}
	for round := range 6 {
		cmd := exec.Command(os.Args[0], "-test.run=^TestCrashSafety$")
		cmd.Env = append(os.Environ(), crashChildEnv+"="+dir)
		stdout, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		cmd.Stderr = os.Stderr
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		killAfter := 1 + rand.IntN(12)
		sc := bufio.NewScanner(stdout)
		n := 0
		killed := false
		for sc.Scan() {
			f := strings.Fields(sc.Text())
			switch {
			case len(f) == 4 && f[0] == "ACK":
				acks[f[1]] = acked{sum: f[2], kind: f[3]}
				n++
			case len(f) == 3 && f[0] == "DELIVERED":
				if delivered[f[1]] == nil {
					delivered[f[1]] = map[string]bool{}
				}
				delivered[f[1]][f[2]] = true
			default:
				t.Fatalf("child: %q", sc.Text())
			}
			if n >= killAfter && !killed {
				time.Sleep(time.Duration(rand.IntN(3000)) * time.Microsecond)
				cmd.Process.Kill() // SIGKILL
				killed = true
			}
		}
		cmd.Wait()
		if !killed {
			t.Fatalf("round %d: the child ended by itself", round)
		}
		checkCrashDir(t, dir, acks, delivered)
	}

	// Resume: everything left is delivered, nothing delivered twice.
	store, err := OpenDir(dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	before, err := store.List(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	clock := newFakeClock()
	clock.Set(time.Now().Add(2 * time.Hour)) // past every deferred entry's next attempt
	fd := newFakeDeliver(t, clock)
	q, err := New(store, Options{Deliver: fd.Deliver, Clock: clock})
	if err != nil {
		t.Fatal(err)
	}
	if err := q.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	defer q.Stop(context.Background())
	waitFor(t, "the resumed queue to empty", func() bool { return q.Stats().Length == 0 })
	got := map[string]bool{}
	for _, c := range fd.calls {
		got[c.id+" "+c.rcpt] = true
	}
	for _, e := range before {
		for _, r := range e.Recipients {
			if r.State.Final() == got[e.ID+" "+r.Addr] {
				t.Errorf("%s %s in state %s: delivered on resume %v", e.ID, r.Addr, r.State, got[e.ID+" "+r.Addr])
			}
		}
	}
	if len(before) == 0 {
		t.Error("no entry survived the kills: the test proved little")
	}
	t.Logf("%d acknowledged, %d resumed", len(acks), len(before))
}

// checkCrashDir recovers dir and checks it against what the child said.
func checkCrashDir(t *testing.T, dir string, acks map[string]acked, delivered map[string]map[string]bool) {
	t.Helper()
	store, err := OpenDir(dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	ents, _ := os.ReadDir(dir)
	files := map[string]bool{}
	for _, de := range ents {
		files[de.Name()] = true
		if strings.HasPrefix(de.Name(), tmpPrefix) || de.Name() == "corrupt" {
			t.Errorf("after recovery: %s", de.Name())
		}
	}
	for name := range files {
		// An entry file alone is an entry as Put stored it; a state
		// alone (Remove cut between its unlinks) recovery removes.
		if id, ok := strings.CutSuffix(name, stateExt); ok && !files[id+msgExt] {
			t.Errorf("%s without its entry file", name)
		}
	}
	ctx := context.Background()
	for id, a := range acks {
		e, err := store.Get(ctx, id)
		if err == ErrNotFound {
			// Gone: only if every recipient was delivered.
			if a.kind != "0" || !delivered[id]["ok@x"] {
				t.Errorf("acknowledged %s (kind %s) is lost", id, a.kind)
			}
			continue
		}
		if err != nil {
			t.Errorf("acknowledged %s: %v", id, err)
			continue
		}
		m, err := store.Open(ctx, id)
		if err != nil {
			t.Errorf("acknowledged %s: %v", id, err)
			continue
		}
		b, err := io.ReadAll(Reader(m))
		m.Close()
		sum := sha256.Sum256(b)
		if err != nil || hex.EncodeToString(sum[:]) != a.sum || int64(len(b)) != e.Size {
			t.Errorf("acknowledged %s is not complete: %v", id, err)
		}
	}
}
