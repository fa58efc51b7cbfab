package session

import "time"

// Observer receives the engine's measurements, for metrics. Every method
// must be cheap and safe for concurrent use. The Caddy module feeds
// Prometheus collectors with it.
type Observer interface {
	// SessionStarted and SessionEnded bracket each session that was
	// accepted (not refused at connect for limits or shutdown).
	SessionStarted()
	SessionEnded()
	// Message reports the end of a message: the final reply code, the
	// message size in bytes and its number of recipients.
	Message(code int, size int64, recipients int)
	// TLS reports a TLS session: STARTTLS completed (or failed, ok false),
	// or a session that was TLS from the start.
	TLS(ok bool)
	// Auth reports an AUTH attempt: "success", "failure" or "error".
	Auth(result string)
	// Hook reports one sub-handler call and how long it took.
	Hook(handler, event string, d time.Duration)
}

// nopObserver is used when Config.Observer is nil.
type nopObserver struct{}

func (nopObserver) SessionStarted()                    {}
func (nopObserver) SessionEnded()                      {}
func (nopObserver) Message(int, int64, int)            {}
func (nopObserver) TLS(bool)                           {}
func (nopObserver) Auth(string)                        {}
func (nopObserver) Hook(string, string, time.Duration) {}
