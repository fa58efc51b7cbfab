package queue

import (
	"context"
	"errors"
	"io"
)

// ErrNotFound is returned by a Store for an id it does not hold.
var ErrNotFound = errors.New("queue: no such entry")

// ErrExists is returned by Store.Put for an id the store already holds.
var ErrExists = errors.New("queue: entry exists")

// Store keeps queue entries durably. The Queue holds all delivery logic;
// a Store only persists: DirStore in a directory, a replicated store later.
// Every method is safe for concurrent use; the Queue never calls Update or
// Remove concurrently for the same id.
type Store interface {
	// Put stores a new entry: the message read from msg to its end, and
	// e (whose Size Put sets). When Put returns nil both are durable
	// (what a 250 promises); on error nothing of the entry remains (or
	// what remains is removed when the store is next opened).
	Put(ctx context.Context, e *Entry, msg io.Reader) error
	// Get returns the entry id's last stored state, or ErrNotFound.
	Get(ctx context.Context, id string) (*Entry, error)
	// List returns every entry, in no particular order.
	List(ctx context.Context) ([]*Entry, error)
	// Update replaces the state of an existing entry atomically (the old
	// state or the new one, never a mix) and durably before returning.
	// The message is never changed.
	Update(ctx context.Context, e *Entry) error
	// Open opens the message of entry id for reading, as many times and
	// from as many goroutines as needed, until Close.
	Open(ctx context.Context, id string) (Message, error)
	// Remove deletes the entry (state and message) durably. Removing an
	// id the store does not hold is ErrNotFound.
	Remove(ctx context.Context, id string) error
}

// Message is a stored message.
type Message interface {
	io.ReaderAt
	io.Closer
	// Size is the message's size in bytes.
	Size() int64
}

// Reader returns a reader over the whole of m, starting at its beginning;
// each call returns a new reader.
func Reader(m Message) *io.SectionReader { return io.NewSectionReader(m, 0, m.Size()) }
