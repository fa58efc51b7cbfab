package milter

import (
	"errors"
	"fmt"
	"strconv"
	"strings"

	gomilter "github.com/d--j/go-milter"

	"github.com/caddy-esmtp/caddy-esmtp/session"
)

// What a milter's answers become: replies to the client (this file's
// replyFor and parseReplyCode) and edits of the transaction (applyEdits),
// the one mapping of the milter action set onto the engine's edit
// vocabulary (session/edits.go, session/disposition.go).

// stage is the SMTP event a milter answers.
type stage uint8

const (
	stageConnect stage = iota
	stageHelo
	stageMail
	stageRcpt
	stageData
	stageEOM // header fields, end of header, body and end of message
)

var stageNames = [...]string{"connect", "helo", "mail", "rcpt", "data", "eom"}

func (st stage) String() string { return stageNames[st] }

// errGarbage marks an answer the protocol does not allow: on_error.
var errGarbage = errors.New("milter answered garbage")

// The replies for the milter's fixed answers, as Postfix gives them.
var (
	replyReject   = session.NewReply(550, "5.7.1", "Command rejected")
	replyTempFail = session.NewReply(451, "4.7.1", "Service unavailable - try again later")
	// At connect, where the reply replaces the greeting and closes.
	replyConnReject   = &session.Reply{Code: 554, Enhanced: "5.7.1", Lines: []string{"Command rejected"}, Close: true}
	replyConnTempFail = &session.Reply{Code: 421, Enhanced: "4.7.1", Lines: []string{"Service unavailable - try again later"}, Close: true}
)

// verdict is what one milter answer means for the current event.
type verdict struct {
	reply   *session.Reply // a refusal (4xx/5xx), or nil
	accept  bool           // no more of this milter: for the session (connect, HELO) or the message
	discard bool           // the message is discarded at its end
	note    string         // for the log
}

// replyFor turns an answer into a verdict at stage st. A reply code that
// is not 4xx or 5xx, or that disagrees with itself, is errGarbage.
func replyFor(act *gomilter.Action, st stage) (verdict, error) {
	switch act.Type {
	case gomilter.ActionContinue:
		return verdict{}, nil
	case gomilter.ActionAccept:
		return verdict{accept: true, note: "accept"}, nil
	case gomilter.ActionDiscard:
		if st <= stageHelo { // not a message event: nothing to discard
			return verdict{}, nil
		}
		return verdict{accept: true, discard: true, note: "discard"}, nil
	case gomilter.ActionReject:
		if st == stageConnect {
			return verdict{reply: replyConnReject, note: "reject"}, nil
		}
		return verdict{reply: replyReject, note: "reject"}, nil
	case gomilter.ActionTempFail:
		if st == stageConnect {
			return verdict{reply: replyConnTempFail, note: "tempfail"}, nil
		}
		return verdict{reply: replyTempFail, note: "tempfail"}, nil
	case gomilter.ActionRejectWithCode:
		r, err := parseReplyCode(act.SMTPReply)
		if err != nil {
			return verdict{}, err
		}
		if st == stageConnect || r.Code == 421 {
			r.Close = true
		}
		note := "reject"
		if r.Temporary() {
			note = "tempfail"
		}
		return verdict{reply: r, note: note + " " + strconv.Itoa(r.Code)}, nil
	}
	return verdict{}, fmt.Errorf("%w: action %v at %s", errGarbage, act.Type, st)
}

// parseReplyCode parses a SMFIR_REPLYCODE text: one or more lines
// "ddd-text" ... "ddd text" (CRLF or LF between them), every line with
// the same 4xx or 5xx code, the first one optionally with an enhanced
// status code of the same class (RFC 3463), which is then taken off every
// line that repeats it.
func parseReplyCode(text string) (*session.Reply, error) {
	text = strings.TrimRight(strings.ReplaceAll(text, "\r\n", "\n"), "\n")
	if text == "" || len(text) > 64<<10 {
		return nil, fmt.Errorf("%w: empty or oversized reply", errGarbage)
	}
	lines := strings.Split(text, "\n")
	r := &session.Reply{}
	for i, l := range lines {
		if len(l) < 3 {
			return nil, fmt.Errorf("%w: reply line %q", errGarbage, l)
		}
		code, err := strconv.Atoi(l[:3])
		if err != nil || code < 400 || code > 599 || l[0] == '+' || l[0] == '-' {
			return nil, fmt.Errorf("%w: reply code %q (want 4xx or 5xx)", errGarbage, l[:3])
		}
		if i == 0 {
			r.Code = code
		} else if code != r.Code {
			return nil, fmt.Errorf("%w: reply lines with codes %d and %d", errGarbage, r.Code, code)
		}
		rest := l[3:]
		last := i == len(lines)-1
		switch {
		case rest == "" && last:
		case rest == "":
			return nil, fmt.Errorf("%w: reply line %q", errGarbage, l)
		case rest[0] == ' ' && !last, rest[0] == '-' && last, rest[0] != ' ' && rest[0] != '-':
			return nil, fmt.Errorf("%w: reply line %q", errGarbage, l)
		default:
			rest = rest[1:]
		}
		if strings.ContainsAny(rest, "\r\x00") {
			return nil, fmt.Errorf("%w: control character in reply", errGarbage)
		}
		first, tail, _ := strings.Cut(rest, " ")
		if i == 0 && looksEnhanced(first) {
			if first[0] != l[0] || !validEnhanced(first) {
				return nil, fmt.Errorf("%w: enhanced code %q with reply code %d", errGarbage, first, code)
			}
			r.Enhanced = first
			rest = tail
		} else if i > 0 && r.Enhanced != "" && first == r.Enhanced {
			rest = tail
		}
		r.Lines = append(r.Lines, rest)
	}
	return r, nil
}

// looksEnhanced reports whether s has the shape d.d.d (digits and dots).
func looksEnhanced(s string) bool {
	return strings.Count(s, ".") == 2 && strings.Trim(s, "0123456789.") == "" && len(s) >= 5
}

// validEnhanced checks class.subject.detail: class 4 or 5, 1-3 digits per
// part.
func validEnhanced(s string) bool {
	parts := strings.Split(s, ".")
	if len(parts) != 3 || (parts[0] != "4" && parts[0] != "5") {
		return false
	}
	for _, p := range parts[1:] {
		if len(p) == 0 || len(p) > 3 {
			return false
		}
	}
	return true
}

// editor is what applyEdits changes: a *session.Transaction.
type editor interface {
	InsertHeader(index int, name, value string)
	AppendHeader(name, value string)
	ChangeHeader(name string, n int, value string)
	SetSender(from session.Path, params session.Params)
	AddRecipient(to session.Path, params session.Params)
	RemoveRecipient(mailbox string) bool
	Quarantine(reason string)
}

// edit is one checked modify action, ready to apply.
type edit struct {
	kind   gomilter.ModifyActionType
	index  int
	name   string
	value  string
	path   session.Path
	params session.Params
}

// actionFlag is the negotiated action flag each modify action needs.
var actionFlag = map[gomilter.ModifyActionType]gomilter.OptAction{
	gomilter.ActionAddHeader:    gomilter.OptAddHeader,
	gomilter.ActionInsertHeader: gomilter.OptAddHeader,
	gomilter.ActionChangeHeader: gomilter.OptChangeHeader,
	gomilter.ActionChangeFrom:   gomilter.OptChangeFrom,
	gomilter.ActionAddRcpt:      gomilter.OptAddRcpt | gomilter.OptAddRcptWithArgs,
	gomilter.ActionDelRcpt:      gomilter.OptRemoveRcpt,
	gomilter.ActionQuarantine:   gomilter.OptQuarantine,
	gomilter.ActionReplaceBody:  gomilter.OptChangeBody,
}

// checkEdits checks a milter's modify actions against what was
// negotiated (allowed) and the protocol, and turns them into edits; the
// first bad one is errGarbage and none is applied.
func checkEdits(acts []gomilter.ModifyAction, allowed gomilter.OptAction) ([]edit, error) {
	edits := make([]edit, 0, len(acts))
	for _, a := range acts {
		flag, ok := actionFlag[a.Type]
		if !ok {
			return nil, fmt.Errorf("%w: modify action %d", errGarbage, a.Type)
		}
		if allowed&flag == 0 {
			return nil, fmt.Errorf("%w: %s not negotiated", errGarbage, a)
		}
		e := edit{kind: a.Type}
		switch a.Type {
		case gomilter.ActionAddHeader, gomilter.ActionInsertHeader, gomilter.ActionChangeHeader:
			if !validName(a.HeaderName) {
				return nil, fmt.Errorf("%w: header field name %q", errGarbage, a.HeaderName)
			}
			if a.HeaderIndex > 1<<20 {
				a.HeaderIndex = 1 << 20 // past any header: the end
			}
			e.index, e.name, e.value = int(a.HeaderIndex), a.HeaderName, a.HeaderValue
			if a.Type == gomilter.ActionChangeHeader && e.index == 0 {
				e.index = 1 // as Sendmail and Postfix
			}
		case gomilter.ActionChangeFrom:
			p, ps, err := parseAddress(a.From, a.FromArgs, true)
			if err != nil {
				return nil, fmt.Errorf("%w: change sender %q %q: %v", errGarbage, a.From, a.FromArgs, err)
			}
			e.path, e.params = p, ps
		case gomilter.ActionAddRcpt:
			p, ps, err := parseAddress(a.Rcpt, a.RcptArgs, false)
			if err != nil {
				return nil, fmt.Errorf("%w: add recipient %q %q: %v", errGarbage, a.Rcpt, a.RcptArgs, err)
			}
			e.path, e.params = p, ps
		case gomilter.ActionDelRcpt:
			p, _, err := parseAddress(a.Rcpt, "", false)
			if err != nil {
				return nil, fmt.Errorf("%w: delete recipient %q: %v", errGarbage, a.Rcpt, err)
			}
			e.path = p
		case gomilter.ActionQuarantine:
			e.value = a.Reason
		case gomilter.ActionReplaceBody:
			// Diverted to the body sink by wireConn; a chunk here means the
			// library was given one outside end of message.
			return nil, fmt.Errorf("%w: body replacement outside end of message", errGarbage)
		}
		edits = append(edits, e)
	}
	return edits, nil
}

// applyEdits applies checked edits in order, each to the message as the
// ones before left it (as Postfix applies them to its queue file), and
// returns a note per edit for the log.
func applyEdits(t editor, edits []edit, quarantineDefault string) []string {
	notes := make([]string, 0, len(edits))
	for _, e := range edits {
		switch e.kind {
		case gomilter.ActionAddHeader:
			t.AppendHeader(e.name, e.value)
			notes = append(notes, "add_header "+e.name)
		case gomilter.ActionInsertHeader:
			// The milter's index counts the fields it saw (our Received:
			// first): insert after the index-th, 0 at the top, which is
			// the engine's position index.
			t.InsertHeader(e.index, e.name, e.value)
			notes = append(notes, "insert_header "+e.name)
		case gomilter.ActionChangeHeader:
			t.ChangeHeader(e.name, e.index, e.value)
			if strings.TrimSpace(e.value) == "" {
				notes = append(notes, "delete_header "+e.name)
			} else {
				notes = append(notes, "change_header "+e.name)
			}
		case gomilter.ActionChangeFrom:
			t.SetSender(e.path, e.params)
			notes = append(notes, "change_sender "+e.path.String())
		case gomilter.ActionAddRcpt:
			t.AddRecipient(e.path, e.params)
			notes = append(notes, "add_rcpt "+e.path.String())
		case gomilter.ActionDelRcpt:
			if t.RemoveRecipient(e.path.Mailbox) {
				notes = append(notes, "delete_rcpt "+e.path.String())
			} else {
				notes = append(notes, "delete_rcpt "+e.path.String()+" (not a recipient)")
			}
		case gomilter.ActionQuarantine:
			reason := strings.TrimSpace(session.Sanitize(e.value, 200))
			if reason == "" {
				reason = quarantineDefault
			}
			t.Quarantine(reason)
			notes = append(notes, "quarantine "+reason)
		}
	}
	return notes
}

// parseAddress parses an address a milter gives (with or without angle
// brackets) and its ESMTP parameters.
func parseAddress(addr, args string, sender bool) (session.Path, session.Params, error) {
	addr = strings.TrimSpace(addr)
	if !strings.HasPrefix(addr, "<") {
		addr = "<" + addr + ">"
	}
	arg := addr
	if args = strings.TrimSpace(args); args != "" {
		arg += " " + args
	}
	return session.ParsePathArg(arg, sender, !sender)
}

// validName reports whether name is a header field name (RFC 5322
// printable ASCII but colon).
func validName(name string) bool {
	if name == "" || len(name) > 998 {
		return false
	}
	for i := 0; i < len(name); i++ {
		if c := name[i]; c <= ' ' || c >= 0x7f || c == ':' {
			return false
		}
	}
	return true
}
