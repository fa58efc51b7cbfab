//go:build linux

package integration_test

import "golang.org/x/sys/unix"

// hasUnnamedFiles reports whether dir's file system makes unnamed files
// (O_TMPFILE), as maildir uses for its tmp/ files on Linux.
func hasUnnamedFiles(dir string) bool {
	fd, err := unix.Open(dir, unix.O_TMPFILE|unix.O_WRONLY|unix.O_CLOEXEC, 0o600)
	if err != nil {
		return false
	}
	unix.Close(fd)
	return true
}
