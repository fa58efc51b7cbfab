package queue

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync"

	"go.uber.org/zap"
)

// DirStore is a Store in one directory of the local file system:
//
//	<dir>/.lock          held (flock) while a DirStore has the directory open
//	<dir>/<id>.msg       the message, written once, never changed
//	<dir>/<id>.state     the entry (EncodeState), replaced atomically
//	<dir>/.tmp-*         files being written; never read
//	<dir>/corrupt/       entries set aside by OpenDir (see there)
//
// Every commit is a temporary file written and fsynced, then linked or
// renamed to its name, then the directory fsynced: Put writes the message
// first and its state last, so a message without a state was never
// acknowledged; Remove deletes the state first.
type DirStore struct {
	dir  string
	log  *zap.Logger
	lock *os.File
	mu   sync.Mutex // serialises the directory syncs of concurrent commits
}

const (
	msgExt    = ".msg"
	stateExt  = ".state"
	tmpPrefix = ".tmp-"
)

// OpenDir opens (creating it, mode 0700, if needed) the directory store at
// dir, locks it against other processes, and recovers it from any crash:
// temporary files are removed; a message without a state (Put was cut
// before it returned, so nobody got a 250 for it) is removed; a state
// without a message, a state that does not decode, and a state whose size
// does not match its message are logged at ERROR and moved to corrupt/
// for an operator, out of the queue. log may be nil.
func OpenDir(dir string, log *zap.Logger) (*DirStore, error) {
	if log == nil {
		log = zap.NewNop()
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	lock, err := os.OpenFile(filepath.Join(dir, ".lock"), os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return nil, err
	}
	if err := lockFile(lock); err != nil {
		lock.Close()
		return nil, fmt.Errorf("queue: %s is in use by another process: %w", dir, err)
	}
	s := &DirStore{dir: dir, log: log, lock: lock}
	if err := s.recover(); err != nil {
		lock.Close()
		return nil, err
	}
	return s, nil
}

// Close releases the directory.
func (s *DirStore) Close() error { return s.lock.Close() }

// Dir returns the store's directory.
func (s *DirStore) Dir() string { return s.dir }

func (s *DirStore) path(id, ext string) string { return filepath.Join(s.dir, id+ext) }

// recover is OpenDir's crash recovery.
func (s *DirStore) recover() error {
	ents, err := os.ReadDir(s.dir)
	if err != nil {
		return err
	}
	msgs, states := map[string]bool{}, map[string]bool{}
	changed := false
	for _, de := range ents {
		name := de.Name()
		switch {
		case strings.HasPrefix(name, tmpPrefix):
			if err := os.Remove(filepath.Join(s.dir, name)); err != nil {
				return err
			}
			s.log.Info("removed a half-written queue file", zap.String("file", name))
			changed = true
		case strings.HasSuffix(name, msgExt) && ValidID(strings.TrimSuffix(name, msgExt)):
			msgs[strings.TrimSuffix(name, msgExt)] = true
		case strings.HasSuffix(name, stateExt) && ValidID(strings.TrimSuffix(name, stateExt)):
			states[strings.TrimSuffix(name, stateExt)] = true
		}
	}
	for id := range msgs {
		if states[id] {
			continue
		}
		if err := os.Remove(s.path(id, msgExt)); err != nil {
			return err
		}
		s.log.Info("removed a message that was never acknowledged", zap.String("queue_id", id))
		changed = true
	}
	for id := range states {
		why := ""
		if !msgs[id] {
			why = "state without a message"
		} else if e, err := s.Get(context.Background(), id); err != nil {
			why = err.Error()
		} else if fi, err := os.Stat(s.path(id, msgExt)); err != nil {
			why = err.Error()
		} else if fi.Size() != e.Size {
			why = fmt.Sprintf("message is %d bytes, state says %d", fi.Size(), e.Size)
		}
		if why == "" {
			continue
		}
		if err := s.setAside(id); err != nil {
			return err
		}
		s.log.Error("queue entry set aside in corrupt/", zap.String("queue_id", id), zap.String("error", why))
		changed = true
	}
	if changed {
		return syncDir(s.dir)
	}
	return nil
}

// setAside moves what exists of entry id to corrupt/.
func (s *DirStore) setAside(id string) error {
	cdir := filepath.Join(s.dir, "corrupt")
	if err := os.MkdirAll(cdir, 0o700); err != nil {
		return err
	}
	for _, ext := range []string{msgExt, stateExt} {
		err := os.Rename(s.path(id, ext), filepath.Join(cdir, id+ext))
		if err != nil && !errors.Is(err, fs.ErrNotExist) {
			return err
		}
	}
	return syncDir(cdir)
}

// Put implements Store.
func (s *DirStore) Put(ctx context.Context, e *Entry, msg io.Reader) (err error) {
	if err := e.check(); err != nil {
		return err
	}
	if _, err := os.Lstat(s.path(e.ID, stateExt)); err == nil {
		return ErrExists
	}
	msgPath := s.path(e.ID, msgExt)
	tmp, err := s.tempFile(e.ID + msgExt)
	if err != nil {
		return err
	}
	linked := false
	defer func() {
		if err != nil {
			os.Remove(tmp.Name())
			if linked {
				os.Remove(msgPath)
			}
		}
	}()
	n, err := io.Copy(tmp, ctxReader{ctx, msg})
	if err == nil {
		err = tmp.Sync()
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return err
	}
	// Link, not rename: never replace the message of another entry.
	if err = os.Link(tmp.Name(), msgPath); err != nil {
		if errors.Is(err, fs.ErrExist) {
			err = ErrExists
		}
		return err
	}
	linked = true
	os.Remove(tmp.Name())
	if err = s.syncDir(); err != nil {
		return err
	}
	e.Size = n
	return s.writeState(e, false)
}

// Update implements Store.
func (s *DirStore) Update(ctx context.Context, e *Entry) error {
	if !ValidID(e.ID) {
		return ErrInvalidID
	}
	if _, err := os.Lstat(s.path(e.ID, stateExt)); err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return ErrNotFound
		}
		return err
	}
	return s.writeState(e, true)
}

// writeState commits e's state: a new one (linked, never replacing) or a
// replacement (renamed over the old one).
func (s *DirStore) writeState(e *Entry, replace bool) (err error) {
	b, err := EncodeState(e)
	if err != nil {
		return err
	}
	tmp, err := s.tempFile(e.ID + stateExt)
	if err != nil {
		return err
	}
	defer func() {
		if err != nil {
			os.Remove(tmp.Name())
		}
	}()
	_, err = tmp.Write(b)
	if err == nil {
		err = tmp.Sync()
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return err
	}
	final := s.path(e.ID, stateExt)
	if replace {
		err = os.Rename(tmp.Name(), final)
	} else {
		if err = os.Link(tmp.Name(), final); err == nil {
			os.Remove(tmp.Name())
		} else if errors.Is(err, fs.ErrExist) {
			err = ErrExists
		}
	}
	if err != nil {
		return err
	}
	return s.syncDir()
}

// tempFile creates a new temporary file for name.
func (s *DirStore) tempFile(name string) (*os.File, error) {
	var r [8]byte
	rand.Read(r[:])
	return os.OpenFile(filepath.Join(s.dir, tmpPrefix+name+"-"+hex.EncodeToString(r[:])),
		os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
}

func (s *DirStore) syncDir() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return syncDir(s.dir)
}

// syncDir fsyncs a directory, making the names in it durable.
func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	err = d.Sync()
	if cerr := d.Close(); err == nil {
		err = cerr
	}
	return err
}

// Get implements Store.
func (s *DirStore) Get(_ context.Context, id string) (*Entry, error) {
	if !ValidID(id) {
		return nil, ErrInvalidID
	}
	b, err := os.ReadFile(s.path(id, stateExt))
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, ErrNotFound
		}
		return nil, err
	}
	e, err := DecodeState(b)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", id, err)
	}
	if e.ID != id {
		return nil, fmt.Errorf("queue: %s%s holds entry %s", id, stateExt, e.ID)
	}
	return e, nil
}

// List implements Store.
func (s *DirStore) List(ctx context.Context) ([]*Entry, error) {
	ents, err := os.ReadDir(s.dir)
	if err != nil {
		return nil, err
	}
	var out []*Entry
	for _, de := range ents {
		id, ok := strings.CutSuffix(de.Name(), stateExt)
		if !ok || !ValidID(id) {
			continue
		}
		e, err := s.Get(ctx, id)
		if errors.Is(err, ErrNotFound) { // removed meanwhile
			continue
		}
		if err != nil {
			return nil, err
		}
		out = append(out, e)
	}
	return out, nil
}

// Open implements Store.
func (s *DirStore) Open(_ context.Context, id string) (Message, error) {
	if !ValidID(id) {
		return nil, ErrInvalidID
	}
	f, err := os.Open(s.path(id, msgExt))
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, ErrNotFound
		}
		return nil, err
	}
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, err
	}
	return fileMessage{f, fi.Size()}, nil
}

// Remove implements Store.
func (s *DirStore) Remove(_ context.Context, id string) error {
	if !ValidID(id) {
		return ErrInvalidID
	}
	if err := os.Remove(s.path(id, stateExt)); err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return ErrNotFound
		}
		return err
	}
	if err := os.Remove(s.path(id, msgExt)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	return s.syncDir()
}

type fileMessage struct {
	*os.File
	size int64
}

func (m fileMessage) Size() int64 { return m.size }

// ctxReader stops reading when ctx is done.
type ctxReader struct {
	ctx context.Context
	r   io.Reader
}

func (r ctxReader) Read(p []byte) (int, error) {
	if err := r.ctx.Err(); err != nil {
		return 0, err
	}
	return r.r.Read(p)
}

var _ Store = (*DirStore)(nil)
