package milter

import (
	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"

	"github.com/caddy-esmtp/caddy-esmtp/internal/caddyopt"
)

// UnmarshalCaddyfile sets up the sub-handler from Caddyfile tokens.
// Syntax:
//
//	milter <address> [{
//		name            <name>
//		timeout         <duration>
//		connect_timeout <duration>
//		on_error        tempfail|accept|reject
//		daemon_name     <name>
//	}]
//
// The address is "host:port", "inet:port@host", "unix:/path" or an
// absolute socket path. Each option is given at most once.
func (m *Milter) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // the sub-handler name
	if !d.NextArg() {
		return d.Err("milter: address: want host:port, inet:port@host or unix:/path")
	}
	m.Address = d.Val()
	if _, _, err := ParseAddress(m.Address); err != nil {
		return d.Errf("milter: address: %v", err)
	}
	if d.NextArg() {
		return d.Errf("milter: unexpected argument %q after the address", d.Val())
	}
	opts := caddyopt.New("milter")
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		opt := d.Val()
		if err := opts.Once(d); err != nil {
			return err
		}
		var v string
		if !d.Args(&v) || d.NextArg() {
			return d.Errf("milter: %s: want one value", opt)
		}
		switch opt {
		case "name":
			m.Name = v
		case "timeout", "connect_timeout":
			dur, err := caddy.ParseDuration(v)
			if err != nil || dur <= 0 {
				return d.Errf("milter: %s: want a positive duration, got %q", opt, v)
			}
			if opt == "timeout" {
				m.Timeout = caddy.Duration(dur)
			} else {
				m.ConnectTimeout = caddy.Duration(dur)
			}
		case "on_error":
			switch v {
			case OnErrorTempFail, OnErrorAccept, OnErrorReject:
				m.OnError = v
			default:
				return d.Errf("milter: on_error: want tempfail, accept or reject, got %q", v)
			}
		case "daemon_name":
			m.DaemonName = v
		default:
			return d.Errf("milter: unknown option %q", opt)
		}
	}
	return nil
}

var (
	_ caddyfile.Unmarshaler = (*Milter)(nil)
)
