// Package reply is the sub-handler esmtp.handlers.reply: it answers one
// SMTP event with a fixed reply from the configuration. It is the Perl
// base class's "override a method" without writing Go: a custom greeting,
// a HELP text, a VRFY or EXPN policy, a command refused.
//
//	reply connect 220 "ESMTP ready, mail for example.com only"
//	reply help 214 2.0.0 "See https://example.com/mail"
//	reply vrfy 502 5.5.1 "VRFY disabled"
//
// Each reply sub-handler answers one event; write one per event. Like
// every sub-handler it is asked in the configured order, so a reply before
// another sub-handler takes the event from it. The code must fit the event
// (a greeting is 220, 4xx or 5xx; 354 is only for DATA) and the enhanced
// status code its class: a configuration that does not fails at load time,
// naming the field.
package reply

import (
	"context"
	"fmt"
	"regexp"
	"slices"
	"strconv"
	"strings"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"

	"github.com/caddy-esmtp/caddy-esmtp/session"
)

func init() {
	caddy.RegisterModule(&Reply{})
}

// Reply answers one event with a fixed reply.
type Reply struct {
	// Event is the SMTP event answered: connect (the greeting), helo,
	// ehlo, mail, rcpt, data (also the first BDAT, where a 354 is not
	// sent), end_of_message, rset, noop, help, vrfy, expn, quit, or
	// unknown (any other command).
	Event string `json:"event,omitempty"`
	// Code is the reply code. It must fit the event: connect 220,
	// helo/ehlo 250, mail 250, rcpt 250 or 251, data 354, rset and noop
	// 250, help 211 or 214, vrfy 250, 251 or 252, expn 250 or 252, quit
	// 221; or 4xx/5xx for any event but quit. end_of_message and unknown
	// take only 4xx/5xx: a 250 at end of message would acknowledge a
	// message that no sub-handler may have stored.
	Code int `json:"code,omitempty"`
	// Enhanced is the enhanced status code (RFC 3463), such as "5.5.1";
	// its class (first digit) must be the code's. Empty: the engine sends
	// "<class>.0.0". The greeting, a 250 to HELO/EHLO and the 354 carry
	// none, so it must be empty for them.
	Enhanced string `json:"enhanced,omitempty"`
	// Lines are the text lines of the reply (printable ASCII, at most 400
	// characters each). For a 220 greeting and a 250 to HELO/EHLO the
	// first line follows the server's hostname, which RFC 5321 requires
	// there: "220 mx.example.com <line>".
	Lines []string `json:"lines,omitempty"`
	// Close closes the connection after the reply (the seed's
	// disconnect). Not possible with a 250 to HELO/EHLO or with 354.
	Close bool `json:"close,omitempty"`

	spec     eventSpec
	reply    *session.Reply
	withHost bool
}

// eventSpec is what an event allows.
type eventSpec struct {
	positive      []int  // the 2xx/3xx codes allowed
	fail          bool   // 4xx and 5xx allowed
	failNote      string // why no 2xx (when positive is empty)
	plain         bool   // no reply carries an enhanced code (the greeting)
	plainPositive bool   // positive replies carry none
	hostFirst     bool   // a positive reply's first line follows the hostname
	verb          string // the VerbHook command, "" for other events
}

var events = map[string]eventSpec{
	"connect":        {positive: []int{220}, fail: true, plain: true, hostFirst: true},
	"helo":           {positive: []int{250}, fail: true, plainPositive: true, hostFirst: true},
	"ehlo":           {positive: []int{250}, fail: true, plainPositive: true, hostFirst: true},
	"mail":           {positive: []int{250}, fail: true},
	"rcpt":           {positive: []int{250, 251}, fail: true},
	"data":           {positive: []int{354}, fail: true, plainPositive: true},
	"end_of_message": {fail: true, failNote: "a 2xx at end of message would acknowledge a message that no sub-handler may have stored"},
	"rset":           {positive: []int{250}, fail: true, verb: "RSET"},
	"noop":           {positive: []int{250}, fail: true, verb: "NOOP"},
	"help":           {positive: []int{211, 214}, fail: true, verb: "HELP"},
	"vrfy":           {positive: []int{250, 251, 252}, fail: true, verb: "VRFY"},
	"expn":           {positive: []int{250, 252}, fail: true, verb: "EXPN"},
	"quit":           {positive: []int{221}, verb: "QUIT"},
	"unknown":        {fail: true, failNote: "it answers commands the server does not implement"},
}

// eventNames lists the events in the documentation's order.
var eventNames = []string{"connect", "helo", "ehlo", "mail", "rcpt", "data", "end_of_message",
	"rset", "noop", "help", "vrfy", "expn", "quit", "unknown"}

// maxLine bounds a text line, so that a reply line with its code, enhanced
// code (and the hostname in a greeting) stays within RFC 5321's 512 octets.
const maxLine = 400

var enhancedRE = regexp.MustCompile(`^[245]\.[0-9]{1,3}\.[0-9]{1,3}$`)

// CaddyModule returns the Caddy module information.
func (*Reply) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "esmtp.handlers.reply",
		New: func() caddy.Module { return new(Reply) },
	}
}

// Provision checks the configuration and builds the reply.
func (r *Reply) Provision(caddy.Context) error {
	if err := r.validate(); err != nil {
		return fmt.Errorf("reply: %v", err)
	}
	r.spec = events[r.Event]
	r.withHost = r.spec.hostFirst && r.Code < 400
	r.reply = &session.Reply{Code: r.Code, Enhanced: r.Enhanced, Lines: slices.Clone(r.Lines), Close: r.Close}
	return nil
}

// validate checks the fields; an error names the field.
func (r *Reply) validate() error {
	spec, ok := events[r.Event]
	switch {
	case r.Event == "":
		return fmt.Errorf("event: required (one of %s)", strings.Join(eventNames, ", "))
	case !ok:
		return fmt.Errorf("event: unknown event %q (known: %s)", r.Event, strings.Join(eventNames, ", "))
	case r.Code == 0:
		return fmt.Errorf("code: required")
	case r.Code < 200 || r.Code > 599 || r.Code%100/10 > 5:
		return fmt.Errorf("code: %d is not an SMTP reply code (200 to 599)", r.Code)
	}
	positive := r.Code < 400
	if positive && !slices.Contains(spec.positive, r.Code) || !positive && !spec.fail {
		return fmt.Errorf("code: %d does not fit event %s (allowed: %s)", r.Code, r.Event, spec.allowed())
	}
	switch {
	case r.Enhanced == "":
	case spec.plain:
		return fmt.Errorf("enhanced: the greeting carries no enhanced status code; leave it out")
	case positive && spec.plainPositive:
		return fmt.Errorf("enhanced: a %d reply to %s carries no enhanced status code; leave it out", r.Code, r.Event)
	case !enhancedRE.MatchString(r.Enhanced):
		return fmt.Errorf("enhanced: %q is not an enhanced status code such as 5.7.1 (RFC 3463)", r.Enhanced)
	case r.Enhanced[0] != byte('0'+r.Code/100):
		return fmt.Errorf("enhanced: class %c of %s does not match code %d", r.Enhanced[0], r.Enhanced, r.Code)
	}
	for i, l := range r.Lines {
		if len(l) > maxLine {
			return fmt.Errorf("lines[%d]: longer than %d characters", i, maxLine)
		}
		for j := 0; j < len(l); j++ {
			if l[j] < 0x20 || l[j] > 0x7e {
				return fmt.Errorf("lines[%d]: only printable ASCII is allowed, got %q at offset %d", i, l[j], j)
			}
		}
	}
	if r.Close && positive && spec.plainPositive {
		return fmt.Errorf("close: a %d reply to %s cannot close the connection", r.Code, r.Event)
	}
	return nil
}

// allowed describes the codes an event allows.
func (spec eventSpec) allowed() string {
	var parts []string
	for _, c := range spec.positive {
		parts = append(parts, strconv.Itoa(c))
	}
	if spec.fail {
		parts = append(parts, "4xx", "5xx")
	}
	s := strings.Join(parts, ", ")
	if spec.failNote != "" {
		s += "; " + spec.failNote
	}
	return s
}

// build returns the reply for session s.
func (r *Reply) build(s *session.Session) *session.Reply {
	if !r.withHost {
		return r.reply
	}
	lines := []string{s.Hostname()}
	if len(r.Lines) > 0 {
		lines = append(lines, r.Lines[1:]...)
		if r.Lines[0] != "" {
			lines[0] += " " + r.Lines[0]
		}
	}
	return &session.Reply{Code: r.Code, Lines: lines, Close: r.Close}
}

// Connect answers the connect event (the greeting).
func (r *Reply) Connect(_ context.Context, s *session.Session) (*session.Reply, error) {
	if r.Event != "connect" {
		return nil, nil
	}
	return r.build(s), nil
}

// Helo answers the helo or ehlo event.
func (r *Reply) Helo(_ context.Context, s *session.Session, _ string) (*session.Reply, error) {
	if r.Event == "helo" && !s.Extended() || r.Event == "ehlo" && s.Extended() {
		return r.build(s), nil
	}
	return nil, nil
}

// Mail answers the mail event.
func (r *Reply) Mail(context.Context, *session.Session, session.Path, session.Params) (*session.Reply, error) {
	return r.on("mail"), nil
}

// Rcpt answers the rcpt event.
func (r *Reply) Rcpt(context.Context, *session.Session, session.Path, session.Params) (*session.Reply, error) {
	return r.on("rcpt"), nil
}

// Data answers the data event.
func (r *Reply) Data(context.Context, *session.Session) (*session.Reply, error) {
	return r.on("data"), nil
}

// EndOfMessage answers the end_of_message event.
func (r *Reply) EndOfMessage(context.Context, *session.Session) (*session.Reply, error) {
	return r.on("end_of_message"), nil
}

// Verb answers rset, noop, help, vrfy, expn, quit and unknown (any other
// command the engine passes to VerbHooks).
func (r *Reply) Verb(_ context.Context, _ *session.Session, cmd, _ string) (*session.Reply, error) {
	if r.spec.verb == cmd || r.Event == "unknown" && !knownVerbs[cmd] {
		return r.reply, nil
	}
	return nil, nil
}

// knownVerbs are the commands with an event of their own.
var knownVerbs = map[string]bool{"RSET": true, "NOOP": true, "HELP": true, "VRFY": true, "EXPN": true, "QUIT": true}

// on returns the reply when the configured event is event.
func (r *Reply) on(event string) *session.Reply {
	if r.Event != event {
		return nil
	}
	return r.reply
}

// UnmarshalCaddyfile sets up the sub-handler from Caddyfile tokens. Syntax:
//
//	reply [<event> <code> [<enhanced>] [<text...>]] [{
//		event    <event>
//		code     <code>
//		enhanced <x.y.z>
//		line     <text...>
//		close
//	}]
//
// The words of <text...> make the first line, each line option one more.
// An argument after the code is the enhanced code when it looks like one
// (5.5.1).
func (r *Reply) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // the sub-handler name
	args := d.RemainingArgs()
	if len(args) == 1 {
		return d.Errf("reply: a code must follow the event: reply <event> <code> [<enhanced>] [<text...>]")
	}
	if len(args) >= 2 {
		r.Event = args[0]
		if err := r.setCode(d, args[1]); err != nil {
			return err
		}
		rest := args[2:]
		if len(rest) > 0 && enhancedRE.MatchString(rest[0]) {
			r.Enhanced, rest = rest[0], rest[1:]
		}
		if len(rest) > 0 {
			r.Lines = append(r.Lines, strings.Join(rest, " "))
		}
	}
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		opt := d.Val()
		switch opt {
		case "event", "code", "enhanced":
			var v string
			if !d.Args(&v) || d.NextArg() {
				return d.ArgErr()
			}
			switch {
			case opt == "event" && r.Event == "":
				r.Event = v
			case opt == "code" && r.Code == 0:
				if err := r.setCode(d, v); err != nil {
					return err
				}
			case opt == "enhanced" && r.Enhanced == "":
				r.Enhanced = v
			default:
				return d.Errf("reply: %s given twice", opt)
			}
		case "line":
			r.Lines = append(r.Lines, strings.Join(d.RemainingArgs(), " "))
		case "close":
			if d.NextArg() {
				return d.ArgErr()
			}
			if r.Close {
				return d.Err("reply: close given twice")
			}
			r.Close = true
		default:
			return d.Errf("reply: unknown option %q (known: event, code, enhanced, line, close)", opt)
		}
	}
	if err := r.validate(); err != nil {
		return d.Errf("reply: %v", err)
	}
	return nil
}

// setCode parses a reply code argument.
func (r *Reply) setCode(d *caddyfile.Dispenser, v string) error {
	n, err := strconv.Atoi(v)
	if err != nil || len(v) != 3 {
		return d.Errf("reply: code: must be a three-digit reply code such as 550, got %q", v)
	}
	r.Code = n
	return nil
}

// Interface guards: the hooks this sub-handler implements.
var (
	_ caddy.Provisioner     = (*Reply)(nil)
	_ caddyfile.Unmarshaler = (*Reply)(nil)
	_ session.ConnectHook   = (*Reply)(nil)
	_ session.HeloHook      = (*Reply)(nil)
	_ session.MailHook      = (*Reply)(nil)
	_ session.RcptHook      = (*Reply)(nil)
	_ session.DataHook      = (*Reply)(nil)
	_ session.MessageHook   = (*Reply)(nil)
	_ session.VerbHook      = (*Reply)(nil)
)
