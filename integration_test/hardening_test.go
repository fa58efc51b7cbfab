package integration_test

import (
	"errors"
	"io"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestDripFeederIsCut: the reproduction over real Caddy and TCP.
// With command_timeout 300ms, a client that sends its message one byte
// every 200ms used to end in 250; min_data_rate now bounds the whole data
// phase: 421 4.4.2, the connection closes, nothing is delivered.
func TestDripFeederIsCut(t *testing.T) {
	addr, maildir := startCaddyfile(t, esmtpCaddyfile(`
					command_timeout 300ms
					data_timeout 1s
					min_data_rate 1000
					maildir %MAIL%
`))
	c := dial(t, addr)
	c.expect("220 ")
	c.send("EHLO client.test\r\nMAIL FROM:<a@client.test>\r\nRCPT TO:<b@example.test>\r\nDATA\r\n")
	c.expect("250 ")
	c.expect("250 2.1.0")
	c.expect("250 2.1.5")
	c.expect("354 ")
	msg := "Subject: drip\r\n\r\n" + strings.Repeat("x", 100) + "\r\n.\r\n"
	go func() {
		for i := 0; i < len(msg); i++ {
			if _, err := c.c.Write([]byte{msg[i]}); err != nil {
				return
			}
			time.Sleep(200 * time.Millisecond)
		}
	}()
	c.expect("421 4.4.2")
	// Closed: an end of file, or a reset when the dripping goroutine's
	// next byte reached the closed socket first.
	if _, err := c.r.ReadByte(); err != io.EOF && !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("after 421 the connection is still open: %v", err)
	}
	if files := delivered(t, maildir); len(files) != 0 {
		t.Fatalf("%d messages delivered from a drip-feeder", len(files))
	}
}

// TestMalformedBdatLineCloses: a BDAT line ending in a bare LF used to be
// answered 501 with the session going on, so its chunk ran as commands.
func TestMalformedBdatLineCloses(t *testing.T) {
	addr, _ := startCaddyfile(t, esmtpCaddyfile(`
					maildir %MAIL%
`))
	c := dial(t, addr)
	c.expect("220 ")
	c.send("EHLO client.test\r\nMAIL FROM:<a@client.test>\r\nRCPT TO:<b@example.test>\r\n")
	c.expect("250 ")
	c.expect("250 2.1.0")
	c.expect("250 2.1.5")
	c.send("BDAT 12 LAST\nRSET\r\nNOOP\r\n")
	c.expect("501 5.5.4")
	if line, err := c.r.ReadString('\n'); err != io.EOF {
		t.Fatalf("chunk data answered as commands: %q %v", line, err)
	}
}
