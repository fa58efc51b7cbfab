// Package dnscache is a DNS stub resolver with a cache: it asks recursive
// DNS servers in order and keeps their answers for their TTL. It has the
// lookup methods of *net.Resolver that mail checks need (LookupTXT,
// LookupMX, LookupIPAddr, LookupNetIP, LookupAddr), with the same
// signatures and the same kind of errors, so that it can stand in for one
// (session.Resolver, blitiri.com.ar/go/spf's DNSResolver).
//
// Errors are *net.DNSError: IsNotFound for NXDOMAIN and for NODATA (the
// name exists without records of the type asked), which SPF, DKIM and
// DMARC treat as "none"; IsTemporary, and IsTimeout when nobody answered
// in time, for SERVFAIL, REFUSED and network failures, which they treat as
// "temperror".
//
// A Resolver is safe for concurrent use and meant to be shared: one per
// configuration, not one per query.
package dnscache

import (
	"container/list"
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/miekg/dns"
)

// Defaults of Options.
const (
	DefaultTimeout     = 3 * time.Second
	DefaultMaxEntries  = 10000
	DefaultMaxTTL      = time.Hour
	DefaultNegativeTTL = time.Minute
)

// Options tunes a Resolver. Zero values take the defaults.
type Options struct {
	// Timeout bounds one query to one server (then the next server is
	// asked). Default 3s.
	Timeout time.Duration
	// MaxEntries bounds the answers kept; the least recently used one is
	// dropped to make room. Default 10000.
	MaxEntries int
	// MaxTTL caps how long an answer is kept, whatever its TTL. Default 1h.
	MaxTTL time.Duration
	// NegativeTTL is how long NXDOMAIN and NODATA are kept when the answer
	// carries no SOA record to say (RFC 2308); capped by MaxTTL. Default 1m.
	NegativeTTL time.Duration
	// Now is the clock used for expiry; nil: time.Now. For tests.
	Now func() time.Time
}

// Resolver asks its servers and caches their answers.
type Resolver struct {
	servers []string
	opts    Options
	udp     *dns.Client
	tcp     *dns.Client

	mu       sync.Mutex
	entries  map[key]*list.Element // of *entry
	lru      list.List             // front: most recently used
	inflight map[key]*call
}

// key names one question.
type key struct {
	name  string // lower case, fully qualified
	qtype uint16
}

// entry is one cached answer.
type entry struct {
	key     key
	ans     *Answer
	expires time.Time
}

// call is a query in flight that later askers of the same question wait for.
type call struct {
	done chan struct{}
	ans  *Answer
	err  error
}

// Answer is the records of one name and type, as a server answered them.
type Answer struct {
	// Records are the answer section's records of the type asked (the
	// CNAMEs that led to them left out). Empty for NODATA.
	Records []dns.RR
	// NotFound is set for NXDOMAIN and NODATA.
	NotFound bool
	// Authenticated is the AD bit of the response: the (validating)
	// server says it checked the records with DNSSEC. Only as trustworthy
	// as the path to the server: use a resolver on the same host.
	Authenticated bool
	// Server is the server that answered.
	Server string
}

// ParseServer returns a server address as host:port: a host or IP
// address alone gets port 53.
func ParseServer(s string) (string, error) {
	if s == "" {
		return "", errors.New("empty server address")
	}
	bare := s
	if strings.HasPrefix(s, "[") && strings.HasSuffix(s, "]") {
		bare = s[1 : len(s)-1]
	}
	if ip, err := netip.ParseAddr(bare); err == nil {
		return net.JoinHostPort(ip.String(), "53"), nil
	}
	host, port, err := net.SplitHostPort(s)
	if err != nil {
		if strings.ContainsAny(s, ":[]/ ") {
			return "", fmt.Errorf("%q is not host, host:port or an IP address", s)
		}
		host, port = s, "53"
	}
	if host == "" || strings.ContainsAny(host, "/ ") {
		return "", fmt.Errorf("%q is not host, host:port or an IP address", s)
	}
	if p, err := netip.ParseAddrPort("0.0.0.0:" + port); err != nil || p.Port() == 0 {
		return "", fmt.Errorf("%q: bad port %q", s, port)
	}
	return net.JoinHostPort(host, port), nil
}

// New returns a Resolver that asks servers (see ParseServer) in order.
func New(servers []string, opts Options) (*Resolver, error) {
	if len(servers) == 0 {
		return nil, errors.New("no servers")
	}
	r := &Resolver{opts: opts, entries: map[key]*list.Element{}, inflight: map[key]*call{}}
	for i, s := range servers {
		addr, err := ParseServer(s)
		if err != nil {
			return nil, fmt.Errorf("[%d]: %v", i, err)
		}
		r.servers = append(r.servers, addr)
	}
	switch {
	case r.opts.Timeout < 0:
		return nil, fmt.Errorf("timeout must be positive, got %s", r.opts.Timeout)
	case r.opts.Timeout == 0:
		r.opts.Timeout = DefaultTimeout
	}
	if r.opts.MaxEntries <= 0 {
		r.opts.MaxEntries = DefaultMaxEntries
	}
	if r.opts.MaxTTL <= 0 {
		r.opts.MaxTTL = DefaultMaxTTL
	}
	if r.opts.NegativeTTL <= 0 {
		r.opts.NegativeTTL = DefaultNegativeTTL
	}
	r.opts.NegativeTTL = min(r.opts.NegativeTTL, r.opts.MaxTTL)
	if r.opts.Now == nil {
		r.opts.Now = time.Now
	}
	r.udp = &dns.Client{Net: "udp", Timeout: r.opts.Timeout, UDPSize: 1232}
	r.tcp = &dns.Client{Net: "tcp", Timeout: r.opts.Timeout}
	return r, nil
}

// Servers returns the servers' addresses, in the order they are asked.
func (r *Resolver) Servers() []string { return slices.Clone(r.servers) }

// Len returns the number of answers in the cache.
func (r *Resolver) Len() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.lru.Len()
}

// Lookup returns the answer for name and type qtype (dns.TypeA, ...),
// from the cache or from the servers. A NXDOMAIN or NODATA answer is
// returned with NotFound set and a nil error; the error is a
// *net.DNSError when no server gave an answer.
func (r *Resolver) Lookup(ctx context.Context, name string, qtype uint16) (*Answer, error) {
	k := key{name: strings.ToLower(dns.Fqdn(name)), qtype: qtype}
	if _, ok := dns.IsDomainName(k.name); !ok {
		return nil, &net.DNSError{Err: "no such host", Name: name, IsNotFound: true}
	}
	r.mu.Lock()
	if el, ok := r.entries[k]; ok {
		e := el.Value.(*entry)
		if r.opts.Now().Before(e.expires) {
			r.lru.MoveToFront(el)
			r.mu.Unlock()
			return e.ans, nil
		}
		r.remove(el)
	}
	if c, ok := r.inflight[k]; ok {
		r.mu.Unlock()
		select {
		case <-c.done:
			return c.ans, c.err
		case <-ctx.Done():
			return nil, ctxError(ctx, name)
		}
	}
	c := &call{done: make(chan struct{})}
	r.inflight[k] = c
	r.mu.Unlock()

	ans, ttl, err := r.query(ctx, k)
	c.ans, c.err = ans, err

	r.mu.Lock()
	delete(r.inflight, k)
	if err == nil && ttl > 0 {
		r.store(k, ans, ttl)
	}
	r.mu.Unlock()
	close(c.done)
	return ans, err
}

// store caches ans for ttl; r.mu is held.
func (r *Resolver) store(k key, ans *Answer, ttl time.Duration) {
	if el, ok := r.entries[k]; ok {
		r.remove(el)
	}
	for r.lru.Len() >= r.opts.MaxEntries {
		r.remove(r.lru.Back())
	}
	r.entries[k] = r.lru.PushFront(&entry{key: k, ans: ans, expires: r.opts.Now().Add(ttl)})
}

// remove drops a cache entry; r.mu is held.
func (r *Resolver) remove(el *list.Element) {
	delete(r.entries, el.Value.(*entry).key)
	r.lru.Remove(el)
}

// query asks the servers in order until one answers, and returns the
// answer and how long it may be kept.
func (r *Resolver) query(ctx context.Context, k key) (*Answer, time.Duration, error) {
	m := new(dns.Msg)
	m.SetQuestion(k.name, k.qtype)
	m.RecursionDesired = true
	m.AuthenticatedData = true // ask for the AD bit (RFC 6840 5.7)
	m.SetEdns0(1232, false)
	var lastErr error
	timeout := false
	for _, srv := range r.servers {
		if ctx.Err() != nil {
			return nil, 0, ctxError(ctx, k.name)
		}
		resp, err := r.exchange(ctx, m, srv)
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				timeout = true
			}
			lastErr = err
			continue
		}
		switch resp.Rcode {
		case dns.RcodeSuccess, dns.RcodeNameError:
		default: // SERVFAIL, REFUSED, FORMERR, ...: the next one may do better
			lastErr = fmt.Errorf("server %s answered %s", srv, dns.RcodeToString[resp.Rcode])
			continue
		}
		ans, ttl := r.answer(resp, k.qtype)
		ans.Server = srv
		return ans, ttl, nil
	}
	if ctx.Err() != nil {
		return nil, 0, ctxError(ctx, k.name)
	}
	de := &net.DNSError{Err: "server misbehaving", Name: k.name, IsTemporary: true}
	if timeout {
		de.Err, de.IsTimeout = "i/o timeout", true
	}
	if lastErr != nil {
		de.Err += ": " + lastErr.Error()
	}
	return nil, 0, de
}

// exchange sends m to srv over UDP, and again over TCP when the answer
// was truncated, within the per-query timeout.
func (r *Resolver) exchange(ctx context.Context, m *dns.Msg, srv string) (*dns.Msg, error) {
	ctx, cancel := context.WithTimeout(ctx, r.opts.Timeout)
	defer cancel()
	resp, _, err := r.udp.ExchangeContext(ctx, m, srv)
	if err == nil && resp.Truncated {
		resp, _, err = r.tcp.ExchangeContext(ctx, m, srv)
	}
	if err == nil && resp.Truncated {
		err = errors.New("truncated answer over TCP")
	}
	return resp, err
}

// answer makes an Answer of resp and says how long to keep it.
func (r *Resolver) answer(resp *dns.Msg, qtype uint16) (*Answer, time.Duration) {
	ans := &Answer{Authenticated: resp.AuthenticatedData}
	ttl := r.opts.MaxTTL
	for _, rr := range resp.Answer {
		h := rr.Header()
		if h.Class != dns.ClassINET {
			continue
		}
		if h.Rrtype == qtype {
			ans.Records = append(ans.Records, rr)
		}
		if h.Rrtype == qtype || h.Rrtype == dns.TypeCNAME {
			ttl = min(ttl, time.Duration(h.Ttl)*time.Second)
		}
	}
	if resp.Rcode == dns.RcodeNameError || len(ans.Records) == 0 {
		ans.NotFound = true
		ttl = min(ttl, r.opts.NegativeTTL)
		for _, rr := range resp.Ns {
			if soa, ok := rr.(*dns.SOA); ok {
				ttl = min(r.opts.MaxTTL, time.Duration(min(soa.Minttl, soa.Hdr.Ttl))*time.Second)
				break
			}
		}
	}
	return ans, ttl
}

// ctxError is the error of a lookup cut short by ctx.
func ctxError(ctx context.Context, name string) error {
	err := ctx.Err()
	return &net.DNSError{Err: err.Error(), Name: name,
		IsTimeout: errors.Is(err, context.DeadlineExceeded), IsTemporary: true}
}

// notFound is the error of an answer without records.
func notFound(name string, ans *Answer) error {
	return &net.DNSError{Err: "no such host", Name: name, Server: ans.Server, IsNotFound: true}
}

// LookupTXT returns the TXT records of name, each record's strings joined
// into one as net.Resolver does.
func (r *Resolver) LookupTXT(ctx context.Context, name string) ([]string, error) {
	ans, err := r.Lookup(ctx, name, dns.TypeTXT)
	if err != nil {
		return nil, err
	}
	if ans.NotFound {
		return nil, notFound(name, ans)
	}
	txts := make([]string, 0, len(ans.Records))
	for _, rr := range ans.Records {
		txts = append(txts, strings.Join(rr.(*dns.TXT).Txt, ""))
	}
	return txts, nil
}

// LookupMX returns the MX records of name sorted by preference; hosts are
// fully qualified ("mx.example.com."), a null MX (RFC 7505) is ".".
func (r *Resolver) LookupMX(ctx context.Context, name string) ([]*net.MX, error) {
	ans, err := r.Lookup(ctx, name, dns.TypeMX)
	if err != nil {
		return nil, err
	}
	if ans.NotFound {
		return nil, notFound(name, ans)
	}
	mxs := make([]*net.MX, 0, len(ans.Records))
	for _, rr := range ans.Records {
		mx := rr.(*dns.MX)
		mxs = append(mxs, &net.MX{Host: mx.Mx, Pref: mx.Preference})
	}
	slices.SortStableFunc(mxs, func(a, b *net.MX) int { return int(a.Pref) - int(b.Pref) })
	return mxs, nil
}

// LookupNetIP returns the addresses of host: network "ip4" asks for A
// records, "ip6" for AAAA, "ip" for both. An IP address is returned as is.
func (r *Resolver) LookupNetIP(ctx context.Context, network, host string) ([]netip.Addr, error) {
	if ip, err := netip.ParseAddr(host); err == nil {
		return []netip.Addr{ip}, nil
	}
	var types []uint16
	switch network {
	case "ip":
		types = []uint16{dns.TypeA, dns.TypeAAAA}
	case "ip4":
		types = []uint16{dns.TypeA}
	case "ip6":
		types = []uint16{dns.TypeAAAA}
	default:
		return nil, &net.DNSError{Err: "unsupported network " + network, Name: host}
	}
	answers := make([]*Answer, len(types))
	errs := make([]error, len(types))
	var wg sync.WaitGroup
	for i, t := range types {
		wg.Go(func() { answers[i], errs[i] = r.Lookup(ctx, host, t) })
	}
	wg.Wait()
	var ips []netip.Addr
	var firstErr error
	var last *Answer
	for i, ans := range answers {
		if errs[i] != nil {
			firstErr = cmpOr(firstErr, errs[i])
			continue
		}
		last = ans
		for _, rr := range ans.Records {
			switch rr := rr.(type) {
			case *dns.A:
				if ip, ok := netip.AddrFromSlice(rr.A.To4()); ok {
					ips = append(ips, ip)
				}
			case *dns.AAAA:
				if ip, ok := netip.AddrFromSlice(rr.AAAA.To16()); ok {
					ips = append(ips, ip)
				}
			}
		}
	}
	switch {
	case len(ips) > 0: // as net.Resolver: addresses win over the other type's error
		return ips, nil
	case firstErr != nil:
		return nil, firstErr
	default:
		return nil, notFound(host, last)
	}
}

func cmpOr(a, b error) error {
	if a != nil {
		return a
	}
	return b
}

// LookupIPAddr returns the IPv4 and IPv6 addresses of host.
func (r *Resolver) LookupIPAddr(ctx context.Context, host string) ([]net.IPAddr, error) {
	ips, err := r.LookupNetIP(ctx, "ip", host)
	if err != nil {
		return nil, err
	}
	addrs := make([]net.IPAddr, len(ips))
	for i, ip := range ips {
		addrs[i] = net.IPAddr{IP: ip.AsSlice(), Zone: ip.Zone()}
	}
	return addrs, nil
}

// LookupAddr returns the names of an IP address (its PTR records), fully
// qualified ("mail.example.com.").
func (r *Resolver) LookupAddr(ctx context.Context, addr string) ([]string, error) {
	rev, err := dns.ReverseAddr(addr)
	if err != nil {
		return nil, &net.DNSError{Err: "unrecognized address", Name: addr}
	}
	ans, err := r.Lookup(ctx, rev, dns.TypePTR)
	if err != nil {
		return nil, err
	}
	if ans.NotFound {
		return nil, notFound(addr, ans)
	}
	names := make([]string, 0, len(ans.Records))
	for _, rr := range ans.Records {
		names = append(names, rr.(*dns.PTR).Ptr)
	}
	return names, nil
}
