//go:build unix

package queue

import (
	"os"
	"syscall"
)

func inode(fi os.FileInfo) uint64 { return uint64(fi.Sys().(*syscall.Stat_t).Ino) }
