//go:build !linux

package durable

import (
	"errors"
	"os"
	"sync/atomic"
)

// UnnamedOff: only Linux has unnamed files (O_TMPFILE).
var UnnamedOff atomic.Bool

// OpenUnnamed returns nil, nil: every writer uses a named temporary file.
func OpenUnnamed(string) (*os.File, error) { return nil, nil }

// LinkUnnamed is never called where OpenUnnamed gives no file.
func LinkUnnamed(*os.File, string) error { return errors.ErrUnsupported }
