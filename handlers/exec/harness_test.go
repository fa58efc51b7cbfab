package exec

import (
	"os"
	"testing"

	"go.uber.org/zap"
	"go.uber.org/zap/zaptest"

	"github.com/caddy-esmtp/caddy-esmtp/internal/smtptest"
)

// provision provisions e through Caddy's API, with its logger writing to
// the test log and its spool files in a fresh directory.
func provision(tb testing.TB, e *Exec) *Exec {
	tb.Helper()
	if e.TempDir == "" {
		e.TempDir = tb.TempDir()
	}
	if err := smtptest.Provision(e); err != nil {
		tb.Fatalf("provisioning exec: %v", err)
	}
	e.logger = zaptest.NewLogger(tb, zaptest.Level(zap.InfoLevel))
	return e
}

func readDir(dir string) ([]os.DirEntry, error) { return os.ReadDir(dir) }
