//go:build !unix

package queue

import "os"

// lockFile does nothing where flock is missing: one process per directory
// is then the operator's to ensure.
func lockFile(*os.File) error { return nil }
