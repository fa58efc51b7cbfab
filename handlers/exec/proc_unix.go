//go:build unix

package exec

import (
	osexec "os/exec"
	"syscall"
)

// ownGroup runs the command in a process group of its own, and makes the
// timeout kill the whole group: a shell script's children (a sleep, a
// pipeline) die with it instead of holding its stderr open.
func ownGroup(cmd *osexec.Cmd) {
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error {
		return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
	}
}
