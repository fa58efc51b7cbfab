package mtasts

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Resolver is the DNS the policy discovery uses: the "_mta-sts" TXT
// record and the address of the policy host. session.Resolver and
// *net.Resolver satisfy it.
type Resolver interface {
	LookupTXT(ctx context.Context, name string) ([]string, error)
	LookupIPAddr(ctx context.Context, host string) ([]net.IPAddr, error)
}

// MaxPolicySize bounds the policy file a Fetcher reads.
const MaxPolicySize = 64 << 10

// Fetcher discovers and fetches policies, without caching.
type Fetcher struct {
	// Resolver looks up the TXT record and the policy host's address.
	// Nil: net.DefaultResolver.
	Resolver Resolver
	// ExtraRoots are trusted for the policy host's certificate besides
	// the system roots (for tests).
	ExtraRoots []*x509.Certificate
	// Timeout bounds one policy fetch (default 30s).
	Timeout time.Duration
	// Port is the policy host's HTTPS port (default 443; for tests).
	Port int

	once   sync.Once
	client *http.Client
	err    error
}

func (f *Fetcher) resolver() Resolver {
	if f.Resolver == nil {
		return net.DefaultResolver
	}
	return f.Resolver
}

// Record looks up the MTA-STS record of domain and returns its id; ok is
// false when the domain has none.
func (f *Fetcher) Record(ctx context.Context, res Resolver, domain string) (id string, ok bool, err error) {
	txts, err := res.LookupTXT(ctx, "_mta-sts."+domain)
	if err != nil {
		var de *net.DNSError
		if errors.As(err, &de) && de.IsNotFound {
			return "", false, nil
		}
		return "", false, fmt.Errorf("mta-sts: TXT lookup of _mta-sts.%s: %w", domain, err)
	}
	return SelectRecord(txts)
}

// Policy fetches and parses the policy of domain from
// https://mta-sts.<domain>/.well-known/mta-sts.txt (RFC 8461 3.3): no
// redirects, status 200, Content-Type text/plain, at most MaxPolicySize
// bytes, the certificate verified for the policy host, the host's address
// looked up with res.
func (f *Fetcher) Policy(ctx context.Context, res Resolver, domain string) (*Policy, error) {
	client, err := f.httpClient()
	if err != nil {
		return nil, err
	}
	host := "mta-sts." + domain
	req, err := http.NewRequestWithContext(withResolver(ctx, res), http.MethodGet, "https://"+host+"/.well-known/mta-sts.txt", nil)
	if err != nil {
		return nil, fmt.Errorf("mta-sts: %w", err)
	}
	resp, err := client.Do(req)
	if err != nil {
		return nil, fmt.Errorf("mta-sts: fetching the policy of %s: %w", domain, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("mta-sts: policy of %s: HTTP status %d", domain, resp.StatusCode)
	}
	if mt, _, err := mime.ParseMediaType(resp.Header.Get("Content-Type")); err != nil || mt != "text/plain" {
		return nil, fmt.Errorf("mta-sts: policy of %s: Content-Type %q, not text/plain", domain, resp.Header.Get("Content-Type"))
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, MaxPolicySize+1))
	if err != nil {
		return nil, fmt.Errorf("mta-sts: reading the policy of %s: %w", domain, err)
	}
	if len(body) > MaxPolicySize {
		return nil, fmt.Errorf("mta-sts: policy of %s over %d bytes", domain, MaxPolicySize)
	}
	p, err := ParsePolicy(body)
	if err != nil {
		return nil, fmt.Errorf("%w (domain %s)", err, domain)
	}
	return p, nil
}

type resolverKey struct{}

func withResolver(ctx context.Context, res Resolver) context.Context {
	return context.WithValue(ctx, resolverKey{}, res)
}

func (f *Fetcher) httpClient() (*http.Client, error) {
	f.once.Do(func() {
		roots, err := x509.SystemCertPool()
		if err != nil || roots == nil {
			roots = x509.NewCertPool()
		}
		for _, c := range f.ExtraRoots {
			roots.AddCert(c)
		}
		timeout := f.Timeout
		if timeout <= 0 {
			timeout = 30 * time.Second
		}
		port := f.Port
		if port == 0 {
			port = 443
		}
		dialer := &net.Dialer{Timeout: timeout}
		tr := &http.Transport{
			// The policy host's address comes from the same resolver as
			// the TXT record, never from the system's.
			DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
				host, _, err := net.SplitHostPort(addr)
				if err != nil {
					return nil, err
				}
				res, _ := ctx.Value(resolverKey{}).(Resolver)
				if res == nil {
					res = f.resolver()
				}
				ips, err := res.LookupIPAddr(ctx, host)
				if err != nil {
					return nil, err
				}
				if len(ips) == 0 {
					return nil, fmt.Errorf("no address for %s", host)
				}
				var last error
				for _, ip := range ips {
					c, err := dialer.DialContext(ctx, network, net.JoinHostPort(ip.IP.String(), strconv.Itoa(port)))
					if err == nil {
						return c, nil
					}
					last = err
				}
				return nil, last
			},
			TLSClientConfig:       &tls.Config{RootCAs: roots, MinVersion: tls.VersionTLS12},
			TLSHandshakeTimeout:   timeout,
			ResponseHeaderTimeout: timeout,
			MaxIdleConns:          4,
			IdleConnTimeout:       30 * time.Second,
			Proxy:                 nil,
			ForceAttemptHTTP2:     true,
		}
		f.client = &http.Client{
			Transport: tr,
			Timeout:   timeout,
			// RFC 8461 3.3: HTTP redirects MUST NOT be followed.
			CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
		}
	})
	return f.client, f.err
}

// entry is one cached policy.
type entry struct {
	ID      string    `json:"id"`
	Policy  *Policy   `json:"policy"`
	Expires time.Time `json:"expires"`
}

// Cache is the policies of recipient domains, cached for their max_age
// and persisted to a file. It is safe for concurrent use.
//
// Lookup follows RFC 8461 section 5.1: the TXT record is looked up every
// time; the policy is fetched again when its id changed or the cached one
// expired; a cached policy that has not expired is used when the TXT
// lookup or the fetch fails, or when the record has gone.
type Cache struct {
	// Fetcher discovers and fetches policies.
	Fetcher *Fetcher
	// Now is the clock (time.Now when nil; for tests).
	Now func() time.Time

	path    string
	mu      sync.Mutex
	entries map[string]*entry
	saveMu  sync.Mutex
}

// NewCache returns a Cache persisted in the file at path (JSON, replaced
// atomically at each change; "" keeps it in memory only), loading what the
// file holds. A file that cannot be read or parsed is an error, except one
// that does not exist yet.
func NewCache(f *Fetcher, path string) (*Cache, error) {
	if f == nil {
		f = &Fetcher{}
	}
	c := &Cache{Fetcher: f, path: path, entries: map[string]*entry{}}
	if path == "" {
		return c, nil
	}
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return c, nil
	}
	if err != nil {
		return nil, fmt.Errorf("mta-sts cache: %w", err)
	}
	if err := json.Unmarshal(b, &c.entries); err != nil {
		return nil, fmt.Errorf("mta-sts cache %s: %w", path, err)
	}
	for d, e := range c.entries {
		if e == nil || e.Policy == nil {
			delete(c.entries, d)
		}
	}
	return c, nil
}

func (c *Cache) now() time.Time {
	if c.Now != nil {
		return c.Now()
	}
	return time.Now()
}

// Lookup returns the policy of domain (an A-label name, compared without
// case), with the cache's Fetcher's resolver. See LookupWith.
func (c *Cache) Lookup(ctx context.Context, domain string) (*Policy, error) {
	return c.LookupWith(ctx, c.Fetcher.resolver(), domain)
}

// LookupWith returns the policy of domain, looking up DNS with res:
//
//   - nil, nil: the domain has no policy (deliver as without MTA-STS);
//   - nil, err: discovery failed and nothing is cached: deliver as without
//     MTA-STS (RFC 8461 5.1), err says why;
//   - p, nil: the current policy (fetched now or cached);
//   - p, err: the live policy could not be had (err says why) and p is the
//     cached one, unexpired, which applies.
//
// A policy of mode none is returned as such.
func (c *Cache) LookupWith(ctx context.Context, res Resolver, domain string) (*Policy, error) {
	domain = strings.ToLower(strings.TrimSuffix(domain, "."))
	now := c.now()
	c.mu.Lock()
	cached := c.entries[domain]
	if cached != nil && !now.Before(cached.Expires) {
		cached = nil
	}
	c.mu.Unlock()

	id, ok, err := c.Fetcher.Record(ctx, res, domain)
	switch {
	case err != nil && cached != nil:
		return cached.Policy, err
	case err != nil:
		return nil, err
	case !ok && cached != nil:
		return cached.Policy, fmt.Errorf("mta-sts: no TXT record for %s; cached policy used", domain)
	case !ok:
		return nil, nil
	case cached != nil && cached.ID == id:
		return cached.Policy, nil
	}
	p, err := c.Fetcher.Policy(ctx, res, domain)
	if err != nil {
		if cached != nil {
			return cached.Policy, err
		}
		return nil, err
	}
	c.mu.Lock()
	c.entries[domain] = &entry{ID: id, Policy: p, Expires: now.Add(p.MaxAge)}
	c.mu.Unlock()
	if err := c.save(); err != nil {
		return p, err
	}
	return p, nil
}

// save writes the cache file: a temporary file in the same directory,
// synced, renamed over the old one.
func (c *Cache) save() error {
	if c.path == "" {
		return nil
	}
	c.saveMu.Lock()
	defer c.saveMu.Unlock()
	c.mu.Lock()
	now := c.now()
	for d, e := range c.entries {
		if !now.Before(e.Expires) {
			delete(c.entries, d)
		}
	}
	b, err := json.MarshalIndent(c.entries, "", "\t")
	c.mu.Unlock()
	if err != nil {
		return fmt.Errorf("mta-sts cache: %w", err)
	}
	dir := filepath.Dir(c.path)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("mta-sts cache: %w", err)
	}
	tmp, err := os.CreateTemp(dir, ".mta-sts-*.tmp")
	if err != nil {
		return fmt.Errorf("mta-sts cache: %w", err)
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(b); err != nil {
		tmp.Close()
		return fmt.Errorf("mta-sts cache: %w", err)
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return fmt.Errorf("mta-sts cache: %w", err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("mta-sts cache: %w", err)
	}
	if err := os.Rename(tmp.Name(), c.path); err != nil {
		return fmt.Errorf("mta-sts cache: %w", err)
	}
	if d, err := os.Open(dir); err == nil {
		d.Sync()
		d.Close()
	}
	return nil
}
