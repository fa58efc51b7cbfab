//go:build !unix

package exec

import osexec "os/exec"

// ownGroup leaves the command as it is: the timeout kills the process
// itself (os/exec's default); WaitDelay bounds the wait for children that
// keep its stderr open.
func ownGroup(*osexec.Cmd) {}
