// Package webhook is the sub-handler esmtp.handlers.webhook: it delivers
// each accepted message by an HTTP POST to a URL, and answers 250 only once
// the receiver has answered 2xx.
//
// The message is spooled to a temporary file while it arrives (never held
// in memory) and POSTed from that file at end of message, in one of two
// formats:
//
//   - raw: the message as received, our Received: field first, byte for
//     byte, as Content-Type message/rfc822;
//   - json: a JSON object with the envelope, the header fields and the body
//     text (see [Webhook.Format] for its shape and limits).
//
// The envelope also travels in request headers (X-Esmtp-Queue-Id,
// X-Esmtp-From, one X-Esmtp-Rcpt per recipient, X-Esmtp-Remote), and with a
// secret the body is signed: X-Esmtp-Signature: sha256=<hex HMAC-SHA256 of
// the body>.
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
// inside the end-of-message event. A retry after a timeout may deliver a
// message twice: receivers can use X-Esmtp-Queue-Id to recognise it.
//
// The temporary file is unlinked as soon as it is created (where the system
// allows it), so even a crash leaves nothing behind; it is closed after
// the POST and when a transaction is aborted.
package webhook

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"io"
	"net"
	"net/http"
	"net/textproto"
	"net/url"
	"os"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"go.uber.org/zap"

	spoolfile "github.com/caddy-esmtp/caddy-esmtp/internal/spool"
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
	// raw: the body is the message as received, starting with our
	// Received: field, byte for byte; Content-Type: message/rfc822.
	//
	// json: Content-Type: application/json; the body is
	//
	//	{"envelope": {"queue_id": "...", "from": "a@b.example",
	//	              "recipients": ["c@d.example"], "remote": "192.0.2.1:4321",
	//	              "helo": "client.example", "auth": "", "tls": false},
	//	 "headers": [{"name": "Received", "value": "..."}, ...],
	//	 "body": "..."}
	//
	// from is "" for the null sender <>, auth is the login or "". Header
	// values are unfolded; the body is everything after the blank line
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
	// TempDir is the directory for the spool files. Default: the system's
	// temporary directory.
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
		if fi, err := os.Stat(w.TempDir); err != nil || !fi.IsDir() {
			return fmt.Errorf("webhook: temp_dir: %q is not a directory", w.TempDir)
		}
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

// Header starts the spool on the first field (the Received: field) and
// writes each field.
func (w *Webhook) Header(_ context.Context, s *session.Session, h session.HeaderField) error {
	sp := spoolfile.Get[*spool](s, w)
	if sp == nil {
		var err error
		if sp, err = w.start(s); err != nil {
			w.logger.Error("creating the spool file", zap.String("queue_id", s.Transaction().ID), zap.String("dir", w.TempDir), zap.Error(err))
			return spoolfile.ErrReply
		}
		spoolfile.Set(s, w, sp)
	}
	if w.json {
		sp.header(h)
	} else {
		sp.write(h.Raw)
	}
	return w.check(s, sp)
}

// EndOfHeaders writes the blank line that ended the header section (raw),
// or ends the header list and starts the body string (json).
func (w *Webhook) EndOfHeaders(_ context.Context, s *session.Session, raw []byte) error {
	sp := spoolfile.Get[*spool](s, w)
	if sp == nil {
		return nil
	}
	if w.json {
		sp.writeString(`],"body":"`)
	} else {
		sp.write(raw)
	}
	return w.check(s, sp)
}

// Body writes a body chunk.
func (w *Webhook) Body(_ context.Context, s *session.Session, chunk []byte) error {
	sp := spoolfile.Get[*spool](s, w)
	if sp == nil {
		return nil
	}
	if w.json {
		sp.text(chunk)
	} else {
		sp.write(chunk)
	}
	return w.check(s, sp)
}

func (w *Webhook) check(s *session.Session, sp *spool) error {
	if sp.err != nil {
		w.logger.Error("writing the spool file", zap.String("queue_id", s.Transaction().ID), zap.Error(sp.err))
		return spoolfile.ErrReply
	}
	return nil
}

// EndOfMessage POSTs the message, retrying as configured; it returns nil
// once the receiver answered 2xx, so later sub-handlers are asked too.
func (w *Webhook) EndOfMessage(ctx context.Context, s *session.Session) (*session.Reply, error) {
	txn := s.Transaction()
	sp := spoolfile.Get[*spool](s, w)
	if sp == nil {
		return nil, errors.New("webhook: no message data was streamed")
	}
	spoolfile.Set(s, w, nil)
	defer sp.Close()
	if w.json {
		sp.flushText()
		sp.writeString(`"}`)
	}
	if err := sp.finish(); err != nil {
		w.logger.Error("writing the spool file", zap.String("queue_id", txn.ID), zap.Error(err))
		return spoolfile.ErrReply, nil
	}
	res := w.deliver(ctx, s, sp)
	txn.AddLogField(zap.Int("webhook_attempts", res.attempts))
	if res.status != 0 {
		txn.AddLogField(zap.Int("webhook_status", res.status))
	}
	if res.err != nil {
		txn.AddLogField(zap.String("webhook_error", res.err.Error()))
	}
	switch {
	case res.ok:
		return nil, nil
	case res.permanent:
		w.logger.Warn("message rejected by webhook", zap.String("queue_id", txn.ID), zap.String("url", w.url),
			zap.Int("status", res.status), zap.String("response", res.snippet))
		return session.NewReply(554, "5.6.0", "Rejected by webhook: "+statusName(res.status)), nil
	default:
		w.logger.Error("webhook delivery failed", zap.String("queue_id", txn.ID), zap.String("url", w.url),
			zap.Int("attempts", res.attempts), zap.Int("status", res.status), zap.String("response", res.snippet), zap.Error(res.err))
		if res.status != 0 {
			return session.NewReply(451, "4.3.0", "Delivery failed: webhook answered "+statusName(res.status)+"; try again later"), nil
		}
		return session.NewReply(451, "4.3.0", "Delivery failed; try again later"), nil
	}
}

// statusName is an HTTP status as the client is told it: the code and its
// standard text ("404 Not Found"), never the receiver's own reason phrase.
func statusName(code int) string {
	if text := http.StatusText(code); text != "" {
		return strconv.Itoa(code) + " " + text
	}
	return strconv.Itoa(code)
}

// Abort closes the spool of a transaction that ended without delivery.
func (w *Webhook) Abort(s *session.Session, _ error) {
	spoolfile.Abort[*spool](s, w)
}

// result is the outcome of a delivery.
type result struct {
	ok, permanent bool
	attempts      int
	status        int    // the last HTTP status, 0 for none
	statusText    string // "404 Not Found"
	snippet       string // the start of the last response body
	err           error  // the last transport error, or the status as an error
}

// deliver POSTs until success, a permanent failure, the last retry, or the
// end of the time the engine gives the hook.
func (w *Webhook) deliver(ctx context.Context, s *session.Session, sp *spool) result {
	var deadline time.Time
	if dl, ok := ctx.Deadline(); ok {
		// Keep a little time to answer before the engine's
		// handler_timeout fails the hook on its own.
		left := time.Until(dl)
		deadline = dl.Add(-min(left/10, time.Second))
	}
	header := w.requestHeader(s, sp)
	backoff := time.Duration(w.Backoff)
	var res result
	for {
		timeout := time.Duration(w.Timeout)
		if !deadline.IsZero() {
			timeout = min(timeout, time.Until(deadline))
		}
		if timeout <= 0 {
			if res.err == nil {
				res.err = context.DeadlineExceeded
			}
			return res
		}
		res.attempts++
		w.attempt(ctx, timeout, header, sp, &res)
		if res.ok || res.permanent || res.attempts > w.retries {
			return res
		}
		if !deadline.IsZero() && time.Now().Add(backoff).After(deadline) {
			return res // no time left for another attempt
		}
		if w.logger.Core().Enabled(zap.DebugLevel) {
			w.logger.Debug("webhook attempt failed; retrying", zap.String("queue_id", s.Transaction().ID),
				zap.Int("attempt", res.attempts), zap.Int("status", res.status), zap.Error(res.err), zap.Duration("backoff", backoff))
		}
		t := time.NewTimer(backoff)
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			res.err = ctx.Err()
			return res
		}
		backoff *= 2
	}
}

// attempt makes one POST and records its outcome in res.
func (w *Webhook) attempt(ctx context.Context, timeout time.Duration, header http.Header, sp *spool, res *result) {
	actx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(actx, http.MethodPost, w.url, sp.reader())
	if err != nil {
		res.err = err
		return
	}
	req.ContentLength = sp.size
	req.GetBody = func() (io.ReadCloser, error) { return sp.reader(), nil }
	req.Header = header.Clone()
	if host := header.Get("Host"); host != "" {
		req.Host = host
		req.Header.Del("Host")
	}
	resp, err := w.client.Do(req)
	if err != nil {
		res.status, res.statusText, res.snippet = 0, "", ""
		res.err = err
		return
	}
	defer resp.Body.Close()
	var snippet [512]byte
	n, _ := io.ReadFull(resp.Body, snippet[:])
	io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10)) // to reuse the connection
	res.status = resp.StatusCode
	res.statusText = strings.TrimSpace(resp.Status)
	if res.statusText == "" || !strings.HasPrefix(res.statusText, strconv.Itoa(resp.StatusCode)) {
		res.statusText = fmt.Sprintf("%d %s", resp.StatusCode, http.StatusText(resp.StatusCode))
	}
	res.snippet = strings.ToValidUTF8(string(snippet[:n]), "\uFFFD")
	switch c := resp.StatusCode; {
	case c >= 200 && c < 300:
		res.ok, res.err = true, nil
	case w.permanent[c]:
		res.permanent, res.err = true, fmt.Errorf("status %s", res.statusText)
	default:
		res.err = fmt.Errorf("status %s", res.statusText)
	}
}

// requestHeader returns the request headers of a delivery.
func (w *Webhook) requestHeader(s *session.Session, sp *spool) http.Header {
	txn := s.Transaction()
	h := http.Header{}
	if w.json {
		h.Set("Content-Type", "application/json")
	} else {
		h.Set("Content-Type", "message/rfc822")
	}
	h.Set("User-Agent", "caddy-esmtp")
	for name, values := range w.headers {
		h[name] = append([]string(nil), values...)
	}
	h.Set("X-Esmtp-Queue-Id", txn.ID)
	h.Set("X-Esmtp-From", txn.From.Mailbox)
	for _, rc := range txn.Recipients {
		h.Add("X-Esmtp-Rcpt", rc.Path.Mailbox)
	}
	if a := s.RemoteAddr(); a != nil {
		h.Set("X-Esmtp-Remote", a.String())
	}
	if sp.mac != nil {
		h.Set("X-Esmtp-Signature", "sha256="+hex.EncodeToString(sp.mac.Sum(nil)))
	}
	return h
}

// envelope is the "envelope" object of the json format.
type envelope struct {
	QueueID    string   `json:"queue_id"`
	From       string   `json:"from"`
	Recipients []string `json:"recipients"`
	Remote     string   `json:"remote"`
	Helo       string   `json:"helo"`
	Auth       string   `json:"auth"`
	TLS        bool     `json:"tls"`
}

// start creates the spool of a transaction; in the json format it writes
// the envelope and opens the header list.
func (w *Webhook) start(s *session.Session) (*spool, error) {
	sp, err := newSpool(w.TempDir, w.secret)
	if err != nil {
		return nil, err
	}
	if w.json {
		txn := s.Transaction()
		env := envelope{
			QueueID:    txn.ID,
			From:       txn.From.Mailbox,
			Recipients: make([]string, 0, len(txn.Recipients)),
			Helo:       s.Helo(),
			Auth:       s.AuthUser(),
			TLS:        s.TLS() != nil,
		}
		for _, rc := range txn.Recipients {
			env.Recipients = append(env.Recipients, rc.Path.Mailbox)
		}
		if a := s.RemoteAddr(); a != nil {
			env.Remote = a.String()
		}
		b, err := json.Marshal(env)
		if err != nil {
			sp.Close()
			return nil, err
		}
		sp.writeString(`{"envelope":`)
		sp.write(b)
		sp.writeString(`,"headers":[`)
	}
	return sp, nil
}

// spool is a message being written to a spool file (package
// internal/spool), with the state of the json format.
type spool struct {
	file  *spoolfile.Spool
	w     bufferedWriter // file (a bare buffer in tests)
	mac   hash.Hash      // nil without a secret
	size  int64
	err   error
	n     int     // header fields written (json)
	carry []byte  // an incomplete UTF-8 sequence at the end of a chunk (json)
	esc   [6]byte // scratch for \u00XX
}

// bufferedWriter is where a spool writes.
type bufferedWriter interface {
	io.Writer
	io.StringWriter
	Flush() error
}

func newSpool(dir string, secret []byte) (*spool, error) {
	sp := &spool{}
	var tee io.Writer
	if secret != nil {
		sp.mac = hmac.New(sha256.New, secret)
		tee = sp.mac
	}
	f, err := spoolfile.New(dir, "esmtp-webhook-*", tee)
	if err != nil {
		return nil, err
	}
	sp.file, sp.w = f, f
	return sp, nil
}

func (sp *spool) write(p []byte) {
	if sp.err == nil {
		_, sp.err = sp.w.Write(p)
	}
}

func (sp *spool) writeString(v string) {
	if sp.err == nil {
		_, sp.err = sp.w.WriteString(v)
	}
}

// header writes one header field as a JSON object.
func (sp *spool) header(h session.HeaderField) {
	if sp.n > 0 {
		sp.writeString(`,`)
	}
	sp.n++
	sp.writeString(`{"name":"`)
	sp.text([]byte(h.Name))
	sp.flushText()
	sp.writeString(`","value":"`)
	sp.text([]byte(h.Value))
	sp.flushText()
	sp.writeString(`"}`)
}

// text writes p as the inside of a JSON string. A UTF-8 sequence cut at
// the end of p is kept until the next call; bytes that are not UTF-8
// become \ufffd.
func (sp *spool) text(p []byte) {
	for len(sp.carry) > 0 {
		if utf8.FullRune(sp.carry) {
			r, size := utf8.DecodeRune(sp.carry)
			sp.rune(r, sp.carry[:size])
			sp.carry = append(sp.carry[:0], sp.carry[size:]...)
			continue
		}
		if len(p) == 0 {
			return
		}
		sp.carry = append(sp.carry, p[0])
		p = p[1:]
	}
	for len(p) > 0 {
		// The run of bytes that need no escaping, written at once.
		i := 0
		for i < len(p) && p[i] >= 0x20 && p[i] < utf8.RuneSelf && p[i] != '"' && p[i] != '\\' {
			i++
		}
		if i > 0 {
			sp.write(p[:i])
			p = p[i:]
			continue
		}
		if !utf8.FullRune(p) {
			sp.carry = append(sp.carry[:0], p...)
			return
		}
		r, size := utf8.DecodeRune(p)
		sp.rune(r, p[:size])
		p = p[size:]
	}
}

// flushText writes what text kept of a cut UTF-8 sequence: at the end of a
// string it can never be completed.
func (sp *spool) flushText() {
	for len(sp.carry) > 0 {
		r, size := utf8.DecodeRune(sp.carry)
		sp.rune(r, sp.carry[:size])
		sp.carry = sp.carry[size:]
	}
	sp.carry = sp.carry[:0]
}

// rune writes one decoded rune (raw: its bytes) escaped for JSON.
func (sp *spool) rune(r rune, raw []byte) {
	switch {
	case r == utf8.RuneError && len(raw) == 1:
		sp.writeString(`\ufffd`)
	case r == '"':
		sp.writeString(`\"`)
	case r == '\\':
		sp.writeString(`\\`)
	case r == '\n':
		sp.writeString(`\n`)
	case r == '\r':
		sp.writeString(`\r`)
	case r == '\t':
		sp.writeString(`\t`)
	case r < 0x20:
		const hexDigits = "0123456789abcdef"
		sp.esc = [6]byte{'\\', 'u', '0', '0', hexDigits[r>>4], hexDigits[r&0xf]}
		sp.write(sp.esc[:])
	default:
		sp.write(raw)
	}
}

// finish flushes the spool and records its size.
func (sp *spool) finish() error {
	if sp.err != nil {
		return sp.err
	}
	size, err := sp.file.Size()
	if err != nil {
		return err
	}
	sp.size = size
	return nil
}

// reader returns a fresh reader of the whole spool, for one attempt. It
// reads with ReadAt, so a transport still reading an earlier attempt's
// body does not disturb it.
func (sp *spool) reader() io.ReadCloser {
	return io.NopCloser(io.NewSectionReader(sp.file.File(), 0, sp.size))
}

// Close closes the spool file (see spoolfile.Spool.Close).
func (sp *spool) Close() { sp.file.Close() }

// UnmarshalCaddyfile sets up the sub-handler from Caddyfile tokens. Syntax:
//
//	webhook [<url>] {
//		url      <url>
//		format   raw|json
//		timeout  <duration>
//		retries  <n>
//		backoff  <duration>
//		secret   <key>
//		header   <name> <value>
//		temp_dir <dir>
//		permanent_statuses <status...>
//	}
func (w *Webhook) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // the sub-handler name
	if d.NextArg() {
		w.URL = d.Val()
		if d.NextArg() {
			return d.ArgErr()
		}
	}
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		opt := d.Val()
		switch opt {
		case "url", "format", "secret", "temp_dir":
			var v string
			if !d.AllArgs(&v) {
				return d.ArgErr()
			}
			switch opt {
			case "url":
				w.URL = v
			case "format":
				if v != "raw" && v != "json" {
					return d.Errf("webhook: format: %q is neither raw nor json", v)
				}
				w.Format = v
			case "secret":
				w.Secret = v
			case "temp_dir":
				w.TempDir = v
			}
		case "timeout", "backoff":
			var v string
			if !d.AllArgs(&v) {
				return d.ArgErr()
			}
			dur, err := caddy.ParseDuration(v)
			if err != nil || dur <= 0 {
				return d.Errf("webhook: %s: must be a positive duration such as 30s, got %q", opt, v)
			}
			if opt == "timeout" {
				w.Timeout = caddy.Duration(dur)
			} else {
				w.Backoff = caddy.Duration(dur)
			}
		case "retries":
			var v string
			if !d.AllArgs(&v) {
				return d.ArgErr()
			}
			n, err := strconv.Atoi(v)
			if err != nil || n < 0 {
				return d.Errf("webhook: retries: must be 0 or more, got %q", v)
			}
			w.Retries = &n
		case "header":
			var name, value string
			if !d.AllArgs(&name, &value) {
				return d.ArgErr()
			}
			if !validHeaderName(name) {
				return d.Errf("webhook: header: %q is not a valid header name", name)
			}
			if reservedHeader(textproto.CanonicalMIMEHeaderKey(name)) {
				return d.Errf("webhook: header: %s is set by the webhook itself", name)
			}
			if w.Headers == nil {
				w.Headers = http.Header{}
			}
			w.Headers.Add(name, value)
		case "permanent_statuses":
			args := d.RemainingArgs()
			if len(args) == 0 {
				return d.ArgErr()
			}
			for _, v := range args {
				n, err := strconv.Atoi(v)
				if err != nil || n < 400 || n > 599 {
					return d.Errf("webhook: permanent_statuses: %q is not an HTTP error status (400 to 599)", v)
				}
				w.PermanentStatuses = append(w.PermanentStatuses, n)
			}
		default:
			return d.Errf("webhook: unknown option %q (known: url, format, timeout, retries, backoff, secret, header, temp_dir, permanent_statuses)", opt)
		}
	}
	if w.URL == "" {
		return d.Err("webhook: url is required")
	}
	return nil
}

// Interface guards
var (
	_ caddy.Provisioner        = (*Webhook)(nil)
	_ caddy.CleanerUpper       = (*Webhook)(nil)
	_ caddyfile.Unmarshaler    = (*Webhook)(nil)
	_ session.HeaderHook       = (*Webhook)(nil)
	_ session.EndOfHeadersHook = (*Webhook)(nil)
	_ session.BodyHook         = (*Webhook)(nil)
	_ session.MessageHook      = (*Webhook)(nil)
	_ session.AbortHook        = (*Webhook)(nil)
)
