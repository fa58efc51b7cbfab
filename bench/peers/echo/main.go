// Command echo is a bare Go TCP echo server (a goroutine per connection,
// io.Copy back): the floor under caddy-l4's echo route when the harness
// measures what one connection costs.
//
//	go run ./bench/peers/echo -addr 127.0.0.1:2527
package main

import (
	"flag"
	"io"
	"log"
	"net"
)

func main() {
	addr := flag.String("addr", "127.0.0.1:2527", "listen `host:port`")
	flag.Parse()
	l, err := net.Listen("tcp", *addr)
	if err != nil {
		log.Fatal(err)
	}
	log.Printf("echo server on %s", l.Addr())
	for {
		c, err := l.Accept()
		if err != nil {
			log.Fatal(err)
		}
		go func() {
			defer c.Close()
			io.Copy(c, c)
		}()
	}
}
