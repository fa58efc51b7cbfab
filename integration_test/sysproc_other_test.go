//go:build !linux

package integration_test

import "syscall"

// childProcAttr: without Pdeathsig, the tests' cleanup kills the child.
func childProcAttr() *syscall.SysProcAttr { return nil }
