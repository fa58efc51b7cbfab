package webhook

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"hash"
	"io"
	"net/http"

	"github.com/caddy-esmtp/caddy-esmtp/session"
)

// payload is the request body of one delivery: its size and signature,
// and a way to read it from the start for each attempt.
type payload struct {
	size      int64
	signature string           // "sha256=<hex>", or "" without a secret
	open      func() io.Reader // a fresh reader of the body
}

// payload prepares the request body of d. The raw body is the message
// itself; the json body is encoded from it as it is sent. Both are read
// once here when their length or signature needs it: the json body to
// count it, either one to sign it.
func (w *Webhook) payload(s *session.Session, d *session.Delivery) (*payload, error) {
	msg := d.Message
	p := &payload{}
	var mac hash.Hash
	if w.secret != nil {
		mac = hmac.New(sha256.New, w.secret)
	}
	if w.json {
		env, err := json.Marshal(w.envelope(s, d))
		if err != nil {
			return nil, err
		}
		p.open = func() io.Reader { return newJSONEncoder(env, msg.Reader()) }
		var count countingWriter
		var dst io.Writer = &count
		if mac != nil {
			dst = io.MultiWriter(&count, mac)
		}
		if _, err := newJSONEncoder(env, msg.Reader()).WriteTo(dst); err != nil {
			return nil, err
		}
		p.size = int64(count)
	} else {
		p.open = msg.Reader
		p.size = msg.Size()
		if mac != nil {
			if _, err := msg.WriteTo(mac); err != nil {
				return nil, err
			}
		}
	}
	if mac != nil {
		p.signature = "sha256=" + hex.EncodeToString(mac.Sum(nil))
	}
	return p, nil
}

// countingWriter counts the bytes written to it.
type countingWriter int64

func (c *countingWriter) Write(p []byte) (int, error) {
	*c += countingWriter(len(p))
	return len(p), nil
}

// requestHeader returns the request headers of a delivery; signature is
// the X-Esmtp-Signature value, or "".
func (w *Webhook) requestHeader(s *session.Session, d *session.Delivery, signature string) http.Header {
	h := http.Header{}
	if w.json {
		h.Set("Content-Type", "application/json")
	} else {
		h.Set("Content-Type", "message/rfc822")
	}
	h.Set("User-Agent", "caddy-esmtp")
	for name, values := range w.headers {
		h[name] = append([]string(nil), values...)
	}
	h.Set("X-Esmtp-Queue-Id", s.Transaction().ID)
	h.Set("X-Esmtp-From", d.From.Mailbox)
	for _, rc := range d.Recipients {
		h.Add("X-Esmtp-Rcpt", rc.Path.Mailbox)
	}
	if a := s.RemoteAddr(); a != nil {
		h.Set("X-Esmtp-Remote", a.String())
	}
	if signature != "" {
		h.Set("X-Esmtp-Signature", signature)
	}
	return h
}

// envelope is the "envelope" object of the json format.
type envelope struct {
	QueueID    string   `json:"queue_id"`
	From       string   `json:"from"`
	Recipients []string `json:"recipients"`
	Remote     string   `json:"remote"`
	Helo       string   `json:"helo"`
	Auth       string   `json:"auth"`
	TLS        bool     `json:"tls"`
}

// envelope returns the envelope of a delivery for the json format.
func (w *Webhook) envelope(s *session.Session, d *session.Delivery) envelope {
	env := envelope{
		QueueID:    s.Transaction().ID,
		From:       d.From.Mailbox,
		Recipients: make([]string, 0, len(d.Recipients)),
		Helo:       s.Helo(),
		Auth:       s.AuthUser(),
		TLS:        s.TLS() != nil,
	}
	for _, rc := range d.Recipients {
		env.Recipients = append(env.Recipients, rc.Path.Mailbox)
	}
	if a := s.RemoteAddr(); a != nil {
		env.Remote = a.String()
	}
	return env
}
