package session

import (
	"context"
	"errors"
	"time"

	"go.uber.org/zap"
)

// The dispatch: how the engine asks the sub-handlers. Everything that calls
// into a sub-handler goes through this file, with one fail-closed path
// (invoke, and safely for the calls that give no reply).

// hooked is one sub-handler's hook of type H, with its name (for logs and
// metrics) and its matcher (nil: it takes everything).
type hooked[H any] struct {
	name  string
	h     H
	match Matcher
	slot  int // the sub-handler's place in the list: where its view is kept
}

// chain is the sub-handler list compiled by hook, once per Server.
type chain struct {
	connect      []hooked[ConnectHook]
	helo         []hooked[HeloHook]
	mail         []hooked[MailHook]
	rcpt         []hooked[RcptHook]
	data         []hooked[DataHook]
	header       []hooked[HeaderHook]
	endOfHeaders []hooked[EndOfHeadersHook]
	body         []hooked[BodyHook]
	message      []hooked[MessageHook]
	abort        []hooked[AbortHook]
	close        []hooked[CloseHook]
	verb         []hooked[VerbHook]
	ext          []hooked[ExtensionHook]
	auth         []hooked[AuthHook]
	// deliveries are the DeliverHooks and PrepareHooks, in order.
	deliveries []hooked[any]
	// spools: some sub-handler reads the whole message (MessageReader).
	spools bool
}

func collect[H any](handlers []SubHandler) []hooked[H] {
	var out []hooked[H]
	for i, sh := range handlers {
		if h, ok := sh.Handler.(H); ok {
			out = append(out, hooked[H]{name: sh.Name, h: h, match: sh.Match, slot: i})
		}
	}
	return out
}

func compile(handlers []SubHandler) *chain {
	c := &chain{
		connect:      collect[ConnectHook](handlers),
		helo:         collect[HeloHook](handlers),
		mail:         collect[MailHook](handlers),
		rcpt:         collect[RcptHook](handlers),
		data:         collect[DataHook](handlers),
		header:       collect[HeaderHook](handlers),
		endOfHeaders: collect[EndOfHeadersHook](handlers),
		body:         collect[BodyHook](handlers),
		message:      collect[MessageHook](handlers),
		abort:        collect[AbortHook](handlers),
		close:        collect[CloseHook](handlers),
		verb:         collect[VerbHook](handlers),
		ext:          collect[ExtensionHook](handlers),
		auth:         collect[AuthHook](handlers),
	}
	for i, sh := range handlers {
		_, prep := sh.Handler.(PrepareHook)
		_, del := sh.Handler.(DeliverHook)
		if prep || del {
			c.deliveries = append(c.deliveries, hooked[any]{name: sh.Name, h: sh.Handler, match: sh.Match, slot: i})
		}
		mr, isReader := sh.Handler.(MessageReader)
		if (prep || del) && (!isReader || mr.ReadsMessage()) || !(prep || del) && isReader && mr.ReadsMessage() {
			c.spools = true
		}
	}
	return c
}

// streams reports whether any sub-handler wants the message content as it
// streams in, or whole.
func (c *chain) streams() bool {
	return c.spools || len(c.header) > 0 || len(c.endOfHeaders) > 0 || len(c.body) > 0
}

// scope is how much of the transaction a matcher is checked against.
type scope uint8

const (
	scopeSession   scope = iota // the session (connect, HELO, verbs, AUTH)
	scopeSender                 // and the sender being given (MAIL)
	scopeRecipient              // and the recipient being given (RCPT)
)

// matches reports whether a sub-handler with matcher m is asked about an
// event of scope sc; p is the sender or recipient being given.
func (s *Session) matches(m Matcher, sc scope, p Path) bool {
	if m == nil {
		return true
	}
	if !m.MatchSession(s) {
		return false
	}
	switch sc {
	case scopeSender:
		return m.MatchSender(s, p)
	case scopeRecipient:
		return s.txn != nil && m.MatchSender(s, s.txn.From) && m.MatchRecipient(s, p)
	}
	return true
}

// recipientsFor returns the transaction's recipients that the matcher m of
// the sub-handler in the list's place slot takes: all of them when m is
// nil, none when the session or the sender does not match. The result is
// kept, by place, until the recipients change (a streamed message asks
// for every chunk).
func (s *Session) recipientsFor(m Matcher, slot int) []Recipient {
	txn := s.txn
	if m == nil {
		return txn.Recipients
	}
	if slot < len(txn.views) && txn.views[slot] != nil {
		return txn.views[slot]
	}
	rs := []Recipient{} // not nil: computed
	if m.MatchSession(s) && m.MatchSender(s, txn.From) {
		for _, r := range txn.Recipients {
			if m.MatchRecipient(s, r.Path) {
				rs = append(rs, r)
			}
		}
	}
	if slot >= len(txn.views) {
		txn.views = append(txn.views, make([][]Recipient, slot+1-len(txn.views))...)
	}
	txn.views[slot] = rs
	return rs
}

// askIn calls the hooks in order until one has an opinion, skipping those
// whose matcher does not take the event (scope sc, about p).
func askIn[H any](s *Session, event string, hooks []hooked[H], sc scope, p Path, call func(context.Context, H) (*Reply, error)) *Reply {
	for _, hk := range hooks {
		if !s.matches(hk.match, sc, p) {
			continue
		}
		if r := invoke(s, event, hk, nil, call); r != nil {
			return r
		}
	}
	return nil
}

// ask is askIn for session events.
func ask[H any](s *Session, event string, hooks []hooked[H], call func(context.Context, H) (*Reply, error)) *Reply {
	return askIn(s, event, hooks, scopeSession, Path{}, call)
}

// askMessage calls the hooks of a message event (DATA, end of message) in
// order until one has an opinion; a hook with a matcher is asked only when
// some recipient matches, and sees only those.
func askMessage[H any](s *Session, event string, hooks []hooked[H], call func(context.Context, H) (*Reply, error)) *Reply {
	for _, hk := range hooks {
		if r := s.inView(hk.match, hk.slot, func() *Reply { return invoke(s, event, hk, nil, call) }); r != nil {
			return r
		}
	}
	return nil
}

// inView runs f with the transaction's recipients limited to those the
// matcher m (of the sub-handler at slot) takes, or not at all (nil) when it
// takes none.
func (s *Session) inView(m Matcher, slot int, f func() *Reply) *Reply {
	if m == nil {
		return f()
	}
	rs := s.recipientsFor(m, slot)
	if len(rs) == 0 {
		return nil
	}
	txn := s.txn
	all := txn.Recipients
	txn.Recipients = rs
	defer func() { txn.Recipients = all }()
	return f()
}

// stream gives one streamed event (header, end of headers, body chunk) to
// every hook in order; the first failure fails the message at its end.
func stream[H any](s *Session, a *assembler, event string, hooks []hooked[H], call func(context.Context, H) (*Reply, error)) {
	for _, hk := range hooks {
		if r := s.inView(hk.match, hk.slot, func() *Reply { return invoke(s, event, hk, s.hookContext(), call) }); r != nil {
			a.fail(r)
			return
		}
	}
}

func (s *Session) emitHeader(a *assembler, h HeaderField) {
	stream(s, a, "header", s.srv.hooks.header, func(ctx context.Context, hk HeaderHook) (*Reply, error) {
		return nil, hk.Header(ctx, s, h)
	})
}

func (s *Session) emitEndOfHeaders(a *assembler, raw []byte) {
	stream(s, a, "end of headers", s.srv.hooks.endOfHeaders, func(ctx context.Context, hk EndOfHeadersHook) (*Reply, error) {
		return nil, hk.EndOfHeaders(ctx, s, raw)
	})
}

func (s *Session) emitBody(a *assembler, chunk []byte) {
	stream(s, a, "body", s.srv.hooks.body, func(ctx context.Context, hk BodyHook) (*Reply, error) {
		return nil, hk.Body(ctx, s, chunk)
	})
}

// hookContext is the context hooks get: one per session rather than one
// per call (a timer and five allocations each), renewed when less than
// 15/16 of HandlerTimeout is left, so each call has at least that much
// before its context is done. invoke fails a call that returns after its
// context is done or after the whole HandlerTimeout.
func (s *Session) hookContext() context.Context {
	now := time.Now()
	if s.streamCtx == nil || s.streamDeadline.Sub(now) < s.cfg.HandlerTimeout-s.cfg.HandlerTimeout/16 {
		if s.streamCancel != nil {
			s.streamCancel()
		}
		s.streamDeadline = now.Add(s.cfg.HandlerTimeout)
		s.streamCtx, s.streamCancel = context.WithDeadline(s.ctx, s.streamDeadline)
	}
	return s.streamCtx
}

// invoke calls one hook with ctx (nil: hookContext), failing closed: an
// error, a panic, an invalid reply or a call that ran past HandlerTimeout
// gives 451 4.3.0. A *Reply returned as the error is used as the reply.
func invoke[H any](s *Session, event string, hk hooked[H], ctx context.Context, call func(context.Context, H) (*Reply, error)) (r *Reply) {
	if ctx == nil {
		ctx = s.hookContext()
	}
	start := time.Now()
	defer func() {
		if p := recover(); p != nil {
			s.logPanic(event, hk.name, p)
			r = replyHandlerFailed
		}
	}()
	r, err := call(ctx, hk.h)
	took := time.Since(start)
	s.cfg.Observer.Hook(hk.name, event, took)
	if err == nil && (ctx.Err() != nil || took > s.cfg.HandlerTimeout) {
		err = context.DeadlineExceeded
	}
	if err != nil {
		var rep *Reply
		if errors.As(err, &rep) && rep.valid() && rep.Code >= 400 {
			return rep
		}
		s.log.Error("sub-handler failed", zap.String("session", s.id), zap.String("event", event),
			zap.String("handler", hk.name), zap.Error(err))
		return replyHandlerFailed
	}
	if r != nil && !r.valid() {
		s.log.Error("sub-handler gave an invalid reply", zap.String("session", s.id), zap.String("event", event),
			zap.String("handler", hk.name), zap.Int("code", r.Code), zap.String("enhanced", r.Enhanced))
		return replyHandlerFailed
	}
	return r
}

// safely calls f, a call into the sub-handler name at event, and reports
// whether it returned: a panic is logged with its stack and ends only that
// call, so no sub-handler can take the session, let alone Caddy, down.
func (s *Session) safely(event, name string, f func()) (ok bool) {
	defer func() {
		if p := recover(); p != nil {
			s.logPanic(event, name, p)
			ok = false
		}
	}()
	f()
	return true
}

// logPanic logs a sub-handler's panic at ERROR with the stack.
func (s *Session) logPanic(event, name string, p any) {
	s.log.Error("sub-handler panicked", zap.String("session", s.id), zap.String("event", event),
		zap.String("handler", name), zap.Any("panic", p), zap.StackSkip("stack", 2))
}
