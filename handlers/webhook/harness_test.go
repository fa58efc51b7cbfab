package webhook

import (
	"testing"

	"go.uber.org/zap"
	"go.uber.org/zap/zaptest"

	"github.com/caddy-esmtp/caddy-esmtp/internal/smtptest"
	"github.com/caddy-esmtp/caddy-esmtp/session"
)

// provision provisions w through Caddy's API, with its logger writing to
// the test log.
func provision(tb testing.TB, w *Webhook) *Webhook {
	tb.Helper()
	if err := smtptest.Provision(w); err != nil {
		tb.Fatalf("provisioning webhook: %v", err)
	}
	w.logger = zaptest.NewLogger(tb, zaptest.Level(zap.InfoLevel))
	tb.Cleanup(func() { w.Cleanup() })
	return w
}

// fileSpool is an engine configuration whose spool holds every message
// in a file in a fresh directory (its memory budget is one byte), so
// that tests read the message from a file and can check that nothing is
// left there.
func fileSpool(tb testing.TB) session.Config {
	return session.Config{SpoolMemory: 1, SpoolDir: tb.TempDir()}
}

// spools are the engine's spools the tests run with: in memory and in a
// file.
func spools(tb testing.TB) map[string]session.Config {
	return map[string]session.Config{"memory": {}, "file": fileSpool(tb)}
}
