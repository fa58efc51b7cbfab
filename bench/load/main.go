// Command load is the benchmark's ESMTP load generator: N concurrent
// sessions send messages with PIPELINING (MAIL, RCPT and DATA in one write),
// one message per connection or many per connection (-reuse), for a bounded
// count (-n) and time (-duration), and it reports messages/s, the p50/p99
// latency of the end-of-message reply and errors.
//
//	go run ./bench/load -addr 127.0.0.1:2525 -c 20 -n 20000 -size 10240 -reuse
//
// Latency is from MAIL FROM to the end-of-message reply with -reuse, and
// from the dial (greeting and EHLO included) without. -json prints the
// result as one JSON object.
package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"time"

	"github.com/caddy-esmtp/caddy-esmtp/bench/internal/loadgen"
)

func main() {
	var cfg loadgen.Config
	flag.StringVar(&cfg.Addr, "addr", "127.0.0.1:2525", "server `host:port` (loopback only)")
	flag.IntVar(&cfg.Conns, "c", 20, "concurrent sessions")
	flag.Int64Var(&cfg.Messages, "n", 20000, "total messages (0: until -duration)")
	flag.Int64Var(&cfg.Size, "size", 10240, "message size in bytes, header and body")
	flag.BoolVar(&cfg.Reuse, "reuse", false, "send many messages per connection (default: one per connection)")
	flag.IntVar(&cfg.PerConn, "per-conn", 0, "with -reuse, the most messages per connection (0: no limit)")
	flag.DurationVar(&cfg.Duration, "duration", 60*time.Second, "cap on the run's time: no message starts after it")
	flag.DurationVar(&cfg.Timeout, "timeout", 30*time.Second, "bound on each wait for the server")
	flag.BoolVar(&cfg.NoPipelining, "no-pipelining", false, "send MAIL, RCPT, DATA one at a time")
	flag.IntVar(&cfg.Rcpts, "rcpts", 1, "recipients per message")
	flag.StringVar(&cfg.From, "from", "bench@example.test", "envelope sender")
	flag.StringVar(&cfg.To, "to", "sink@example.test", "envelope recipient")
	flag.StringVar(&cfg.Helo, "helo", "loadgen.example.test", "EHLO name")
	flag.BoolVar(&cfg.Echo, "echo", false, "no SMTP: connect, write a probe, read it back, close (for an echo server: the bare cost of a connection)")
	flag.StringVar(&cfg.IDPrefix, "id-prefix", "", "number the messages: each gets its own Message-ID, <bench-PREFIX-NNNNNNNN@example.test> (letters and digits; not with -message)")
	asJSON := flag.Bool("json", false, "print the result as JSON")
	msgFile := flag.String("message", "", "send this file as the message, as it is (CRLF line ends, no line starting with '.'), instead of one of -size bytes")
	flag.Parse()
	if *msgFile != "" {
		b, err := os.ReadFile(*msgFile)
		if err != nil {
			fmt.Fprintln(os.Stderr, "load:", err)
			os.Exit(2)
		}
		cfg.Data = b
	}

	res, err := loadgen.Run(cfg)
	if err != nil {
		fmt.Fprintln(os.Stderr, "load:", err)
		os.Exit(2)
	}
	if *asJSON {
		enc := json.NewEncoder(os.Stdout)
		enc.Encode(res)
	} else {
		fmt.Println(res)
	}
	if res.Messages == 0 {
		os.Exit(1)
	}
}
