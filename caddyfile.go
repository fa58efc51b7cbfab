package esmtp

import (
	"encoding/json"
	"strconv"
	"strings"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddytls"
	"github.com/dustin/go-humanize"
	"github.com/mholt/caddy-l4/layer4"

	"github.com/caddy-esmtp/caddy-esmtp/dnscache"
	"github.com/caddy-esmtp/caddy-esmtp/handlers/match"
	"github.com/caddy-esmtp/caddy-esmtp/internal/clientnet"
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
//		log_transcript
//		xclient_networks   <cidr...>
//		resolvers          <host[:port]...>  # DNS servers for sub-handlers
//		max_connections    <n>|unlimited
//		max_connections_per_ip <n>|unlimited
//		min_data_rate      <size>        # bytes per second: 500, 1KiB
//		spool_memory       <size>        # 64MiB
//		spool_dir          <path>
//		reject_early_talkers [<greet_delay>]
//		@<name> { rcpt|sender|remote_ip|authenticated|tls ... }
//		<sub-handler> [@<name>] [<args...>] [{ ... }]   # e.g. maildir @local ./mail
//	}
//
// Each option is given at most once, except xclient_networks and
// resolvers, whose values accumulate. Any directive that is not an option above is a
// sub-handler: `maildir` becomes the module esmtp.handlers.maildir, in the
// order written. A named matcher after the sub-handler's name wraps it in
// esmtp.handlers.match. Sub-handlers may repeat; named matchers may not.
func (h *Handler) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // consume the handler name
	matchers := map[string]*match.Match{}
	var entries []pendingEntry
	if d.NextArg() {
		return d.ArgErr()
	}
	seen := map[string]bool{} // the options given, each at most once
	once := func(opt string) error {
		if seen[opt] {
			return d.Errf("%s: given twice", opt)
		}
		seen[opt] = true
		return nil
	}
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		opt := d.Val()
		switch opt {
		case "spool_dir":
			if err := once(opt); err != nil {
				return err
			}
			if !d.Args(&h.SpoolDir) || d.NextArg() {
				return d.ArgErr()
			}
		case "hostname", "greeting", "bare_line_endings":
			if err := once(opt); err != nil {
				return err
			}
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
		case "max_message_size", "chunk_size", "max_header_size", "spool_memory":
			if err := once(opt); err != nil {
				return err
			}
			n, err := sizeArg(d, opt)
			if err != nil {
				return err
			}
			switch opt {
			case "max_message_size":
				h.MaxMessageSize = n
			case "chunk_size":
				h.ChunkSize = int(n)
			case "spool_memory":
				h.SpoolMemory = n
			default:
				h.MaxHeaderSize = int(n)
			}
		case "max_connections", "max_connections_per_ip":
			if err := once(opt); err != nil {
				return err
			}
			var v string
			if !d.Args(&v) || d.NextArg() {
				return d.ArgErr()
			}
			n, err := strconv.Atoi(v)
			if v == "unlimited" {
				n, err = -1, nil
			} else if err != nil || n <= 0 {
				return d.Errf("%s: must be a positive integer or \"unlimited\", got %q", opt, v)
			}
			if opt == "max_connections" {
				h.MaxConnections = n
			} else {
				h.MaxConnectionsPerIP = n
			}
		case "min_data_rate":
			if err := once(opt); err != nil {
				return err
			}
			n, err := sizeArg(d, opt)
			if err != nil {
				return err
			}
			h.MinDataRate = n
		case "reject_early_talkers":
			if err := once(opt); err != nil {
				return err
			}
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
			if err := once(opt); err != nil {
				return err
			}
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
			if err := once(opt); err != nil {
				return err
			}
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
			if err := once(opt); err != nil {
				return err
			}
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
		case "require_tls", "log_transcript":
			if err := once(opt); err != nil {
				return err
			}
			if d.NextArg() {
				return d.ArgErr()
			}
			if opt == "require_tls" {
				h.RequireTLS = true
			} else {
				h.LogTranscript = true
			}
		case "xclient_networks":
			args := d.RemainingArgs()
			if len(args) == 0 {
				return d.ArgErr()
			}
			if _, err := clientnet.ParsePrefixes(args); err != nil {
				return d.Errf("xclient_networks: %v", err)
			}
			h.XClientNetworks = append(h.XClientNetworks, args...)
		case "queue":
			if err := once(opt); err != nil {
				return err
			}
			if err := parseQueue(d, h); err != nil {
				return err
			}
		case "resolvers":
			args := d.RemainingArgs()
			if len(args) == 0 {
				return d.ArgErr()
			}
			for _, a := range args {
				if _, err := dnscache.ParseServer(a); err != nil {
					return d.Errf("resolvers: %v", err)
				}
			}
			h.Resolvers = append(h.Resolvers, args...)
		default:
			if strings.HasPrefix(opt, "@") {
				m, err := parseMatcher(d)
				if err != nil {
					return err
				}
				if _, dup := matchers[opt]; dup {
					return d.Errf("matcher %s is defined twice", opt)
				}
				matchers[opt] = m
				continue
			}
			if _, err := caddy.GetModule("esmtp.handlers." + opt); err != nil {
				return d.Errf("unknown esmtp option or sub-handler %q (no module esmtp.handlers.%s)", opt, opt)
			}
			// "<sub-handler> @name ...": the matcher token is taken out
			// before the sub-handler reads its own tokens.
			seg := d.NextSegment()
			entry := pendingEntry{line: seg[0].Line}
			if len(seg) > 1 && strings.HasPrefix(seg[1].Text, "@") {
				entry.matcher = seg[1].Text
				seg = append(seg[:1:1], seg[2:]...)
			}
			sub := caddyfile.NewDispenser(seg)
			sub.Next()
			unm, err := caddyfile.UnmarshalModule(sub, "esmtp.handlers."+opt)
			if err != nil {
				return err
			}
			if entry.raw, err = layer4.SetModuleNameInline("handler", opt, caddyconfig.JSON(unm, nil)); err != nil {
				return err
			}
			entries = append(entries, entry)
		}
	}
	for _, e := range entries {
		raw := e.raw
		if e.matcher != "" {
			m, ok := matchers[e.matcher]
			if !ok {
				return d.Errf("line %d: matcher %s is not defined in this esmtp block", e.line, e.matcher)
			}
			wrapped := *m
			wrapped.HandlersRaw = []json.RawMessage{raw}
			var err error
			if raw, err = layer4.SetModuleNameInline("handler", "match", caddyconfig.JSON(&wrapped, nil)); err != nil {
				return err
			}
		}
		h.HandlersRaw = append(h.HandlersRaw, raw)
	}
	return nil
}

// pendingEntry is a sub-handler read from the Caddyfile, wrapped in its
// named matcher once all matchers are known (they may come after it).
type pendingEntry struct {
	raw     json.RawMessage
	matcher string
	line    int
}

// parseMatcher reads a named matcher, on one line or as a block:
//
//	@name rcpt *@example.com
//	@name {
//		rcpt          <patterns...>
//		sender        <patterns...>   # <> for the null sender
//		remote_ip     <ranges...>
//		authenticated [true|false]
//		tls           [true|false]
//	}
func parseMatcher(d *caddyfile.Dispenser) (*match.Match, error) {
	name := d.Val()
	m := new(match.Match)
	if d.NextArg() {
		if err := addCondition(d, m, d.Val(), d.RemainingArgs()); err != nil {
			return nil, err
		}
	}
	for n := d.Nesting(); d.NextBlock(n); {
		if err := addCondition(d, m, d.Val(), d.RemainingArgs()); err != nil {
			return nil, err
		}
	}
	if len(m.Recipients)+len(m.NotRecipients)+len(m.Senders)+len(m.RemoteIP) == 0 && m.Authenticated == nil && m.TLS == nil {
		return nil, d.Errf("matcher %s has no conditions (known: rcpt, not_rcpt, sender, remote_ip, authenticated, tls)", name)
	}
	return m, nil
}

func addCondition(d *caddyfile.Dispenser, m *match.Match, kind string, args []string) error {
	switch kind {
	case "rcpt", "not_rcpt", "sender", "remote_ip":
		if len(args) == 0 {
			return d.Errf("matcher %s: %s needs at least one value", kind, kind)
		}
		switch kind {
		case "rcpt":
			m.Recipients = append(m.Recipients, args...)
		case "not_rcpt":
			m.NotRecipients = append(m.NotRecipients, args...)
		case "sender":
			m.Senders = append(m.Senders, args...)
		default:
			if _, err := clientnet.ParsePrefixes(args); err != nil {
				return d.Errf("matcher remote_ip: %v", err)
			}
			m.RemoteIP = append(m.RemoteIP, args...)
		}
	case "authenticated", "tls":
		v := true
		switch {
		case len(args) == 1 && (args[0] == "true" || args[0] == "false"):
			v = args[0] == "true"
		case len(args) > 0:
			return d.Errf("matcher %s: takes true, false or nothing, got %q", kind, args)
		}
		if kind == "tls" {
			m.TLS = &v
		} else {
			m.Authenticated = &v
		}
	default:
		return d.Errf("unknown matcher condition %q (known: rcpt, not_rcpt, sender, remote_ip, authenticated, tls)", kind)
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

// parseQueue parses `queue <dir> { retry_interval max_retry_interval
// max_age delay_warning workers }`.
func parseQueue(d *caddyfile.Dispenser, h *Handler) error {
	q := &QueueConfig{}
	if !d.Args(&q.Dir) || d.NextArg() {
		return d.Errf("queue: want one directory, then an optional block")
	}
	seen := map[string]bool{}
	for n := d.Nesting(); d.NextBlock(n); {
		opt := d.Val()
		if seen[opt] {
			return d.Errf("queue: %s given twice", opt)
		}
		seen[opt] = true
		var v string
		if !d.Args(&v) || d.NextArg() {
			return d.Errf("queue: %s: want one value", opt)
		}
		switch opt {
		case "retry_interval", "max_retry_interval", "max_age", "delay_warning":
			dur, err := caddy.ParseDuration(v)
			if err != nil || dur <= 0 {
				return d.Errf("queue: %s: want a positive duration such as 5m, 4h or 5d, got %q", opt, v)
			}
			switch opt {
			case "retry_interval":
				q.RetryInterval = caddy.Duration(dur)
			case "max_retry_interval":
				q.MaxRetryInterval = caddy.Duration(dur)
			case "max_age":
				q.MaxAge = caddy.Duration(dur)
			case "delay_warning":
				q.DelayWarning = caddy.Duration(dur)
			}
		case "workers":
			n, err := strconv.Atoi(v)
			if err != nil || n <= 0 {
				return d.Errf("queue: workers: want a positive number, got %q", v)
			}
			q.Workers = n
		default:
			return d.Errf("queue: unknown option %q (known: retry_interval, max_retry_interval, max_age, delay_warning, workers)", opt)
		}
	}
	h.Queue = q
	return nil
}
