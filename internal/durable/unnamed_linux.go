//go:build linux

package durable

import (
	"errors"
	"fmt"
	"os"
	"sync/atomic"

	"golang.org/x/sys/unix"
)

// UnnamedOff is set once this process found it cannot link unnamed files
// (see LinkUnnamed): from then on every writer uses a named temporary file.
var UnnamedOff atomic.Bool

// OpenUnnamed opens an unnamed file for writing in dir (O_TMPFILE), or
// returns nil, nil where the file system (or the process) cannot have one.
func OpenUnnamed(dir string) (*os.File, error) {
	if UnnamedOff.Load() {
		return nil, nil
	}
	fd, err := unix.Open(dir, unix.O_TMPFILE|unix.O_WRONLY|unix.O_CLOEXEC, 0o600)
	switch {
	case err == nil:
		return os.NewFile(uintptr(fd), dir+"/(unnamed)"), nil
	case errors.Is(err, unix.EOPNOTSUPP), errors.Is(err, unix.EISDIR), errors.Is(err, unix.EINVAL):
		return nil, nil // no O_TMPFILE on this file system or kernel
	}
	return nil, err
}

// LinkUnnamed gives the unnamed file f the name dst, never replacing a
// file (EEXIST). Linking by descriptor needs CAP_DAC_READ_SEARCH; without
// it, the file's /proc/self/fd entry is linked instead.
func LinkUnnamed(f *os.File, dst string) error {
	fd := int(f.Fd())
	err := unix.Linkat(fd, "", unix.AT_FDCWD, dst, unix.AT_EMPTY_PATH)
	if errors.Is(err, unix.ENOENT) || errors.Is(err, unix.EPERM) {
		err = unix.Linkat(unix.AT_FDCWD, fmt.Sprintf("/proc/self/fd/%d", fd), unix.AT_FDCWD, dst, unix.AT_SYMLINK_FOLLOW)
	}
	if err != nil {
		return &os.LinkError{Op: "link", Old: f.Name(), New: dst, Err: err}
	}
	return nil
}
