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
