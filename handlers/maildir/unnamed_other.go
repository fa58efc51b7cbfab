//go:build !linux

package maildir

import (
	"errors"
	"os"
	"sync/atomic"
)

// unnamedOff: only Linux has unnamed files (O_TMPFILE).
var unnamedOff atomic.Bool

// openUnnamed returns nil, nil: every delivery writes a named tmp/ file.
func openUnnamed(string) (*os.File, error) { return nil, nil }

// linkUnnamed is never called where openUnnamed gives no file.
func linkUnnamed(*os.File, string) error { return errors.ErrUnsupported }
