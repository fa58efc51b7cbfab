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
	"sync/atomic"

	"go.uber.org/zap"

	"github.com/caddy-esmtp/caddy-esmtp/internal/durable"
)

// DirStore is a Store in one directory of the local file system:
//
//	<dir>/.lock          held (flock) while a DirStore has the directory open
//	<dir>/<id>.msg       the entry file: the message, then the state Put
//	                     stored, then a trailer (see FileVersion); written
//	                     once, never changed
//	<dir>/<id>.state     the entry's later state (EncodeState), if any:
//	                     overrides the one in <id>.msg; replaced atomically
//	<dir>/.tmp-*         files being written, and removed entry files kept
//	                     for reuse (.tmp-free-*); never read
//	<dir>/corrupt/       entries set aside by OpenDir (see there)
//
// Put writes the entry file (into a removed entry file kept for reuse,
// else an unnamed file where the file system has them, else a named
// temporary one), fsyncs it, links it to <id>.msg and fsyncs the
// directory, that fsync shared with the Puts and Updates that need one at
// the same time (durable.GroupSync): one file fsync and one directory
// fsync, shared, per message. Update writes <id>.state to a named
// temporary file, fsyncs it, renames it over the old one and fsyncs the
// directory. Remove takes <id>.msg away first (the entry is gone: an
// unlink, or a rename to a .tmp-free- name for a later Put to overwrite,
// see reuse), then, if there is one, unlinks <id>.state after a directory
// fsync (so that no crash leaves the entry file with an older state than
// the last stored); neither is fsynced after: an entry a power loss
// brings back is delivered again (at least once).
type DirStore struct {
	dir  string
	log  *zap.Logger
	lock *os.File
	// unnamed: Put writes unnamed files (O_TMPFILE), linkable here.
	unnamed atomic.Bool

	// Reuse of removed entry files (see reuse).
	mu      sync.Mutex
	pending []string       // renamed to .tmp-free-*, the rename not yet known durable
	free    []string       // the same, durable: Put may overwrite them
	readers map[string]int // open readers of <id>.msg, by id
}

// maxFree bounds the removed entry files kept for reuse.
const maxFree = 256

const (
	msgExt    = ".msg"
	stateExt  = ".state"
	tmpPrefix = ".tmp-"
)

// OpenDir opens (creating it, mode 0700, if needed) the directory store at
// dir, locks it against other processes, and recovers it from any crash:
// temporary files are removed; a state without an entry file (Remove was
// cut between its two unlinks) is removed; an entry file that does not
// decode (no trailer, an unknown version, a state that does not decode or
// whose size disagrees with the message), or whose <id>.state does not, is
// logged at ERROR and moved to corrupt/ for an operator, out of the queue.
// log may be nil.
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
	s.unnamed.Store(s.probeUnnamed())
	return s, nil
}

// probeUnnamed reports whether unnamed files can be made and linked in the
// directory (Linux's O_TMPFILE; linking one may need /proc).
func (s *DirStore) probeUnnamed() bool {
	f, err := durable.OpenUnnamed(s.dir)
	if err != nil || f == nil {
		return false
	}
	defer f.Close()
	p := s.tempName("probe")
	if err := durable.LinkUnnamed(f, p); err != nil {
		s.log.Info("unnamed files cannot be linked in the queue directory; using named temporary files", zap.Error(err))
		return false
	}
	os.Remove(p)
	return true
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
	for id := range states {
		if msgs[id] {
			continue
		}
		if err := os.Remove(s.path(id, stateExt)); err != nil {
			return err
		}
		s.log.Info("removed the state of a removed entry", zap.String("queue_id", id))
		changed = true
	}
	for id := range msgs {
		_, err := s.Get(context.Background(), id)
		if err == nil {
			continue
		}
		if err := s.setAside(id); err != nil {
			return err
		}
		s.log.Error("queue entry set aside in corrupt/", zap.String("queue_id", id), zap.Error(err))
		changed = true
	}
	if changed {
		return durable.SyncDir(s.dir)
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
	return durable.SyncDir(cdir)
}

// Put implements Store.
func (s *DirStore) Put(ctx context.Context, e *Entry, msg io.Reader) (err error) {
	if err := e.check(); err != nil {
		return err
	}
	msgPath := s.path(e.ID, msgExt)
	if _, err := os.Lstat(msgPath); err == nil {
		return ErrExists
	}
	var f *os.File
	unnamed := false
	if f = s.reuse(); f == nil {
		unnamed = s.unnamed.Load()
	}
	if unnamed {
		if f, err = durable.OpenUnnamed(s.dir); err != nil {
			return err
		}
		unnamed = f != nil
	}
	if !unnamed && f == nil {
		if f, err = s.tempFile(e.ID + msgExt); err != nil {
			return err
		}
	}
	linked := false
	defer func() {
		if f != nil {
			f.Close()
		}
		if err != nil {
			if !unnamed {
				os.Remove(f.Name())
			}
			if linked {
				os.Remove(msgPath)
			}
		}
	}()
	n, err := io.Copy(f, ctxReader{ctx, msg})
	if err != nil {
		return err
	}
	e.Size = n
	b, err := EncodeState(e)
	if err != nil {
		return err
	}
	if _, err = f.Write(appendTrailer(b, len(b))); err != nil {
		return err
	}
	if err = f.Sync(); err != nil {
		return err
	}
	// Link, not rename: never replace the entry file of another entry.
	if unnamed {
		err = durable.LinkUnnamed(f, msgPath)
		if err != nil && !errors.Is(err, fs.ErrExist) {
			s.unnamed.Store(false) // the next Puts use named files
		}
	} else {
		err = os.Link(f.Name(), msgPath)
	}
	if err != nil {
		if errors.Is(err, fs.ErrExist) {
			err = ErrExists
		}
		return err
	}
	linked = true
	if !unnamed {
		os.Remove(f.Name()) // a leftover name is removed by OpenDir
	}
	return s.groupSync()
}

// Reuse of entry files. On this kind of file system a new file is the
// dear part of a Put (ext4 without a journal scans past every inode freed
// in the last minute to allocate one), so Remove keeps up to maxFree
// entry files instead of unlinking them: it renames <id>.msg to a
// .tmp-free- name, and Put overwrites one (O_TRUNC) and links it to its
// new name like a named temporary file. Two rules keep this safe: a file
// is overwritten only once its rename is durable (a directory fsync that
// started after it has ended: a power loss cannot bring back the old
// name over the new content), and never while a reader has it open
// (Open, Get: Remove unlinks such a file instead). OpenDir removes the
// files kept (they are .tmp- files).

// reuse returns a removed entry file opened for overwriting, or nil.
func (s *DirStore) reuse() *os.File {
	for {
		s.mu.Lock()
		n := len(s.free)
		if n == 0 {
			s.mu.Unlock()
			return nil
		}
		name := s.free[n-1]
		s.free = s.free[:n-1]
		s.mu.Unlock()
		f, err := os.OpenFile(name, os.O_WRONLY|os.O_TRUNC, 0)
		if err == nil {
			return f
		}
		os.Remove(name)
	}
}

// groupSync fsyncs the directory (durable.GroupSync) and then lets Put
// overwrite the files renamed for reuse before the call.
func (s *DirStore) groupSync() error {
	s.mu.Lock()
	ready := s.pending
	s.pending = nil
	s.mu.Unlock()
	err := durable.GroupSync(s.dir)
	s.mu.Lock()
	if err == nil {
		s.free = append(s.free, ready...)
	} else {
		s.pending = append(s.pending, ready...)
	}
	s.mu.Unlock()
	return err
}

// openMsg opens <id>.msg for reading: Remove does not reuse it until
// release.
func (s *DirStore) openMsg(id string) (f *os.File, release func(), err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if f, err = os.Open(s.path(id, msgExt)); err != nil {
		return nil, nil, err
	}
	if s.readers == nil {
		s.readers = map[string]int{}
	}
	s.readers[id]++
	return f, func() {
		f.Close()
		s.mu.Lock()
		if s.readers[id]--; s.readers[id] <= 0 {
			delete(s.readers, id)
		}
		s.mu.Unlock()
	}, nil
}

// Update implements Store.
func (s *DirStore) Update(ctx context.Context, e *Entry) (err error) {
	if !ValidID(e.ID) {
		return ErrInvalidID
	}
	if _, err := os.Lstat(s.path(e.ID, msgExt)); err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return ErrNotFound
		}
		return err
	}
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
	if err = os.Rename(tmp.Name(), s.path(e.ID, stateExt)); err != nil {
		return err
	}
	return s.groupSync()
}

// tempName returns a new name for a temporary file for name.
func (s *DirStore) tempName(name string) string {
	var r [8]byte
	rand.Read(r[:])
	return filepath.Join(s.dir, tmpPrefix+name+"-"+hex.EncodeToString(r[:]))
}

// tempFile creates a new temporary file for name.
func (s *DirStore) tempFile(name string) (*os.File, error) {
	return os.OpenFile(s.tempName(name), os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
}

// Get implements Store: the state in <id>.state if there is one, else the
// one in <id>.msg. Either's Size must be the message's.
func (s *DirStore) Get(_ context.Context, id string) (*Entry, error) {
	if !ValidID(id) {
		return nil, ErrInvalidID
	}
	f, release, err := s.openMsg(id)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, ErrNotFound
		}
		return nil, err
	}
	defer release()
	fi, err := f.Stat()
	if err != nil {
		return nil, err
	}
	b, err := os.ReadFile(s.path(id, stateExt))
	override := err == nil
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return nil, err
	}
	e, size, err := readEntryFile(f, fi.Size(), !override)
	if err != nil {
		return nil, fmt.Errorf("%s%s: %w", id, msgExt, err)
	}
	where := msgExt
	if override {
		where = stateExt
		if len(b) > maxState {
			return nil, fmt.Errorf("%s%s: queue: state too large", id, stateExt)
		}
		if e, err = DecodeState(b); err != nil {
			return nil, fmt.Errorf("%s%s: %w", id, stateExt, err)
		}
		if e.Size != size {
			return nil, fmt.Errorf("%s%s: message is %d bytes, state says %d", id, stateExt, size, e.Size)
		}
	}
	if e.ID != id {
		return nil, fmt.Errorf("queue: %s%s holds entry %s", id, where, e.ID)
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
		id, ok := strings.CutSuffix(de.Name(), msgExt)
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
	f, release, err := s.openMsg(id)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, ErrNotFound
		}
		return nil, err
	}
	fi, err := f.Stat()
	if err != nil {
		release()
		return nil, err
	}
	_, size, err := readEntryFile(f, fi.Size(), false)
	if err != nil {
		release()
		return nil, fmt.Errorf("%s%s: %w", id, msgExt, err)
	}
	return &fileMessage{f: f, size: size, release: release}, nil
}

// Remove implements Store.
func (s *DirStore) Remove(_ context.Context, id string) error {
	if !ValidID(id) {
		return ErrInvalidID
	}
	if err := s.removeMsg(id); err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return ErrNotFound
		}
		return err
	}
	statePath := s.path(id, stateExt)
	if _, err := os.Lstat(statePath); err != nil {
		return nil // the common case: the entry never had a later state
	}
	// The entry file's unlink must be durable before the state's: an
	// entry file back without its state would deliver again what the
	// state says was delivered.
	if err := s.groupSync(); err != nil {
		return err
	}
	if err := os.Remove(statePath); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	return nil
}

// removeMsg takes <id>.msg away: renamed for reuse when there is room and
// no reader, else unlinked.
func (s *DirStore) removeMsg(id string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.readers[id] > 0 || len(s.pending)+len(s.free) >= maxFree {
		return os.Remove(s.path(id, msgExt))
	}
	name := s.tempName("free")
	if err := os.Rename(s.path(id, msgExt), name); err != nil {
		return err
	}
	s.pending = append(s.pending, name)
	return nil
}

// fileMessage is the message part of an entry file: its first size bytes.
type fileMessage struct {
	f       *os.File
	size    int64
	once    sync.Once
	release func()
}

func (m *fileMessage) Size() int64 { return m.size }

func (m *fileMessage) Close() error {
	m.once.Do(m.release)
	return nil
}

// ReadAt reads the message, never the state after it.
func (m *fileMessage) ReadAt(p []byte, off int64) (int, error) {
	if off >= m.size {
		return 0, io.EOF
	}
	if rest := m.size - off; int64(len(p)) > rest {
		n, err := m.f.ReadAt(p[:rest], off)
		if err == nil {
			err = io.EOF
		}
		return n, err
	}
	return m.f.ReadAt(p, off)
}

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
