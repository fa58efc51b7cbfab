package durable

import (
	"sync"
)

// Group commit of a directory: a writer fsyncs the directory after linking
// its file there (a Maildir's new/, the queue's directory), so that the
// link survives a crash before the 250. Writers into one directory at the
// same time share those fsyncs: a writer waits for an fsync of the
// directory that started after its link, and one fsync serves every
// writer that linked while the one before ran. Under load that is one
// directory fsync for many messages instead of one each; alone, a writer
// waits for nothing but its own.

// dirSyncers holds one syncer per directory path.
var dirSyncers sync.Map // string -> *dirSyncer

// GroupSync fsyncs dir for a link (or rename, or unlink) made before the
// call, sharing the fsync with concurrent callers: it returns once an
// fsync of dir that started after the call has finished.
func GroupSync(dir string) error {
	d, ok := dirSyncers.Load(dir)
	if !ok {
		d, _ = dirSyncers.LoadOrStore(dir, &dirSyncer{dir: dir})
	}
	return d.(*dirSyncer).sync()
}

// dirSyncer runs the fsyncs of one directory, one at a time.
type dirSyncer struct {
	dir     string
	mu      sync.Mutex
	cond    *sync.Cond
	running bool
	started uint64 // fsyncs started
	done    uint64 // fsyncs finished (the last started one, when none runs)
	errGen  uint64 // the last fsync that failed, and its error
	err     error
}

// sync returns once an fsync of the directory that started after the call
// has finished, and its error (or that of a later one).
func (d *dirSyncer) sync() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.cond == nil {
		d.cond = sync.NewCond(&d.mu)
	}
	target := d.started + 1 // the running one, if any, may have begun before our link
	for d.done < target {
		if d.running {
			d.cond.Wait()
			continue
		}
		d.running = true
		d.started++
		gen := d.started
		d.mu.Unlock()
		err := SyncDir(d.dir)
		d.mu.Lock()
		d.running = false
		d.done = gen
		if err != nil {
			d.errGen, d.err = gen, err
		}
		d.cond.Broadcast()
	}
	if d.errGen >= target {
		return d.err
	}
	return nil
}
