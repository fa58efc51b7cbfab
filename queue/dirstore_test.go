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
	if n := names(t, dir); len(n) != 1 || n[0] != ".lock" {
		t.Errorf("left in the directory: %v", n)
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

// TestDirStoreRecovery: what OpenDir does with what a crash can leave.
func TestDirStoreRecovery(t *testing.T) {
	dir := t.TempDir()
	write := func(name, content string) {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	state := func(e *Entry) string {
		b, err := EncodeState(e)
		if err != nil {
			t.Fatal(err)
		}
		return string(b)
	}
	good := sampleEntry("GOOD")
	good.Size = 5
	write("GOOD.msg", "hello")
	write("GOOD.state", state(good))
	write(".tmp-HALF.msg-0011", "half a mess")
	write(".tmp-GOOD.state-0022", "{\"vers")
	write("NOSTATE.msg", "never acknowledged")
	nomsg := sampleEntry("NOMSG")
	write("NOMSG.state", state(nomsg))
	write("BAD.msg", "x")
	write("BAD.state", "{\"version\": 1, \"entry\": {\"id\": \"BAD\"}}")
	short := sampleEntry("SHORT")
	short.Size = 100
	write("SHORT.msg", "cut")
	write("SHORT.state", state(short))

	s, err := OpenDir(dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	want := []string{".lock", "GOOD.msg", "GOOD.state", "corrupt"}
	if got := names(t, dir); strings.Join(got, " ") != strings.Join(want, " ") {
		t.Errorf("after recovery: %v, want %v", got, want)
	}
	want = []string{"BAD.msg", "BAD.state", "NOMSG.state", "SHORT.msg", "SHORT.state"}
	if got := names(t, filepath.Join(dir, "corrupt")); strings.Join(got, " ") != strings.Join(want, " ") {
		t.Errorf("set aside: %v, want %v", got, want)
	}
	if l, err := s.List(context.Background()); err != nil || len(l) != 1 || l[0].ID != "GOOD" {
		t.Errorf("List: %v %v", l, err)
	}
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
