package session

import (
	"errors"
	"io"
	"os"
	"sync"
)

// The engine's spool: one per message, when some sub-handler reads whole
// messages (MessageReader; every delivery but discard). The message is
// kept as it arrives, our Received: field first, in pooled memory chunks
// while the message is small and the Server's memory budget
// (Config.SpoolMemory, shared by all its sessions) allows, and in an
// unlinked temporary file in Config.SpoolDir past that. It is written once
// and never rewritten: edits are applied when it is read (see Message).

// spoolChunkSize is the size of the spool's memory chunks: a page, so a
// small message holds little of the budget (10,000 sessions with 4 KiB
// messages fit in 64 MiB; a larger chunk would push them to files, one
// file descriptor each).
const spoolChunkSize = 4 << 10

// maxSpoolMemoryPerMessage bounds the memory one message's spool may hold;
// a larger message goes to a file, so one big message cannot take the
// budget from many small ones.
const maxSpoolMemoryPerMessage = 1 << 20

// maxHeaderFields bounds the header fields of a spooled message (each is
// indexed for the edits); more are refused with 552 5.3.4.
const maxHeaderFields = 10000

var spoolChunks = sync.Pool{New: func() any { return new([spoolChunkSize]byte) }}

var errSpoolReply = NewReply(451, "4.3.0", "Local error in processing (spool); try again later")

// spool is one message being kept. It is written by its session only;
// it may be read from other goroutines (a delivery's HTTP client), which
// after release get errSpoolReleased rather than freed memory.
type spool struct {
	mu       sync.RWMutex // readers against release
	released bool
	srv      *Server
	chunks   []*[spoolChunkSize]byte // the message while in memory
	size     int64                   // bytes written
	file     *os.File                // once spilled: holds every byte
	reserved int64                   // bytes of the Server's budget held
	err      error                   // the first write error
	fields   []fieldRef              // the header fields, in order
	sepOff   int64                   // where the blank line after the header is (or the body starts)
	bodyOff  int64                   // where the body starts
}

// fieldRef is one header field of the spooled message.
type fieldRef struct {
	name string
	off  int64
	n    int64
}

func newSpool(srv *Server) *spool { return &spool{srv: srv} }

// write appends p. A write error is kept and fails the message at its end.
func (sp *spool) write(p []byte) {
	if sp.err != nil {
		sp.size += int64(len(p))
		return
	}
	if sp.file == nil && !sp.fits(int64(len(p))) {
		sp.spill()
	}
	if sp.file != nil {
		if sp.err == nil {
			if _, err := sp.file.WriteAt(p, sp.size); err != nil {
				sp.err = err
			}
		}
		sp.size += int64(len(p))
		return
	}
	for len(p) > 0 {
		i := int(sp.size % spoolChunkSize)
		if i == 0 {
			sp.chunks = append(sp.chunks, spoolChunks.Get().(*[spoolChunkSize]byte))
		}
		n := copy(sp.chunks[len(sp.chunks)-1][i:], p)
		p = p[n:]
		sp.size += int64(n)
	}
}

// fits reserves memory for n more bytes, if the message and the Server's
// budget allow it.
func (sp *spool) fits(n int64) bool {
	need := (sp.size+n+spoolChunkSize-1)/spoolChunkSize*spoolChunkSize - sp.reserved
	if need <= 0 {
		return true
	}
	if sp.reserved+need > maxSpoolMemoryPerMessage {
		return false
	}
	budget := sp.srv.cfg.SpoolMemory
	if sp.srv.spoolUsed.Add(need) > budget {
		sp.srv.spoolUsed.Add(-need)
		return false
	}
	sp.reserved += need
	return true
}

// spill moves the message to an unlinked temporary file.
func (sp *spool) spill() {
	f, err := os.CreateTemp(sp.srv.cfg.SpoolDir, "esmtp-spool-*")
	if err != nil {
		sp.err = err
		return
	}
	if err := os.Remove(f.Name()); err != nil {
		f.Close()
		sp.err = err
		return
	}
	for i, c := range sp.chunks {
		n := min(int64(spoolChunkSize), sp.size-int64(i)*spoolChunkSize)
		if _, err := f.WriteAt(c[:n], int64(i)*spoolChunkSize); err != nil {
			sp.err = err
			break
		}
	}
	sp.file = f
	sp.freeMemory()
}

// errSpoolReleased is what a read of a message gets once its transaction
// has ended.
var errSpoolReleased = errors.New("message read after its transaction ended")

// readAt reads the spool like io.ReaderAt.
func (sp *spool) readAt(p []byte, off int64) (int, error) {
	sp.mu.RLock()
	defer sp.mu.RUnlock()
	if sp.released {
		return 0, errSpoolReleased
	}
	if off >= sp.size {
		return 0, io.EOF
	}
	if int64(len(p)) > sp.size-off {
		p = p[:sp.size-off]
	}
	if sp.file != nil {
		return sp.file.ReadAt(p, off)
	}
	n := 0
	for n < len(p) {
		pos := off + int64(n)
		n += copy(p[n:], sp.chunks[pos/spoolChunkSize][pos%spoolChunkSize:])
	}
	return n, nil
}

// writeTo writes n bytes of the spool from off to w.
func (sp *spool) writeTo(w io.Writer, off, n int64) (int64, error) {
	sp.mu.RLock()
	defer sp.mu.RUnlock()
	if sp.released {
		return 0, errSpoolReleased
	}
	if off+n > sp.size {
		return 0, io.ErrUnexpectedEOF
	}
	if sp.file != nil {
		return io.Copy(w, io.NewSectionReader(sp.file, off, n))
	}
	var total int64
	for total < n {
		pos := off + total
		c := sp.chunks[pos/spoolChunkSize][pos%spoolChunkSize:]
		k, err := w.Write(c[:min(int64(len(c)), n-total)])
		total += int64(k)
		if err != nil {
			return total, err
		}
	}
	return total, nil
}

// freeMemory gives the chunks back to the pool and the budget.
func (sp *spool) freeMemory() {
	for _, c := range sp.chunks {
		spoolChunks.Put(c)
	}
	sp.chunks = nil
	if sp.reserved > 0 {
		sp.srv.spoolUsed.Add(-sp.reserved)
		sp.reserved = 0
	}
}

// release frees everything the spool holds; later reads fail.
func (sp *spool) release() {
	sp.mu.Lock()
	defer sp.mu.Unlock()
	sp.released = true
	sp.freeMemory()
	if sp.file != nil {
		sp.file.Close()
		sp.file = nil
	}
}

// addField records a header field written at off, n bytes long.
func (sp *spool) addField(name string, off, n int64) error {
	if len(sp.fields) >= maxHeaderFields {
		return errTooManyFields
	}
	sp.fields = append(sp.fields, fieldRef{name: name, off: off, n: n})
	return nil
}

var errTooManyFields = NewReply(552, "5.3.4", "Message header has too many fields")

// failure is the reply for a spool that could not keep the message.
func (sp *spool) failure() error {
	if sp.err != nil {
		return errors.Join(errSpoolReply, sp.err)
	}
	return nil
}
