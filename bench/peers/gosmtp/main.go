// Command gosmtp is the emersion/go-smtp peer of the benchmark: a go-smtp
// v0.25.1 server that accepts every message and discards it.
//
//	go run ./bench/peers/gosmtp -addr 127.0.0.1:2526
package main

import (
	"flag"
	"io"
	"log"
	"time"

	"github.com/emersion/go-smtp"
)

type backend struct{}

func (backend) NewSession(*smtp.Conn) (smtp.Session, error) { return session{}, nil }

type session struct{}

func (session) Mail(string, *smtp.MailOptions) error { return nil }
func (session) Rcpt(string, *smtp.RcptOptions) error { return nil }
func (session) Reset()                               {}
func (session) Logout() error                        { return nil }

func (session) Data(r io.Reader) error {
	_, err := io.Copy(io.Discard, r)
	return err
}

func main() {
	addr := flag.String("addr", "127.0.0.1:2526", "listen `host:port`")
	maxSize := flag.Int64("max-message-size", 2<<30, "largest message in bytes")
	flag.Parse()

	s := smtp.NewServer(backend{})
	s.Addr = *addr
	s.Domain = "gosmtp.example.test"
	s.MaxMessageBytes = *maxSize
	s.MaxRecipients = 100
	s.ReadTimeout = 5 * time.Minute
	s.WriteTimeout = 5 * time.Minute
	s.EnableSMTPUTF8 = true
	log.Printf("go-smtp discard server on %s", s.Addr)
	log.Fatal(s.ListenAndServe())
}
