// Package spool holds what the delivering sub-handlers (exec, webhook)
// share to spool a message while it arrives: a buffered temporary file
// that is unlinked as soon as it is created, and the per-transaction state
// that keeps one such file per sub-handler instance, closed at end of
// message or when the transaction is aborted.
package spool

import (
	"bufio"
	"io"
	"os"

	"github.com/caddy-esmtp/caddy-esmtp/session"
)

// ErrReply is the reply when the spool file cannot be created or written.
var ErrReply = session.NewReply(451, "4.3.0", "Local error in processing; try again later")

// Spool is a message being written, through a 32 KiB buffer, to a
// temporary file that has no name once created, where the system allows
// it: the file lives as long as it is open, and no crash can leave it
// behind.
type Spool struct {
	f    *os.File
	name string // set while the file still has a name to remove
	w    *bufio.Writer
}

// New creates a spool file in dir (the system's temporary directory when
// dir is "") with a name made from pattern as by os.CreateTemp, and
// unlinks it at once where the system allows it. With tee not nil,
// everything written to the file is written to tee too.
func New(dir, pattern string, tee io.Writer) (*Spool, error) {
	f, err := os.CreateTemp(dir, pattern)
	if err != nil {
		return nil, err
	}
	sp := &Spool{f: f, name: f.Name()}
	if os.Remove(f.Name()) == nil {
		sp.name = ""
	}
	var out io.Writer = f
	if tee != nil {
		out = io.MultiWriter(f, tee)
	}
	sp.w = bufio.NewWriterSize(out, 32<<10)
	return sp, nil
}

// Write writes p to the buffer, and the buffer to the file when full.
func (sp *Spool) Write(p []byte) (int, error) { return sp.w.Write(p) }

// WriteString is Write for a string.
func (sp *Spool) WriteString(s string) (int, error) { return sp.w.WriteString(s) }

// Flush writes the buffer to the file.
func (sp *Spool) Flush() error { return sp.w.Flush() }

// Rewind flushes the buffer and goes back to the start of the file, for
// reading it from the start.
func (sp *Spool) Rewind() error {
	if err := sp.w.Flush(); err != nil {
		return err
	}
	_, err := sp.f.Seek(0, io.SeekStart)
	return err
}

// Size flushes the buffer and returns how many bytes the file holds.
func (sp *Spool) Size() (int64, error) {
	if err := sp.w.Flush(); err != nil {
		return 0, err
	}
	return sp.f.Seek(0, io.SeekCurrent)
}

// File returns the file, to read the message from after Rewind or Size;
// nil after Close.
func (sp *Spool) File() *os.File { return sp.f }

// Close closes the file (and removes it where it could not be unlinked
// at creation). It may be called more than once.
func (sp *Spool) Close() {
	if sp.f != nil {
		sp.f.Close()
		sp.f = nil
	}
	if sp.name != "" {
		os.Remove(sp.name)
		sp.name = ""
	}
}

// key keys the spool of one sub-handler instance (its owner) in a
// transaction, so two instances of a sub-handler in one list never share
// one.
type key struct{ owner any }

// Get returns the spool that owner, a pointer to a sub-handler instance,
// keeps in s's transaction, or the zero value of T (nil) when it has none.
func Get[T any](s *session.Session, owner any) T {
	sp, _ := s.Transaction().Value(key{owner}).(T)
	return sp
}

// Set keeps sp as owner's spool in s's transaction; nil forgets it.
func Set(s *session.Session, owner, sp any) {
	s.Transaction().SetValue(key{owner}, sp)
}

// Abort closes and forgets owner's spool, if s has a transaction and
// owner a spool in it: for a sub-handler's Abort hook.
func Abort[T interface {
	comparable
	Close()
}](s *session.Session, owner any) {
	if txn := s.Transaction(); txn != nil {
		var zero T
		if sp := Get[T](s, owner); sp != zero {
			sp.Close()
			txn.SetValue(key{owner}, nil)
		}
	}
}
