package queue

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
)

// StateVersion is the version of the state encoding that EncodeState
// writes and DecodeState reads.
//
// Version 1 is one JSON object:
//
//	{"version": 1, "entry": {<Entry: the Envelope's fields, "size",
//	 "attempts", "next_attempt">}}
//
// with the field names of the json tags of Entry, Envelope, Client,
// Recipient and Outcome; times in RFC 3339 with nanoseconds. A later
// version gets a new number and DecodeState a case for it: files written
// by an older release must stay readable.
const StateVersion = 1

// maxState bounds a state file: far above any real envelope (recipients
// are limited by the engine), small enough to refuse a corrupt file.
const maxState = 16 << 20

type stateFile struct {
	Version int    `json:"version"`
	Entry   *Entry `json:"entry"`
}

// EncodeState returns the encoding of e (see StateVersion).
func EncodeState(e *Entry) ([]byte, error) {
	if err := e.check(); err != nil {
		return nil, err
	}
	b, err := json.Marshal(stateFile{Version: StateVersion, Entry: e})
	if err != nil {
		return nil, err
	}
	return append(b, '\n'), nil
}

// DecodeState decodes a state written by EncodeState. It is strict: an
// unknown version or field, trailing data, or an entry that could not have
// been written (no recipients, an unknown state, a bad id) is an error.
func DecodeState(b []byte) (*Entry, error) {
	if len(b) > maxState {
		return nil, errors.New("queue: state too large")
	}
	var v struct {
		Version *int            `json:"version"`
		Entry   json.RawMessage `json:"entry"`
	}
	d := json.NewDecoder(bytes.NewReader(b))
	d.DisallowUnknownFields()
	if err := d.Decode(&v); err != nil {
		return nil, fmt.Errorf("queue: decoding state: %w", err)
	}
	if _, err := d.Token(); err != io.EOF {
		return nil, errors.New("queue: decoding state: trailing data")
	}
	if v.Version == nil {
		return nil, errors.New("queue: decoding state: no version")
	}
	switch *v.Version {
	case 1:
	default:
		return nil, fmt.Errorf("queue: decoding state: unknown version %d", *v.Version)
	}
	if len(v.Entry) == 0 || bytes.Equal(v.Entry, []byte("null")) {
		return nil, errors.New("queue: decoding state: no entry")
	}
	var e Entry
	d = json.NewDecoder(bytes.NewReader(v.Entry))
	d.DisallowUnknownFields()
	if err := d.Decode(&e); err != nil {
		return nil, fmt.Errorf("queue: decoding state: %w", err)
	}
	if err := e.check(); err != nil {
		return nil, err
	}
	return &e, nil
}

// FileVersion is the version of DirStore's entry file layout, written in
// each file's trailer and checked when it is read.
//
// Version 2 (version 1 was the unreleased two-file layout: a bare message
// in <id>.msg and its state in <id>.state, not read by this release) is
// one file per entry, <id>.msg:
//
//	<the message, Size bytes>
//	<the entry's state as Put stored it: EncodeState, n bytes>
//	"#esmtp-queue VVV NNNNNNNNNN\n"  (the trailer: 28 bytes, VVV the
//	                                  file version, NNNNNNNNNN n, both
//	                                  zero-padded decimal)
//
// so the message starts at offset 0 and ends where the state begins:
// Size = file size - n - 28, and the state's Size must say the same.
// Later states go to <id>.state (EncodeState alone), which overrides the
// one in <id>.msg; the entry file is never rewritten.
const FileVersion = 2

const (
	trailerMagic = "#esmtp-queue "
	trailerLen   = len(trailerMagic) + 3 + 1 + 10 + 1
)

// appendTrailer appends the trailer for a state of n bytes.
func appendTrailer(b []byte, n int) []byte {
	return fmt.Appendf(b, "%s%03d %010d\n", trailerMagic, FileVersion, n)
}

// parseTrailer returns the state length a trailer gives. It is strict: a
// file that does not end in a trailer of FileVersion is refused.
func parseTrailer(t []byte) (int64, error) {
	if len(t) != trailerLen || string(t[:len(trailerMagic)]) != trailerMagic {
		return 0, fmt.Errorf("queue: not a queue file of version %d (no trailer)", FileVersion)
	}
	t = t[len(trailerMagic):]
	ver, ok1 := decimal(t[:3])
	n, ok2 := decimal(t[4:14])
	if !ok1 || t[3] != ' ' || !ok2 || t[14] != '\n' {
		return 0, errors.New("queue: malformed queue file trailer")
	}
	if ver != FileVersion {
		return 0, fmt.Errorf("queue: queue file version %d unknown (this release reads version %d)", ver, FileVersion)
	}
	return n, nil
}

func decimal(b []byte) (int64, bool) {
	var n int64
	for _, c := range b {
		if c < '0' || c > '9' {
			return 0, false
		}
		n = n*10 + int64(c-'0')
	}
	return n, true
}

// readEntryFile reads the trailer of an entry file of size bytes and,
// with withState, the state it holds. msgSize is the message's size; the
// state's Size is checked against it.
func readEntryFile(r io.ReaderAt, size int64, withState bool) (e *Entry, msgSize int64, err error) {
	if size < int64(trailerLen) {
		return nil, 0, fmt.Errorf("queue: not a queue file of version %d (%d bytes)", FileVersion, size)
	}
	t := make([]byte, trailerLen)
	if _, err := r.ReadAt(t, size-int64(trailerLen)); err != nil {
		return nil, 0, err
	}
	n, err := parseTrailer(t)
	if err != nil {
		return nil, 0, err
	}
	if n > maxState || n > size-int64(trailerLen) {
		return nil, 0, fmt.Errorf("queue: queue file trailer: state of %d bytes in a file of %d", n, size)
	}
	msgSize = size - int64(trailerLen) - n
	if !withState {
		return nil, msgSize, nil
	}
	b := make([]byte, n)
	if _, err := r.ReadAt(b, msgSize); err != nil {
		return nil, 0, err
	}
	if e, err = DecodeState(b); err != nil {
		return nil, 0, err
	}
	if e.Size != msgSize {
		return nil, 0, fmt.Errorf("queue: message is %d bytes, state says %d", msgSize, e.Size)
	}
	return e, msgSize, nil
}
