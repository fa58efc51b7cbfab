package rspamd

import (
	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/dustin/go-humanize"

	"github.com/caddy-esmtp/caddy-esmtp/internal/caddyopt"
	"github.com/caddy-esmtp/caddy-esmtp/session"
)

// UnmarshalCaddyfile sets up the sub-handler from Caddyfile tokens. Syntax:
//
//	rspamd [<url>] [{
//		url         <url>
//		password    <password>
//		timeout     <duration>
//		max_size    <size>|off
//		on_error    tempfail|accept|reject
//		greylist    defer|accept
//		spam_header <name>
//		subject     <template with %s>
//		header      <name> <value>
//	}]
//
// header may be repeated; every other option is given at most once.
func (h *Rspamd) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // the sub-handler name

	opts := caddyopt.New("rspamd", "header")
	if d.NextArg() {
		h.URL = d.Val()
		opts.Mark("url")
		if d.NextArg() {
			return d.ArgErr()
		}
		if _, err := checkURL(h.URL); err != nil {
			return d.Errf("rspamd: url: %v", err)
		}
	}
	one := func() (string, error) {
		var v string
		if !d.Args(&v) || d.NextArg() {
			return "", d.ArgErr()
		}
		return v, nil
	}
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		opt := d.Val()
		if err := opts.Once(d); err != nil {
			return err
		}
		switch opt {
		case "url":
			v, err := one()
			if err != nil {
				return err
			}
			if _, err := checkURL(v); err != nil {
				return d.Errf("rspamd: url: %v", err)
			}
			h.URL = v
		case "password":
			v, err := one()
			if err != nil {
				return err
			}
			h.Password = v
		case "timeout":
			v, err := one()
			if err != nil {
				return err
			}
			dur, err := caddy.ParseDuration(v)
			if err != nil || dur <= 0 {
				return d.Errf("rspamd: timeout must be a positive duration, got %q", v)
			}
			h.Timeout = caddy.Duration(dur)
		case "max_size":
			v, err := one()
			if err != nil {
				return err
			}
			if v == "off" {
				h.MaxSize = -1
				break
			}
			n, err := humanize.ParseBytes(v)
			if err != nil || n == 0 || n > 1<<40 {
				return d.Errf("rspamd: max_size must be a size such as 20MiB (or off), got %q", v)
			}
			h.MaxSize = int64(n)
		case "on_error":
			v, err := one()
			if err != nil {
				return err
			}
			if err := checkOnError(v); err != nil {
				return d.Err(err.Error())
			}
			h.OnError = v
		case "greylist":
			v, err := one()
			if err != nil {
				return err
			}
			if err := checkGreylist(v); err != nil {
				return d.Err(err.Error())
			}
			h.Greylist = v
		case "spam_header":
			v, err := one()
			if err != nil {
				return err
			}
			if !validName(v) {
				return d.Errf("rspamd: spam_header: %q is not a header field name", v)
			}
			h.SpamHeader = v
		case "subject":
			v, err := one()
			if err != nil {
				return err
			}
			h.Subject = session.Sanitize(v, 0)
		case "header":
			var name, value string
			if !d.Args(&name, &value) || d.NextArg() {
				return d.ArgErr()
			}
			if err := checkExtra(name, value); err != nil {
				return d.Err(err.Error())
			}
			if h.Headers == nil {
				h.Headers = map[string]string{}
			}
			if _, dup := h.Headers[name]; dup {
				return d.Errf("rspamd: header: %s given twice", name)
			}
			h.Headers[name] = value
		default:
			return d.Errf("rspamd: unknown option %q (known: url, password, timeout, max_size, on_error, greylist, spam_header, subject, header)", opt)
		}
	}
	return nil
}
