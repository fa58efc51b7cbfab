package integration_test

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// hangGuard bounds every wait so that a broken server fails a test instead
// of hanging it. It is never a timing assertion.
const hangGuard = 60 * time.Second

// raceEnabled is set by race_test.go under -race.
var raceEnabled bool

// loadMsg is one message of a load: a unique id in its header and a random
// body. Only its digest is kept once sent.
type loadMsg struct {
	id   string
	data []byte // as delivered: CRLF line ends, not dot-stuffed
	sum  [32]byte
}

// newLoadMsg makes a message of random size (mostly small, a few up to
// 256 KiB) with lines that start with a dot now and then.
func newLoadMsg(rng *rand.Rand, id string) loadMsg {
	var size int
	switch p := rng.IntN(100); {
	case p < 75:
		size = 200 + rng.IntN(4<<10)
	case p < 97:
		size = 4<<10 + rng.IntN(60<<10)
	default:
		size = 64<<10 + rng.IntN(192<<10)
	}
	return sizedLoadMsg(rng, id, size)
}

// sizedLoadMsg makes a message of at least size bytes.
func sizedLoadMsg(rng *rand.Rand, id string, size int) loadMsg {
	var b bytes.Buffer
	fmt.Fprintf(&b, "From: load@client.test\r\nTo: rcpt@example.test\r\nSubject: load %s\r\n"+
		"Message-ID: <%s@client.test>\r\nX-Test-Id: %s\r\n\r\n", id, id, id)
	const chars = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 .,;:-_+=/()<>@!?"
	for b.Len() < size {
		n := rng.IntN(100)
		if rng.IntN(20) == 0 {
			b.WriteByte('.')
		}
		for range n {
			b.WriteByte(chars[rng.IntN(len(chars))])
		}
		b.WriteString("\r\n")
	}
	m := loadMsg{id: id, data: b.Bytes()}
	m.sum = sha256.Sum256(m.data)
	return m
}

// smtpClient is an SMTP client for load tests: errors are values, not test
// failures, since a killed or reloaded server ends connections.
type smtpClient struct {
	c net.Conn
	r *bufio.Reader
}

// errNoGreeting is a connection that ended or was refused before a 220.
var errNoGreeting = errors.New("no greeting")

// dialSMTP connects and reads the greeting; a 4xx greeting is returned as
// a *replyError, a connection that ends first as errNoGreeting.
func dialSMTP(addr, helo string) (*smtpClient, error) {
	c, err := net.DialTimeout("tcp", addr, hangGuard)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", errNoGreeting, err)
	}
	c.SetDeadline(time.Now().Add(hangGuard))
	sc := &smtpClient{c: c, r: bufio.NewReaderSize(c, 4096)}
	code, text, err := sc.reply()
	if err != nil {
		c.Close()
		return nil, fmt.Errorf("%w: %w", errNoGreeting, err)
	}
	if code != 220 {
		c.Close()
		return nil, &replyError{code, text}
	}
	if code, text, err := sc.cmd("EHLO " + helo); err != nil || code != 250 {
		c.Close()
		if err == nil {
			err = &replyError{code, text}
		}
		return nil, err
	}
	return sc, nil
}

// replyError is an unexpected reply.
type replyError struct {
	code int
	text string
}

func (e *replyError) Error() string { return fmt.Sprintf("%d %s", e.code, e.text) }

// reply reads one reply: its code and its last line.
func (sc *smtpClient) reply() (int, string, error) {
	for {
		l, err := sc.r.ReadString('\n')
		if err != nil {
			return 0, "", err
		}
		if len(l) < 6 || !strings.HasSuffix(l, "\r\n") || (l[3] != ' ' && l[3] != '-') {
			return 0, "", fmt.Errorf("malformed reply line %q", l)
		}
		if l[3] == ' ' {
			code, err := strconv.Atoi(l[:3])
			return code, strings.TrimSuffix(l, "\r\n"), err
		}
	}
}

func (sc *smtpClient) cmd(line string) (int, string, error) {
	sc.c.SetDeadline(time.Now().Add(hangGuard))
	if _, err := io.WriteString(sc.c, line+"\r\n"); err != nil {
		return 0, "", err
	}
	return sc.reply()
}

// sendResult is how one delivery attempt ended.
type sendResult struct {
	code   int    // the last reply, 0 when the connection failed
	text   string // its text
	stage  string // the command it answered: MAIL, RCPT, DATA, EOM
	inData bool   // the connection failed after the 354, before the final reply
	err    error  // the connection failed
}

// send tries one message: MAIL, RCPT and DATA pipelined (RFC 2920), then
// the dot-stuffed data. started is called once the data begins, before
// its end is sent: from then on the message may be delivered.
func (sc *smtpClient) send(m loadMsg, started func()) sendResult {
	sc.c.SetDeadline(time.Now().Add(hangGuard))
	if _, err := io.WriteString(sc.c, "MAIL FROM:<load@client.test>\r\nRCPT TO:<rcpt@example.test>\r\nDATA\r\n"); err != nil {
		return sendResult{stage: "MAIL", err: err}
	}
	var failed *sendResult
	for _, stage := range []string{"MAIL", "RCPT", "DATA"} {
		code, text, err := sc.reply()
		if err != nil {
			return sendResult{stage: stage, err: err}
		}
		want := 250
		if stage == "DATA" {
			want = 354
		}
		if code != want && failed == nil {
			failed = &sendResult{code: code, text: text, stage: stage}
		}
		if code == 421 { // the server closes after it
			return *failed
		}
	}
	if failed != nil { // the first failure (a later DATA gets 503 after it)
		return *failed
	}
	started()
	if _, err := sc.c.Write(dotStuff(m.data)); err != nil {
		return sendResult{stage: "EOM", inData: true, err: err}
	}
	code, text, err := sc.reply()
	if err != nil {
		return sendResult{stage: "EOM", inData: true, err: err}
	}
	return sendResult{code: code, text: text, stage: "EOM"}
}

// begin starts a message and sends only its first n bytes of data: a
// transaction left in the middle of DATA.
func (sc *smtpClient) begin(m loadMsg, n int) error {
	for _, c := range []struct {
		line string
		want int
	}{{"MAIL FROM:<load@client.test>", 250}, {"RCPT TO:<rcpt@example.test>", 250}, {"DATA", 354}} {
		code, text, err := sc.cmd(c.line)
		if err != nil {
			return err
		}
		if code != c.want {
			return &replyError{code, text}
		}
	}
	wire := dotStuff(m.data)
	_, err := sc.c.Write(wire[:min(n, len(wire)-5)])
	return err
}

// dotStuff returns data dot-stuffed, with the end of data.
func dotStuff(data []byte) []byte {
	out := make([]byte, 0, len(data)+len(data)/50+8)
	start := true
	for _, c := range data {
		if start && c == '.' {
			out = append(out, '.')
		}
		out = append(out, c)
		start = c == '\n'
	}
	return append(out, ".\r\n"...)
}

// ledger is the client side's record of a load: the digest of every
// message whose data was started, and which ones got a 250.
type ledger struct {
	mu      sync.Mutex
	started map[string]startedMsg // may be delivered
	acked   map[string]int        // got 250: the phase (kill point) it was in
	phase   int
	inPhase int // 250s in the current phase
	codes   map[string]int
}

func newLedger() *ledger {
	return &ledger{started: map[string]startedMsg{}, acked: map[string]int{}, codes: map[string]int{}}
}

// startedMsg is a message whose data was started.
type startedMsg struct {
	sum   [32]byte
	phase int
}

func (l *ledger) start(m loadMsg) {
	l.mu.Lock()
	l.started[m.id] = startedMsg{m.sum, l.phase}
	l.mu.Unlock()
}

func (l *ledger) ack(m loadMsg) {
	l.mu.Lock()
	l.acked[m.id] = l.phase
	l.inPhase++
	l.mu.Unlock()
}

// count records a reply or failure by kind ("250", "421 4.3.2", "reset in DATA").
func (l *ledger) count(kind string) {
	l.mu.Lock()
	l.codes[kind]++
	l.mu.Unlock()
}

func (l *ledger) nextPhase() {
	l.mu.Lock()
	l.phase++
	l.inPhase = 0
	l.mu.Unlock()
}

func (l *ledger) phaseAcked() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.inPhase
}

// maildirCheck is what a Maildir holds compared with a ledger.
type maildirCheck struct {
	found     map[string]int // id -> files with it
	bad       []string       // files that are no complete message that was sent
	delivered int            // files in new/
}

// checkMaildir reads every file in dir/new, strips the Received: field and
// matches the rest, byte for byte, with a message of the ledger.
func checkMaildir(t *testing.T, dir string, l *ledger) maildirCheck {
	t.Helper()
	entries, err := os.ReadDir(filepath.Join(dir, "new"))
	if err != nil {
		t.Fatal(err)
	}
	res := maildirCheck{found: map[string]int{}}
	for _, e := range entries {
		res.delivered++
		b, err := os.ReadFile(filepath.Join(dir, "new", e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		msg, ok := stripReceived(stripJudged(b))
		id := headerValue(msg, "X-Test-Id")
		sent, known := l.started[id]
		switch {
		case !ok || id == "":
			res.bad = append(res.bad, e.Name()+": no Received: field or no X-Test-Id")
		case !known:
			res.bad = append(res.bad, e.Name()+": message "+id+" was never sent")
		case sha256.Sum256(msg) != sent.sum:
			res.bad = append(res.bad, fmt.Sprintf("%s: message %s differs from what was sent (%d bytes)", e.Name(), id, len(msg)))
		default:
			res.found[id]++
		}
	}
	return res
}

// stripJudged returns the file without the field example_judge puts at
// its top, if it is there.
func stripJudged(file []byte) []byte {
	if bytes.HasPrefix(file, []byte("X-Example-Judge: passed; ")) {
		if i := bytes.Index(file, []byte("\r\n")); i >= 0 {
			return file[i+2:]
		}
	}
	return file
}

// stripReceived returns the file without its first header field, which
// must be a Received: field.
func stripReceived(file []byte) ([]byte, bool) {
	if !bytes.HasPrefix(file, []byte("Received: ")) {
		return nil, false
	}
	end := 0
	for {
		i := bytes.Index(file[end:], []byte("\r\n"))
		if i < 0 {
			return nil, false
		}
		end += i + 2
		if end >= len(file) || (file[end] != '\t' && file[end] != ' ') {
			return file[end:], true
		}
	}
}

// headerValue returns the value of the first header field called name.
func headerValue(msg []byte, name string) string {
	head, _, _ := bytes.Cut(msg, []byte("\r\n\r\n"))
	for _, l := range strings.Split(string(head), "\r\n") {
		if k, v, ok := strings.Cut(l, ":"); ok && strings.EqualFold(k, name) {
			return strings.TrimSpace(v)
		}
	}
	return ""
}

// tmpFiles returns the names of the files in dir/tmp.
func tmpFiles(t *testing.T, dir string) []string {
	t.Helper()
	entries, err := os.ReadDir(filepath.Join(dir, "tmp"))
	if err != nil && !os.IsNotExist(err) {
		t.Fatal(err)
	}
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	return names
}

// waitFor polls cond until it holds, failing the test after hangGuard.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(hangGuard)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("gave up waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}
