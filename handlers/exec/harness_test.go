package exec

import (
	"testing"

	"go.uber.org/zap"
	"go.uber.org/zap/zaptest"

	"github.com/caddy-esmtp/caddy-esmtp/internal/smtptest"
	"github.com/caddy-esmtp/caddy-esmtp/session"
)

// provision provisions e through Caddy's API, with its logger writing to
// the test log.
func provision(tb testing.TB, e *Exec) *Exec {
	tb.Helper()
	if err := smtptest.Provision(e); err != nil {
		tb.Fatalf("provisioning exec: %v", err)
	}
	e.logger = zaptest.NewLogger(tb, zaptest.Level(zap.InfoLevel))
	return e
}

// serve is smtptest.ServeConfig with the engine's spool files in a fresh
// directory, which it returns; with toFile every message is spooled to a
// file (the memory budget is one byte).
func serve(tb testing.TB, cfg session.Config, toFile bool, handlers ...any) (*smtptest.Server, string) {
	tb.Helper()
	cfg.SpoolDir = tb.TempDir()
	if toFile {
		cfg.SpoolMemory = 1
	}
	return smtptest.ServeConfig(tb, cfg, handlers...), cfg.SpoolDir
}
