// Package greylist is the sub-handler esmtp.handlers.greylist: it answers
// 451 4.7.1 to the first RCPT TO of a new (client network, sender,
// recipient) triplet, and accepts the same triplet when the client tries
// again after a delay. Real mail servers retry; much spam software does
// not.
//
//	greylist {
//		delay 5m     # a retry is accepted this long after the first try
//		expire 24h   # ... and until this long after it
//		keep 36d     # an accepted triplet is remembered this long after its last use
//	}
//
// The client network is the client's IPv4 /24 or IPv6 /64 (ipv4_prefix,
// ipv6_prefix), since big senders retry from another address of the same
// pool. Sender and recipient are compared case-insensitively; the null
// sender <> is a sender like any other. A triplet first seen at T is
// refused until T+delay, accepted from T+delay to T+expire, and after
// T+expire it is new again. Once accepted it passes at once, and each use
// keeps it for another keep. Each RCPT is asked on its own, so a message
// with two new recipients gets 451 for each and the client retries both.
//
// Clients that authenticated (AUTH, or LOGIN from an XCLIENT proxy) and
// clients in exempt are never greylisted. Put greylist after recipients,
// so that only recipients that exist are remembered.
//
// The triplets live in memory, at most max_entries of them (when full, the
// oldest first-seen triplet is forgotten, then the least recently used
// accepted one), and in state_file: it is read when the first greylist
// that names it is loaded and written when a configuration that uses it is
// unloaded (each reload, and a graceful stop), so a reload keeps the
// triplets (old and new configurations share them while both run) and so
// does a restart. A crash loses what changed since the last reload or
// start. Several greylist sub-handlers with the same state_file share
// their triplets.
package greylist

import (
	"container/list"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"go.uber.org/zap"

	"github.com/caddy-esmtp/caddy-esmtp/internal/caddyopt"
	"github.com/caddy-esmtp/caddy-esmtp/internal/clientnet"
	"github.com/caddy-esmtp/caddy-esmtp/session"
)

func init() {
	caddy.RegisterModule(&Greylist{})
}

// Defaults.
const (
	// DefaultDelay is the default of Greylist.Delay.
	DefaultDelay = 5 * time.Minute
	// DefaultExpire is the default of Greylist.Expire.
	DefaultExpire = 24 * time.Hour
	// DefaultKeep is the default of Greylist.Keep: 36 days, so that a
	// monthly mailing list stays accepted.
	DefaultKeep = 36 * 24 * time.Hour
	// DefaultMaxEntries is the default of Greylist.MaxEntries.
	DefaultMaxEntries = 100_000
	// DefaultIPv4Prefix is the default of Greylist.IPv4Prefix.
	DefaultIPv4Prefix = 24
	// DefaultIPv6Prefix is the default of Greylist.IPv6Prefix.
	DefaultIPv6Prefix = 64
)

var replyGreylisted = session.NewReply(451, "4.7.1", "Greylisted, please try again later")

// Greylist refuses new triplets for a while.
type Greylist struct {
	// Delay is how long after the first try a retry is accepted.
	// Default: 5m.
	Delay caddy.Duration `json:"delay,omitempty"`
	// Expire is how long after the first try a retry is still accepted;
	// a later one starts afresh. Must be more than Delay. Default: 24h.
	Expire caddy.Duration `json:"expire,omitempty"`
	// Keep is how long an accepted triplet is remembered after it was
	// last used. Default: 36 days (864h).
	Keep caddy.Duration `json:"keep,omitempty"`
	// MaxEntries bounds the triplets kept in memory (a few hundred
	// bytes each). Default: 100000.
	MaxEntries int `json:"max_entries,omitempty"`
	// StateFile is where the triplets are saved when a configuration is
	// unloaded and read from when one is loaded. Its directory is created
	// if needed. Default: esmtp/greylist.json in Caddy's data directory
	// (such as ~/.local/share/caddy).
	StateFile string `json:"state_file,omitempty"`
	// IPv4Prefix is the prefix length of a client's IPv4 network.
	// Default: 24.
	IPv4Prefix int `json:"ipv4_prefix,omitempty"`
	// IPv6Prefix is the prefix length of a client's IPv6 network.
	// Default: 64.
	IPv6Prefix int `json:"ipv6_prefix,omitempty"`
	// Exempt lists client networks (CIDR, or single addresses) that are
	// never greylisted, such as known senders that do not retry well.
	Exempt []string `json:"exempt,omitempty"`

	exempt []netip.Prefix
	path   string // the absolute state file path, the key in stores
	store  *store
	now    func() time.Time
	logger *zap.Logger
}

// CaddyModule returns the Caddy module information.
func (*Greylist) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "esmtp.handlers.greylist",
		New: func() caddy.Module { return new(Greylist) },
	}
}

// stores are the open state files, shared by the greylist sub-handlers
// that name them, old and new configurations alike during a reload.
var stores = caddy.NewUsagePool()

// Provision checks the configuration and opens the state, reading the
// state file when no running greylist has it open.
func (g *Greylist) Provision(ctx caddy.Context) error {
	g.logger = ctx.Logger(g)
	if g.now == nil {
		g.now = time.Now
	}
	for _, d := range []struct {
		name string
		v    *caddy.Duration
		def  time.Duration
	}{{"delay", &g.Delay, DefaultDelay}, {"expire", &g.Expire, DefaultExpire}, {"keep", &g.Keep, DefaultKeep}} {
		switch {
		case *d.v < 0:
			return fmt.Errorf("greylist: %s must be positive, got %s", d.name, time.Duration(*d.v))
		case *d.v == 0:
			*d.v = caddy.Duration(d.def)
		}
	}
	if g.Expire <= g.Delay {
		return fmt.Errorf("greylist: expire (%s) must be more than delay (%s)", time.Duration(g.Expire), time.Duration(g.Delay))
	}
	switch {
	case g.MaxEntries < 0:
		return fmt.Errorf("greylist: max_entries must be positive, got %d", g.MaxEntries)
	case g.MaxEntries == 0:
		g.MaxEntries = DefaultMaxEntries
	}
	var err error
	if g.exempt, err = clientnet.Options("greylist", &g.IPv4Prefix, &g.IPv6Prefix, DefaultIPv4Prefix, DefaultIPv6Prefix, g.Exempt); err != nil {
		return err
	}
	path := g.StateFile
	if path == "" {
		path = filepath.Join(caddy.AppDataDir(), "esmtp", "greylist.json")
	}
	if path, err = filepath.Abs(path); err != nil {
		return fmt.Errorf("greylist: state_file: %v", err)
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return fmt.Errorf("greylist: state_file: %v", err)
	}
	v, loaded, err := stores.LoadOrNew(path, func() (caddy.Destructor, error) {
		return openStore(path, g.logger)
	})
	if err != nil {
		return fmt.Errorf("greylist: state_file: %v", err)
	}
	g.path, g.store = path, v.(*store)
	if !loaded {
		g.logger.Info("greylist state loaded", zap.String("state_file", path), zap.Int("entries", g.store.len()))
	}
	return nil
}

// Cleanup saves the state file and lets go of the state; the state stays
// in memory while another configuration uses it. Sessions still running
// on this configuration may go on using it. A failed save is logged, not
// returned: it must not stop a reload.
func (g *Greylist) Cleanup() error {
	if g.store == nil {
		return nil
	}
	if n, err := g.store.save(); err != nil {
		g.logger.Error("saving the greylist state", zap.String("state_file", g.path), zap.Error(err))
	} else {
		g.logger.Info("greylist state saved", zap.String("state_file", g.path), zap.Int("entries", n))
	}
	stores.Delete(g.path)
	return nil
}

// Rcpt refuses a recipient of a new or too recent triplet with 451 4.7.1
// and has no opinion on the others.
func (g *Greylist) Rcpt(_ context.Context, s *session.Session, to session.Path, _ session.Params) (*session.Reply, error) {
	if s.AuthUser() != "" {
		return nil, nil
	}
	network, ok := g.network(s)
	if !ok {
		return nil, nil
	}
	k := triplet{Net: network, From: strings.ToLower(s.Transaction().From.Mailbox), Rcpt: strings.ToLower(to.Mailbox)}
	if to.Mailbox == "" {
		k.Rcpt = "postmaster" // <Postmaster>
	}
	pass, st := g.store.check(g.now(), k, g.limits())
	if ce := g.logger.Check(zap.DebugLevel, "greylist"); ce != nil {
		ce.Write(zap.String("session", s.ID()), zap.String("network", network),
			zap.String("from", session.Sanitize(k.From, 256)), zap.String("rcpt", session.Sanitize(k.Rcpt, 256)),
			zap.String("state", st))
	}
	if pass {
		return nil, nil
	}
	return replyGreylisted, nil
}

// network is the session's client network as a string, such as
// 192.0.2.0/24, or the client address itself when it is no IP (a unix
// socket). ok is false for an exempt client.
func (g *Greylist) network(s *session.Session) (string, bool) {
	ip := s.RemoteIP()
	if !ip.IsValid() {
		if a := s.RemoteAddr(); a != nil {
			return a.String(), true
		}
		return "", true
	}
	return clientnet.Network(ip, g.exempt, g.IPv4Prefix, g.IPv6Prefix)
}

func (g *Greylist) limits() limits {
	return limits{delay: time.Duration(g.Delay), expire: time.Duration(g.Expire), keep: time.Duration(g.Keep), max: g.MaxEntries}
}

// limits are the times and bound of one greylist configuration.
type limits struct {
	delay, expire, keep time.Duration
	max                 int
}

// triplet is what greylisting remembers.
type triplet struct {
	// Net is the client network, such as 192.0.2.0/24.
	Net string `json:"net"`
	// From is the sender, lower-cased; "" for <>.
	From string `json:"from"`
	// Rcpt is the recipient, lower-cased.
	Rcpt string `json:"rcpt"`
}

// entry is a remembered triplet.
type entry struct {
	triplet
	// First is when the triplet was (last) first seen.
	First time.Time `json:"first"`
	// Passed is when it was first accepted; zero while it waits.
	Passed time.Time `json:"passed,omitzero"`
	// Last is when it was last accepted.
	Last time.Time `json:"last,omitzero"`
}

// store is the state of one state file: the waiting triplets in the
// order they were first seen, the accepted ones in the order they were
// last used.
type store struct {
	path   string
	logger *zap.Logger

	mu       sync.Mutex
	entries  map[triplet]*list.Element // of *entry
	waiting  list.List                 // oldest First at the front
	accepted list.List                 // oldest Last at the front
	full     bool                      // max_entries was reached (logged once)

	saveMu sync.Mutex // one save at a time
}

// fileFormat is the state file.
type fileFormat struct {
	Version int      `json:"version"`
	Saved   string   `json:"saved"`
	Entries []*entry `json:"entries"`
}

// openStore reads the state file, if there is one. A file that cannot be
// parsed is set aside (renamed with .bad) and the state starts empty: a
// lost greylist only delays mail, a refused configuration stops it.
func openStore(path string, logger *zap.Logger) (*store, error) {
	st := &store{path: path, logger: logger, entries: map[triplet]*list.Element{}}
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return st, nil
	}
	if err != nil {
		return nil, err
	}
	var f fileFormat
	if err := json.Unmarshal(b, &f); err != nil || f.Version != 1 {
		if err == nil {
			err = fmt.Errorf("unknown version %d", f.Version)
		}
		logger.Warn("the greylist state file is unreadable: set aside, starting empty",
			zap.String("state_file", path), zap.String("moved_to", path+".bad"), zap.Error(err))
		os.Rename(path, path+".bad")
		return st, nil
	}
	var waiting, accepted []*entry
	for _, e := range f.Entries {
		if e == nil || e.First.IsZero() {
			continue
		}
		if e.Passed.IsZero() {
			waiting = append(waiting, e)
		} else {
			if e.Last.IsZero() {
				e.Last = e.Passed
			}
			accepted = append(accepted, e)
		}
	}
	slices.SortStableFunc(waiting, func(a, b *entry) int { return a.First.Compare(b.First) })
	slices.SortStableFunc(accepted, func(a, b *entry) int { return a.Last.Compare(b.Last) })
	for _, e := range waiting {
		st.add(&st.waiting, e)
	}
	for _, e := range accepted {
		st.add(&st.accepted, e)
	}
	return st, nil
}

// add puts e at the back of l, replacing an entry of the same triplet.
func (st *store) add(l *list.List, e *entry) {
	if old, ok := st.entries[e.triplet]; ok {
		st.remove(old)
	}
	st.entries[e.triplet] = l.PushBack(e)
}

// remove forgets the entry of el.
func (st *store) remove(el *list.Element) {
	e := el.Value.(*entry)
	delete(st.entries, e.triplet)
	if e.Passed.IsZero() {
		st.waiting.Remove(el)
	} else {
		st.accepted.Remove(el)
	}
}

// Destruct is called when no configuration uses the state any more; the
// last Cleanup saved it.
func (st *store) Destruct() error { return nil }

func (st *store) len() int {
	st.mu.Lock()
	defer st.mu.Unlock()
	return len(st.entries)
}

// check records a try of k at now and reports whether it passes, and the
// triplet's state for the log: new, waiting, passed (first accepted now),
// accepted, restarted (seen again after expire).
func (st *store) check(now time.Time, k triplet, lim limits) (bool, string) {
	st.mu.Lock()
	defer st.mu.Unlock()
	st.expire(now, lim)
	if el, ok := st.entries[k]; ok {
		e := el.Value.(*entry)
		age := now.Sub(e.First)
		switch {
		case !e.Passed.IsZero():
			e.Last = now
			st.accepted.MoveToBack(el)
			return true, "accepted"
		case age > lim.expire:
			// expire removes these; a clock stepped back can leave one.
			e.First = now
			st.waiting.MoveToBack(el)
			return false, "restarted"
		case age >= lim.delay:
			st.waiting.Remove(el)
			e.Passed, e.Last = now, now
			st.entries[k] = st.accepted.PushBack(e)
			return true, "passed"
		default:
			return false, "waiting"
		}
	}
	for len(st.entries) >= lim.max {
		if !st.full {
			st.full = true
			st.logger.Warn("the greylist holds max_entries triplets: forgetting the oldest early",
				zap.Int("max_entries", lim.max), zap.String("state_file", st.path))
		}
		oldest := st.waiting.Front()
		if oldest == nil {
			oldest = st.accepted.Front()
		}
		st.remove(oldest)
	}
	st.entries[k] = st.waiting.PushBack(&entry{triplet: k, First: now})
	return false, "new"
}

// expire forgets waiting triplets older than expire and accepted ones
// unused for keep. st.mu is held.
func (st *store) expire(now time.Time, lim limits) {
	for el := st.waiting.Front(); el != nil; el = st.waiting.Front() {
		if now.Sub(el.Value.(*entry).First) <= lim.expire {
			break
		}
		st.remove(el)
	}
	for el := st.accepted.Front(); el != nil; el = st.accepted.Front() {
		if now.Sub(el.Value.(*entry).Last) <= lim.keep {
			break
		}
		st.remove(el)
	}
}

// save writes the state file atomically (a temporary file, fsynced, then
// renamed over it) and returns the number of entries written.
func (st *store) save() (int, error) {
	st.saveMu.Lock()
	defer st.saveMu.Unlock()
	st.mu.Lock()
	f := fileFormat{Version: 1, Saved: time.Now().UTC().Format(time.RFC3339), Entries: make([]*entry, 0, len(st.entries))}
	for _, l := range []*list.List{&st.waiting, &st.accepted} {
		for el := l.Front(); el != nil; el = el.Next() {
			e := *el.Value.(*entry)
			f.Entries = append(f.Entries, &e)
		}
	}
	st.mu.Unlock()
	b, err := json.Marshal(&f)
	if err != nil {
		return 0, err
	}
	dir := filepath.Dir(st.path)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return 0, err
	}
	tmp, err := os.CreateTemp(dir, filepath.Base(st.path)+".tmp*")
	if err != nil {
		return 0, err
	}
	defer os.Remove(tmp.Name()) // after a successful rename, a no-op
	_, err = tmp.Write(b)
	if err == nil {
		err = tmp.Sync()
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp.Name(), st.path)
	}
	if err != nil {
		return 0, err
	}
	if d, err := os.Open(dir); err == nil {
		d.Sync()
		d.Close()
	}
	return len(f.Entries), nil
}

// UnmarshalCaddyfile sets up the sub-handler from Caddyfile tokens. Syntax:
//
//	greylist [{
//		delay       <duration>
//		expire      <duration>
//		keep        <duration>
//		max_entries <n>
//		state_file  <path>
//		ipv4_prefix <bits>
//		ipv6_prefix <bits>
//		exempt      <cidr...>
//	}]
//
// Durations are Caddy durations: 30s, 5m, 24h, 36d. exempt may be
// repeated; every other option is given at most once.
func (g *Greylist) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // the sub-handler name
	if d.NextArg() {
		return d.ArgErr()
	}
	opts := caddyopt.New("greylist", "exempt")
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		opt := d.Val()
		if err := opts.Once(d); err != nil {
			return err
		}
		switch opt {
		case "delay", "expire", "keep":
			var v string
			if !d.Args(&v) || d.NextArg() {
				return d.ArgErr()
			}
			dur, err := caddy.ParseDuration(v)
			if err != nil || dur <= 0 {
				return d.Errf("greylist: %s must be a positive duration, got %q", opt, v)
			}
			switch opt {
			case "delay":
				g.Delay = caddy.Duration(dur)
			case "expire":
				g.Expire = caddy.Duration(dur)
			default:
				g.Keep = caddy.Duration(dur)
			}
		case "max_entries", "ipv4_prefix", "ipv6_prefix":
			var v string
			if !d.Args(&v) || d.NextArg() {
				return d.ArgErr()
			}
			n, err := strconv.Atoi(v)
			if err != nil || n <= 0 {
				return d.Errf("greylist: %s must be a positive number, got %q", opt, v)
			}
			switch opt {
			case "max_entries":
				g.MaxEntries = n
			case "ipv4_prefix":
				g.IPv4Prefix = n
			default:
				g.IPv6Prefix = n
			}
		case "state_file":
			if !d.Args(&g.StateFile) || d.NextArg() {
				return d.ArgErr()
			}
		case "exempt":
			args := d.RemainingArgs()
			if len(args) == 0 {
				return d.ArgErr()
			}
			for i, v := range args {
				if _, err := clientnet.ParsePrefix(v); err != nil {
					return d.Errf("greylist: exempt[%d]: %v", i, err)
				}
			}
			g.Exempt = append(g.Exempt, args...)
		default:
			return d.Errf("greylist: unknown option %q (known: delay, expire, keep, max_entries, state_file, ipv4_prefix, ipv6_prefix, exempt)", opt)
		}
	}
	return nil
}

// Interface guards
var (
	_ caddy.Provisioner     = (*Greylist)(nil)
	_ caddy.CleanerUpper    = (*Greylist)(nil)
	_ caddyfile.Unmarshaler = (*Greylist)(nil)
	_ session.RcptHook      = (*Greylist)(nil)
)
