package smtptest

import (
	"bufio"
	"net"
	"testing"
)

func TestReadReply(t *testing.T) {
	cc, sc := net.Pipe()
	defer cc.Close()
	go func() {
		sc.Write([]byte("250-mx.example.test\r\n250 2.1.5 OK\r\n554 No service\r\n"))
		sc.Close()
	}()
	c := &Client{tb: t, Conn: cc, r: bufio.NewReader(cc)}
	r := c.ReadReply()
	if r.Code != 250 || r.Enhanced != "2.1.5" || r.Last() != "250 2.1.5 OK" || r.String() != "250-mx.example.test\n250 2.1.5 OK" {
		t.Errorf("got %+v", r)
	}
	if l := c.Expect("554 "); l != "554 No service" {
		t.Errorf("got %q", l)
	}
	c.ExpectClosed()
}
