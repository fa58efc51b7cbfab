// Package durable holds the file system primitives that make a write
// survive a crash, shared by the maildir delivery and the queue's
// DirStore: SyncDir, GroupSync (concurrent directory fsyncs shared by the
// callers that need one at the same time), and unnamed files (Linux's
// O_TMPFILE) linked into place once written and fsynced.
package durable

import "os"

// SyncDir fsyncs a directory, making the names in it durable.
func SyncDir(dir string) error {
	f, err := os.Open(dir)
	if err != nil {
		return err
	}
	err = f.Sync()
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}
