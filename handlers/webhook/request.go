package webhook

import (
	"encoding/hex"
	"encoding/json"
	"net/http"

	"github.com/caddy-esmtp/caddy-esmtp/session"
)

// requestHeader returns the request headers of a delivery.
func (w *Webhook) requestHeader(s *session.Session, sp *spool) http.Header {
	txn := s.Transaction()
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
	h.Set("X-Esmtp-Queue-Id", txn.ID)
	h.Set("X-Esmtp-From", txn.From.Mailbox)
	for _, rc := range txn.Recipients {
		h.Add("X-Esmtp-Rcpt", rc.Path.Mailbox)
	}
	if a := s.RemoteAddr(); a != nil {
		h.Set("X-Esmtp-Remote", a.String())
	}
	if sp.mac != nil {
		h.Set("X-Esmtp-Signature", "sha256="+hex.EncodeToString(sp.mac.Sum(nil)))
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

// start creates the spool of a transaction; in the json format it writes
// the envelope and opens the header list.
func (w *Webhook) start(s *session.Session) (*spool, error) {
	sp, err := newSpool(w.TempDir, w.secret)
	if err != nil {
		return nil, err
	}
	if w.json {
		txn := s.Transaction()
		env := envelope{
			QueueID:    txn.ID,
			From:       txn.From.Mailbox,
			Recipients: make([]string, 0, len(txn.Recipients)),
			Helo:       s.Helo(),
			Auth:       s.AuthUser(),
			TLS:        s.TLS() != nil,
		}
		for _, rc := range txn.Recipients {
			env.Recipients = append(env.Recipients, rc.Path.Mailbox)
		}
		if a := s.RemoteAddr(); a != nil {
			env.Remote = a.String()
		}
		b, err := json.Marshal(env)
		if err != nil {
			sp.Close()
			return nil, err
		}
		sp.writeString(`{"envelope":`)
		sp.write(b)
		sp.writeString(`,"headers":[`)
	}
	return sp, nil
}
