// Package webhook is the sub-handler esmtp.handlers.webhook: it delivers
// each accepted message by an HTTP POST to a URL, and answers 250 only once
// the receiver has answered 2xx.
//
// It is a delivery (session.DeliverHook): at end of data, once every judge
// accepted the message, it POSTs the final message the engine gives it
// (session.Delivery: the envelope after any judge's changes, the
// recipients this delivery is for, and the message with our Received:
// field first and every edit applied). The engine keeps the one spool of
// the message; the webhook keeps no copy of its own and no temporary
// file: each attempt reads the message again from the engine's spool. The
// body is one of two formats:
//
//   - raw: the final message, byte for byte, as Content-Type
//     message/rfc822;
//   - json: a JSON object with the envelope, the header fields and the body
//     text (see [Webhook.Format] for its shape and limits), encoded while
//     it is sent, never held whole in memory.
//
// The envelope also travels in request headers (X-Esmtp-Queue-Id,
// X-Esmtp-From, one X-Esmtp-Rcpt per recipient, X-Esmtp-Remote), and with a
// secret the body is signed: X-Esmtp-Signature: sha256=<hex HMAC-SHA256 of
// the body>, computed in a first pass over the message. Every request has
// a Content-Length (the json format is encoded once more to count it).
//
// A 2xx response accepts the message. A status listed in
// [Webhook.PermanentStatuses] rejects it for good: 554 5.6.0, no retry.
// Anything else (any other 4xx, 5xx, 3xx, a timeout, a connection error)
// is temporary: retried with exponential backoff, and after the last retry
// answered 451 4.3.0 naming the last status, so the client tries again
// later. A receiver's 401 after a token rotation or 404 during a redeploy
// thus delays mail instead of bouncing it; list the statuses your receiver
// uses to refuse a message for good (such as 400, 413, 415).
// Retries are bounded by the engine's handler_timeout, since the POST runs
// inside the delivery event. A retry after a timeout may deliver a message
// twice, and so may the client's retry after another delivery of the same
// message failed: receivers can use X-Esmtp-Queue-Id to recognise it.
package webhook

import (
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/textproto"
	"net/url"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"go.uber.org/zap"

	"github.com/caddy-esmtp/caddy-esmtp/session"
)

func init() {
	caddy.RegisterModule(&Webhook{})
}

// Webhook delivers messages by HTTP POST.
//
// It uses a plain net/http client with its own transport (dial, TLS
// handshake and idle timeouts set, proxies from the environment, no
// redirects followed): Caddy's HTTP transport module is built for reverse
// proxying and brings nothing a single POST needs.
type Webhook struct {
	// URL receives the POST; http or https. Caddy's global placeholders
	// (such as {env.WEBHOOK_URL}) are replaced when the config loads;
	// {esmtp.*} placeholders are refused (the envelope travels in the
	// X-Esmtp-* headers), here and in Secret and Headers.
	URL string `json:"url,omitempty"`
	// Format is "raw" (default) or "json".
	//
	// raw: the body is the final message, starting with our Received:
	// field, byte for byte: as received, with the edits of the judges
	// (headers added, changed or removed, a body replaced) applied;
	// Content-Type: message/rfc822.
	//
	// json: Content-Type: application/json; the body is
	//
	//	{"envelope": {"queue_id": "...", "from": "a@b.example",
	//	              "recipients": ["c@d.example"], "remote": "192.0.2.1:4321",
	//	              "helo": "client.example", "auth": "", "tls": false},
	//	 "headers": [{"name": "Received", "value": "..."}, ...],
	//	 "body": "..."}
	//
	// Both are built from the final message and envelope: from is the
	// sender after any judge's change ("" for the null sender <>),
	// recipients are those this delivery is for (after matchers and
	// judges), auth is the login or "". Header values are unfolded; the body is everything after the blank line
	// that ends the header section, not MIME-decoded (base64 parts stay
	// base64). JSON strings are Unicode: bytes that are not UTF-8 (8-bit
	// text in other charsets, binary MIME) become U+FFFD, so use raw when
	// the exact bytes matter. Escaping can make the JSON larger than the
	// message (up to six bytes per control character).
	Format string `json:"format,omitempty"`
	// Timeout bounds each attempt, from connecting to reading the
	// response headers. Default: 30s.
	Timeout caddy.Duration `json:"timeout,omitempty"`
	// Retries is how many times a failed POST (any status but 2xx and
	// those in PermanentStatuses, a timeout, a connection error) is tried
	// again. Default: 2; 0: none.
	// The attempts and the waits between them end when the engine's
	// handler_timeout is nearly over, whatever is left.
	Retries *int `json:"retries,omitempty"`
	// Backoff is the wait before the first retry, doubled before each
	// next one. Default: 1s.
	Backoff caddy.Duration `json:"backoff,omitempty"`
	// Secret, when set, signs each request: the header X-Esmtp-Signature
	// is "sha256=" and the hex HMAC-SHA256, keyed with Secret, of the
	// request body exactly as sent. Global placeholders such as
	// {env.WEBHOOK_SECRET} are replaced when the config loads.
	Secret string `json:"secret,omitempty"`
	// Headers are added to every request; values may use Caddy's global
	// placeholders, replaced when the config loads. They may replace
	// Content-Type, User-Agent or Host, but not the X-Esmtp-* headers,
	// Content-Length or Transfer-Encoding.
	Headers http.Header `json:"headers,omitempty"`
	// TempDir is no longer used, and kept so that configurations that set
	// it still load (with a warning): the webhook has no spool file of its
	// own, the esmtp handler spools each message once (see its spool_dir).
	//
	// Deprecated: remove it; set spool_dir on the esmtp handler instead.
	TempDir string `json:"temp_dir,omitempty"`
	// PermanentStatuses lists the HTTP statuses, each from 400 to 599, that
	// reject a message for good: the client gets 554 5.6.0 and bounces it
	// to its sender; there is no retry. Every other status but 2xx is
	// temporary (retried, then 451 4.3.0, and the client tries again
	// later), so a receiver's configuration error (401 after a token
	// rotation, 404 during a redeploy, 500) never bounces mail. Default:
	// none; list the statuses your receiver answers for a message it will
	// never take, such as [400, 413, 415].
	PermanentStatuses []int `json:"permanent_statuses,omitempty"`

	url       string
	permanent map[int]bool
	secret    []byte
	headers   http.Header
	json      bool
	retries   int
	client    *http.Client
	logger    *zap.Logger
}

// CaddyModule returns the Caddy module information.
func (*Webhook) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "esmtp.handlers.webhook",
		New: func() caddy.Module { return new(Webhook) },
	}
}

// Defaults.
const (
	defaultTimeout = 30 * time.Second
	defaultRetries = 2
	defaultBackoff = time.Second
)

// Provision checks the configuration and builds the HTTP client.
func (w *Webhook) Provision(ctx caddy.Context) error {
	w.logger = ctx.Logger()
	repl := caddy.NewReplacer()
	if w.URL == "" {
		return errors.New("webhook: url is required")
	}
	for field, v := range map[string]string{"url": w.URL, "secret": w.Secret} {
		if strings.Contains(v, "{esmtp.") {
			return fmt.Errorf("webhook: %s: {esmtp.*} placeholders are not expanded here; the envelope travels in the X-Esmtp-* headers", field)
		}
	}
	w.url = repl.ReplaceKnown(w.URL, "")
	u, err := url.Parse(w.url)
	if err != nil {
		return fmt.Errorf("webhook: url: %v", err)
	}
	if (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return fmt.Errorf("webhook: url: %q is not an http:// or https:// URL", w.URL)
	}
	switch w.Format {
	case "", "raw":
	case "json":
		w.json = true
	default:
		return fmt.Errorf("webhook: format: %q is neither raw nor json", w.Format)
	}
	if w.Timeout < 0 {
		return fmt.Errorf("webhook: timeout: must be positive, got %s", time.Duration(w.Timeout))
	}
	if w.Timeout == 0 {
		w.Timeout = caddy.Duration(defaultTimeout)
	}
	w.retries = defaultRetries
	if w.Retries != nil {
		if *w.Retries < 0 {
			return fmt.Errorf("webhook: retries: must be 0 or more, got %d", *w.Retries)
		}
		w.retries = *w.Retries
	}
	if w.Backoff < 0 {
		return fmt.Errorf("webhook: backoff: must be positive, got %s", time.Duration(w.Backoff))
	}
	if w.Backoff == 0 {
		w.Backoff = caddy.Duration(defaultBackoff)
	}
	if w.Secret != "" {
		w.secret = []byte(repl.ReplaceKnown(w.Secret, ""))
	}
	w.headers = http.Header{}
	for name, values := range w.Headers {
		canon := textproto.CanonicalMIMEHeaderKey(name)
		if reservedHeader(canon) {
			return fmt.Errorf("webhook: headers: %s is set by the webhook itself", name)
		}
		if !validHeaderName(name) {
			return fmt.Errorf("webhook: headers: %q is not a valid header name", name)
		}
		for _, v := range values {
			if strings.Contains(v, "{esmtp.") {
				return fmt.Errorf("webhook: headers: %s: {esmtp.*} placeholders are not expanded here; the envelope travels in the X-Esmtp-* headers", name)
			}
			v = repl.ReplaceKnown(v, "")
			if strings.ContainsAny(v, "\r\n\x00") {
				return fmt.Errorf("webhook: headers: the value of %s contains CR, LF or NUL", name)
			}
			w.headers.Add(canon, v)
		}
	}
	if w.TempDir != "" {
		w.logger.Warn("temp_dir is no longer used and is ignored: the esmtp handler spools each message once (see its spool_dir)",
			zap.String("temp_dir", w.TempDir))
	}
	w.permanent = make(map[int]bool, len(w.PermanentStatuses))
	for _, code := range w.PermanentStatuses {
		if code < 400 || code > 599 {
			return fmt.Errorf("webhook: permanent_statuses: %d is not an HTTP error status (400 to 599)", code)
		}
		w.permanent[code] = true
	}
	w.client = &http.Client{
		Transport: &http.Transport{
			Proxy: http.ProxyFromEnvironment,
			DialContext: (&net.Dialer{
				Timeout:   10 * time.Second,
				KeepAlive: 30 * time.Second,
			}).DialContext,
			TLSHandshakeTimeout:   10 * time.Second,
			ResponseHeaderTimeout: time.Duration(w.Timeout),
			ExpectContinueTimeout: time.Second,
			IdleConnTimeout:       90 * time.Second,
			MaxIdleConnsPerHost:   16,
			ForceAttemptHTTP2:     true,
		},
		// A redirect is a configuration error: answered as a failure
		// (temporary), never followed (a 303 would turn the POST into a
		// GET and lose the message).
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
	return nil
}

// Cleanup closes idle connections. Sessions of this configuration that are
// still delivering after a reload keep a working client.
func (w *Webhook) Cleanup() error {
	if w.client != nil {
		w.client.CloseIdleConnections()
	}
	return nil
}

func reservedHeader(canon string) bool {
	return strings.HasPrefix(canon, "X-Esmtp-") || canon == "Content-Length" || canon == "Transfer-Encoding"
}

func validHeaderName(name string) bool {
	if name == "" {
		return false
	}
	for i := 0; i < len(name); i++ {
		c := name[i]
		if c <= ' ' || c >= 0x7f || strings.IndexByte(`"(),/:;<=>?@[\]{}`, c) >= 0 {
			return false
		}
	}
	return true
}

// Interface guards
var (
	_ caddy.Provisioner     = (*Webhook)(nil)
	_ caddy.CleanerUpper    = (*Webhook)(nil)
	_ caddyfile.Unmarshaler = (*Webhook)(nil)
	_ session.DeliverHook   = (*Webhook)(nil)
)
