// Package rspamd is the sub-handler esmtp.handlers.rspamd: at end of data
// it has the message scanned by rspamd through rspamd's HTTP protocol
// (POST /checkv2 to rspamd's normal worker) and does what rspamd answers:
// refuse it, defer it, mark it, or let it pass with the headers rspamd
// asks for.
//
//	rspamd http://127.0.0.1:11333 {
//		password  {env.RSPAMD_PASSWORD}
//		timeout   30s
//		max_size  20MiB
//		on_error  tempfail      # or accept, reject
//	}
//
// It is a judge (session.MessageHook) that reads the whole message
// (session.MessageReader), so the engine spools it: the request body is
// the message as it is at this judge (Transaction.Message: our Received:
// field first, the edits of the judges before it applied), streamed from
// the spool with a Content-Length, never held in memory. The envelope and
// the client travel in request headers, as rspamd's protocol documents
// them: IP, Helo, Hostname (the name the iprev sub-handler confirmed, when
// it ran before and passed), From, one Rcpt per recipient, Queue-Id,
// Log-Tag, User (the authenticated user), MTA-Name (our hostname),
// TLS-Version and TLS-Cipher, Password when configured, and any
// configured extra (Settings-ID, MTA-Tag, ...).
//
// rspamd's reply is applied as rspamd's own milter proxy applies it:
// first the milter block's remove_headers and add_headers (how the
// milter_headers module adds X-Spamd-Result, X-Rspamd-Queue-Id,
// Authentication-Results, ...), then a DKIM-Signature it made, then the
// action:
//
//   - reject: 554 5.7.1 with rspamd's SMTP message (messages.smtp_message),
//     or "Spam message rejected"; unless the milter block says
//     reject=discard (250, delivered nowhere: Transaction.Discard) or
//     reject=quarantine (delivered and marked: Transaction.Quarantine);
//   - soft reject: 451 4.7.1 with rspamd's message, or "Try again later";
//   - greylist: 451 4.7.1 likewise (or passed, with `greylist accept`);
//   - rewrite subject: the Subject: field becomes rspamd's subject, or
//     DefaultSubject applied to the current one;
//   - add header: the spam header ("X-Spam: Yes"; any earlier one
//     removed), as rspamd's proxy worker's spam_header;
//   - no action: passed;
//   - discard, quarantine: as for reject=discard, reject=quarantine.
//
// An error (rspamd unreachable, a timeout, a status other than 200, a
// reply that is not rspamd's JSON, an action rspamd does not have) is
// never a silent pass: by default the client gets 451 4.3.0 and retries
// (on_error tempfail); on_error accept lets the message pass unscanned
// (fail open, logged); on_error reject refuses it with 554 5.3.0.
package rspamd

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/textproto"
	"net/url"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"go.uber.org/zap"

	"github.com/caddy-esmtp/caddy-esmtp/handlers/iprev"
	"github.com/caddy-esmtp/caddy-esmtp/session"
)

func init() {
	caddy.RegisterModule(&Rspamd{})
}

// Defaults.
const (
	// DefaultURL is the default of Rspamd.URL: rspamd's normal worker on
	// its default port.
	DefaultURL = "http://127.0.0.1:11333"
	// DefaultTimeout is the default of Rspamd.Timeout.
	DefaultTimeout = 30 * time.Second
	// DefaultMaxSize is the default of Rspamd.MaxSize: 20 MiB.
	DefaultMaxSize = 20 << 20
	// DefaultSpamHeader is the default of Rspamd.SpamHeader, as rspamd's
	// proxy worker's spam_header.
	DefaultSpamHeader = "X-Spam"
	// DefaultSubject is the default of Rspamd.Subject.
	DefaultSubject = "*** SPAM *** %s"
	// DefaultRejectMessage is the text of the 554 for "reject" when
	// rspamd gives no SMTP message (rspamd's proxy worker's default).
	DefaultRejectMessage = "Spam message rejected"
	// DefaultTempfailMessage is the text of the 451 for "soft reject" and
	// "greylist" when rspamd gives no SMTP message.
	DefaultTempfailMessage = "Try again later"
	// ReasonDiscard and ReasonQuarantine are the reasons given to
	// Transaction.Discard and Transaction.Quarantine.
	ReasonDiscard    = "rspamd"
	ReasonQuarantine = "rspamd"
)

// maxReplySize bounds rspamd's JSON reply.
const maxReplySize = 4 << 20

// Rspamd has messages scanned by rspamd.
type Rspamd struct {
	// URL is rspamd's normal worker (or a proxy worker without milter
	// mode): http or https; "/checkv2" is appended to its path unless
	// it already ends with it. Caddy's global placeholders (such as
	// {env.RSPAMD_URL}) are replaced when the config loads. Default:
	// http://127.0.0.1:11333.
	URL string `json:"url,omitempty"`
	// Password is sent in the Password header (rspamd's `password` for
	// the normal worker, or a proxy in front of it). Placeholders as for
	// URL.
	Password string `json:"password,omitempty"`
	// Timeout bounds one scan, from the connection to the last byte of
	// the reply (the engine's handler_timeout bounds it too). Default:
	// 30s.
	Timeout caddy.Duration `json:"timeout,omitempty"`
	// MaxSize is the size in bytes (our Received: field included) above
	// which a message is not scanned: it passes, and its log line says
	// rspamd_skipped. Default: 20 MiB; -1: no limit.
	MaxSize int64 `json:"max_size,omitempty"`
	// OnError is what happens when rspamd cannot give a verdict:
	// "tempfail" (default: 451 4.3.0, the client retries), "accept"
	// (the message passes unscanned: fail open) or "reject" (554 5.3.0).
	// Every error is logged (rspamd_error in the message's log line, and
	// a warning).
	OnError string `json:"on_error,omitempty"`
	// Greylist is what the action "greylist" does: "defer" (default:
	// 451 4.7.1) or "accept" (passed, as rspamd's milter proxy does:
	// when rspamd's greylist module runs, it turns a message it
	// greylists into "soft reject" and downgrades one that passed to "no
	// action", so "greylist" only remains where it does not run).
	Greylist string `json:"greylist,omitempty"`
	// SpamHeader is the header field set to "Yes" for the action "add
	// header" (every earlier field of that name is removed first).
	// Default: X-Spam.
	SpamHeader string `json:"spam_header,omitempty"`
	// Subject is the new Subject: for "rewrite subject" when rspamd's
	// reply has no subject (rspamd normally sends it, from its
	// actions' subject setting): %s is replaced by the current subject.
	// Default: "*** SPAM *** %s".
	Subject string `json:"subject,omitempty"`
	// Headers are extra request headers, such as Settings-ID or
	// MTA-Tag. The headers the sub-handler sets itself cannot be given.
	Headers map[string]string `json:"headers,omitempty"`

	checkURL string
	header   http.Header // Password and the extra headers
	client   *http.Client
	logger   *zap.Logger
}

// CaddyModule returns the Caddy module information.
func (*Rspamd) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "esmtp.handlers.rspamd",
		New: func() caddy.Module { return new(Rspamd) },
	}
}

// ownHeaders are the request headers the sub-handler sets itself.
var ownHeaders = map[string]bool{
	"Ip": true, "Helo": true, "Hostname": true, "From": true, "Rcpt": true,
	"Queue-Id": true, "Log-Tag": true, "User": true, "Mta-Name": true,
	"Tls-Version": true, "Tls-Cipher": true, "Password": true,
	"Content-Length": true, "Transfer-Encoding": true, "Host": true,
}

// Provision checks the options and makes the HTTP client.
func (h *Rspamd) Provision(ctx caddy.Context) error {
	h.logger = ctx.Logger(h)
	repl := caddy.NewReplacer()
	u, err := checkURL(repl.ReplaceKnown(h.URL, ""))
	if err != nil {
		return fmt.Errorf("rspamd: url: %v", err)
	}
	h.checkURL = u
	switch {
	case h.Timeout < 0:
		return fmt.Errorf("rspamd: timeout must be positive, got %s", time.Duration(h.Timeout))
	case h.Timeout == 0:
		h.Timeout = caddy.Duration(DefaultTimeout)
	}
	switch {
	case h.MaxSize < -1:
		return fmt.Errorf("rspamd: max_size must be positive (or -1: no limit), got %d", h.MaxSize)
	case h.MaxSize == 0:
		h.MaxSize = DefaultMaxSize
	}
	if err := checkOnError(h.OnError); err != nil {
		return err
	}
	if err := checkGreylist(h.Greylist); err != nil {
		return err
	}
	if h.SpamHeader == "" {
		h.SpamHeader = DefaultSpamHeader
	} else if !validName(h.SpamHeader) {
		return fmt.Errorf("rspamd: spam_header: %q is not a header field name", h.SpamHeader)
	}
	if h.Subject == "" {
		h.Subject = DefaultSubject
	}
	h.header = http.Header{}
	if h.Password != "" {
		pw := repl.ReplaceKnown(h.Password, "")
		if strings.ContainsAny(pw, "\r\n\x00") {
			return errors.New("rspamd: password contains CR, LF or NUL")
		}
		h.header.Set("Password", pw)
	}
	for name, v := range h.Headers {
		if err := checkExtra(name, v); err != nil {
			return err
		}
		h.header.Add(name, repl.ReplaceKnown(v, ""))
	}
	h.client = &http.Client{
		Transport: &http.Transport{
			DialContext: (&net.Dialer{
				Timeout:   10 * time.Second,
				KeepAlive: 30 * time.Second,
			}).DialContext,
			TLSHandshakeTimeout: 10 * time.Second,
			IdleConnTimeout:     90 * time.Second,
			MaxIdleConnsPerHost: 16,
			DisableCompression:  true,
		},
		// rspamd does not redirect: a redirect is an error, not followed.
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
	return nil
}

// checkURL returns the /checkv2 URL of a worker's URL ("" for the
// default).
func checkURL(s string) (string, error) {
	if s == "" {
		s = DefaultURL
	}
	u, err := url.Parse(s)
	if err != nil {
		return "", err
	}
	if u.Scheme != "http" && u.Scheme != "https" || u.Host == "" {
		return "", fmt.Errorf("%q is not an http or https URL", s)
	}
	if u.RawQuery != "" || u.Fragment != "" {
		return "", fmt.Errorf("%q: no query or fragment expected", s)
	}
	if !strings.HasSuffix(u.Path, "/checkv2") {
		u.Path = strings.TrimSuffix(u.Path, "/") + "/checkv2"
	}
	return u.String(), nil
}

func checkOnError(v string) error {
	switch v {
	case "", "tempfail", "accept", "reject":
		return nil
	}
	return fmt.Errorf("rspamd: on_error: %q is not tempfail, accept or reject", v)
}

func checkGreylist(v string) error {
	switch v {
	case "", "defer", "accept":
		return nil
	}
	return fmt.Errorf("rspamd: greylist: %q is not defer or accept", v)
}

func checkExtra(name, value string) error {
	if !validName(name) {
		return fmt.Errorf("rspamd: headers: %q is not a header name", name)
	}
	if ownHeaders[textproto.CanonicalMIMEHeaderKey(name)] {
		return fmt.Errorf("rspamd: headers: %s is set by the sub-handler itself", name)
	}
	if strings.ContainsAny(value, "\r\n\x00") {
		return fmt.Errorf("rspamd: headers: the value of %s contains CR, LF or NUL", name)
	}
	return nil
}

// validName reports whether s is a header field name (RFC 5322 ftext).
func validName(s string) bool {
	return s != "" && len(s) <= 200 && session.FieldNameLen([]byte(s+":")) == len(s)
}

// Cleanup closes idle connections to rspamd. Sessions of this
// configuration still running after a reload keep a working client.
func (h *Rspamd) Cleanup() error {
	if h.client != nil {
		h.client.CloseIdleConnections()
	}
	return nil
}

// ReadsMessage is true: the engine spools the message for the scan.
func (*Rspamd) ReadsMessage() bool { return true }

// EndOfMessage has the message scanned and applies rspamd's verdict (see
// the package documentation).
func (h *Rspamd) EndOfMessage(ctx context.Context, s *session.Session) (*session.Reply, error) {
	txn := s.Transaction()
	msg := txn.Message()
	if msg == nil {
		return h.failed(s, errors.New("the message is not spooled"))
	}
	if h.MaxSize > 0 && msg.Size() > h.MaxSize {
		txn.AddLogField(zap.String("rspamd_skipped", fmt.Sprintf("size %d over max_size %d", msg.Size(), h.MaxSize)))
		return nil, nil
	}
	v, err := h.scan(ctx, s, msg)
	if err != nil {
		return h.failed(s, err)
	}
	txn.AddLogField(zap.String("rspamd_action", v.Action))
	txn.AddLogField(zap.Float64("rspamd_score", v.Score))
	txn.AddLogField(zap.String("rspamd_symbols", strings.Join(v.Symbols, ",")))
	return v.apply(s, h, msg), nil
}

// failed answers an error as on_error says, and logs it.
func (h *Rspamd) failed(s *session.Session, err error) (*session.Reply, error) {
	txn := s.Transaction()
	txn.AddLogField(zap.String("rspamd_error", err.Error()))
	onError := h.OnError
	if onError == "" {
		onError = "tempfail"
	}
	h.logger.Warn("rspamd scan failed",
		zap.String("session", s.ID()), zap.String("queue_id", txn.ID),
		zap.String("on_error", onError), zap.Error(err))
	switch onError {
	case "accept":
		return nil, nil
	case "reject":
		return session.NewReply(554, "5.3.0", "Message could not be scanned"), nil
	}
	return session.NewReply(451, "4.3.0", "Message could not be scanned, try again later"), nil
}

// scan posts the message to rspamd and reads its verdict.
func (h *Rspamd) scan(ctx context.Context, s *session.Session, msg *session.Message) (*verdict, error) {
	ctx, cancel := context.WithTimeout(ctx, time.Duration(h.Timeout))
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, h.checkURL, msg.Reader())
	if err != nil {
		return nil, err
	}
	req.ContentLength = msg.Size()
	req.GetBody = func() (io.ReadCloser, error) { return io.NopCloser(msg.Reader()), nil }
	h.setHeaders(req.Header, s)
	resp, err := h.client.Do(req)
	if err != nil {
		if ctx.Err() == context.DeadlineExceeded {
			return nil, fmt.Errorf("no answer within %s", time.Duration(h.Timeout))
		}
		return nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxReplySize+1))
	if err != nil {
		return nil, fmt.Errorf("reading the reply: %v", err)
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("HTTP status %s: %s", resp.Status, session.Sanitize(string(bytes.TrimSpace(body)), 200))
	}
	if len(body) > maxReplySize {
		return nil, fmt.Errorf("reply over %d bytes", maxReplySize)
	}
	return parseReply(body)
}

// setHeaders sets the request headers of rspamd's protocol.
func (h *Rspamd) setHeaders(hdr http.Header, s *session.Session) {
	txn := s.Transaction()
	for k, vs := range h.header {
		hdr[k] = vs
	}
	set := func(k, v string) {
		if v != "" {
			hdr[k] = append(hdr[k], session.Sanitize(v, 0))
		}
	}
	if ip := s.RemoteIP(); ip.IsValid() {
		set("IP", ip.Unmap().String())
	}
	set("Helo", s.Helo())
	if r, ok := iprev.Of(s); ok && r.Value == iprev.Pass {
		set("Hostname", r.Name)
	}
	if txn.From.IsNull() {
		set("From", "<>")
	} else {
		set("From", txn.From.Mailbox)
	}
	for _, r := range txn.Recipients {
		set("Rcpt", r.Path.Mailbox)
	}
	set("Queue-Id", txn.ID)
	set("Log-Tag", txn.ID)
	set("User", s.AuthUser())
	set("MTA-Name", s.Hostname())
	if cs := s.TLS(); cs != nil {
		set("TLS-Version", tlsVersion(cs.Version))
		set("TLS-Cipher", tls.CipherSuiteName(cs.CipherSuite))
	}
}

// tlsVersion names a TLS version as OpenSSL does, as Postfix's
// {tls_version} macro gives it to rspamd's milter proxy ("TLSv1.3").
func tlsVersion(v uint16) string {
	switch v {
	case tls.VersionTLS10:
		return "TLSv1"
	case tls.VersionTLS11:
		return "TLSv1.1"
	case tls.VersionTLS12:
		return "TLSv1.2"
	case tls.VersionTLS13:
		return "TLSv1.3"
	}
	return tls.VersionName(v)
}

// Interface guards
var (
	_ caddy.Provisioner     = (*Rspamd)(nil)
	_ caddy.CleanerUpper    = (*Rspamd)(nil)
	_ caddyfile.Unmarshaler = (*Rspamd)(nil)
	_ session.MessageHook   = (*Rspamd)(nil)
	_ session.MessageReader = (*Rspamd)(nil)
)
