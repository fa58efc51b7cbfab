package webhook

import (
	"crypto/hmac"
	"crypto/sha256"
	"hash"
	"io"

	spoolfile "github.com/caddy-esmtp/caddy-esmtp/internal/spool"
)

// spool is a message being written to a spool file (package
// internal/spool), with the state of the json format.
type spool struct {
	file  *spoolfile.Spool
	w     bufferedWriter // file (a bare buffer in tests)
	mac   hash.Hash      // nil without a secret
	size  int64
	err   error
	n     int     // header fields written (json)
	carry []byte  // an incomplete UTF-8 sequence at the end of a chunk (json)
	esc   [6]byte // scratch for \u00XX
}

// bufferedWriter is where a spool writes.
type bufferedWriter interface {
	io.Writer
	io.StringWriter
	Flush() error
}

func newSpool(dir string, secret []byte) (*spool, error) {
	sp := &spool{}
	var tee io.Writer
	if secret != nil {
		sp.mac = hmac.New(sha256.New, secret)
		tee = sp.mac
	}
	f, err := spoolfile.New(dir, "esmtp-webhook-*", tee)
	if err != nil {
		return nil, err
	}
	sp.file, sp.w = f, f
	return sp, nil
}

func (sp *spool) write(p []byte) {
	if sp.err == nil {
		_, sp.err = sp.w.Write(p)
	}
}

func (sp *spool) writeString(v string) {
	if sp.err == nil {
		_, sp.err = sp.w.WriteString(v)
	}
}

// finish flushes the spool and records its size.
func (sp *spool) finish() error {
	if sp.err != nil {
		return sp.err
	}
	size, err := sp.file.Size()
	if err != nil {
		return err
	}
	sp.size = size
	return nil
}

// reader returns a fresh reader of the whole spool, for one attempt. It
// reads with ReadAt, so a transport still reading an earlier attempt's
// body does not disturb it.
func (sp *spool) reader() io.ReadCloser {
	return io.NopCloser(io.NewSectionReader(sp.file.File(), 0, sp.size))
}

// Close closes the spool file (see spoolfile.Spool.Close).
func (sp *spool) Close() { sp.file.Close() }
