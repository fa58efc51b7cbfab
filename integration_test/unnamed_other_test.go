//go:build !linux

package integration_test

// hasUnnamedFiles is false: only Linux has O_TMPFILE.
func hasUnnamedFiles(string) bool { return false }
