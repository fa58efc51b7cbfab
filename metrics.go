package esmtp

import (
	"errors"
	"strconv"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/caddy-esmtp/caddy-esmtp/session"
)

// metrics are the esmtp collectors of one Caddy metrics registry (one per
// loaded config), shared by every esmtp handler of that config. They show
// on Caddy's admin endpoint at /metrics.
type metrics struct {
	sessionsOpen  prometheus.Gauge
	sessionsTotal prometheus.Counter
	messages      *prometheus.CounterVec
	recipients    prometheus.Counter
	bytes         prometheus.Counter
	tls           *prometheus.CounterVec
	auth          *prometheus.CounterVec
	hookDuration  *prometheus.HistogramVec

	// Children resolved once rather than per call (label hashing and a
	// map lookup each time, for every header and body chunk a sub-handler
	// sees): messages by code class, and hookDuration by (handler, event).
	codeClass [6]prometheus.Counter
	hooks     sync.Map // hookKey -> prometheus.Observer
}

// hookKey is a (handler, event) label pair of hookDuration.
type hookKey struct{ handler, event string }

const namespace = "caddy_esmtp"

// newMetrics registers the collectors on reg, reusing the ones another
// esmtp handler of the same config registered already.
func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	var errs []error
	register := func(c prometheus.Collector) prometheus.Collector {
		if err := reg.Register(c); err != nil {
			var are prometheus.AlreadyRegisteredError
			if errors.As(err, &are) {
				return are.ExistingCollector
			}
			errs = append(errs, err)
		}
		return c
	}
	m := &metrics{
		sessionsOpen: register(prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: namespace, Name: "sessions_open", Help: "SMTP sessions in progress.",
		})).(prometheus.Gauge),
		sessionsTotal: register(prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: namespace, Name: "sessions_total", Help: "SMTP sessions accepted.",
		})).(prometheus.Counter),
		messages: register(prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: namespace, Name: "messages_total", Help: "Messages by the class of their final reply (2xx accepted, 4xx deferred, 5xx rejected).",
		}, []string{"code_class"})).(*prometheus.CounterVec),
		recipients: register(prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: namespace, Name: "recipients_total", Help: "Recipients of accepted messages.",
		})).(prometheus.Counter),
		bytes: register(prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: namespace, Name: "message_bytes_total", Help: "Bytes of accepted messages.",
		})).(prometheus.Counter),
		tls: register(prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: namespace, Name: "tls_sessions_total", Help: "TLS sessions (STARTTLS or implicit) by result.",
		}, []string{"result"})).(*prometheus.CounterVec),
		auth: register(prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: namespace, Name: "auth_total", Help: "AUTH attempts by result (success, failure, error).",
		}, []string{"result"})).(*prometheus.CounterVec),
		hookDuration: register(prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: namespace, Name: "handler_duration_seconds", Help: "Time spent in sub-handler calls.",
			Buckets: []float64{.00001, .0001, .001, .01, .1, 1, 10},
		}, []string{"handler", "event"})).(*prometheus.HistogramVec),
	}
	// The queues' figures, read at each scrape.
	register(queueCollector{})
	for _, i := range []int{2, 4, 5} { // the classes a final reply can have
		m.codeClass[i] = m.messages.WithLabelValues(strconv.Itoa(i) + "xx")
	}
	return m, errors.Join(errs...)
}

// observer adapts metrics to session.Observer.
type observer struct{ m *metrics }

func (o observer) SessionStarted() { o.m.sessionsOpen.Inc(); o.m.sessionsTotal.Inc() }
func (o observer) SessionEnded()   { o.m.sessionsOpen.Dec() }

func (o observer) Message(code int, size int64, rcpts int) {
	if c := code / 100; c >= 0 && c < len(o.m.codeClass) && o.m.codeClass[c] != nil {
		o.m.codeClass[c].Inc()
	} else {
		o.m.messages.WithLabelValues(strconv.Itoa(code/100) + "xx").Inc()
	}
	if code < 400 {
		o.m.recipients.Add(float64(rcpts))
		o.m.bytes.Add(float64(size))
	}
}

func (o observer) TLS(ok bool) {
	if ok {
		o.m.tls.WithLabelValues("success").Inc()
	} else {
		o.m.tls.WithLabelValues("failure").Inc()
	}
}

func (o observer) Auth(result string) { o.m.auth.WithLabelValues(result).Inc() }

func (o observer) Hook(handler, event string, d time.Duration) {
	k := hookKey{handler, event}
	h, ok := o.m.hooks.Load(k)
	if !ok {
		h, _ = o.m.hooks.LoadOrStore(k, o.m.hookDuration.WithLabelValues(handler, event))
	}
	h.(prometheus.Observer).Observe(d.Seconds())
}

var _ session.Observer = observer{}
