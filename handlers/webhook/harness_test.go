package webhook

import (
	"bufio"
	"io"
	"os"
	"testing"

	"go.uber.org/zap"
	"go.uber.org/zap/zaptest"

	"github.com/caddy-esmtp/caddy-esmtp/internal/smtptest"
)

// provision provisions w through Caddy's API, with its logger writing to
// the test log and its spool files in a fresh directory.
func provision(tb testing.TB, w *Webhook) *Webhook {
	tb.Helper()
	if w.TempDir == "" {
		w.TempDir = tb.TempDir()
	}
	if err := smtptest.Provision(w); err != nil {
		tb.Fatalf("provisioning webhook: %v", err)
	}
	w.logger = zaptest.NewLogger(tb, zaptest.Level(zap.InfoLevel))
	tb.Cleanup(func() { w.Cleanup() })
	return w
}

func bufioWriter(w io.Writer) *bufio.Writer { return bufio.NewWriter(w) }

func readDir(dir string) ([]os.DirEntry, error) { return os.ReadDir(dir) }
