package rspamd

import (
	"bufio"
	"bytes"
	"cmp"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"slices"
	"strings"

	"github.com/caddy-esmtp/caddy-esmtp/authresults"
	"github.com/caddy-esmtp/caddy-esmtp/session"
)

// rspamd's actions (its "action" field).
const (
	actionReject         = "reject"
	actionSoftReject     = "soft reject"
	actionGreylist       = "greylist"
	actionRewriteSubject = "rewrite subject"
	actionAddHeader      = "add header"
	actionNoAction       = "no action"
	actionDiscard        = "discard"
	actionQuarantine     = "quarantine"
)

// Bounds on what a reply can ask for.
const (
	maxEdits   = 1000 // header edits taken from one reply
	maxSymbols = 200  // symbol names in the log line
	maxIndex   = 1 << 20
)

// verdict is rspamd's reply, interpreted.
type verdict struct {
	// Action is rspamd's action, one of the action* constants.
	Action string
	// Score is the message's score.
	Score float64
	// Symbols are the names of the symbols that matched, highest score
	// first (then by name), at most maxSymbols.
	Symbols []string
	// Message is rspamd's SMTP message (messages.smtp_message), sanitized.
	Message string
	// Subject is rspamd's new subject for "rewrite subject", or "".
	Subject string
	// HasSubject tells whether the reply had a subject.
	HasSubject bool
	// Edits are the header edits asked for (milter.remove_headers,
	// milter.add_headers, dkim-signature), in the order to apply them.
	Edits []edit
	// SpamHeaders are the fields to set for "add header" instead of the
	// spam header set to "Yes" (milter.spam_header); nil: the default.
	SpamHeaders []field
	// RejectAs is "discard" or "quarantine" when milter.reject says the
	// message is to be discarded or quarantined instead of refused.
	RejectAs string
	// NoAction is milter.no_action: the action is not applied, only
	// named in an X-Rspamd-Action field.
	NoAction bool
}

// field is a header field name and value.
type field struct{ Name, Value string }

// editOp is the kind of an edit.
type editOp uint8

const (
	// editRemove removes the N-th field called Name (from 1), every one
	// (N == 0), or the -N-th from the last (N < 0).
	editRemove editOp = iota
	// editAdd adds a field after the last one.
	editAdd
	// editInsert adds a field before the Index-th (0: at the top).
	editInsert
	// editInsertFromEnd adds a field before the (count+Index+1)-th field
	// (Index < 0; -1: after the last), or at the top when -Index is over
	// the count of fields (rspamd's negative "order"). The count is that
	// of the header when the field is added (rspamd's fields, less those
	// removed, plus those added before): -1 is the last field, as rspamd
	// means it (its milter proxy counts the header it received, so that
	// fields inserted before can move such a field up in the header).
	editInsertFromEnd
)

// edit is one header edit asked for.
type edit struct {
	Op    editOp
	Name  string
	Value string
	N     int // editRemove's occurrence
	Index int // editInsert's and editInsertFromEnd's position
}

// reply is the JSON of rspamd's /checkv2 reply, as far as it is read.
type reply struct {
	Action   *string                    `json:"action"`
	Score    float64                    `json:"score"`
	Symbols  map[string]json.RawMessage `json:"symbols"`
	Messages map[string]json.RawMessage `json:"messages"`
	Subject  *string                    `json:"subject"`
	Milter   json.RawMessage            `json:"milter"`
	DKIM     json.RawMessage            `json:"dkim-signature"`
}

// parseReply interprets rspamd's reply. A reply that is not a JSON
// object, has no action or an unknown one, or has a field of the wrong
// type among action, score, symbols, messages and subject is an error;
// the milter block and dkim-signature are read as rspamd's milter proxy
// reads them, ignoring what has the wrong shape.
func parseReply(body []byte) (*verdict, error) {
	var r reply
	if err := json.Unmarshal(body, &r); err != nil {
		return nil, fmt.Errorf("malformed reply: %v", err)
	}
	if r.Action == nil {
		return nil, errors.New("malformed reply: no action")
	}
	v := &verdict{Action: *r.Action, Score: r.Score}
	switch v.Action {
	case actionReject, actionSoftReject, actionGreylist, actionRewriteSubject,
		actionAddHeader, actionNoAction, actionDiscard, actionQuarantine:
	default:
		return nil, fmt.Errorf("unknown action %q", session.Sanitize(v.Action, 64))
	}
	if math.IsNaN(v.Score) || math.IsInf(v.Score, 0) {
		v.Score = 0
	}
	v.Symbols = symbolNames(r.Symbols)
	if raw, ok := r.Messages["smtp_message"]; ok {
		var m string
		if json.Unmarshal(raw, &m) == nil {
			v.Message = strings.TrimSpace(session.Sanitize(m, 400))
		}
	}
	if r.Subject != nil {
		v.Subject, v.HasSubject = *r.Subject, true
	}
	v.readMilter(r.Milter)
	v.readDKIM(r.DKIM)
	return v, nil
}

// symbolNames returns the names of the symbols, highest score first.
func symbolNames(symbols map[string]json.RawMessage) []string {
	type sym struct {
		name  string
		score float64
	}
	var syms []sym
	for name, raw := range symbols {
		var s struct {
			Score float64 `json:"score"`
		}
		_ = json.Unmarshal(raw, &s) // a symbol without a score still counts
		if math.IsNaN(s.Score) {
			s.Score = 0
		}
		syms = append(syms, sym{session.Sanitize(name, 100), s.Score})
	}
	slices.SortFunc(syms, func(a, b sym) int {
		return cmp.Or(cmp.Compare(b.score, a.score), strings.Compare(a.name, b.name))
	})
	names := make([]string, 0, min(len(syms), maxSymbols))
	for _, s := range syms[:min(len(syms), maxSymbols)] {
		names = append(names, s.name)
	}
	return names
}

// member is one member of a JSON object.
type member struct {
	Key   string
	Value json.RawMessage
}

// members returns the members of a JSON object in their order (a map
// would lose it), or nil when raw is not an object.
func members(raw json.RawMessage) []member {
	dec := json.NewDecoder(bytes.NewReader(raw))
	if t, err := dec.Token(); err != nil || t != json.Delim('{') {
		return nil
	}
	var out []member
	for dec.More() {
		t, err := dec.Token()
		if err != nil {
			return out
		}
		key, _ := t.(string)
		var v json.RawMessage
		if err := dec.Decode(&v); err != nil {
			return out
		}
		out = append(out, member{key, v})
	}
	return out
}

// asString returns raw as a string, when it is one.
func asString(raw json.RawMessage) (string, bool) {
	var s string
	if len(raw) == 0 || raw[0] != '"' || json.Unmarshal(raw, &s) != nil {
		return "", false
	}
	return s, true
}

// asInt returns raw as an integer, when it is a number (truncated, as
// rspamd's ucl_object_toint does, and bounded).
func asInt(raw json.RawMessage) (int, bool) {
	var f float64
	if len(raw) == 0 || !(raw[0] == '-' || raw[0] >= '0' && raw[0] <= '9') || json.Unmarshal(raw, &f) != nil {
		return 0, false
	}
	return int(max(-maxIndex, min(maxIndex, f))), true
}

// add records an edit, up to maxEdits, when its name is a field name.
func (v *verdict) add(e edit) {
	if len(v.Edits) < maxEdits && validName(e.Name) {
		v.Edits = append(v.Edits, e)
	}
}

// readMilter reads the milter block: remove_headers, then add_headers,
// spam_header, reject and no_action.
func (v *verdict) readMilter(raw json.RawMessage) {
	block := members(raw)
	for _, m := range block {
		if m.Key != "remove_headers" {
			continue
		}
		for _, h := range members(m.Value) {
			if n, ok := asInt(h.Value); ok {
				v.add(edit{Op: editRemove, Name: h.Key, N: n})
			}
		}
	}
	for _, m := range block {
		if m.Key != "add_headers" {
			continue
		}
		for _, h := range members(m.Value) {
			if len(h.Value) > 0 && h.Value[0] == '[' {
				var list []json.RawMessage
				if json.Unmarshal(h.Value, &list) == nil {
					for _, one := range list {
						v.addHeader(h.Key, one)
					}
				}
				continue
			}
			v.addHeader(h.Key, h.Value)
		}
	}
	for _, m := range block {
		switch m.Key {
		case "spam_header":
			if s, ok := asString(m.Value); ok {
				v.SpamHeaders = []field{{"", s}} // the configured spam header's name
			} else {
				for _, h := range members(m.Value) {
					if s, ok := asString(h.Value); ok && validName(h.Key) && len(v.SpamHeaders) < maxEdits {
						v.SpamHeaders = append(v.SpamHeaders, field{h.Key, s})
					}
				}
			}
		case "reject":
			switch s, _ := asString(m.Value); s {
			case "discard", "quarantine":
				v.RejectAs = s
			default:
				v.RejectAs = ""
			}
		case "no_action":
			var b bool
			if json.Unmarshal(m.Value, &b) == nil {
				v.NoAction = b
			}
		}
	}
}

// addHeader reads one value of add_headers: a string (added after the
// last field) or {"value": ..., "order": n} (inserted at n, from the end
// when negative; "index" is a synonym of "order"; without either, added
// after the last field).
func (v *verdict) addHeader(name string, raw json.RawMessage) {
	if s, ok := asString(raw); ok {
		v.add(edit{Op: editAdd, Name: name, Value: s})
		return
	}
	var value *string
	order, hasOrder := 0, false
	for _, m := range members(raw) {
		switch m.Key {
		case "value":
			if s, ok := asString(m.Value); ok {
				value = &s
			}
		case "order", "index":
			if !hasOrder {
				order, hasOrder = asInt(m.Value)
			}
		}
	}
	switch {
	case value == nil:
	case !hasOrder:
		v.add(edit{Op: editAdd, Name: name, Value: *value})
	case order >= 0:
		v.add(edit{Op: editInsert, Name: name, Value: *value, Index: order})
	default:
		v.add(edit{Op: editInsertFromEnd, Name: name, Value: *value, Index: order})
	}
}

// readDKIM reads dkim-signature: one signature (a string) inserted after
// our Received: field, or a list of them, in order (as rspamd's milter
// proxy inserts them: at 1, 2, ...).
func (v *verdict) readDKIM(raw json.RawMessage) {
	if s, ok := asString(raw); ok {
		v.add(edit{Op: editInsert, Name: "DKIM-Signature", Value: s, Index: 1})
		return
	}
	var list []json.RawMessage
	if len(raw) == 0 || raw[0] != '[' || json.Unmarshal(raw, &list) != nil {
		return
	}
	i := 1
	for _, one := range list {
		if s, ok := asString(one); ok {
			v.add(edit{Op: editInsert, Name: "DKIM-Signature", Value: s, Index: i})
			i++
		}
	}
}

// apply does what the verdict says to the transaction, and returns the
// reply for the client (nil: the next judge decides).
func (v *verdict) apply(s *session.Session, h *Rspamd, msg *session.Message) *session.Reply {
	txn := s.Transaction()
	var counts *fieldCounts // of the message as rspamd saw it, when needed
	count := func() *fieldCounts {
		if counts == nil {
			counts = countFields(msg.Reader())
		}
		return counts
	}
	// The removals come first, then the additions: the header has the
	// fields rspamd saw, less those removed, plus those added so far.
	var removals []edit
	added := 0
	current := func() int {
		c := count()
		n := c.total + added
		seen := map[string]int{}
		for _, e := range removals {
			name := strings.ToLower(e.Name)
			left := c.byName[name] - seen[name]
			switch {
			case left <= 0:
			case e.N == 0:
				n -= left
				seen[name] += left
			case e.N > 0 && e.N <= c.byName[name], e.N < 0 && -e.N <= c.byName[name]:
				n--
				seen[name]++
			}
		}
		return max(n, 0)
	}
	for _, e := range v.Edits {
		switch e.Op {
		case editRemove:
			removals = append(removals, e)
			switch {
			case e.N == 0:
				txn.DeleteHeaderWhere(e.Name, notOurs(s, e.Name))
			case e.N > 0:
				txn.DeleteHeader(e.Name, e.N)
			default:
				if n := count().byName[strings.ToLower(e.Name)]; -e.N <= n {
					txn.DeleteHeader(e.Name, n+e.N+1)
				}
			}
		case editAdd:
			txn.AppendHeader(e.Name, e.Value)
			added++
		case editInsert:
			txn.InsertHeader(e.Index, e.Name, e.Value)
			added++
		case editInsertFromEnd:
			if e.Index == -1 {
				txn.AppendHeader(e.Name, e.Value) // no need to count
			} else if n := current(); -e.Index <= n {
				txn.InsertHeader(n+e.Index+1, e.Name, e.Value)
			} else {
				txn.InsertHeader(0, e.Name, e.Value)
			}
			added++
		}
	}
	if v.NoAction {
		txn.AppendHeader("X-Rspamd-Action", v.Action)
		return nil
	}
	switch v.Action {
	case actionReject:
		switch v.RejectAs {
		case "discard":
			txn.Discard(ReasonDiscard)
			return nil
		case "quarantine":
			txn.Quarantine(ReasonQuarantine)
			return nil
		}
		return session.NewReply(554, "5.7.1", cmp.Or(v.Message, DefaultRejectMessage))
	case actionSoftReject:
		return session.NewReply(451, "4.7.1", cmp.Or(v.Message, DefaultTempfailMessage))
	case actionGreylist:
		if h.Greylist == "accept" {
			return nil
		}
		return session.NewReply(451, "4.7.1", cmp.Or(v.Message, DefaultTempfailMessage))
	case actionRewriteSubject:
		subject := v.Subject
		if !v.HasSubject {
			subject = strings.ReplaceAll(h.Subject, "%s", currentSubject(msg))
		}
		txn.ChangeHeader("Subject", 1, subject)
	case actionAddHeader:
		spam := v.SpamHeaders
		if spam == nil {
			spam = []field{{h.SpamHeader, "Yes"}}
		}
		for _, f := range spam {
			name := cmp.Or(f.Name, h.SpamHeader)
			txn.DeleteHeaderWhere(name, func(string) bool { return true })
			txn.AppendHeader(name, f.Value)
		}
	case actionDiscard:
		txn.Discard(ReasonDiscard)
	case actionQuarantine:
		txn.Quarantine(ReasonQuarantine)
	}
	return nil
}

// notOurs returns what DeleteHeaderWhere deletes for rspamd's "remove
// every field called name": every one, except, for
// Authentication-Results when the spf, dkim, dmarc or iprev sub-handlers
// recorded results (package authresults), the one of our own authserv-id
// (the hostname) that carries them: rspamd removes the fields it adds
// itself, so that a sender's forged ones do not pass, not the results of
// the checks before it. (authresults has already removed any field that
// claimed our authserv-id from the message as received.)
func notOurs(s *session.Session, name string) func(value string) bool {
	if !strings.EqualFold(name, "Authentication-Results") || len(authresults.Of(s)) == 0 {
		return func(string) bool { return true }
	}
	host := s.Hostname()
	return func(value string) bool {
		id, _, _ := strings.Cut(value, ";")
		return !strings.EqualFold(strings.TrimSpace(id), host)
	}
}

// fieldCounts counts the header fields of a message.
type fieldCounts struct {
	total  int
	byName map[string]int // by lower-case name
}

// countFields counts the header fields of the message r reads.
func countFields(r io.Reader) *fieldCounts {
	c := &fieldCounts{byName: map[string]int{}}
	walkFields(r, func(name string, _ []byte) bool {
		c.total++
		name = strings.ToLower(name)
		if _, ok := c.byName[name]; ok || len(c.byName) < maxEdits {
			c.byName[name]++
		}
		return true
	})
	return c
}

// currentSubject returns the unfolded value of the message's first
// Subject: field, or "".
func currentSubject(msg *session.Message) string {
	var subject string
	walkFields(msg.Reader(), func(name string, value []byte) bool {
		if !strings.EqualFold(name, "Subject") {
			return true
		}
		subject = strings.TrimSpace(strings.NewReplacer("\r", "", "\n", "").Replace(string(value)))
		return false
	})
	return subject
}

// maxFieldLen bounds a field as walkFields gives it.
const maxFieldLen = 64 << 10

// walkFields calls f with the name and the raw value (folding and line
// end kept; cut at maxFieldLen) of each header field of the message r
// reads, in order, until the blank line that ends the header (or the
// first line that is not a field), or until f returns false.
func walkFields(r io.Reader, f func(name string, value []byte) bool) {
	br := bufio.NewReaderSize(r, 4096)
	var cur, line []byte
	flush := func() bool {
		if len(cur) == 0 {
			return true
		}
		n := session.FieldNameLen(cur)
		ok := f(string(cur[:n]), cur[n+1:])
		cur = cur[:0]
		return ok
	}
	for {
		line = line[:0]
		var err error
		for {
			var part []byte
			part, err = br.ReadSlice('\n')
			line = append(line, part[:min(len(part), maxFieldLen-len(line))]...)
			if err != bufio.ErrBufferFull {
				break
			}
		}
		switch {
		case len(line) == 0:
		case line[0] == ' ' || line[0] == '\t':
			if len(cur) > 0 {
				cur = append(cur, line[:min(len(line), maxFieldLen-len(cur))]...)
			}
		default:
			if !flush() || session.FieldNameLen(line) <= 0 {
				return
			}
			cur = append(cur, line...)
		}
		if err != nil {
			flush()
			return
		}
	}
}
