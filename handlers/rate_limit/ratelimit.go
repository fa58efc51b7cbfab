// Package ratelimit is the sub-handler esmtp.handlers.rate_limit: it limits
// how many connections, messages and recipients a client may send per
// time window, with token buckets from golang.org/x/time/rate.
//
//	rate_limit {
//		connections 20 1m    # per client address
//		messages    100 1h   # per client address, or per login
//		recipients  500 1h   # per client address, or per login
//	}
//
// Each limit is a bucket that holds count tokens and refills at count per
// window, so a client may send a burst of count at once, then count per
// window on average. Over the limit:
//
//   - connections: 421 4.7.0 instead of the greeting, and the connection
//     closes;
//   - messages: 451 4.7.1 to MAIL FROM;
//   - recipients: 451 4.7.1 to RCPT TO.
//
// The client is its IP address; IPv6 clients are counted by their /64
// network (ipv6_prefix), since one host commonly has a whole /64. Messages
// and recipients of a client that authenticated (AUTH, or LOGIN given by
// an XCLIENT proxy) are counted per login instead, so that many users
// behind one address do not share a limit. Every MAIL and every RCPT that
// reaches this sub-handler counts, refused or not by later sub-handlers:
// put rate_limit first.
//
// The counters live in memory, in this sub-handler instance: a reload
// starts every client afresh. At most max_clients clients are tracked; a
// client idle for the longest window is forgotten (its bucket is full
// again by then, so nothing changes), and past max_clients the least
// recently seen client is forgotten early, which only makes the limits
// more lenient for it.
package ratelimit

import (
	"container/list"
	"context"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"sync"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"go.uber.org/zap"
	"golang.org/x/time/rate"

	"github.com/caddy-esmtp/caddy-esmtp/internal/caddyopt"
	"github.com/caddy-esmtp/caddy-esmtp/internal/clientnet"
	"github.com/caddy-esmtp/caddy-esmtp/session"
)

func init() {
	caddy.RegisterModule(&RateLimit{})
}

// Defaults.
const (
	// DefaultMaxClients is the default of RateLimit.MaxClients.
	DefaultMaxClients = 100_000
	// DefaultIPv4Prefix is the default of RateLimit.IPv4Prefix: each IPv4
	// address is a client.
	DefaultIPv4Prefix = 32
	// DefaultIPv6Prefix is the default of RateLimit.IPv6Prefix: each IPv6
	// /64 network is a client.
	DefaultIPv6Prefix = 64
)

var (
	// replyConnections refuses a connection. The engine writes no
	// enhanced status code on a greeting, so the 4.7.0 is in the text,
	// as Postfix and the engine's own connection limits send it.
	replyConnections = &session.Reply{Code: 421,
		Lines: []string{"4.7.0 Too many connections from your address, try again later"}, Close: true}
	replyMessages   = session.NewReply(451, "4.7.1", "Too many messages, slow down and try again later")
	replyRecipients = session.NewReply(451, "4.7.1", "Too many recipients, slow down and try again later")
)

// Limit is count events per window.
type Limit struct {
	// Count is how many events a client may have per window, and also
	// how many at once (the bucket's size). Must be positive.
	Count int `json:"count,omitempty"`
	// Window is the time in which Count events are allowed, such as "1m"
	// or "1h". Must be positive.
	Window caddy.Duration `json:"window,omitempty"`
}

// RateLimit limits connections, messages and recipients per client.
type RateLimit struct {
	// Connections limits the connections per client address; over the
	// limit the client gets 421 4.7.0 at connect and is disconnected.
	Connections *Limit `json:"connections,omitempty"`
	// Messages limits MAIL FROM commands per client (per login once
	// authenticated); over the limit MAIL gets 451 4.7.1.
	Messages *Limit `json:"messages,omitempty"`
	// Recipients limits RCPT TO commands per client (per login once
	// authenticated); over the limit RCPT gets 451 4.7.1.
	Recipients *Limit `json:"recipients,omitempty"`
	// MaxClients bounds how many clients (addresses and logins) are
	// tracked at once, to bound memory. Past it, the least recently
	// seen client is forgotten. Default: 100000.
	MaxClients int `json:"max_clients,omitempty"`
	// IPv4Prefix is the prefix length that makes one IPv4 client:
	// 32 (default) counts each address, 24 each /24 network.
	IPv4Prefix int `json:"ipv4_prefix,omitempty"`
	// IPv6Prefix is the prefix length that makes one IPv6 client.
	// Default: 64, since a host commonly has a whole /64 to pick
	// addresses from; 128 counts each address.
	IPv6Prefix int `json:"ipv6_prefix,omitempty"`
	// Exempt lists client networks (CIDR, or single addresses) that are
	// never limited, such as trusted relays or an XCLIENT proxy.
	Exempt []string `json:"exempt,omitempty"`

	exempt    []netip.Prefix
	limits    [kinds]*Limit
	maxWindow time.Duration
	now       func() time.Time
	logger    *zap.Logger

	mu      sync.Mutex
	clients map[string]*list.Element // of *entry
	lru     list.List                // front: most recently seen
	evicted bool                     // a client was forgotten before its time (logged once)
}

// kind is what a bucket counts.
type kind int

const (
	connections kind = iota
	messages
	recipients
	kinds
)

var kindNames = [kinds]string{"connections", "messages", "recipients"}

// entry is the buckets of one address or login.
type entry struct {
	key      string
	buckets  [kinds]*rate.Limiter
	lastSeen time.Time
}

// CaddyModule returns the Caddy module information.
func (*RateLimit) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "esmtp.handlers.rate_limit",
		New: func() caddy.Module { return new(RateLimit) },
	}
}

// Provision checks the limits and fills in defaults.
func (rl *RateLimit) Provision(ctx caddy.Context) error {
	rl.logger = ctx.Logger(rl)
	if rl.now == nil {
		rl.now = time.Now
	}
	rl.limits = [kinds]*Limit{rl.Connections, rl.Messages, rl.Recipients}
	some := false
	for k, l := range rl.limits {
		if l == nil {
			continue
		}
		some = true
		if l.Count <= 0 {
			return fmt.Errorf("rate_limit: %s: count must be positive, got %d", kindNames[k], l.Count)
		}
		if l.Window <= 0 {
			return fmt.Errorf("rate_limit: %s: window must be positive, got %s", kindNames[k], time.Duration(l.Window))
		}
		rl.maxWindow = max(rl.maxWindow, time.Duration(l.Window))
	}
	if !some {
		return fmt.Errorf("rate_limit: connections, messages or recipients is required")
	}
	switch {
	case rl.MaxClients < 0:
		return fmt.Errorf("rate_limit: max_clients must be positive, got %d", rl.MaxClients)
	case rl.MaxClients == 0:
		rl.MaxClients = DefaultMaxClients
	}
	var err error
	if rl.exempt, err = clientnet.Options("rate_limit", &rl.IPv4Prefix, &rl.IPv6Prefix, DefaultIPv4Prefix, DefaultIPv6Prefix, rl.Exempt); err != nil {
		return err
	}
	rl.clients = map[string]*list.Element{}
	return nil
}

// Connect counts a connection of the client's address and refuses it with
// 421 4.7.0 over the limit.
func (rl *RateLimit) Connect(_ context.Context, s *session.Session) (*session.Reply, error) {
	if rl.limits[connections] == nil {
		return nil, nil
	}
	key, ok := rl.addrKey(s)
	if !ok {
		return nil, nil
	}
	return rl.take(s, connections, key, replyConnections), nil
}

// Mail counts a message of the client (its login when authenticated) and
// refuses it with 451 4.7.1 over the limit.
func (rl *RateLimit) Mail(_ context.Context, s *session.Session, _ session.Path, _ session.Params) (*session.Reply, error) {
	return rl.takeClient(s, messages, replyMessages), nil
}

// Rcpt counts a recipient of the client (its login when authenticated)
// and refuses it with 451 4.7.1 over the limit.
func (rl *RateLimit) Rcpt(_ context.Context, s *session.Session, _ session.Path, _ session.Params) (*session.Reply, error) {
	return rl.takeClient(s, recipients, replyRecipients), nil
}

// takeClient takes a token from the bucket of the session's login, or of
// its address.
func (rl *RateLimit) takeClient(s *session.Session, k kind, over *session.Reply) *session.Reply {
	if rl.limits[k] == nil {
		return nil
	}
	key, ok := rl.addrKey(s)
	if !ok {
		return nil
	}
	if user := s.AuthUser(); user != "" {
		key = "user:" + user
	}
	return rl.take(s, k, key, over)
}

// addrKey is the key of the session's client address: its network as
// ipv4_prefix and ipv6_prefix say, or the address itself when it is no IP
// (a unix socket). ok is false for an exempt address.
func (rl *RateLimit) addrKey(s *session.Session) (key string, ok bool) {
	ip := s.RemoteIP()
	if !ip.IsValid() {
		return "addr:" + addrString(s.RemoteAddr()), true
	}
	network, ok := clientnet.Network(ip, rl.exempt, rl.IPv4Prefix, rl.IPv6Prefix)
	if !ok {
		return "", false
	}
	return "ip:" + network, true
}

// take takes one token from the client's bucket of kind k, and returns
// over when there is none.
func (rl *RateLimit) take(s *session.Session, k kind, key string, over *session.Reply) *session.Reply {
	now := rl.now()
	rl.mu.Lock()
	b := rl.bucket(now, k, key)
	ok := b.AllowN(now, 1)
	rl.mu.Unlock()
	if ok {
		return nil
	}
	rl.logger.Info("rate limited",
		zap.String("session", s.ID()),
		zap.String("remote", addrString(s.RemoteAddr())),
		zap.String("limit", kindNames[k]),
		zap.String("client", session.Sanitize(key, 256)))
	return over
}

// bucket returns the bucket of kind k of the client key, creating it, and
// forgets idle clients. rl.mu is held.
func (rl *RateLimit) bucket(now time.Time, k kind, key string) *rate.Limiter {
	// Forget the clients idle for the longest window: their buckets are
	// full again, so forgetting them changes nothing.
	for e := rl.lru.Back(); e != nil; e = rl.lru.Back() {
		c := e.Value.(*entry)
		if now.Sub(c.lastSeen) < rl.maxWindow {
			break
		}
		rl.remove(e)
	}
	var c *entry
	if e, ok := rl.clients[key]; ok {
		c = e.Value.(*entry)
		rl.lru.MoveToFront(e)
	} else {
		for len(rl.clients) >= rl.MaxClients {
			if !rl.evicted {
				rl.evicted = true
				rl.logger.Warn("rate_limit tracks max_clients clients: forgetting the least recently seen early, which makes their limits lenient",
					zap.Int("max_clients", rl.MaxClients))
			}
			rl.remove(rl.lru.Back())
		}
		c = &entry{key: key}
		rl.clients[key] = rl.lru.PushFront(c)
	}
	c.lastSeen = now
	if c.buckets[k] == nil {
		l := rl.limits[k]
		c.buckets[k] = rate.NewLimiter(rate.Every(time.Duration(l.Window)/time.Duration(l.Count)), l.Count) // full
	}
	return c.buckets[k]
}

func (rl *RateLimit) remove(e *list.Element) {
	delete(rl.clients, e.Value.(*entry).key)
	rl.lru.Remove(e)
}

// tracked returns how many clients are tracked (for tests).
func (rl *RateLimit) tracked() int {
	rl.mu.Lock()
	defer rl.mu.Unlock()
	return len(rl.clients)
}

func addrString(a net.Addr) string {
	if a == nil {
		return ""
	}
	return a.String()
}

// UnmarshalCaddyfile sets up the sub-handler from Caddyfile tokens. Syntax:
//
//	rate_limit {
//		connections <count> <window>
//		messages    <count> <window>
//		recipients  <count> <window>
//		max_clients <n>
//		ipv4_prefix <bits>
//		ipv6_prefix <bits>
//		exempt      <cidr...>
//	}
//
// A window is a Caddy duration: 30s, 1m, 1h, 1d. exempt may be repeated;
// every other option is given at most once.
func (rl *RateLimit) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // the sub-handler name
	if d.NextArg() {
		return d.ArgErr()
	}
	opts := caddyopt.New("rate_limit", "exempt")
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		opt := d.Val()
		if err := opts.Once(d); err != nil {
			return err
		}
		switch opt {
		case "connections", "messages", "recipients":
			var count, window string
			if !d.Args(&count, &window) || d.NextArg() {
				return d.Errf("rate_limit: %s takes <count> <window>", opt)
			}
			n, err := strconv.Atoi(count)
			if err != nil || n <= 0 {
				return d.Errf("rate_limit: %s: count must be a positive number, got %q", opt, count)
			}
			w, err := caddy.ParseDuration(window)
			if err != nil || w <= 0 {
				return d.Errf("rate_limit: %s: window must be a positive duration, got %q", opt, window)
			}
			l := &Limit{Count: n, Window: caddy.Duration(w)}
			switch opt {
			case "connections":
				rl.Connections = l
			case "messages":
				rl.Messages = l
			default:
				rl.Recipients = l
			}
		case "max_clients", "ipv4_prefix", "ipv6_prefix":
			var v string
			if !d.Args(&v) || d.NextArg() {
				return d.ArgErr()
			}
			n, err := strconv.Atoi(v)
			if err != nil || n <= 0 {
				return d.Errf("rate_limit: %s must be a positive number, got %q", opt, v)
			}
			switch opt {
			case "max_clients":
				rl.MaxClients = n
			case "ipv4_prefix":
				rl.IPv4Prefix = n
			default:
				rl.IPv6Prefix = n
			}
		case "exempt":
			args := d.RemainingArgs()
			if len(args) == 0 {
				return d.ArgErr()
			}
			for i, v := range args {
				if _, err := clientnet.ParsePrefix(v); err != nil {
					return d.Errf("rate_limit: exempt[%d]: %v", i, err)
				}
			}
			rl.Exempt = append(rl.Exempt, args...)
		default:
			return d.Errf("rate_limit: unknown option %q (known: connections, messages, recipients, max_clients, ipv4_prefix, ipv6_prefix, exempt)", opt)
		}
	}
	if rl.Connections == nil && rl.Messages == nil && rl.Recipients == nil {
		return d.Err("rate_limit: connections, messages or recipients is required")
	}
	return nil
}

// Interface guards
var (
	_ caddy.Provisioner     = (*RateLimit)(nil)
	_ caddyfile.Unmarshaler = (*RateLimit)(nil)
	_ session.ConnectHook   = (*RateLimit)(nil)
	_ session.MailHook      = (*RateLimit)(nil)
	_ session.RcptHook      = (*RateLimit)(nil)
)
