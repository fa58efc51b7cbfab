package durable

import (
	"sync"
	"sync/atomic"
	"testing"
)

// TestGroupSync: concurrent callers share fsyncs, and every caller's
// fsync started after its call (the count of fsyncs never passes the
// count of calls, and each call is answered by a later generation).
func TestGroupSync(t *testing.T) {
	d := &dirSyncer{dir: t.TempDir()}
	const callers = 200
	var wg sync.WaitGroup
	var failed atomic.Int64
	for range callers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			d.mu.Lock()
			before := d.started
			d.mu.Unlock()
			if err := d.sync(); err != nil {
				failed.Add(1)
			}
			d.mu.Lock()
			defer d.mu.Unlock()
			if d.done <= before {
				t.Errorf("returned after fsync %d, though %d had started before the call", d.done, before)
			}
		}()
	}
	wg.Wait()
	if failed.Load() > 0 {
		t.Fatalf("%d calls failed", failed.Load())
	}
	if d.started == 0 || d.started > callers {
		t.Fatalf("%d fsyncs for %d calls", d.started, callers)
	}
	t.Logf("%d fsyncs for %d concurrent calls", d.started, callers)

	// A failing fsync fails the calls it answers.
	bad := &dirSyncer{dir: "/nonexistent/dir"}
	if err := bad.sync(); err == nil {
		t.Fatal("an fsync that failed answered nil")
	}
}
