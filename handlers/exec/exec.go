// Package exec is the sub-handler esmtp.handlers.exec: it delivers each
// accepted message by piping it to a command's standard input, and answers
// 250 only once the command has exited with status 0.
//
// It is a delivery (session.DeliverHook): once the judges have accepted
// the message, the command runs with the final message piped to its
// standard input from the engine's spool (never held in memory, no file
// of its own): our Received: field first, every judge's edit applied,
// CRLF line ends, not dot-stuffed. The command is run directly (os/exec),
// never through a shell, with arguments from the configuration in which
// the {esmtp.*} placeholders of package placeholders are replaced:
//
//	{esmtp.from}         the sender's address (as the judges left it);
//	                     "" for the null sender <>
//	{esmtp.rcpt}         a recipient's address (see below), with
//	{esmtp.rcpt.local}   its local part and
//	{esmtp.rcpt.domain}  its domain, lower-cased
//	{esmtp.queue_id}     the queue id, as in the 250 reply and the logs
//	{esmtp.remote_ip}    the client's IP address ({esmtp.remote}: with port)
//	{esmtp.helo}         the name the client gave in HELO/EHLO
//	{esmtp.auth_user}    the authenticated login, or "" ({esmtp.auth} too)
//	{esmtp.tls}          "true" or "false"
//	{esmtp.session_id}   the session id, as in the logs
//
// An argument that contains a {esmtp.rcpt...} placeholder is repeated once
// per recipient of this delivery (the final recipients, those its matcher
// takes): "{esmtp.rcpt}" alone gives one argument per recipient,
// "--to={esmtp.rcpt}" one --to= per recipient. Values are put in as they
// are, in one pass (a value that looks like a placeholder stays as it is).
// Caddy's global placeholders such as {env.NAME} work too. Envelope values
// come from the client: an address may start with "-", so put "--" before
// them where the command takes options.
//
// Exit status 0 delivers the message (the client gets 250 once every
// other delivery succeeded too). Other statuses follow sysexits.h as Postfix's pipe(8) reads them
// (its sys_exits table): EX_TEMPFAIL (75) and EX_OSERR (71) answer
// 451 4.3.0, so the client tries again later; the other sysexits codes,
// 64 to 78, reject the message for good with the table's enhanced status
// code, such as 550 5.1.1 for EX_NOUSER (67) (README.md has the table).
// Every other status (1 from a crashing interpreter, a shell's 126 or
// 127) answers 451 4.3.0: unlike Postfix, an exit status that says
// nothing about the message never bounces it. A command killed by a
// signal, killed at the timeout, or that cannot be started answers
// 451 4.3.0 too, and so does a message that could not be read from the
// spool in full (the command may have seen only part of it). A command
// that exits without reading all of its standard input is judged by its
// exit status alone. The first 4 KiB of its standard error go into the
// message's log line ("exec_stderr"); its standard output is discarded.
// It inherits Caddy's environment and working directory.
package exec

import (
	"context"
	"errors"
	"fmt"
	"io"
	osexec "os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"go.uber.org/zap"

	"github.com/caddy-esmtp/caddy-esmtp/internal/caddyopt"
	"github.com/caddy-esmtp/caddy-esmtp/placeholders"
	"github.com/caddy-esmtp/caddy-esmtp/session"
)

func init() {
	caddy.RegisterModule(&Exec{})
}

// Exec delivers messages to a command's standard input.
type Exec struct {
	// Command is the program to run: a path, or a name looked up in PATH
	// when the config loads.
	Command string `json:"command,omitempty"`
	// Args are the command's arguments, with the {esmtp.*} placeholders
	// (see the package documentation); an argument with {esmtp.rcpt},
	// {esmtp.rcpt.local} or {esmtp.rcpt.domain} is repeated once per
	// recipient.
	Args []string `json:"args,omitempty"`
	// Timeout bounds one run of the command; then it is killed (with its
	// process group, on Unix) and the client gets 451 4.3.0. It is also
	// cut to fit the engine's handler_timeout. Default: 60s.
	Timeout caddy.Duration `json:"timeout,omitempty"`
	// TempDir is ignored, with a warning when the config loads: the
	// engine keeps the one spool of each message (where the esmtp
	// handler's spool settings say) and exec reads from it. It is kept so
	// that configurations that set it still load.
	//
	// Deprecated: the message is no longer spooled by exec.
	TempDir string `json:"temp_dir,omitempty"`

	path    string // Command, looked up
	name    string // its base name, for replies
	perRcpt []bool // Args[i] contains a {esmtp.rcpt...} placeholder
	logger  *zap.Logger
}

// CaddyModule returns the Caddy module information.
func (*Exec) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "esmtp.handlers.exec",
		New: func() caddy.Module { return new(Exec) },
	}
}

// Defaults and limits.
const (
	defaultTimeout = 60 * time.Second
	maxStderr      = 4 << 10
)

// sysexit is how one exit status of sysexits.h is answered.
type sysexit struct {
	name     string // EX_NOUSER
	code     int    // SMTP reply code
	enhanced string // RFC 3463
	text     string
}

// sysexits maps the exit statuses of sysexits.h (64 to 78) to replies. The
// classes (temporary or permanent) and the enhanced status codes are those
// of Postfix's pipe(8) (src/global/sys_exits.c): only EX_OSERR and
// EX_TEMPFAIL are temporary. The reply code is 550 where the enhanced code
// names the mailbox, the address or a permission, 554 for the rest.
var sysexits = map[int]sysexit{
	64: {"EX_USAGE", 554, "5.3.0", "command line usage error"},
	65: {"EX_DATAERR", 554, "5.6.0", "data format error"},
	66: {"EX_NOINPUT", 554, "5.3.0", "cannot open input"},
	67: {"EX_NOUSER", 550, "5.1.1", "user unknown"},
	68: {"EX_NOHOST", 550, "5.1.2", "host unknown"},
	69: {"EX_UNAVAILABLE", 554, "5.3.0", "service unavailable"},
	70: {"EX_SOFTWARE", 554, "5.3.0", "internal software error"},
	71: {"EX_OSERR", 451, "4.3.0", "system error"},
	72: {"EX_OSFILE", 554, "5.3.0", "system file missing"},
	73: {"EX_CANTCREAT", 550, "5.2.0", "cannot create output file"},
	74: {"EX_IOERR", 554, "5.3.0", "input/output error"},
	75: {"EX_TEMPFAIL", 451, "4.3.0", "temporary failure"},
	76: {"EX_PROTOCOL", 554, "5.5.0", "remote protocol error"},
	77: {"EX_NOPERM", 550, "5.7.0", "permission denied"},
	78: {"EX_CONFIG", 554, "5.3.5", "configuration error"},
}

// placeholders are the envelope placeholders the arguments may use.
var known = map[string]bool{
	"esmtp.remote": true, "esmtp.remote_ip": true, "esmtp.helo": true,
	"esmtp.tls": true, "esmtp.auth_user": true, "esmtp.auth": true,
	"esmtp.session_id": true, "esmtp.queue_id": true, "esmtp.from": true,
	"esmtp.rcpt": true, "esmtp.rcpt.local": true, "esmtp.rcpt.domain": true,
}

var placeholderRE = regexp.MustCompile(`\{(esmtp\.[^{}]*)\}`)

// Provision looks the command up and checks the arguments.
func (e *Exec) Provision(ctx caddy.Context) error {
	e.logger = ctx.Logger()
	if e.Command == "" {
		return errors.New("exec: command is required")
	}
	path, err := osexec.LookPath(e.Command)
	if err != nil {
		return fmt.Errorf("exec: command: %v", err)
	}
	e.path = path
	e.name = filepath.Base(e.Command)
	e.perRcpt = make([]bool, len(e.Args))
	for i, a := range e.Args {
		for _, m := range placeholderRE.FindAllStringSubmatch(a, -1) {
			if !known[m[1]] {
				return fmt.Errorf("exec: args[%d]: unknown placeholder {%s} (known: {esmtp.from}, {esmtp.rcpt}, {esmtp.rcpt.local}, {esmtp.rcpt.domain}, {esmtp.queue_id}, {esmtp.remote_ip}, {esmtp.remote}, {esmtp.helo}, {esmtp.auth_user}, {esmtp.tls}, {esmtp.session_id})", i, m[1])
			}
			if strings.HasPrefix(m[1], "esmtp.rcpt") {
				e.perRcpt[i] = true
			}
		}
	}
	if e.Timeout < 0 {
		return fmt.Errorf("exec: timeout: must be positive, got %s", time.Duration(e.Timeout))
	}
	if e.Timeout == 0 {
		e.Timeout = caddy.Duration(defaultTimeout)
	}
	if e.TempDir != "" {
		e.logger.Warn("exec: temp_dir is ignored: the engine spools each message once", zap.String("temp_dir", e.TempDir))
	}
	return nil
}

// Deliver runs the command with the message as its standard input; it
// returns nil when the command exits with status 0, and otherwise the
// reply the exit status maps to.
func (e *Exec) Deliver(ctx context.Context, s *session.Session, d *session.Delivery) error {
	txn := s.Transaction()
	if d.Message == nil {
		return errors.New("exec: no message")
	}
	res := e.run(ctx, s, d)
	if res.exit >= 0 {
		txn.AddLogField(zap.Int("exec_exit", res.exit))
	}
	if len(res.stderr) > 0 {
		txn.AddLogField(zap.ByteString("exec_stderr", res.stderr))
	}
	if res.err != nil {
		txn.AddLogField(zap.String("exec_error", res.err.Error()))
	}
	if res.err == nil && res.exit == 0 {
		return nil
	}
	reply := e.reply(res)
	if reply.Temporary() {
		e.logger.Error("delivery to command failed", zap.String("queue_id", txn.ID), zap.String("command", e.path),
			zap.Int("exit", res.exit), zap.ByteString("stderr", res.stderr), zap.Error(res.err))
	} else {
		e.logger.Warn("message rejected by command", zap.String("queue_id", txn.ID), zap.String("command", e.path),
			zap.Int("exit", res.exit), zap.ByteString("stderr", res.stderr))
	}
	return reply
}

// reply answers a run that did not exit 0: by the sysexits table for
// statuses 64 to 78, 451 4.3.0 for any other status and for a command that
// did not exit (not started, killed by a signal or at the timeout).
func (e *Exec) reply(res result) *session.Reply {
	if res.err != nil || res.exit < 0 {
		return session.NewReply(451, "4.3.0", "Delivery failed; try again later")
	}
	x, ok := sysexits[res.exit]
	switch {
	case !ok:
		return session.NewReply(451, "4.3.0", fmt.Sprintf("Delivery failed: %s exited with status %d; try again later", e.name, res.exit))
	case x.code < 500:
		return session.NewReply(x.code, x.enhanced, fmt.Sprintf("Delivery failed: %s: %s (%s); try again later", e.name, x.text, x.name))
	default:
		return session.NewReply(x.code, x.enhanced, fmt.Sprintf("Rejected by %s: %s (%s)", e.name, x.text, x.name))
	}
}

// result is the outcome of one run.
type result struct {
	exit   int    // the exit status; -1 when there is none
	stderr []byte // the start of its standard error
	err    error  // not started, killed by a signal or at the timeout, or the message not read in full
}

// run runs the command with the delivery's message as its standard input.
func (e *Exec) run(ctx context.Context, s *session.Session, d *session.Delivery) result {
	timeout := time.Duration(e.Timeout)
	if dl, ok := ctx.Deadline(); ok {
		// Keep a little time to answer before the engine's
		// handler_timeout fails the hook on its own.
		left := time.Until(dl)
		timeout = min(timeout, left-min(left/10, time.Second))
	}
	if timeout <= 0 {
		return result{exit: -1, err: context.DeadlineExceeded}
	}
	rctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	cmd := osexec.CommandContext(rctx, e.path, e.args(s, d)...)
	cmd.Args[0] = e.Command
	// os/exec copies it into a pipe; a command that exits without
	// reading it all is not an error (EPIPE is ignored).
	stdin := &messageReader{r: d.Message.Reader()}
	cmd.Stdin = stdin
	var stderr limitedBuffer
	cmd.Stderr = &stderr
	ownGroup(cmd)
	// Children that escaped the kill and keep stdin or stderr open are
	// waited for only this long.
	cmd.WaitDelay = 500 * time.Millisecond
	err := cmd.Run()
	res := result{exit: -1, stderr: stderr.buf}
	if cmd.ProcessState == nil { // never started
		res.err = err
		return res
	}
	res.exit = cmd.ProcessState.ExitCode()
	switch {
	case res.exit == -1 && rctx.Err() != nil:
		// Killed at the timeout (or the client went away).
		res.err = fmt.Errorf("killed after %s: %w", timeout.Round(time.Millisecond), rctx.Err())
	case res.exit == -1:
		res.err = fmt.Errorf("%s", cmd.ProcessState) // "signal: killed"
	case stdin.err != nil:
		// The command may have seen part of the message only.
		res.err = fmt.Errorf("reading the message: %w", stdin.err)
	case errors.Is(err, osexec.ErrWaitDelay):
		// It exited; something it started kept stdin or stderr open.
		// The exit status stands.
		e.logger.Warn("command left a process holding its stdin or stderr open", zap.String("queue_id", s.Transaction().ID), zap.String("command", e.path))
	}
	return res
}

// messageReader reads the message and keeps the first read error, to
// tell a spool that failed from a command that stopped reading.
type messageReader struct {
	r   io.Reader
	err error
}

func (m *messageReader) Read(p []byte) (int, error) {
	n, err := m.r.Read(p)
	if err != nil && err != io.EOF && m.err == nil {
		m.err = err
	}
	return n, err
}

// args returns the arguments with the placeholders replaced, in one pass:
// the sender and the recipients are the delivery's.
func (e *Exec) args(s *session.Session, d *session.Delivery) []string {
	repl := placeholders.New(s)
	repl.Set("esmtp.auth", s.AuthUser())
	repl.Set("esmtp.from", d.From.Mailbox)
	out := make([]string, 0, len(e.Args)+len(d.Recipients))
	for i, a := range e.Args {
		if !e.perRcpt[i] {
			out = append(out, repl.ReplaceKnown(a, ""))
			continue
		}
		for _, rc := range d.Recipients {
			placeholders.WithRecipient(repl, rc.Path)
			out = append(out, repl.ReplaceKnown(a, ""))
		}
	}
	return out
}

// limitedBuffer keeps the first maxStderr bytes written to it and drops
// the rest, so the command never blocks on a full pipe.
type limitedBuffer struct{ buf []byte }

func (b *limitedBuffer) Write(p []byte) (int, error) {
	if room := maxStderr - len(b.buf); room > 0 {
		b.buf = append(b.buf, p[:min(room, len(p))]...)
	}
	return len(p), nil
}

// UnmarshalCaddyfile sets up the sub-handler from Caddyfile tokens. Syntax:
//
//	exec [<command> [<args...>]] {
//		command  <command> [<args...>]
//		timeout  <duration>
//	}
//
// temp_dir <dir> is accepted and ignored (see TempDir).
func (e *Exec) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // the sub-handler name
	if args := d.RemainingArgs(); len(args) > 0 {
		e.Command, e.Args = args[0], args[1:]
	}
	opts := caddyopt.New("exec", "command") // command: checked below, with the arguments
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		opt := d.Val()
		if err := opts.Once(d); err != nil {
			return err
		}
		switch opt {
		case "command":
			args := d.RemainingArgs()
			if len(args) == 0 {
				return d.ArgErr()
			}
			if e.Command != "" {
				return d.Err("exec: command is given twice")
			}
			e.Command, e.Args = args[0], args[1:]
		case "timeout":
			var v string
			if !d.AllArgs(&v) {
				return d.ArgErr()
			}
			dur, err := caddy.ParseDuration(v)
			if err != nil || dur <= 0 {
				return d.Errf("exec: timeout: must be a positive duration such as 60s, got %q", v)
			}
			e.Timeout = caddy.Duration(dur)
		case "temp_dir":
			if !d.AllArgs(&e.TempDir) {
				return d.ArgErr()
			}
		default:
			return d.Errf("exec: unknown option %q (known: command, timeout, temp_dir)", opt)
		}
	}
	if e.Command == "" {
		return d.Err("exec: command is required")
	}
	if len(e.Args) == 0 {
		e.Args = nil
	}
	return nil
}

// Interface guards
var (
	_ caddy.Provisioner     = (*Exec)(nil)
	_ caddyfile.Unmarshaler = (*Exec)(nil)
	_ session.DeliverHook   = (*Exec)(nil)
)
