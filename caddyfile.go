package esmtp

import (
	"strconv"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddytls"
	"github.com/dustin/go-humanize"
	"github.com/mholt/caddy-l4/layer4"
)

// UnmarshalCaddyfile sets up the handler from Caddyfile tokens. Syntax:
//
//	esmtp {
//		hostname           <name>
//		greeting           <text>
//		max_message_size   <size>        # 25MiB, 10MB, 1048576
//		max_recipients     <n>
//		max_errors         <n>
//		command_timeout    <duration>
//		data_timeout       <duration>
//		chunk_size         <size>
//		max_line_length    <n>
//		max_header_size    <size>
//		handler_timeout    <duration>
//		grace_period       <duration>
//		bare_line_endings  reject|normalize
//		starttls [{ connection_policy { ... } }]
//		require_tls
//		xclient_networks   <cidr...>
//		max_connections    <n>
//		max_connections_per_ip <n>
//		reject_early_talkers [<greet_delay>]
//		<sub-handler> [<args...>] [{ ... }]   # e.g. maildir ./mail
//	}
//
// Any directive that is not an option above is a sub-handler: `maildir`
// becomes the module esmtp.handlers.maildir, in the order written.
func (h *Handler) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // consume the handler name
	if d.NextArg() {
		return d.ArgErr()
	}
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		opt := d.Val()
		switch opt {
		case "hostname", "greeting", "bare_line_endings":
			var v string
			if !d.Args(&v) || d.NextArg() {
				return d.ArgErr()
			}
			switch opt {
			case "hostname":
				h.Hostname = v
			case "greeting":
				h.Greeting = v
			default:
				if v != "reject" && v != "normalize" {
					return d.Errf("bare_line_endings: must be reject or normalize, got %q", v)
				}
				h.BareLineEndings = v
			}
		case "max_message_size", "chunk_size", "max_header_size":
			n, err := sizeArg(d, opt)
			if err != nil {
				return err
			}
			switch opt {
			case "max_message_size":
				h.MaxMessageSize = n
			case "chunk_size":
				h.ChunkSize = int(n)
			default:
				h.MaxHeaderSize = int(n)
			}
		case "max_connections", "max_connections_per_ip":
			var v string
			if !d.Args(&v) || d.NextArg() {
				return d.ArgErr()
			}
			n, err := strconv.Atoi(v)
			if err != nil || n < 0 {
				return d.Errf("%s: must be a non-negative integer, got %q", opt, v)
			}
			if opt == "max_connections" {
				h.MaxConnections = n
			} else {
				h.MaxConnectionsPerIP = n
			}
		case "reject_early_talkers":
			h.RejectEarlyTalkers = true
			if d.NextArg() {
				dur, err := caddy.ParseDuration(d.Val())
				if err != nil || dur <= 0 {
					return d.Errf("reject_early_talkers: the greet delay must be a positive duration such as 1s, got %q", d.Val())
				}
				h.GreetDelay = caddy.Duration(dur)
				if d.NextArg() {
					return d.ArgErr()
				}
			}
		case "max_recipients", "max_errors", "max_line_length":
			var v string
			if !d.Args(&v) || d.NextArg() {
				return d.ArgErr()
			}
			n, err := strconv.Atoi(v)
			if err != nil || n <= 0 {
				return d.Errf("%s: must be a positive integer, got %q", opt, v)
			}
			switch opt {
			case "max_recipients":
				h.MaxRecipients = n
			case "max_errors":
				h.MaxErrors = n
			default:
				h.MaxLineLength = n
			}
		case "command_timeout", "data_timeout", "handler_timeout", "grace_period":
			var v string
			if !d.Args(&v) || d.NextArg() {
				return d.ArgErr()
			}
			dur, err := caddy.ParseDuration(v)
			if err != nil || dur <= 0 {
				return d.Errf("%s: must be a positive duration such as 5m, got %q", opt, v)
			}
			switch opt {
			case "command_timeout":
				h.CommandTimeout = caddy.Duration(dur)
			case "data_timeout":
				h.DataTimeout = caddy.Duration(dur)
			case "handler_timeout":
				h.HandlerTimeout = caddy.Duration(dur)
			default:
				h.GracePeriod = caddy.Duration(dur)
			}
		case "starttls":
			if d.NextArg() {
				return d.ArgErr()
			}
			h.StartTLS = new(StartTLS)
			for n := d.Nesting(); d.NextBlock(n); {
				if d.Val() != "connection_policy" {
					return d.Errf("starttls: unknown option %q (known: connection_policy)", d.Val())
				}
				cp := new(caddytls.ConnectionPolicy)
				if err := cp.UnmarshalCaddyfile(d.NewFromNextSegment()); err != nil {
					return err
				}
				h.StartTLS.ConnectionPolicies = append(h.StartTLS.ConnectionPolicies, cp)
			}
		case "require_tls":
			if d.NextArg() {
				return d.ArgErr()
			}
			h.RequireTLS = true
		case "xclient_networks":
			args := d.RemainingArgs()
			if len(args) == 0 {
				return d.ArgErr()
			}
			if _, err := parsePrefixes(args); err != nil {
				return d.Errf("xclient_networks: %v", err)
			}
			h.XClientNetworks = append(h.XClientNetworks, args...)
		default:
			if _, err := caddy.GetModule("esmtp.handlers." + opt); err != nil {
				return d.Errf("unknown esmtp option or sub-handler %q (no module esmtp.handlers.%s)", opt, opt)
			}
			unm, err := caddyfile.UnmarshalModule(d, "esmtp.handlers."+opt)
			if err != nil {
				return err
			}
			raw, err := layer4.SetModuleNameInline("handler", opt, caddyconfig.JSON(unm, nil))
			if err != nil {
				return err
			}
			h.HandlersRaw = append(h.HandlersRaw, raw)
		}
	}
	return nil
}

// sizeArg reads one size argument: a plain number of bytes or a size with a
// unit such as 10MiB or 25MB.
func sizeArg(d *caddyfile.Dispenser, opt string) (int64, error) {
	var v string
	if !d.Args(&v) || d.NextArg() {
		return 0, d.ArgErr()
	}
	n, err := humanize.ParseBytes(v)
	if err != nil || n == 0 || n > 1<<40 {
		return 0, d.Errf("%s: must be a positive size such as 25MiB, got %q", opt, v)
	}
	return int64(n), nil
}

// Interface guard
var _ caddyfile.Unmarshaler = (*Handler)(nil)
