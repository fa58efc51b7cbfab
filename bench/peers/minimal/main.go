// Command minimal is the benchmark's floor for a Go SMTP server: the least
// a server written in Go can do per session, with nothing a real server
// needs (no address parsing, no limits, no timeouts, no logging, no hooks),
// and pooled buffers.
// It answers every command with a fixed reply, reads message data up to
// the line "." and discards it, and batches the replies to pipelined
// commands into one write. It shows what the Go runtime and the kernel cost
// a session, so the report can tell that share from caddy-esmtp's own.
//
//	go run ./bench/peers/minimal -addr 127.0.0.1:2541
package main

import (
	"bufio"
	"flag"
	"log"
	"net"
	"sync"
)

func main() {
	addr := flag.String("addr", "127.0.0.1:2541", "listen `host:port`")
	flag.Parse()
	l, err := net.Listen("tcp", *addr)
	if err != nil {
		log.Fatal(err)
	}
	log.Printf("minimal Go SMTP responder on %s", l.Addr())
	for {
		c, err := l.Accept()
		if err != nil {
			log.Print(err)
			continue
		}
		go serve(c)
	}
}

var (
	replyGreeting = []byte("220 minimal.example.test ESMTP\r\n")
	replyEhlo     = []byte("250-minimal.example.test\r\n250-PIPELINING\r\n250 8BITMIME\r\n")
	replyOK       = []byte("250 OK\r\n")
	replyData     = []byte("354 End data with <CR><LF>.<CR><LF>\r\n")
	replyQuit     = []byte("221 Bye\r\n")
)

// Buffers are pooled: allocating them per connection would make the
// garbage collector, not the session, the floor.
var (
	readers = sync.Pool{New: func() any { return bufio.NewReaderSize(nil, 32<<10) }}
	writers = sync.Pool{New: func() any { return bufio.NewWriterSize(nil, 4<<10) }}
)

func serve(c net.Conn) {
	defer c.Close()
	r := readers.Get().(*bufio.Reader)
	w := writers.Get().(*bufio.Writer)
	r.Reset(c)
	w.Reset(c)
	defer func() {
		r.Reset(nil)
		w.Reset(nil)
		readers.Put(r)
		writers.Put(w)
	}()
	w.Write(replyGreeting)
	for {
		if r.Buffered() == 0 && w.Flush() != nil {
			return
		}
		line, err := r.ReadSlice('\n')
		if err != nil {
			return
		}
		var v [4]byte
		for i := range min(4, len(line)) {
			v[i] = line[i] &^ 0x20 // upper case, for letters
		}
		switch string(v[:]) {
		case "EHLO":
			w.Write(replyEhlo)
		case "DATA":
			w.Write(replyData)
			if w.Flush() != nil || !skipData(r) {
				return
			}
			w.Write(replyOK)
		case "QUIT":
			w.Write(replyQuit)
			w.Flush()
			return
		default:
			w.Write(replyOK)
		}
	}
}

// skipData reads message data up to and including the line ".", and
// reports whether it got there.
func skipData(r *bufio.Reader) bool {
	lineStart := true
	for {
		frag, err := r.ReadSlice('\n')
		if err != nil && err != bufio.ErrBufferFull {
			return false
		}
		if lineStart && string(frag) == ".\r\n" {
			return true
		}
		lineStart = err == nil
	}
}
