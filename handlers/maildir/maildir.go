// Package maildir is the sub-handler esmtp.handlers.maildir: it delivers
// each accepted message into a Maildir, durably, before the 250 is sent.
//
// It is a two-step delivery (session.PrepareHook). Prepare writes the
// final message (the engine's spool with every edit applied) into tmp/ of
// each distinct Maildir of its recipients, once per Maildir, and fsyncs
// each file; nothing is held in memory. Once every other delivery of the
// message succeeded the engine commits: each file is linked into new/
// and the new/ directories fsynced. Otherwise (or when a link fails) the
// files are removed: no file in new/ ever holds a message the client was
// told to send again or that was refused. A failure answers 451 4.3.0.
//
// File names are "<unix time>.<queue id>P<pid>Q<n>.<hostname>", unique per
// delivery and the same in tmp/ and in every new/.
//
// A crash (kill -9, power loss) during a delivery leaves its files in
// tmp/, never a partial one in new/, since a file is linked there only
// once complete and fsynced; the client, which got no 250, sends the
// message again. Such
// leftovers are removed when a Maildir is next used: at Provision for a
// fixed path, at the first delivery into it by this process for a path with
// placeholders. Removed are the files in tmp/ that
//
//   - are older than 36 hours, whoever wrote them (the rule of the Maildir
//     specification), or
//   - carry our naming pattern and this machine's hostname, and were written
//     by a process that is no longer running: the pid in the name is not a
//     live process, or it is ours but the file predates our start (a
//     crashed earlier process that had the same pid).
//
// Files of live processes are kept: after a reload the sessions of the old
// configuration may still be delivering into the same Maildir in this
// process, and another Caddy on the same machine may share it.
//
// A path with placeholders is expanded for each recipient at RCPT: one
// whose Maildir path would have an element longer than a file name may be
// (255 bytes), or be longer than the system takes, is refused there with
// 553 5.1.3, rather than accepted and then failed with 451 at every retry.
// Behind a matcher maildir is asked only about the recipients it takes,
// so only those are checked (and delivered to).
package maildir

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"go.uber.org/zap"

	"github.com/caddy-esmtp/caddy-esmtp/internal/caddyopt"
	"github.com/caddy-esmtp/caddy-esmtp/internal/durable"
	"github.com/caddy-esmtp/caddy-esmtp/session"
)

func init() {
	caddy.RegisterModule(&Maildir{})
}

// Maildir delivers messages into Maildir directories.
type Maildir struct {
	// Path is the Maildir directory (tmp/, new/ and cur/ are created
	// inside it). It may use the placeholders {esmtp.rcpt.local},
	// {esmtp.rcpt.domain} and {esmtp.rcpt} for one Maildir per recipient
	// (lower-cased unless KeepCase; path separators and control
	// characters become '_', and so do the values "", "." and "..");
	// the message is then written once into each distinct directory. A
	// recipient whose path would have an element longer than 255 bytes is
	// refused at RCPT with 553 5.1.3. A relative path is relative to
	// Caddy's working directory.
	Path string `json:"path,omitempty"`
	// KeepCase keeps the recipient's local part as the client wrote it in
	// what {esmtp.rcpt.local} and {esmtp.rcpt} expand to. By default it is
	// lower-cased, so Bob@example.com and bob@example.com share one
	// Maildir. The domain is lower-cased either way.
	KeepCase bool `json:"keep_case,omitempty"`

	perRecipient bool
	hostname     string
	leftover     *regexp.Regexp
	logger       *zap.Logger
}

// CaddyModule returns the Caddy module information.
func (*Maildir) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "esmtp.handlers.maildir",
		New: func() caddy.Module { return new(Maildir) },
	}
}

// Provision checks the path and creates the Maildir when it is fixed.
func (m *Maildir) Provision(ctx caddy.Context) error {
	m.logger = ctx.Logger(m)
	if m.Path == "" {
		return errors.New("maildir: path is required")
	}
	m.perRecipient = strings.Contains(m.Path, "{esmtp.rcpt")
	if strings.Contains(strings.ReplaceAll(strings.ReplaceAll(strings.ReplaceAll(m.Path,
		"{esmtp.rcpt.local}", ""), "{esmtp.rcpt.domain}", ""), "{esmtp.rcpt}", ""), "{") {
		return fmt.Errorf("maildir: path %q: the only placeholders are {esmtp.rcpt.local}, {esmtp.rcpt.domain} and {esmtp.rcpt}", m.Path)
	}
	if m.perRecipient {
		// The fixed parts of the path must fit too, or every
		// recipient would be refused.
		for _, elem := range strings.FieldsFunc(m.Path, isSeparator) {
			if !strings.Contains(elem, "{esmtp.rcpt") && len(elem) > maxNameLen {
				return fmt.Errorf("maildir: path %q: the element %.20q... is longer than %d bytes", m.Path, elem, maxNameLen)
			}
		}
	}
	host, _ := os.Hostname()
	m.hostname = strings.NewReplacer("/", `\057`, ":", `\072`).Replace(host)
	if m.hostname == "" {
		m.hostname = "localhost"
	}
	m.leftover = leftoverPattern(m.hostname)
	if !m.perRecipient {
		if err := makeMaildir(m.Path); err != nil {
			return fmt.Errorf("maildir: path %q: %v", m.Path, err)
		}
		m.cleanTmp(m.Path)
	}
	return nil
}

// maxTmpAge is the Maildir specification's age after which a file in tmp/
// is garbage, whoever wrote it.
const maxTmpAge = 36 * time.Hour

// processStart is when this process started (near enough: when this
// package was initialised), to tell our own files from those of a crashed
// process that had the same pid.
var processStart = time.Now()

// cleaned holds the placeholder Maildirs this process has cleaned.
var cleaned sync.Map

// leftoverPattern matches our file names written on host, capturing the
// time and the pid.
func leftoverPattern(host string) *regexp.Regexp {
	return regexp.MustCompile(`^([0-9]+)\.[0-9A-V]{16}P([0-9]+)Q[0-9]+\.` + regexp.QuoteMeta(host) + `$`)
}

// cleanTmp removes the leftovers of crashed deliveries from dir/tmp (see
// the package documentation). Errors are logged, never fatal: a leftover
// costs only disk space.
func (m *Maildir) cleanTmp(dir string) {
	tmp := filepath.Join(dir, "tmp")
	entries, err := os.ReadDir(tmp)
	if err != nil {
		if !errors.Is(err, fs.ErrNotExist) {
			m.logger.Warn("reading tmp/ for leftovers", zap.String("dir", tmp), zap.Error(err))
		}
		return
	}
	removed := 0
	for _, e := range entries {
		if !e.Type().IsRegular() {
			continue
		}
		info, err := e.Info()
		if err != nil {
			continue
		}
		if !m.isLeftover(e.Name(), info.ModTime()) {
			continue
		}
		if err := os.Remove(filepath.Join(tmp, e.Name())); err != nil && !errors.Is(err, fs.ErrNotExist) {
			m.logger.Warn("removing a leftover from tmp/", zap.String("file", filepath.Join(tmp, e.Name())), zap.Error(err))
			continue
		}
		removed++
	}
	if removed > 0 {
		m.logger.Info("removed leftovers of interrupted deliveries", zap.String("dir", tmp), zap.Int("files", removed))
	}
}

// isLeftover reports whether a file in tmp/ named name and last modified at
// mtime belongs to no delivery that can still be running.
func (m *Maildir) isLeftover(name string, mtime time.Time) bool {
	if time.Since(mtime) > maxTmpAge {
		return true
	}
	match := m.leftover.FindStringSubmatch(name)
	if match == nil {
		return false
	}
	pid, err := strconv.Atoi(match[2])
	if err != nil {
		return false
	}
	if pid == os.Getpid() {
		written, err := strconv.ParseInt(match[1], 10, 64)
		return err == nil && written < processStart.Unix()
	}
	return !processAlive(pid)
}

// makeMaildir creates dir/tmp, dir/new and dir/cur.
// Directories it creates are fsynced with their parents, so a Maildir made
// during a delivery survives a crash after the 250 too.
func makeMaildir(dir string) error {
	if _, err := os.Stat(filepath.Join(dir, "new")); err == nil {
		return nil // the common case: it exists
	}
	// The ancestors that do not exist yet, deepest first.
	var created []string
	for p := filepath.Clean(dir); ; p = filepath.Dir(p) {
		if _, err := os.Stat(p); err == nil || p == filepath.Dir(p) {
			break
		}
		created = append(created, p)
	}
	for _, sub := range []string{"tmp", "new", "cur"} {
		if err := os.MkdirAll(filepath.Join(dir, sub), 0o700); err != nil {
			return err
		}
	}
	if err := durable.SyncDir(dir); err != nil {
		return err
	}
	for _, p := range created {
		if err := durable.SyncDir(filepath.Dir(p)); err != nil {
			return err
		}
	}
	return nil
}

// seq numbers the deliveries of this process, for unique file names.
var seq atomic.Uint64

// Prepare writes the message, from the engine's spool, into tmp/ of each
// distinct Maildir of the delivery's recipients, fsyncs each file and
// returns what Commit links into new/. On failure it leaves no file
// behind and answers 451 4.3.0 (554 5.1.3 for a recipient whose Maildir
// path can never be made).
func (m *Maildir) Prepare(ctx context.Context, s *session.Session, d *session.Delivery) (session.Prepared, error) {
	txn := s.Transaction()
	if d.Message == nil {
		return nil, errors.New("maildir: no message")
	}
	dirs, err := m.targets(d.Recipients)
	if err != nil { // errNameTooLong
		// A recipient an earlier sub-handler accepted with its own 2xx
		// (or a judge added), so Rcpt never saw it: a retry could only
		// fail again.
		m.logger.Warn("message refused: a maildir path is too long", zap.String("queue_id", txn.ID), zap.Error(err))
		return nil, session.NewReply(554, replyNameTooLong.Enhanced, replyNameTooLong.Lines...)
	}
	p := &prepared{
		m:    m,
		txn:  txn,
		dirs: dirs,
		msg:  d.Message,
		name: fmt.Sprintf("%d.%sP%dQ%d.%s", time.Now().Unix(), txn.ID, os.Getpid(), seq.Add(1), m.hostname),
	}
	if err := p.write(ctx, d.Message); err != nil {
		p.Rollback()
		m.logger.Error("delivery failed", zap.String("queue_id", txn.ID), zap.Strings("maildirs", dirs), zap.Error(err))
		return nil, replyFailed
	}
	return p, nil
}

// replyFailed answers a delivery that failed for a reason that may pass.
var replyFailed = session.NewReply(451, "4.3.0", "Local delivery failed; try again later")

// prepared is a message written into tmp/ of its Maildirs, waiting for
// Commit.
type prepared struct {
	m    *Maildir
	txn  *session.Transaction
	dirs []string // the target Maildirs, distinct paths (for the log)
	name string   // the file name, the same in every tmp/ and new/
	// homes are the distinct directories among dirs (an alias, such as
	// a symlink or another case on a case-insensitive file system, is
	// left out), and files what was written for each one (see unnamed).
	homes []string
	files []tmpFile
	msg   *session.Message // to write a named tmp/ file after all (see Commit)
}

// tmpFile is the message written for one Maildir: an unnamed file in its
// tmp/ (Linux's O_TMPFILE: it has no name until Commit links it into new/,
// so no crash can leave it behind, and a delivery costs one directory
// entry instead of three), kept open until Commit; or, where the file
// system cannot, a file named in tmp/ as the Maildir format has it.
type tmpFile struct {
	f    *os.File // the unnamed file, or nil
	path string   // the named file in tmp/, or ""
}

// write makes each Maildir and writes the message into its tmp/.
func (p *prepared) write(ctx context.Context, msg *session.Message) error {
	var seen []os.FileInfo
next:
	for _, dir := range p.dirs {
		if err := ctx.Err(); err != nil {
			return err
		}
		if err := makeMaildir(dir); err != nil {
			return err
		}
		if p.m.perRecipient {
			if _, done := cleaned.LoadOrStore(dir, true); !done {
				p.m.cleanTmp(dir)
			}
		}
		fi, err := os.Stat(dir)
		if err != nil {
			return err
		}
		for _, other := range seen {
			if os.SameFile(fi, other) {
				continue next // an earlier target under another name
			}
		}
		seen = append(seen, fi)
		p.homes = append(p.homes, dir)
		if f, err := durable.OpenUnnamed(filepath.Join(dir, "tmp")); err != nil {
			return err
		} else if f != nil {
			p.files = append(p.files, tmpFile{f: f})
			if _, err := msg.WriteTo(f); err != nil {
				return err
			}
			if err := f.Sync(); err != nil {
				return err
			}
			continue
		}
		path, err := writeNamed(dir, p.name, msg)
		p.files = append(p.files, tmpFile{path: path})
		if err != nil {
			return err
		}
	}
	return nil
}

// writeNamed writes msg into dir/tmp/name and fsyncs it; path is the file
// made, even on failure ("" when none was).
func writeNamed(dir, name string, msg *session.Message) (path string, err error) {
	tmp := filepath.Join(dir, "tmp", name)
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return "", err
	}
	_, err = msg.WriteTo(f)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return tmp, err
}

// Commit links each file from tmp/ into new/ and fsyncs new/; on any
// failure no file is left in any new/ (nor in tmp/) and the client gets
// 451 4.3.0.
func (p *prepared) Commit() (err error) {
	var linked []string
	defer func() {
		if err != nil {
			for _, dst := range linked {
				os.Remove(dst)
			}
			p.Rollback()
			p.m.logger.Error("delivery failed", zap.String("queue_id", p.txn.ID), zap.Strings("maildirs", p.dirs), zap.Error(err))
			err = replyFailed
		}
	}()
	for i := range p.files {
		t := &p.files[i]
		dst := filepath.Join(p.homes[i], "new", p.name)
		if t.f != nil {
			err := durable.LinkUnnamed(t.f, dst)
			if err == nil {
				linked = append(linked, dst)
				if err := durable.GroupSync(filepath.Join(p.homes[i], "new")); err != nil {
					return err
				}
				continue
			}
			if errors.Is(err, fs.ErrExist) {
				return err
			}
			// The file system made the unnamed file but this process
			// cannot link it (no /proc, say): from now on, named files.
			p.m.logger.Warn("unnamed tmp/ files cannot be linked here; using named ones", zap.Error(err))
			durable.UnnamedOff.Store(true)
			t.f.Close()
			t.f = nil
			if t.path, err = writeNamed(p.homes[i], p.name, p.msg); err != nil {
				return err
			}
		}
		if err := publish(t.path, dst); err != nil {
			return err
		}
		linked = append(linked, dst)
		if err := durable.GroupSync(filepath.Join(p.homes[i], "new")); err != nil {
			return err
		}
	}
	// Delivered: the names in tmp/ are no longer needed. One left there
	// by a failure here is removed as a leftover later.
	p.Rollback()
	// The message's own log line says where it went.
	p.txn.AddLogField(zap.Strings("maildirs", p.dirs))
	p.txn.AddLogField(zap.String("maildir_file", p.name))
	return nil
}

// Rollback removes the files in tmp/ (an unnamed one goes when it is
// closed).
func (p *prepared) Rollback() {
	for _, t := range p.files {
		if t.f != nil {
			t.f.Close()
		}
		if t.path == "" {
			continue
		}
		if err := os.Remove(t.path); err != nil && !errors.Is(err, fs.ErrNotExist) {
			p.m.logger.Warn("removing a file from tmp/", zap.String("file", t.path), zap.Error(err))
		}
	}
	p.files, p.homes = nil, nil
}

// publish makes the file tmp visible as dst, never replacing a file that
// is there: a hard link, or a rename where the file system has no hard
// links (the name is unique, see the package documentation).
func publish(tmp, dst string) error {
	err := os.Link(tmp, dst)
	if err == nil || errors.Is(err, fs.ErrExist) {
		return err
	}
	if _, serr := os.Lstat(dst); serr == nil {
		return err
	}
	return os.Rename(tmp, dst)
}

// Rcpt refuses a recipient whose Maildir, for a path with placeholders,
// could never be made (see errNameTooLong); it has no opinion on the others.
func (m *Maildir) Rcpt(_ context.Context, s *session.Session, to session.Path, _ session.Params) (*session.Reply, error) {
	if !m.perRecipient {
		return nil, nil
	}
	if _, err := m.dirFor(to); err != nil {
		if ce := m.logger.Check(zap.DebugLevel, "recipient refused: its maildir path is too long"); ce != nil {
			ce.Write(zap.String("session", s.ID()), zap.String("rcpt", session.Sanitize(to.Mailbox, 256)), zap.Error(err))
		}
		return replyNameTooLong, nil
	}
	return nil, nil
}

// Limits of Linux and most Unix file systems: NAME_MAX, and PATH_MAX with
// its NUL.
const (
	maxNameLen = 255
	maxPathLen = 4095
)

// errNameTooLong is a recipient's Maildir path that the file system would
// refuse whatever we do: permanent.
var errNameTooLong = errors.New("maildir path too long")

// replyNameTooLong answers a recipient (or, when an earlier sub-handler
// accepted it without asking us, a message) refused for errNameTooLong.
var replyNameTooLong = session.NewReply(553, "5.1.3", "Mailbox name not allowed: too long for its Maildir path")

// targets returns the distinct Maildirs of the recipients; the error is
// errNameTooLong for a recipient no Maildir can be made for.
func (m *Maildir) targets(rcpts []session.Recipient) ([]string, error) {
	if !m.perRecipient {
		return []string{m.Path}, nil
	}
	var dirs []string
	seen := map[string]bool{}
	for _, rc := range rcpts {
		dir, err := m.dirFor(rc.Path)
		if err != nil {
			return nil, err
		}
		if !seen[dir] {
			seen[dir] = true
			dirs = append(dirs, dir)
		}
	}
	return dirs, nil
}

// dirFor expands the path for one recipient, and checks that the file
// system can take it: every element at most maxNameLen bytes, the whole
// with a file in tmp/ at most maxPathLen.
func (m *Maildir) dirFor(to session.Path) (string, error) {
	local, domain := to.Local, strings.ToLower(to.Domain)
	if !m.KeepCase || domain == "" { // <postmaster> is folded always
		local = strings.ToLower(local)
	}
	repl := caddy.NewEmptyReplacer()
	repl.Set("esmtp.rcpt.local", pathSafe(local))
	repl.Set("esmtp.rcpt.domain", pathSafe(domain))
	repl.Set("esmtp.rcpt", pathSafe(local+"@"+domain))
	dir := repl.ReplaceKnown(m.Path, "")
	for _, elem := range strings.FieldsFunc(dir, isSeparator) {
		if len(elem) > maxNameLen {
			return dir, fmt.Errorf("%w: an element is %d bytes, more than %d", errNameTooLong, len(elem), maxNameLen)
		}
	}
	if n := len(dir) + len("/tmp/") + maxNameLen; n > maxPathLen {
		return dir, fmt.Errorf("%w: %d bytes with a file in tmp/, more than %d", errNameTooLong, n, maxPathLen)
	}
	return dir, nil
}

// isSeparator reports whether r separates path elements here.
func isSeparator(r rune) bool { return r < utf8.RuneSelf && os.IsPathSeparator(uint8(r)) }

// pathSafe keeps a placeholder value inside its directory level.
func pathSafe(v string) string {
	v = strings.Map(func(r rune) rune {
		if r == '/' || r == '\\' || r == 0 || r < 32 {
			return '_'
		}
		return r
	}, v)
	if v == "" || v == "." || v == ".." {
		return "_"
	}
	return v
}

// UnmarshalCaddyfile sets up the sub-handler from Caddyfile tokens. Syntax:
//
//	maildir <path>
//	maildir [<path>] {
//		path <path>
//		keep_case
//	}
func (m *Maildir) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // the sub-handler name
	if d.NextArg() {
		m.Path = d.Val()
		if d.NextArg() {
			return d.ArgErr()
		}
	}
	// Each option is given at most once; path in the block replaces the
	// argument after maildir.
	opts := caddyopt.New("maildir")
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		if err := opts.Once(d); err != nil {
			return err
		}
		switch d.Val() {
		case "path":
			if !d.AllArgs(&m.Path) {
				return d.ArgErr()
			}
		case "keep_case":
			if d.NextArg() {
				return d.ArgErr()
			}
			m.KeepCase = true
		default:
			return d.Errf("maildir: unknown option %q (known: path, keep_case)", d.Val())
		}
	}
	if m.Path == "" {
		return d.Err("maildir: path is required")
	}
	return nil
}

// Interface guards
var (
	_ caddy.Provisioner     = (*Maildir)(nil)
	_ caddyfile.Unmarshaler = (*Maildir)(nil)
	_ session.RcptHook      = (*Maildir)(nil)
	_ session.PrepareHook   = (*Maildir)(nil)
	_ session.Prepared      = (*prepared)(nil)
)
