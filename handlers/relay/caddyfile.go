package relay

import (
	"strconv"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"

	"github.com/caddy-esmtp/caddy-esmtp/internal/caddyopt"
)

// UnmarshalCaddyfile sets up the sub-handler from Caddyfile tokens. Syntax:
//
//	relay [<to>] [{
//		to                       smtp://host[:port] | smtps://host[:port] | mx
//		domains                  <pattern...>
//		relay_networks           <ip or cidr...>
//		auth_user                <user>
//		auth_password            <password>
//		require_tls              [on|off]
//		tls_server_name          <name>
//		tls_ca                   <pem file>
//		tls_insecure_skip_verify
//		resolver                 <host[:port]>
//		mta_sts                  [on|off]
//		mta_sts_cache            <file>
//		mx_port                  <port>
//		connect_timeout          <duration>
//		timeout                  <duration>
//		data_timeout             <duration>
//		max_idle                 <n>
//		idle_timeout             <duration>
//	}]
//
// domains and relay_networks may be repeated; every other option is given
// at most once (to counts the argument after relay).
func (r *Relay) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // the sub-handler name

	opts := caddyopt.New("relay", "domains", "relay_networks") // the options given, each at most once
	if d.NextArg() {
		r.To = d.Val()
		opts.Mark("to")
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
		case "to", "auth_user", "auth_password", "tls_server_name", "tls_ca", "resolver", "mta_sts_cache":
			var v string
			if !d.AllArgs(&v) {
				return d.ArgErr()
			}
			switch opt {
			case "to":
				r.To = v
			case "auth_user":
				r.AuthUser = v
			case "auth_password":
				r.AuthPassword = v
			case "tls_server_name":
				r.TLSServerName = v
			case "tls_ca":
				r.TLSCA = v
			case "resolver":
				r.Resolver = v
			case "mta_sts_cache":
				r.MTASTSCache = v
			}
		case "domains":
			args := d.RemainingArgs()
			if len(args) == 0 {
				return d.ArgErr()
			}
			r.Domains = append(r.Domains, args...)
		case "relay_networks":
			args := d.RemainingArgs()
			if len(args) == 0 {
				return d.ArgErr()
			}
			r.RelayNetworks = append(r.RelayNetworks, args...)
		case "require_tls", "mta_sts":
			on := true
			if d.NextArg() {
				switch d.Val() {
				case "on", "true":
				case "off", "false":
					on = false
				default:
					return d.Errf("relay: %s: %q is not on or off", opt, d.Val())
				}
				if d.NextArg() {
					return d.ArgErr()
				}
			}
			if opt == "mta_sts" {
				r.MTASTS = &on
			} else {
				r.RequireTLS = &on
			}
		case "tls_insecure_skip_verify":
			if d.NextArg() {
				return d.ArgErr()
			}
			r.TLSInsecureSkipVerify = true
		case "mx_port", "max_idle":
			var v string
			if !d.AllArgs(&v) {
				return d.ArgErr()
			}
			n, err := strconv.Atoi(v)
			if err != nil {
				return d.Errf("relay: %s: %q is not a number", opt, v)
			}
			if opt == "mx_port" {
				r.MXPort = n
			} else {
				r.MaxIdle = n
			}
		case "connect_timeout", "timeout", "data_timeout", "idle_timeout":
			var v string
			if !d.AllArgs(&v) {
				return d.ArgErr()
			}
			dur, err := caddy.ParseDuration(v)
			if err != nil {
				return d.Errf("relay: %s: %v", opt, err)
			}
			switch opt {
			case "connect_timeout":
				r.ConnectTimeout = caddy.Duration(dur)
			case "timeout":
				r.Timeout = caddy.Duration(dur)
			case "data_timeout":
				r.DataTimeout = caddy.Duration(dur)
			case "idle_timeout":
				r.IdleTimeout = caddy.Duration(dur)
			}
		default:
			return d.Errf("relay: unknown option %q (known: to, domains, relay_networks, auth_user, auth_password, require_tls, "+
				"tls_server_name, tls_ca, tls_insecure_skip_verify, resolver, mx_port, connect_timeout, timeout, data_timeout, max_idle, idle_timeout)", opt)
		}
	}
	if r.To == "" {
		return d.Err("relay: to is required (smtp://host[:port], smtps://host[:port] or mx)")
	}
	return nil
}
