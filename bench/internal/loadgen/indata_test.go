package loadgen

import (
	"bufio"
	"bytes"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// fakeSMTP answers just enough SMTP for OpenInData and counts the message
// bytes each session has received before the final dot.
func fakeSMTP(t *testing.T) (addr string, inData *atomic.Int64, done *atomic.Int64) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	inData, done = new(atomic.Int64), new(atomic.Int64)
	var wg sync.WaitGroup
	t.Cleanup(wg.Wait)
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer c.Close()
				r := bufio.NewReader(c)
				c.Write([]byte("220 fake\r\n"))
				for {
					line, err := r.ReadString('\n')
					if err != nil {
						return
					}
					switch cmd := strings.ToUpper(strings.Fields(line + " x")[0]); cmd {
					case "EHLO":
						c.Write([]byte("250-fake\r\n250 PIPELINING\r\n"))
					case "DATA":
						c.Write([]byte("354 go\r\n"))
						inData.Add(1)
						var msg []byte
						for !bytes.HasSuffix(msg, []byte("\r\n.\r\n")) {
							b, err := r.ReadByte()
							if err != nil {
								return
							}
							msg = append(msg, b)
						}
						done.Add(1)
						c.Write([]byte("250 ok\r\n"))
					case "QUIT":
						c.Write([]byte("221 bye\r\n"))
						return
					default:
						c.Write([]byte("250 ok\r\n"))
					}
				}
			}()
		}
	}()
	return l.Addr().String(), inData, done
}

func TestOpenInDataHoldsThenFinishes(t *testing.T) {
	addr, inData, done := fakeSMTP(t)
	const n = 50
	d, err := OpenInData(addr, n, 4096, 2048, 8, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if d.Len() != n {
		t.Fatalf("Len = %d, want %d", d.Len(), n)
	}
	time.Sleep(100 * time.Millisecond)
	if got := inData.Load(); got != n {
		t.Errorf("%d sessions in DATA, want %d", got, n)
	}
	if got := done.Load(); got != 0 {
		t.Errorf("%d messages finished before Finish", got)
	}
	ok, kinds := d.Finish(5 * time.Second)
	if ok != n || len(kinds) != 0 {
		t.Errorf("Finish = %d, %v; want %d, none", ok, kinds, n)
	}
	if got := done.Load(); got != n {
		t.Errorf("%d messages finished, want %d", got, n)
	}
}
