package policy

import (
	"strconv"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"

	"github.com/caddy-esmtp/caddy-esmtp/internal/caddyopt"
)

// UnmarshalCaddyfile sets up the sub-handler from Caddyfile tokens. Syntax:
//
//	policy <address> [{
//		at             rcpt|mail|data|end_of_data
//		timeout        <duration>
//		on_error       tempfail|accept|reject
//		max_idle       <n>
//		idle_timeout   <duration>
//		policy_context <text>
//	}]
//
// address is host:port, inet:host:port or unix:/path. max_idle 0 keeps
// no idle connection (JSON -1). Every option is given at most once.
func (p *Policy) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // the sub-handler name
	if !d.Args(&p.Address) {
		return d.Err("policy: address: required: host:port or unix:/path")
	}
	if d.NextArg() {
		return d.ArgErr()
	}
	if _, _, err := parseAddress(p.Address); err != nil {
		return d.Errf("policy: address: %v", err)
	}
	opts := caddyopt.New("policy")
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		opt := d.Val()
		if err := opts.Once(d); err != nil {
			return err
		}
		if !knownOptions[opt] {
			return d.Errf("policy: unknown option %q (known: at, timeout, on_error, max_idle, idle_timeout, policy_context)", opt)
		}
		var v string
		if !d.Args(&v) || d.NextArg() {
			return d.ArgErr()
		}
		switch opt {
		case "at":
			if _, ok := protocolStates[v]; !ok {
				return d.Errf("policy: at: %q is not mail, rcpt, data or end_of_data", v)
			}
			p.At = v
		case "on_error":
			if v != onErrorTempfail && v != onErrorAccept && v != onErrorReject {
				return d.Errf("policy: on_error: %q is not tempfail, accept or reject", v)
			}
			p.OnError = v
		case "timeout", "idle_timeout":
			dur, err := caddy.ParseDuration(v)
			if err != nil || dur <= 0 {
				return d.Errf("policy: %s must be a positive duration, got %q", opt, v)
			}
			if opt == "timeout" {
				p.Timeout = caddy.Duration(dur)
			} else {
				p.IdleTimeout = caddy.Duration(dur)
			}
		case "max_idle":
			n, err := strconv.Atoi(v)
			if err != nil || n < 0 {
				return d.Errf("policy: max_idle must be a number, 0 or more, got %q", v)
			}
			if n == 0 {
				n = -1
			}
			p.MaxIdle = n
		case "policy_context":
			p.PolicyContext = v
		}
	}
	return nil
}

var knownOptions = map[string]bool{"at": true, "timeout": true, "on_error": true, "max_idle": true,
	"idle_timeout": true, "policy_context": true}
