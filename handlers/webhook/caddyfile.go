package webhook

import (
	"net/http"
	"net/textproto"
	"strconv"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"

	"github.com/caddy-esmtp/caddy-esmtp/internal/caddyopt"
)

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
//		permanent_statuses <status...>
//	}
//
// header and permanent_statuses may be repeated; every other option is
// given at most once (url counts the argument after webhook). temp_dir
// <dir> is still accepted and ignored (see Webhook.TempDir).
func (w *Webhook) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // the sub-handler name

	opts := caddyopt.New("webhook", "header", "permanent_statuses") // the options given, each at most once
	if d.NextArg() {
		w.URL = d.Val()
		opts.Mark("url")
		if d.NextArg() {
			return d.ArgErr()
		}
	}
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		opt := d.Val()
		if err := opts.Once(d); err != nil {
			return err
		}
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
			return d.Errf("webhook: unknown option %q (known: url, format, timeout, retries, backoff, secret, header, permanent_statuses)", opt)
		}
	}
	if w.URL == "" {
		return d.Err("webhook: url is required")
	}
	return nil
}
