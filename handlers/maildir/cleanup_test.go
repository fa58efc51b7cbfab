package maildir

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/caddy-esmtp/caddy-esmtp/internal/durable"
	"github.com/caddy-esmtp/caddy-esmtp/internal/smtptest"
	"github.com/caddy-esmtp/caddy-esmtp/session"
)

// deadPid returns the pid of a process that has ended.
func deadPid(t *testing.T) int {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	if err := cmd.Run(); err != nil {
		t.Fatal(err)
	}
	return cmd.Process.Pid
}

// leftoverName is a tmp/ file name in our pattern.
func leftoverName(unix int64, pid int, host string) string {
	return fmt.Sprintf("%d.0123456789ABCDEFP%dQ7.%s", unix, pid, host)
}

// TestProvisionCleansLeftovers: Provision removes the tmp/ files of
// deliveries whose process is gone, and those older than 36 hours, and
// keeps everything that may still be written.
func TestProvisionCleansLeftovers(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "mail")
	m := provision(t, dir) // creates the Maildir, learns the hostname
	host := m.hostname
	now := time.Now().Unix()
	dead := deadPid(t)
	remove := []string{
		leftoverName(now, dead, host),                           // a crashed process
		leftoverName(processStart.Unix()-10, os.Getpid(), host), // a crashed process that had our pid
		"old-foreign-file",                                      // 37 hours old, whoever wrote it
	}
	keep := []string{
		leftoverName(now, os.Getpid(), host),             // a delivery of this process (an older configuration)
		leftoverName(now, os.Getppid(), host),            // a delivery of another live process
		leftoverName(now, dead, "other.host"),            // another machine sharing the Maildir
		"1700000000.M1P" + fmt.Sprint(dead) + "." + host, // another MDA's naming
		"fresh-foreign-file",
	}
	for _, n := range append(slices.Clone(remove), keep...) {
		if err := os.WriteFile(filepath.Join(dir, "tmp", n), []byte("partial"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	old := time.Now().Add(-37 * time.Hour)
	if err := os.Chtimes(filepath.Join(dir, "tmp", "old-foreign-file"), old, old); err != nil {
		t.Fatal(err)
	}
	provision(t, dir)
	got := files(t, filepath.Join(dir, "tmp"))
	slices.Sort(keep)
	if !slices.Equal(got, keep) {
		t.Fatalf("tmp/ after Provision holds\n%q\nwant\n%q", got, keep)
	}
}

// TestCleanupSparesDeliveryInFlight: a second Maildir provisioned on the
// same path while a delivery waits to be committed (what a reload does:
// the new configuration is provisioned while sessions of the old one go
// on) leaves that delivery's tmp/ file alone, and the message is
// delivered.
func TestCleanupSparesDeliveryInFlight(t *testing.T) {
	// Named tmp/ files, as where the file system has no unnamed ones:
	// those are what a cleanup could take.
	durable.UnnamedOff.Store(true)
	t.Cleanup(func() { durable.UnnamedOff.Store(false) })
	dir := filepath.Join(t.TempDir(), "mail")
	slow := &blockingDelivery{entered: make(chan struct{}), release: make(chan struct{})}
	ts := smtptest.ServeConfig(t, session.Config{}, provision(t, dir), slow)
	c := ts.DialTCPHello()
	c.Cmd("MAIL FROM:<s@example.test>", "250")
	c.Cmd("RCPT TO:<a@example.test>", "250")
	c.Cmd("DATA", "354")
	msg := "Subject: in flight\r\n\r\n" + strings.Repeat("line\r\n", 20000)
	c.Send(smtptest.Stuff(msg) + ".\r\n")
	<-slow.entered // maildir has prepared: its file is in tmp/
	if n := len(files(t, filepath.Join(dir, "tmp"))); n != 1 {
		t.Fatalf("%d files in tmp/ while the delivery is in flight, want 1", n)
	}
	provision(t, dir) // the "new configuration"
	close(slow.release)
	c.Expect("250 2.0.0 ")
	c.Cmd("QUIT", "221")
	ts.Close()
	if _, file := only(t, dir); string(smtptest.SplitReceived(t, file)) != msg {
		t.Errorf("delivered message differs (%d bytes)", len(file))
	}
}

// TestPerRecipientCleansOnFirstUse: a Maildir named by placeholders is
// cleaned the first time this process delivers into it.
func TestPerRecipientCleansOnFirstUse(t *testing.T) {
	base := t.TempDir()
	m := provision(t, filepath.Join(base, "{esmtp.rcpt.local}"))
	dir := filepath.Join(base, "a")
	if err := makeMaildir(dir); err != nil {
		t.Fatal(err)
	}
	stale := leftoverName(time.Now().Unix(), deadPid(t), m.hostname)
	if err := os.WriteFile(filepath.Join(dir, "tmp", stale), []byte("partial"), 0o600); err != nil {
		t.Fatal(err)
	}
	ts := startServer(t, m, session.Config{})
	c := dial(ts)
	if r := smtptest.Mail(c, "Subject: x\r\n\r\nbody\r\n", "a@example.test"); !strings.HasPrefix(r, "250 ") {
		t.Fatalf("got %q", r)
	}
	c.Cmd("QUIT", "221")
	ts.Close()
	only(t, dir) // checks tmp/ is empty too
}

// TestFileNamePattern: the names deliveries use are the ones cleanup
// recognises, so a crashed delivery's file is found.
func TestFileNamePattern(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "mail")
	m := provision(t, dir)
	ts := startServer(t, m, session.Config{})
	c := dial(ts)
	smtptest.Mail(c, "Subject: x\r\n\r\nbody\r\n", "a@example.test")
	c.Cmd("QUIT", "221")
	ts.Close()
	name, _ := only(t, dir)
	match := m.leftover.FindStringSubmatch(name)
	if match == nil || match[2] != fmt.Sprint(os.Getpid()) {
		t.Fatalf("file name %q does not match the leftover pattern %s with our pid", name, m.leftover)
	}
}

// TestUnnamedTmpFile: on Linux a prepared delivery is an unnamed file in
// tmp/ (O_TMPFILE): nothing there has a name, so a crash leaves nothing
// behind and no cleanup is needed; the commit gives it its name in new/.
func TestUnnamedTmpFile(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("O_TMPFILE is Linux's")
	}
	dir := filepath.Join(t.TempDir(), "mail")
	slow := &blockingDelivery{entered: make(chan struct{}), release: make(chan struct{})}
	ts := smtptest.ServeConfig(t, session.Config{}, provision(t, dir), slow)
	c := ts.DialTCPHello()
	c.Cmd("MAIL FROM:<s@example.test>", "250")
	c.Cmd("RCPT TO:<a@example.test>", "250")
	c.Cmd("DATA", "354")
	msg := "Subject: unnamed\r\n\r\nbody\r\n"
	c.Send(smtptest.Stuff(msg) + ".\r\n")
	<-slow.entered
	if named, all := len(files(t, filepath.Join(dir, "tmp"))), inTmp(t, dir); named != 0 || all != 1 {
		t.Fatalf("tmp/ holds %d named and %d files in all while the delivery is in flight, want 0 and 1 (this file system has no O_TMPFILE?)", named, all)
	}
	close(slow.release)
	c.Expect("250 2.0.0 ")
	c.Cmd("QUIT", "221")
	ts.Close()
	if _, file := only(t, dir); string(smtptest.SplitReceived(t, file)) != msg {
		t.Errorf("delivered message differs: %q", file)
	}
}
