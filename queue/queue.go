package queue

import (
	"cmp"
	"context"
	"encoding/base32"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"
)

// DeliverFunc makes one delivery attempt of entry e to the recipients
// rcpts (copies of e's Pending and Deferred recipients, in e's order), the
// message being msg (read it with Reader, as often as needed). It returns
// one Outcome per recipient, in rcpts' order; a missing outcome counts as
// 451 4.3.0. It should return when ctx is done (the queue stops, or the
// entry is deleted): the recipients are then tried again later, which is
// the one way a delivery can be repeated. e is a copy: changing it changes
// nothing.
type DeliverFunc func(ctx context.Context, e *Entry, rcpts []Recipient, msg Message) []Outcome

// BounceFunc queues a delivery status notification: a new message from the
// null sender (env.From is "") to the original sender. It must store it
// durably before returning, like Queue.Enqueue (the default).
type BounceFunc func(ctx context.Context, env Envelope, msg io.Reader) (string, error)

// Clock is the queue's time: the system's by default, a fake one in tests.
type Clock interface {
	// Now returns the current time.
	Now() time.Time
	// AfterFunc calls f in its own goroutine once d has elapsed, unless
	// the returned stop is called first.
	AfterFunc(d time.Duration, f func()) (stop func() bool)
}

type systemClock struct{}

func (systemClock) Now() time.Time { return time.Now() }
func (systemClock) AfterFunc(d time.Duration, f func()) func() bool {
	return time.AfterFunc(d, f).Stop
}

// Defaults of Options.
const (
	DefaultRetryInterval    = 5 * time.Minute
	DefaultMaxRetryInterval = time.Hour
	DefaultMaxAge           = 5 * 24 * time.Hour
	DefaultWorkers          = 16
)

// Options configure a Queue.
type Options struct {
	// RetryInterval is the wait after a message's first failed attempt
	// (DefaultRetryInterval when zero); each further attempt doubles it,
	// up to MaxRetryInterval (see Options.Backoff).
	RetryInterval time.Duration
	// MaxRetryInterval caps the wait between attempts
	// (DefaultMaxRetryInterval when zero, and never below RetryInterval).
	MaxRetryInterval time.Duration
	// MaxAge is how long a message is retried: a recipient still
	// deferred after MaxAge fails (DefaultMaxAge when zero).
	MaxAge time.Duration
	// DelayWarning is the age at which the sender of a message that is
	// still deferred is told so, once (Action: delayed); zero never.
	DelayWarning time.Duration
	// Workers bounds the delivery passes that run at once
	// (DefaultWorkers when zero).
	Workers int
	// Deliver makes the delivery attempts. Required.
	Deliver DeliverFunc
	// Bounce queues the DSNs the queue writes; nil queues them in this
	// queue (Enqueue).
	Bounce BounceFunc
	// Hostname names this MTA in DSNs (Reporting-MTA); "localhost" when
	// empty.
	Hostname string
	// Clock is the queue's time; nil is the system clock.
	Clock Clock
	// Logger logs every attempt, bounce and error; nil logs nothing.
	Logger *zap.Logger
}

// Backoff returns the wait after a message's attempt number n (1 for the
// first): RetryInterval doubled n-1 times, capped at MaxRetryInterval.
// With the defaults: 5m, 10m, 20m, 40m, then 1h, 1h, ... The queue also
// never waits past the message's MaxAge (its last attempt is at MaxAge),
// nor, while a delay warning is still to be sent, past DelayWarning.
func (o *Options) Backoff(n int) time.Duration {
	d := o.RetryInterval
	for i := 1; i < n && d < o.MaxRetryInterval; i++ {
		d *= 2
	}
	return min(d, o.MaxRetryInterval)
}

// Stats are a queue's figures for metrics.
type Stats struct {
	// Length is the number of entries.
	Length int
	// Oldest is the age of the oldest entry, 0 when empty.
	Oldest time.Duration
	// Running is the number of delivery passes under way.
	Running int
	// Delivered, Deferred and Failed count recipient attempts by
	// outcome since New (Failed includes expiries).
	Delivered, Deferred, Failed uint64
	// Retries counts recipient attempts that were not the first.
	Retries uint64
	// Bounces counts the DSNs queued; BouncesDropped those not sent
	// because the message had the null sender.
	Bounces, BouncesDropped uint64
}

// ErrStopped is returned by Start on a queue that was stopped.
var ErrStopped = errors.New("queue: stopped")

// Queue delivers the messages of a Store: each pass over an entry tries
// its pending and deferred recipients, writes their states, then queues
// the DSNs they call for; an entry whose recipients are all final and
// reported is removed. See the package documentation.
type Queue struct {
	store Store
	opt   Options
	clock Clock
	log   *zap.Logger

	mu      sync.Mutex
	items   map[string]*item
	started bool
	stopped bool

	kick     chan struct{}
	stopc    chan struct{}
	loopDone chan struct{}
	sem      chan struct{}
	wg       sync.WaitGroup
	ctx      context.Context // the deliveries'; cancelled by a Stop cut short
	cancel   context.CancelFunc

	delivered, deferred, failed, retries, bounces, dropped atomic.Uint64
}

// item is an entry in memory: its last stored state and its schedule.
type item struct {
	e       *Entry
	running bool
	done    chan struct{}      // closed when the running pass ends
	cancel  context.CancelFunc // the running pass's
	deleted bool               // Delete is under way: never dispatched again
	now     bool               // Retry or Flush: deliver at once
	notify  time.Time          // a pass is due then for notifications only
}

// due returns when the item's next pass is due.
func (it *item) due() time.Time {
	if it.now {
		return time.Time{}
	}
	d := it.e.NextAttempt
	if !it.notify.IsZero() && it.notify.Before(d) {
		d = it.notify
	}
	return d
}

// New returns a queue over store. Call Start to deliver.
func New(store Store, opt Options) (*Queue, error) {
	if opt.Deliver == nil {
		return nil, errors.New("queue: no Deliver function")
	}
	if opt.RetryInterval <= 0 {
		opt.RetryInterval = DefaultRetryInterval
	}
	if opt.MaxRetryInterval <= 0 {
		opt.MaxRetryInterval = DefaultMaxRetryInterval
	}
	opt.MaxRetryInterval = max(opt.MaxRetryInterval, opt.RetryInterval)
	if opt.MaxAge <= 0 {
		opt.MaxAge = DefaultMaxAge
	}
	if opt.Workers <= 0 {
		opt.Workers = DefaultWorkers
	}
	if opt.Hostname == "" {
		opt.Hostname = "localhost"
	}
	q := &Queue{store: store, opt: opt, clock: opt.Clock, log: opt.Logger,
		items: map[string]*item{}, kick: make(chan struct{}, 1), stopc: make(chan struct{}),
		loopDone: make(chan struct{}), sem: make(chan struct{}, opt.Workers)}
	if q.clock == nil {
		q.clock = systemClock{}
	}
	if q.log == nil {
		q.log = zap.NewNop()
	}
	if q.opt.Bounce == nil {
		q.opt.Bounce = q.Enqueue
	}
	q.ctx, q.cancel = context.WithCancel(context.Background())
	return q, nil
}

var idEncoding = base32.HexEncoding.WithPadding(base32.NoPadding)

// NewID returns a 16-character queue id that sorts by time (48 bits of
// Unix milliseconds, 32 random bits, base32hex), the form the engine's
// transaction ids have.
func NewID(t time.Time) string {
	var b [10]byte
	binary.BigEndian.PutUint64(b[:8], uint64(t.UnixMilli())<<16)
	binary.BigEndian.PutUint32(b[6:], rand.Uint32())
	return idEncoding.EncodeToString(b[:])
}

// Enqueue stores a new message, read from msg to its end, with its
// envelope: when it returns nil the message is durable and the caller may
// answer 250. The recipients start Pending (their other state fields are
// ignored); an empty env.ID gets NewID, a zero env.Arrival now. The first
// attempt is due at once (once the queue is started).
func (q *Queue) Enqueue(ctx context.Context, env Envelope, msg io.Reader) (string, error) {
	now := q.clock.Now()
	if env.ID == "" {
		env.ID = NewID(now)
	}
	if env.Arrival.IsZero() {
		env.Arrival = now
	}
	e := &Entry{Envelope: env, NextAttempt: now}
	e.Recipients = make([]Recipient, len(env.Recipients))
	for i, r := range env.Recipients {
		e.Recipients[i] = Recipient{Addr: r.Addr, Notify: r.Notify, ORCPT: r.ORCPT, Route: r.Route, State: Pending}
	}
	if err := q.store.Put(ctx, e, msg); err != nil {
		return "", err
	}
	q.mu.Lock()
	q.items[e.ID] = &item{e: e.Clone()}
	q.mu.Unlock()
	q.log.Info("queued", zap.String("queue_id", e.ID), zap.String("from", e.From),
		zap.Int("recipients", len(e.Recipients)), zap.Int64("size", e.Size))
	q.wake()
	return e.ID, nil
}

// Start loads the store's entries and starts delivering: every entry
// resumes where its state says (an attempt cut by a crash is made again).
func (q *Queue) Start(ctx context.Context) error {
	q.mu.Lock()
	if q.stopped {
		q.mu.Unlock()
		return ErrStopped
	}
	if q.started {
		q.mu.Unlock()
		return nil
	}
	q.mu.Unlock()
	es, err := q.store.List(ctx)
	if err != nil {
		return err
	}
	now := q.clock.Now()
	q.mu.Lock()
	defer q.mu.Unlock()
	for _, e := range es {
		if _, ok := q.items[e.ID]; ok {
			continue
		}
		it := &item{e: e}
		for _, r := range e.Recipients {
			if r.State.Final() && !r.Reported {
				it.notify = now // a DSN that a crash kept from being queued
			}
		}
		q.items[e.ID] = it
	}
	q.started = true
	go q.loop()
	q.log.Info("queue started", zap.Int("entries", len(q.items)))
	return nil
}

// Stop stops starting delivery passes and waits for the running ones to
// end, or for ctx: then it cancels them and returns ctx's error without
// waiting longer. Nothing is lost either way: a pass writes each state
// before the next step, and one cut short is made again after a restart.
func (q *Queue) Stop(ctx context.Context) error {
	q.mu.Lock()
	if !q.started || q.stopped {
		q.stopped = true
		q.mu.Unlock()
		return nil
	}
	q.stopped = true
	close(q.stopc)
	q.mu.Unlock()
	<-q.loopDone
	done := make(chan struct{})
	go func() {
		q.wg.Wait()
		close(done)
	}()
	select {
	case <-done:
		q.cancel()
		return nil
	case <-ctx.Done():
		q.cancel()
		return ctx.Err()
	}
}

// wake makes the scheduler look at the items again.
func (q *Queue) wake() {
	select {
	case q.kick <- struct{}{}:
	default:
	}
}

// loop is the scheduler: it starts the passes that are due, as many as
// there are free workers, and sleeps until the next one is due or
// something changes.
func (q *Queue) loop() {
	defer close(q.loopDone)
	var stopTimer func() bool
	for {
		now := q.clock.Now()
		var next time.Time
		q.mu.Lock()
	scan:
		for _, it := range q.items {
			if it.running || it.deleted {
				continue
			}
			due := it.due()
			if due.After(now) {
				if next.IsZero() || due.Before(next) {
					next = due
				}
				continue
			}
			select {
			case q.sem <- struct{}{}:
				q.dispatch(it)
			default:
				// Every worker busy: a pass ending wakes the loop, which
				// looks again; no need to look further (nor at a timer)
				// now, which under a backlog would be a scan of every
				// entry for every message queued.
				next = time.Time{}
				break scan
			}
		}
		q.mu.Unlock()
		if stopTimer != nil {
			stopTimer()
			stopTimer = nil
		}
		if !next.IsZero() {
			stopTimer = q.clock.AfterFunc(next.Sub(now), q.wake)
			// Time moved on while the timer was set from now: look again
			// rather than wake late (a fake clock jumps).
			if !q.clock.Now().Before(next) {
				q.wake()
			}
		}
		select {
		case <-q.kick:
		case <-q.stopc:
			if stopTimer != nil {
				stopTimer()
			}
			return
		}
	}
}

// dispatch starts a pass over it; q.mu is held and a worker slot taken.
func (q *Queue) dispatch(it *item) {
	ctx, cancel := context.WithCancel(q.ctx)
	it.running, it.cancel, it.done = true, cancel, make(chan struct{})
	force := it.now
	it.now, it.notify = false, time.Time{}
	e := it.e.Clone()
	q.wg.Add(1)
	go func() {
		defer func() {
			cancel()
			q.mu.Lock()
			it.running = false
			close(it.done)
			q.mu.Unlock()
			<-q.sem
			q.wake()
			q.wg.Done()
		}()
		q.pass(ctx, it, e, force)
	}()
}

// save stores e's new state and makes it the item's.
func (q *Queue) save(ctx context.Context, it *item, e *Entry) {
	if err := q.store.Update(context.WithoutCancel(ctx), e); err != nil {
		// The queue goes on with the state in memory: this process
		// repeats nothing; a restart would repeat the attempt.
		q.log.Error("storing queue state failed", zap.String("queue_id", e.ID), zap.Error(err))
	}
	q.mu.Lock()
	it.e = e.Clone()
	q.mu.Unlock()
}

// pass is one delivery pass over an entry: the attempt if due (or
// forced), the notifications, the removal of a finished entry.
//
// The states are stored after the attempt, and again once the DSN they
// call for is queued, except where the entry is removed right after
// instead: an attempt that leaves every recipient final with no DSN due
// (all delivered, no NOTIFY=SUCCESS) stores nothing before the removal,
// and a pass that queued the last DSN does not store the recipients as
// reported before removing the entry. A crash before the removal then
// makes the cut pass again (its deliveries, its DSN): at least once.
func (q *Queue) pass(ctx context.Context, it *item, e *Entry, force bool) {
	now := q.clock.Now()
	dirty := false
	if force || !e.NextAttempt.After(now) {
		dirty = q.attempt(ctx, e)
	}
	if dirty && (ctx.Err() != nil || !q.quietEnd(e)) {
		q.save(ctx, it, e)
		dirty = false
	}
	if ctx.Err() != nil {
		return // cancelled by Stop or Delete: they take it from here
	}
	if q.notify(ctx, it, e, false) {
		dirty = true
	}
	if e.Done() && q.remove(ctx, it, e.ID) {
		return
	}
	if dirty {
		q.save(ctx, it, e)
	}
}

// quietEnd reports whether e's pass can end with the entry's removal and
// no DSN: every recipient is final and none that is not yet reported
// asks for a notification (or the sender is the null one, who gets none).
func (q *Queue) quietEnd(e *Entry) bool {
	for i := range e.Recipients {
		r := &e.Recipients[i]
		if !r.State.Final() {
			return false
		}
		if r.Reported || e.From == "" {
			continue
		}
		if (r.State == Failed && r.Wants(NotifyFailure)) || (r.State == Delivered && r.Wants(NotifySuccess)) {
			return false
		}
	}
	return true
}

// remove deletes a finished entry; it reports whether it is gone.
func (q *Queue) remove(ctx context.Context, it *item, id string) bool {
	if err := q.store.Remove(context.WithoutCancel(ctx), id); err != nil && !errors.Is(err, ErrNotFound) {
		q.log.Error("removing a queue entry failed", zap.String("queue_id", id), zap.Error(err))
		return false
	}
	q.mu.Lock()
	if q.items[id] == it {
		delete(q.items, id)
	}
	q.mu.Unlock()
	q.log.Info("removed from the queue", zap.String("queue_id", id))
	return true
}

// attempt tries e's pending and deferred recipients once and records the
// outcome in e (the caller stores it); it reports whether it made one.
func (q *Queue) attempt(ctx context.Context, e *Entry) bool {
	var idx []int
	var rcpts []Recipient
	for i, r := range e.Recipients {
		if !r.State.Final() {
			idx = append(idx, i)
			rcpts = append(rcpts, r)
		}
	}
	if len(idx) == 0 {
		return false
	}
	var outs []Outcome
	msg, err := q.store.Open(ctx, e.ID)
	if err != nil {
		q.log.Error("opening a queued message failed", zap.String("queue_id", e.ID), zap.Error(err))
		outs = nil
	} else {
		outs = q.callDeliver(ctx, e.Clone(), rcpts, msg)
		msg.Close()
	}
	now := q.clock.Now()
	expired := !now.Before(e.Arrival.Add(q.opt.MaxAge))
	e.Attempts++
	for k, i := range idx {
		r := &e.Recipients[i]
		o := Outcome{Code: 451, Enhanced: "4.3.0", Text: "no outcome for this recipient"}
		if k < len(outs) {
			o = outs[k]
		}
		if o.Code < 200 || o.Code >= 600 || (o.Code >= 300 && o.Code < 400) {
			o = Outcome{Code: 451, Enhanced: "4.3.0", Text: fmt.Sprintf("unexpected reply code %d: %s", o.Code, o.Text), RemoteMTA: o.RemoteMTA, TLSPolicy: o.TLSPolicy}
		}
		if r.Attempts > 0 {
			q.retries.Add(1)
		}
		r.Attempts++
		r.LastAttempt = now
		r.Reply = &o
		switch {
		case o.Success():
			r.State = Delivered
			q.delivered.Add(1)
		case o.Permanent():
			r.State = Failed
			q.failed.Add(1)
		case expired:
			r.State, r.Reason = Failed, ReasonExpired
			q.failed.Add(1)
		default:
			r.State = Deferred
			q.deferred.Add(1)
		}
		q.log.Info("delivery attempt", zap.String("queue_id", e.ID), zap.String("rcpt", r.Addr),
			zap.String("state", string(r.State)), zap.Int("code", o.Code), zap.String("status", o.Status()),
			zap.String("reply", o.Text), zap.String("remote_mta", o.RemoteMTA), zap.String("tls_policy", o.TLSPolicy), zap.Int("attempts", r.Attempts),
			zap.Duration("age", now.Sub(e.Arrival)))
	}
	e.NextAttempt = q.nextAttempt(e, now)
	return true
}

// nextAttempt returns when e's next attempt is due after an attempt that
// ended at now: Backoff, but never after MaxAge, nor after DelayWarning
// while a warning is to be sent; now when nothing is left to deliver.
func (q *Queue) nextAttempt(e *Entry, now time.Time) time.Time {
	warn := false
	for _, r := range e.Recipients {
		if !r.State.Final() && !r.DelayReported && r.Wants(NotifyDelay) {
			warn = true
		}
	}
	if e.Done() || !q.pending(e) {
		return now
	}
	next := now.Add(q.opt.Backoff(e.Attempts))
	if end := e.Arrival.Add(q.opt.MaxAge); next.After(end) {
		next = end
		if end.Before(now) {
			next = now
		}
	}
	if w := e.Arrival.Add(q.opt.DelayWarning); q.opt.DelayWarning > 0 && warn && w.After(now) && next.After(w) {
		next = w
	}
	return next
}

func (q *Queue) pending(e *Entry) bool {
	for _, r := range e.Recipients {
		if !r.State.Final() {
			return true
		}
	}
	return false
}

// callDeliver calls Deliver, turning a panic into a temporary failure.
func (q *Queue) callDeliver(ctx context.Context, e *Entry, rcpts []Recipient, msg Message) (outs []Outcome) {
	defer func() {
		if v := recover(); v != nil {
			q.log.Error("deliver panicked", zap.String("queue_id", e.ID), zap.Any("panic", v))
			outs = nil
		}
	}()
	return q.opt.Deliver(ctx, e, rcpts, msg)
}

// List returns a copy of every entry, oldest first.
func (q *Queue) List() []*Entry {
	q.mu.Lock()
	out := make([]*Entry, 0, len(q.items))
	for _, it := range q.items {
		out = append(out, it.e.Clone())
	}
	q.mu.Unlock()
	slices.SortFunc(out, func(a, b *Entry) int {
		return cmp.Or(a.Arrival.Compare(b.Arrival), cmp.Compare(a.ID, b.ID))
	})
	return out
}

// Get returns a copy of entry id, or ErrNotFound.
func (q *Queue) Get(id string) (*Entry, error) {
	q.mu.Lock()
	defer q.mu.Unlock()
	it, ok := q.items[id]
	if !ok || it.deleted {
		return nil, ErrNotFound
	}
	return it.e.Clone(), nil
}

// Flush makes every entry's next attempt due at once.
func (q *Queue) Flush() {
	q.mu.Lock()
	for _, it := range q.items {
		it.now = true
	}
	q.mu.Unlock()
	q.wake()
}

// Retry makes entry id's next attempt due at once.
func (q *Queue) Retry(id string) error {
	q.mu.Lock()
	it, ok := q.items[id]
	if ok && !it.deleted {
		it.now = true
	}
	q.mu.Unlock()
	if !ok {
		return ErrNotFound
	}
	q.wake()
	return nil
}

// Delete removes entry id from the queue. A pass running over it is
// cancelled and waited for (up to ctx). With bounce, the recipients not
// yet delivered fail (Reason "deleted") and the sender gets a DSN for
// those whose NOTIFY asks for failures, as for any failure.
func (q *Queue) Delete(ctx context.Context, id string, bounce bool) error {
	q.mu.Lock()
	it, ok := q.items[id]
	if !ok || it.deleted {
		q.mu.Unlock()
		return ErrNotFound
	}
	it.deleted = true
	running, done, cancel := it.running, it.done, it.cancel
	q.mu.Unlock()
	if running {
		cancel()
		select {
		case <-done:
		case <-ctx.Done():
			q.mu.Lock()
			it.deleted = false
			q.mu.Unlock()
			return ctx.Err()
		}
	}
	q.mu.Lock()
	e := it.e.Clone()
	gone := q.items[id] != it // the pass finished the entry meanwhile
	q.mu.Unlock()
	if gone {
		return nil
	}
	if bounce {
		now := q.clock.Now()
		for i := range e.Recipients {
			if r := &e.Recipients[i]; !r.State.Final() {
				r.State, r.Reason, r.LastAttempt = Failed, ReasonDeleted, now
				q.failed.Add(1)
			}
		}
		q.save(ctx, it, e)
		if q.notify(ctx, it, e, true) {
			q.save(ctx, it, e)
		}
	}
	q.log.Info("deleted from the queue", zap.String("queue_id", id), zap.Bool("bounce", bounce))
	q.remove(ctx, it, id)
	return nil
}

// Stats returns the queue's figures.
func (q *Queue) Stats() Stats {
	now := q.clock.Now()
	q.mu.Lock()
	s := Stats{Length: len(q.items)}
	for _, it := range q.items {
		if age := now.Sub(it.e.Arrival); age > s.Oldest {
			s.Oldest = age
		}
		if it.running {
			s.Running++
		}
	}
	q.mu.Unlock()
	s.Delivered, s.Deferred, s.Failed = q.delivered.Load(), q.deferred.Load(), q.failed.Load()
	s.Retries, s.Bounces, s.BouncesDropped = q.retries.Load(), q.bounces.Load(), q.dropped.Load()
	return s
}
