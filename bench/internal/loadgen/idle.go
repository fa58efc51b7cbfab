package loadgen

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"sync"
	"time"
)

// IdleMode says how OpenIdle knows a connection is being served.
type IdleMode int

const (
	// IdleGreeting waits for the server's 220 greeting (an SMTP server).
	IdleGreeting IdleMode = iota
	// IdleEcho writes a short probe and waits for it to come back (a
	// caddy-l4 echo route, which says nothing first).
	IdleEcho
)

// OpenIdle opens n connections to addr, each confirmed served (see mode),
// and leaves them open and idle. On error it closes what it opened.
func OpenIdle(addr string, n int, mode IdleMode, timeout time.Duration) ([]net.Conn, error) {
	conns := make([]net.Conn, n)
	errs := make(chan error, n)
	work := make(chan int)
	var wg sync.WaitGroup
	for range 64 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range work {
				c, err := openOne(addr, mode, timeout)
				if err != nil {
					errs <- fmt.Errorf("connection %d: %w", i, err)
					continue
				}
				conns[i] = c
			}
		}()
	}
	for i := range n {
		work <- i
	}
	close(work)
	wg.Wait()
	close(errs)
	if err := <-errs; err != nil {
		CloseAll(conns)
		return nil, err
	}
	return conns, nil
}

func openOne(addr string, mode IdleMode, timeout time.Duration) (net.Conn, error) {
	c, err := net.DialTimeout("tcp", addr, timeout)
	if err != nil {
		return nil, err
	}
	c.SetDeadline(time.Now().Add(timeout))
	switch mode {
	case IdleGreeting:
		code, _, err := readReply(bufio.NewReaderSize(c, 512))
		if err == nil && code != 220 {
			err = fmt.Errorf("greeting %d", code)
		}
		if err != nil {
			c.Close()
			return nil, err
		}
	case IdleEcho:
		probe := []byte("ping\r\n")
		buf := make([]byte, len(probe))
		if _, err := c.Write(probe); err != nil {
			c.Close()
			return nil, err
		}
		if _, err := io.ReadFull(c, buf); err != nil {
			c.Close()
			return nil, err
		}
	}
	c.SetDeadline(time.Time{})
	return c, nil
}

// CloseAll closes every non-nil connection.
func CloseAll(conns []net.Conn) {
	for _, c := range conns {
		if c != nil {
			c.Close()
		}
	}
}
