package lmtp

import (
	"strconv"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"

	"github.com/caddy-esmtp/caddy-esmtp/internal/caddyopt"
)

// UnmarshalCaddyfile sets up the sub-handler from Caddyfile tokens. Syntax:
//
//	lmtp [<address>] [{
//		address      unix:/path | host[:port]
//		timeout      <duration>
//		data_timeout <duration>
//		lhlo_name    <name>
//		max_idle     <n>
//		idle_timeout <duration>
//	}]
//
// Every option is given at most once (address counts the argument after
// lmtp).
func (l *LMTP) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // the sub-handler name

	opts := caddyopt.New("lmtp") // the options given, each at most once
	if d.NextArg() {
		l.Address = d.Val()
		opts.Mark("address")
		if d.NextArg() {
			return d.ArgErr()
		}
	}
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		opt := d.Val()
		if err := opts.Once(d); err != nil {
			return err
		}
		if opt == "verify_recipients" {
			if d.NextArg() {
				return d.Errf("lmtp: verify_recipients takes no value")
			}
			l.VerifyRecipients = true
			continue
		}
		var v string
		if !d.AllArgs(&v) {
			return d.ArgErr()
		}
		switch opt {
		case "address":
			if _, _, err := parseAddress(v); err != nil {
				return d.Errf("lmtp: address: %v", err)
			}
			l.Address = v
		case "lhlo_name":
			if !validName(v) {
				return d.Errf("lmtp: lhlo_name: %q is not a domain name or address literal", v)
			}
			l.LHLOName = v
		case "timeout", "data_timeout", "idle_timeout":
			dur, err := caddy.ParseDuration(v)
			if err != nil || dur <= 0 {
				return d.Errf("lmtp: %s: must be a positive duration such as 30s, got %q", opt, v)
			}
			switch opt {
			case "timeout":
				l.Timeout = caddy.Duration(dur)
			case "data_timeout":
				l.DataTimeout = caddy.Duration(dur)
			default:
				l.IdleTimeout = caddy.Duration(dur)
			}
		case "max_idle":
			n, err := strconv.Atoi(v)
			if err != nil || n < -1 {
				return d.Errf("lmtp: max_idle: must be -1 (none kept) or more, got %q", v)
			}
			l.MaxIdle = n
		default:
			return d.Errf("lmtp: unknown option %q (known: address, timeout, data_timeout, lhlo_name, max_idle, idle_timeout, verify_recipients)", opt)
		}
	}
	if l.Address == "" {
		return d.Err("lmtp: address is required (unix:/path or host[:port])")
	}
	return nil
}
