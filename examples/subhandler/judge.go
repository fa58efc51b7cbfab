package subhandler

import (
	"bytes"
	"context"
	"strconv"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"

	"github.com/caddy-esmtp/caddy-esmtp/session"
)

func init() {
	caddy.RegisterModule(&Judge{})
}

// Judge is a judging sub-handler, esmtp.handlers.example_judge: the Go
// analogue of the seed's BODY and EOM methods. It watches the body as it
// streams in (BodyHook), and at end of data, before any delivery, refuses
// a message whose body contains a word, or else adds a header field that
// every delivery (maildir, webhook, exec, relay) gets:
//
//	esmtp {
//		example_judge {
//			refuse_word VIAGRA
//		}
//		maildir ./mail
//	}
//
// gives each delivered message a first line such as
// "X-Example-Judge: passed; 1234 body bytes".
type Judge struct {
	// RefuseWord refuses a message whose body contains it (case kept),
	// with 550 5.7.1. Empty: nothing is refused.
	RefuseWord string `json:"refuse_word,omitempty"`
}

// CaddyModule returns the Caddy module information.
func (*Judge) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "esmtp.handlers.example_judge",
		New: func() caddy.Module { return new(Judge) },
	}
}

// verdict is what the judge learns of one message while it streams in,
// kept in the transaction (a sub-handler value is shared by all sessions).
type verdict struct {
	bytes int64
	found bool
	tail  []byte // the end of the last chunk, for a word split across two
}

type verdictKey struct{}

// Body counts the body's bytes and looks for the word, chunk by chunk.
func (j *Judge) Body(_ context.Context, s *session.Session, chunk []byte) error {
	txn := s.Transaction()
	v, _ := txn.Value(verdictKey{}).(*verdict)
	if v == nil {
		v = &verdict{}
		txn.SetValue(verdictKey{}, v)
	}
	v.bytes += int64(len(chunk))
	if w := []byte(j.RefuseWord); len(w) > 0 && !v.found {
		joined := append(v.tail, chunk...)
		v.found = bytes.Contains(joined, w)
		v.tail = append(v.tail[:0], joined[max(0, len(joined)-len(w)+1):]...)
	}
	return nil
}

// EndOfMessage judges: 550 5.7.1 when the word was seen; otherwise the
// header field is added (an edit, applied when the deliveries read the
// message) and nil lets the next judge and then the deliveries go on.
func (j *Judge) EndOfMessage(_ context.Context, s *session.Session) (*session.Reply, error) {
	txn := s.Transaction()
	v, _ := txn.Value(verdictKey{}).(*verdict)
	if v == nil {
		v = &verdict{}
	}
	if v.found {
		return session.NewReply(550, "5.7.1", "Message refused by example_judge"), nil
	}
	txn.PrependHeader("X-Example-Judge", "passed; "+strconv.FormatInt(v.bytes, 10)+" body bytes")
	return nil, nil
}

// UnmarshalCaddyfile sets up the sub-handler from Caddyfile tokens. Syntax:
//
//	example_judge [{
//		refuse_word <word>
//	}]
func (j *Judge) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // the sub-handler name
	if d.NextArg() {
		return d.ArgErr()
	}
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		switch d.Val() {
		case "refuse_word":
			if j.RefuseWord != "" {
				return d.Err("example_judge: refuse_word given twice")
			}
			if !d.Args(&j.RefuseWord) || d.NextArg() {
				return d.ArgErr()
			}
		default:
			return d.Errf("example_judge: unknown option %q (known: refuse_word)", d.Val())
		}
	}
	return nil
}

// Interface guards: the hooks this sub-handler implements.
var (
	_ caddyfile.Unmarshaler = (*Judge)(nil)
	_ session.BodyHook      = (*Judge)(nil)
	_ session.MessageHook   = (*Judge)(nil)
)
