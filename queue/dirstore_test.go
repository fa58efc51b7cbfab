package queue

import (
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"
)

func sampleEntry(id string) *Entry {
	return &Entry{Envelope: Envelope{ID: id, From: "a@example.net", Ret: "HDRS", EnvID: "x+2B", SMTPUTF8: true, Body: "8BITMIME",
		Recipients: []Recipient{{Addr: "b@example.com", Notify: "SUCCESS,FAILURE", ORCPT: "rfc822;b@example.com", State: Pending},
			{Addr: "c@example.com", State: Deferred, Attempts: 2, Reply: &Outcome{Code: 451, Enhanced: "4.7.1", Text: "later", RemoteMTA: "mx"}}},
		Arrival: time.Date(2026, 3, 1, 10, 0, 0, 123, time.UTC),
		Client:  Client{Addr: "192.0.2.1", Helo: "client", AuthUser: "u", TLS: "TLS1.3", Protocol: "UTF8SMTPSA"},
		Labels:  map[string]string{"route": "relay"}},
		Attempts: 2, NextAttempt: time.Date(2026, 3, 1, 10, 5, 0, 0, time.UTC)}
}

func names(t *testing.T, dir string) []string {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, e := range ents {
		out = append(out, e.Name())
	}
	sort.Strings(out)
	return out
}

func TestDirStore(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	s, err := OpenDir(dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if _, err := OpenDir(dir, nil); err == nil {
		t.Error("a second OpenDir of the same directory succeeded")
	}
	e := sampleEntry("ID1")
	if err := s.Put(ctx, e, strings.NewReader("message")); err != nil {
		t.Fatal(err)
	}
	if e.Size != 7 {
		t.Errorf("Size %d", e.Size)
	}
	if n := names(t, dir); strings.Join(n, " ") != ".lock ID1.msg" {
		t.Errorf("after Put: %v", n)
	}
	if err := s.Put(ctx, sampleEntry("ID1"), strings.NewReader("other")); !errors.Is(err, ErrExists) {
		t.Errorf("second Put: %v", err)
	}
	if err := s.Put(ctx, sampleEntry("../x"), strings.NewReader("")); !errors.Is(err, ErrInvalidID) {
		t.Errorf("bad id: %v", err)
	}
	got, err := s.Get(ctx, "ID1")
	if err != nil {
		t.Fatal(err)
	}
	a, _ := EncodeState(e)
	b, _ := EncodeState(got)
	if !bytes.Equal(a, b) {
		t.Errorf("round trip:\n%s\n%s", a, b)
	}
	got.Recipients[0].State = Delivered
	if err := s.Update(ctx, got); err != nil {
		t.Fatal(err)
	}
	if e2, _ := s.Get(ctx, "ID1"); e2.Recipients[0].State != Delivered {
		t.Errorf("after Update: %+v", e2.Recipients[0])
	}
	if err := s.Update(ctx, sampleEntry("ID2")); !errors.Is(err, ErrNotFound) {
		t.Errorf("Update of a missing entry: %v", err)
	}
	m, err := s.Open(ctx, "ID1")
	if err != nil {
		t.Fatal(err)
	}
	for range 2 {
		if b, _ := io.ReadAll(Reader(m)); string(b) != "message" || m.Size() != 7 {
			t.Errorf("message %q size %d", b, m.Size())
		}
	}
	m.Close()
	if l, err := s.List(ctx); err != nil || len(l) != 1 {
		t.Errorf("List: %v %v", l, err)
	}
	if err := s.Remove(ctx, "ID1"); err != nil {
		t.Fatal(err)
	}
	if err := s.Remove(ctx, "ID1"); !errors.Is(err, ErrNotFound) {
		t.Errorf("second Remove: %v", err)
	}
	if _, err := s.Open(ctx, "ID1"); !errors.Is(err, ErrNotFound) {
		t.Errorf("Open after Remove: %v", err)
	}
	if n := entryNames(t, dir); len(n) != 1 || n[0] != ".lock" {
		t.Errorf("left in the directory: %v", n)
	}
}

// entryNames is names without the removed entry files kept for reuse.
func entryNames(t *testing.T, dir string) []string {
	var out []string
	for _, n := range names(t, dir) {
		if !strings.HasPrefix(n, tmpPrefix+"free-") {
			out = append(out, n)
		}
	}
	return out
}

// TestDirStoreReuse: a removed entry file is overwritten by a later Put
// once its rename is durable (after a directory fsync), never while a
// reader has it open, and OpenDir removes those kept.
func TestDirStoreReuse(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	s, err := OpenDir(dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	ino := func(name string) uint64 {
		t.Helper()
		fi, err := os.Stat(filepath.Join(dir, name))
		if err != nil {
			t.Fatal(err)
		}
		return inode(fi)
	}
	kept := func() []string {
		var out []string
		for _, n := range names(t, dir) {
			if strings.HasPrefix(n, tmpPrefix+"free-") {
				out = append(out, n)
			}
		}
		return out
	}
	put := func(id, msg string) {
		t.Helper()
		if err := s.Put(ctx, sampleEntry(id), strings.NewReader(msg)); err != nil {
			t.Fatal(err)
		}
	}
	put("A", strings.Repeat("a long message ", 100))
	a := ino("A.msg")
	if a == 0 {
		t.Skip("no inode numbers here")
	}
	if err := s.Remove(ctx, "A"); err != nil {
		t.Fatal(err)
	}
	if k := kept(); len(k) != 1 || ino(k[0]) != a {
		t.Fatalf("kept after Remove: %v", k)
	}
	put("B", "bee") // its directory fsync makes A's rename durable
	if ino("B.msg") == a {
		t.Error("B overwrote A's file before its rename was durable")
	}
	put("C", "sea")
	if ino("C.msg") != a || len(kept()) != 0 {
		t.Errorf("C did not reuse A's file: kept %v", kept())
	}
	m, err := s.Open(ctx, "C")
	if err != nil {
		t.Fatal(err)
	}
	if b, _ := io.ReadAll(Reader(m)); string(b) != "sea" {
		t.Errorf("C reads %q", b)
	}
	if e, err := s.Get(ctx, "C"); err != nil || e.Size != 3 {
		t.Errorf("Get C: %+v %v", e, err)
	}
	// Removed while open: unlinked, not kept; the reader reads on.
	if err := s.Remove(ctx, "C"); err != nil {
		t.Fatal(err)
	}
	if k := kept(); len(k) != 0 {
		t.Errorf("a file open for reading was kept: %v", k)
	}
	put("D", "dee")
	if b, _ := io.ReadAll(Reader(m)); string(b) != "sea" {
		t.Errorf("C reads %q after its removal", b)
	}
	m.Close()
	m.Close() // twice: harmless
	if err := s.Remove(ctx, "B"); err != nil {
		t.Fatal(err)
	}
	s.Close()
	if s, err = OpenDir(dir, nil); err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if n := names(t, dir); strings.Join(n, " ") != ".lock D.msg" {
		t.Errorf("after OpenDir: %v", n)
	}
}

// TestDirStoreFailedPutLeavesNothing: a reader error during Put leaves no
// file behind.
func TestDirStoreFailedPutLeavesNothing(t *testing.T) {
	dir := t.TempDir()
	s, err := OpenDir(dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	r := io.MultiReader(strings.NewReader("part"), errReader{})
	if err := s.Put(context.Background(), sampleEntry("ID1"), r); err == nil {
		t.Fatal("Put succeeded")
	}
	if n := names(t, dir); len(n) != 1 {
		t.Errorf("left: %v", n)
	}
}

type errReader struct{}

func (errReader) Read([]byte) (int, error) { return 0, errors.New("connection reset") }

// entryFile returns an entry file (see FileVersion) of msg and e's state
// as Put writes it, e.Size set to the message's size unless size >= 0.
func entryFile(t *testing.T, e *Entry, msg string, size int64) string {
	t.Helper()
	e = e.Clone()
	e.Size = int64(len(msg))
	if size >= 0 {
		e.Size = size
	}
	b, err := EncodeState(e)
	if err != nil {
		t.Fatal(err)
	}
	return msg + string(appendTrailer(b, len(b)))
}

// TestDirStoreRecovery: what OpenDir does with what a crash can leave.
func TestDirStoreRecovery(t *testing.T) {
	dir := t.TempDir()
	write := func(name, content string) {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	state := func(e *Entry, size int64) string {
		e = e.Clone()
		e.Size = size
		b, err := EncodeState(e)
		if err != nil {
			t.Fatal(err)
		}
		return string(b)
	}
	// An entry with a later state: the state overrides the entry file's.
	good := sampleEntry("GOOD")
	write("GOOD.msg", entryFile(t, good, "hello", -1))
	later := good.Clone()
	later.Recipients[0].State, later.Attempts = Delivered, 3
	write("GOOD.state", state(later, 5))
	// An entry as Put stored it: its state is the entry file's.
	write("HEADER.msg", entryFile(t, sampleEntry("HEADER"), "just put", -1))
	// Half-written temporary files (a named one for an entry file cut
	// before its link, a state cut before its rename).
	write(".tmp-HALF.msg-0011", "half a mess")
	write(".tmp-GOOD.state-0022", "{\"vers")
	// Remove cut between its unlinks: the state of a removed entry.
	write("GONE.state", state(sampleEntry("GONE"), 4))
	// Set aside: the old two-file layout (a bare message), a newer file
	// version, a state that does not decode, sizes that disagree, an
	// entry file of another entry.
	write("OLD.msg", "a message of the old layout")
	write("OLD.state", state(sampleEntry("OLD"), 27))
	v3 := strings.Replace(entryFile(t, sampleEntry("V3"), "future", -1), trailerMagic+"002", trailerMagic+"003", 1)
	write("V3.msg", v3)
	write("BAD.msg", entryFile(t, sampleEntry("BAD"), "x", -1))
	write("BAD.state", "{\"version\": 1, \"entry\": {\"id\": \"BAD\"}}")
	write("SHORT.msg", entryFile(t, sampleEntry("SHORT"), "cut", 100))
	write("LONG.msg", entryFile(t, sampleEntry("LONG"), "message", -1))
	write("LONG.state", state(sampleEntry("LONG"), 70))
	write("OTHER.msg", entryFile(t, sampleEntry("GOOD"), "whose?", -1))

	s, err := OpenDir(dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	want := []string{".lock", "GOOD.msg", "GOOD.state", "HEADER.msg", "corrupt"}
	if got := names(t, dir); strings.Join(got, " ") != strings.Join(want, " ") {
		t.Errorf("after recovery: %v, want %v", got, want)
	}
	want = []string{"BAD.msg", "BAD.state", "LONG.msg", "LONG.state", "OLD.msg", "OLD.state", "OTHER.msg", "SHORT.msg", "V3.msg"}
	if got := names(t, filepath.Join(dir, "corrupt")); strings.Join(got, " ") != strings.Join(want, " ") {
		t.Errorf("set aside: %v, want %v", got, want)
	}
	ctx := context.Background()
	l, err := s.List(ctx)
	if err != nil || len(l) != 2 {
		t.Fatalf("List: %v %v", l, err)
	}
	if e, err := s.Get(ctx, "GOOD"); err != nil || e.Recipients[0].State != Delivered || e.Attempts != 3 || e.Size != 5 {
		t.Errorf("GOOD: the later state does not override: %+v %v", e, err)
	}
	if e, err := s.Get(ctx, "HEADER"); err != nil || e.Recipients[0].State != Pending || e.Size != 8 {
		t.Errorf("HEADER: %+v %v", e, err)
	}
	for id, msg := range map[string]string{"GOOD": "hello", "HEADER": "just put"} {
		m, err := s.Open(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(Reader(m))
		m.Close()
		if string(b) != msg || m.Size() != int64(len(msg)) {
			t.Errorf("%s: message %q (%d bytes)", id, b, m.Size())
		}
	}
}

// TestEntryFileVersions: the trailer is checked strictly, and an unknown
// version is refused by name.
func TestEntryFileVersions(t *testing.T) {
	good := entryFile(t, sampleEntry("ID"), "message", -1)
	read := func(f string) error {
		_, _, err := readEntryFile(strings.NewReader(f), int64(len(f)), true)
		return err
	}
	if err := read(good); err != nil {
		t.Fatal(err)
	}
	err := read(strings.Replace(good, trailerMagic+"002", trailerMagic+"003", 1))
	if err == nil || !strings.Contains(err.Error(), "version 3 unknown") {
		t.Errorf("version 3: %v", err)
	}
	for name, bad := range map[string]string{
		"empty":           "",
		"bare message":    "Subject: x\r\n\r\nhello\r\n",
		"truncated":       good[:len(good)-1],
		"state too long":  "x" + strings.Replace(good, trailerMagic+"002 ", trailerMagic+"002 9", 1)[1:],
		"not decimal":     strings.Replace(good, trailerMagic+"002 0", trailerMagic+"002 x", 1),
		"no newline":      good[:len(good)-1] + " ",
		"version 1":       strings.Replace(good, trailerMagic+"002", trailerMagic+"001", 1),
		"size mismatch":   "y" + good,
		"state truncated": good[:len(good)-trailerLen-2] + good[len(good)-trailerLen:],
	} {
		if err := read(bad); err == nil {
			t.Errorf("%s: read", name)
		}
	}
}

// FuzzReadEntryFile: reading an entry file never panics, and what it
// accepts is written back the same way.
func FuzzReadEntryFile(f *testing.F) {
	f.Add([]byte(entryFile(&testing.T{}, sampleEntry("ID"), "Subject: x\r\n\r\nbody\r\n", -1)))
	f.Add([]byte(entryFile(&testing.T{}, sampleEntry("ID"), "", -1)))
	f.Fuzz(func(t *testing.T, b []byte) {
		e, size, err := readEntryFile(bytes.NewReader(b), int64(len(b)), true)
		if err != nil {
			return
		}
		if size < 0 || size > int64(len(b)) || e.Size != size {
			t.Fatalf("message of %d bytes in a file of %d, state says %d", size, len(b), e.Size)
		}
		again := entryFile(t, e, string(b[:size]), -1)
		e2, size2, err := readEntryFile(strings.NewReader(again), int64(len(again)), true)
		if err != nil || size2 != size {
			t.Fatalf("written back, it does not read: %v", err)
		}
		s1, _ := EncodeState(e)
		s2, _ := EncodeState(e2)
		if !bytes.Equal(s1, s2) {
			t.Fatalf("not stable:\n%s\n%s", s1, s2)
		}
	})
}

func TestDecodeStateStrict(t *testing.T) {
	good, err := EncodeState(sampleEntry("ID"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := DecodeState(good); err != nil {
		t.Fatal(err)
	}
	for name, bad := range map[string]string{
		"empty":         "",
		"no version":    `{"entry": {"id": "A", "recipients": [{"addr": "a", "state": "pending"}]}}`,
		"version 2":     `{"version": 2, "entry": {"id": "A", "recipients": [{"addr": "a", "state": "pending"}]}}`,
		"unknown field": `{"version": 1, "entry": {"id": "A", "x": 1, "recipients": [{"addr": "a", "state": "pending"}]}}`,
		"bad state":     `{"version": 1, "entry": {"id": "A", "recipients": [{"addr": "a", "state": "gone"}]}}`,
		"bad id":        `{"version": 1, "entry": {"id": "../A", "recipients": [{"addr": "a", "state": "pending"}]}}`,
		"no recipients": `{"version": 1, "entry": {"id": "A", "recipients": []}}`,
		"trailing":      `{"version": 1, "entry": {"id": "A", "recipients": [{"addr": "a", "state": "pending"}]}} {}`,
		"null entry":    `{"version": 1, "entry": null}`,
		"bad reason":    `{"version": 1, "entry": {"id": "A", "recipients": [{"addr": "a", "state": "failed", "reason": "x"}]}}`,
	} {
		if _, err := DecodeState([]byte(bad)); err == nil {
			t.Errorf("%s: decoded", name)
		}
	}
}

// FuzzDecodeState: the decoder never panics, and what it accepts encodes
// and decodes to the same encoding.
func FuzzDecodeState(f *testing.F) {
	b, _ := EncodeState(sampleEntry("ID"))
	f.Add(b)
	f.Fuzz(func(t *testing.T, b []byte) {
		e, err := DecodeState(b)
		if err != nil {
			return
		}
		enc, err := EncodeState(e)
		if err != nil {
			t.Fatalf("accepted state does not encode: %v", err)
		}
		e2, err := DecodeState(enc)
		if err != nil {
			t.Fatalf("re-encoded state does not decode: %v\n%s", err, enc)
		}
		enc2, _ := EncodeState(e2)
		if !bytes.Equal(enc, enc2) {
			t.Fatalf("not stable:\n%s\n%s", enc, enc2)
		}
	})
}

// TestDirStoreNamedFiles: where unnamed files cannot be linked, Put writes
// a named temporary file and leaves nothing of it.
func TestDirStoreNamedFiles(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	s, err := OpenDir(dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	t.Logf("unnamed files here: %v", s.unnamed.Load())
	s.unnamed.Store(false)
	if err := s.Put(ctx, sampleEntry("ID1"), strings.NewReader("message")); err != nil {
		t.Fatal(err)
	}
	if err := s.Put(ctx, sampleEntry("ID1"), strings.NewReader("other")); !errors.Is(err, ErrExists) {
		t.Errorf("second Put: %v", err)
	}
	if n := names(t, dir); strings.Join(n, " ") != ".lock ID1.msg" {
		t.Errorf("after Put: %v", n)
	}
	m, err := s.Open(ctx, "ID1")
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	if b, _ := io.ReadAll(Reader(m)); string(b) != "message" {
		t.Errorf("message %q", b)
	}
	if e, err := s.Get(ctx, "ID1"); err != nil || e.Size != 7 {
		t.Errorf("Get: %+v %v", e, err)
	}
}
