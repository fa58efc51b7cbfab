package integration_test

import "syscall"

// childProcAttr kills a child Caddy with the test process.
func childProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}
