package integration_test

import (
	"bytes"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// Real Caddy processes: the crash and stop tests need a process they can
// kill -9 or stop, not the in-process Caddy of the other tests.

var (
	caddyBinOnce sync.Once
	caddyBinPath string
	caddyBinErr  error
)

// caddyBinary builds ./testcaddy (cmd/caddy with the example sub-handlers)
// once per test run (with -race when the
// tests run with it, so races in the real process are caught too) into the
// temporary directory TestMain removes, and returns its path.
func caddyBinary(t *testing.T) string {
	t.Helper()
	caddyBinOnce.Do(func() {
		dir := filepath.Join(filepath.Dir(os.Getenv("XDG_DATA_HOME")), "bin")
		if err := os.MkdirAll(dir, 0o700); err != nil {
			caddyBinErr = err
			return
		}
		caddyBinPath = filepath.Join(dir, "caddy")
		args := []string{"build", "-o", caddyBinPath}
		if raceEnabled {
			args = append(args, "-race")
		}
		cmd := exec.Command("go", append(args, "./testcaddy")...)
		if out, err := cmd.CombinedOutput(); err != nil {
			caddyBinErr = fmt.Errorf("go build ./testcaddy: %v\n%s", err, out)
		}
	})
	if caddyBinErr != nil {
		t.Fatal(caddyBinErr)
	}
	return caddyBinPath
}

// caddyProc is one run of the Caddy binary.
type caddyProc struct {
	t       *testing.T
	cmd     *exec.Cmd
	logPath string
	logFrom int64 // where this run's output starts in the log
	done    chan struct{}
	err     error // the exit status, once done is closed
}

// startCaddyProc runs `caddy run --config configPath` and returns once
// smtpAddr answers with a greeting. Its output is appended to logPath. The
// process is killed when the test ends, and with the test process
// (Pdeathsig where the OS has it).
func startCaddyProc(t *testing.T, configPath, logPath, smtpAddr string) *caddyProc {
	t.Helper()
	logf, err := os.OpenFile(logPath, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	defer logf.Close()
	fi, _ := logf.Stat()
	p := &caddyProc{t: t, logPath: logPath, logFrom: fi.Size(), done: make(chan struct{})}
	p.cmd = exec.Command(caddyBinary(t), "run", "--config", configPath, "--adapter", "caddyfile")
	p.cmd.Stdout, p.cmd.Stderr = logf, logf
	p.cmd.SysProcAttr = childProcAttr()
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		p.err = p.cmd.Wait()
		close(p.done)
	}()
	t.Cleanup(func() {
		p.cmd.Process.Kill()
		<-p.done
		p.checkLog()
	})
	deadline := time.Now().Add(hangGuard)
	for {
		if c, err := net.DialTimeout("tcp", smtpAddr, time.Second); err == nil {
			c.SetDeadline(time.Now().Add(hangGuard))
			g := make([]byte, 4)
			_, err := c.Read(g)
			c.Close()
			if err == nil && string(g) == "220 " {
				return p
			}
		}
		select {
		case <-p.done:
			t.Fatalf("caddy exited before serving: %v\n%s", p.err, p.logTail())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("caddy does not serve SMTP on %s\n%s", smtpAddr, p.logTail())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// kill9 kills the process with SIGKILL and waits until it is gone.
func (p *caddyProc) kill9() {
	p.t.Helper()
	p.cmd.Process.Signal(syscall.SIGKILL)
	p.wait()
}

// wait waits for the process to exit and returns its exit error.
func (p *caddyProc) wait() error {
	p.t.Helper()
	select {
	case <-p.done:
	case <-time.After(hangGuard):
		p.t.Fatalf("caddy did not exit\n%s", p.logTail())
	}
	return p.err
}

// log returns this run's output.
func (p *caddyProc) log() []byte {
	b, _ := os.ReadFile(p.logPath)
	if int64(len(b)) >= p.logFrom {
		b = b[p.logFrom:]
	}
	return b
}

func (p *caddyProc) logTail() string {
	b := p.log()
	if len(b) > 8000 {
		b = b[len(b)-8000:]
	}
	return string(b)
}

// checkLog fails the test when the run's output shows a data race or a
// panic.
func (p *caddyProc) checkLog() {
	p.t.Helper()
	b := p.log()
	for _, bad := range []string{"WARNING: DATA RACE", "panic:", "sub-handler panicked"} {
		if i := bytes.Index(b, []byte(bad)); i >= 0 {
			p.t.Errorf("caddy's output has %q:\n%s", bad, b[max(0, i-200):min(len(b), i+4000)])
		}
	}
}

// processCaddyfile fills in a Caddyfile template for a Caddy process:
// %ADMIN%, %PORT% and %MAIL%; it returns the file's path.
func processCaddyfile(t *testing.T, dir, template string, adminPort, smtpPort int, maildir string) string {
	t.Helper()
	text := strings.NewReplacer("%ADMIN%", fmt.Sprint(adminPort), "%PORT%", fmt.Sprint(smtpPort),
		"%MAIL%", maildir).Replace(template)
	path := filepath.Join(dir, "Caddyfile")
	if err := os.WriteFile(path, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}
