package policy

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
)

// The policy server's answer: attribute lines "name=value", the first
// "action=<access(5) action>", ended by an empty line. Every other
// attribute is ignored, as Postfix does.

// Limits on an answer: past them it is malformed (an error: on_error).
const (
	// maxAnswerLine is the longest answer line, its newline included
	// (Postfix's line_length_limit is 2048).
	maxAnswerLine = 4096
	// maxAnswerLines is the most lines of one answer.
	maxAnswerLines = 64
)

// errMalformed is the error of an answer that is not one.
var errMalformed = errors.New("malformed policy answer")

// ParseAnswer reads the action out of a whole answer, the lines without
// the empty line that ends it, each without its newline (a CR before it
// is allowed). It fails when there is no action= line or more than one,
// when a line is not name=value, has a NUL or other control byte, or is
// too long, or when there are too many lines.
func ParseAnswer(lines []string) (string, error) {
	if len(lines) > maxAnswerLines {
		return "", fmt.Errorf("%w: more than %d lines", errMalformed, maxAnswerLines)
	}
	action, seen := "", false
	for _, l := range lines {
		l = strings.TrimSuffix(l, "\r")
		if len(l) >= maxAnswerLine {
			return "", fmt.Errorf("%w: a line longer than %d bytes", errMalformed, maxAnswerLine)
		}
		name, value, ok := strings.Cut(l, "=")
		if !ok || name == "" {
			return "", fmt.Errorf("%w: %q is not name=value", errMalformed, clip(l))
		}
		for i := 0; i < len(l); i++ {
			if c := l[i]; c < 0x20 && c != '\t' || c == 0x7f {
				return "", fmt.Errorf("%w: control character in %q", errMalformed, clip(l))
			}
		}
		if name != "action" {
			continue
		}
		if seen {
			return "", fmt.Errorf("%w: two action= lines", errMalformed)
		}
		action, seen = strings.TrimSpace(value), true
	}
	if !seen {
		return "", fmt.Errorf("%w: no action= line", errMalformed)
	}
	if action == "" {
		return "", fmt.Errorf("%w: empty action", errMalformed)
	}
	return action, nil
}

// clip shortens a server's line for an error message.
func clip(s string) string {
	if len(s) > 80 {
		return s[:80] + "..."
	}
	return s
}

// kind is what an action asks for.
type kind uint8

const (
	kindDunno         kind = iota // no opinion (DUNNO, and what we only log)
	kindOK                        // accept: the event's success, the rest of the list not asked
	kindReply                     // refuse with code, enhanced, text (REJECT, DEFER, 4NN, 5NN, DEFER_IF_PERMIT)
	kindPrepend                   // add a header field, then no opinion
	kindHold                      // quarantine, then no opinion
	kindDiscard                   // discard the message, then accept
	kindUnsupported               // an action we cannot honour: logged at warn, then no opinion
	kindDeferIfReject             // no opinion here (see Action)
)

// Action is a parsed access(5) action.
type Action struct {
	// Name is the action's keyword in upper case (OK, DUNNO, REJECT,
	// DEFER, DEFER_IF_PERMIT, DEFER_IF_REJECT, PREPEND, WARN, INFO, HOLD,
	// DISCARD, FILTER, REDIRECT, BCC, ...), or the code of a 4NN/5NN
	// action.
	Name string
	// Code and Enhanced are the reply of a refusing action (REJECT,
	// DEFER, DEFER_IF_PERMIT, 4NN, 5NN).
	Code     int
	Enhanced string
	// Text is the action's text (the reply text, the header field of
	// PREPEND, the logged text of WARN, INFO, HOLD and DISCARD).
	Text string

	kind kind
}

// Replies of the actions that give one: Postfix's defaults
// (access_map_reject_code 554, access_map_defer_code 450, defer_code 450
// for DEFER_IF_PERMIT), 5.7.1 and 4.7.1 when the text has no enhanced
// status code.
const (
	rejectCode = 554
	deferCode  = 450
)

// parseAction interprets an access(5) action. Keywords are compared
// without case, as Postfix does. An unknown keyword is an error (Postfix
// answers 451 4.3.5 "Server configuration error" to it): on_error.
func parseAction(s string) (Action, error) {
	word, text := s, ""
	if i := strings.IndexAny(s, " \t"); i >= 0 {
		word, text = s[:i], strings.TrimSpace(s[i+1:])
	}
	upper := strings.ToUpper(word)
	a := Action{Name: upper, Text: text}
	switch upper {
	case "OK":
		a.kind = kindOK
	case "DUNNO":
		a.kind = kindDunno
	case "REJECT":
		a.kind, a.Code = kindReply, rejectCode
		a.Enhanced, a.Text = splitEnhanced(text, 5, "5.7.1", "Access denied")
	case "DEFER", "DEFER_IF_PERMIT":
		a.kind, a.Code = kindReply, deferCode
		a.Enhanced, a.Text = splitEnhanced(text, 4, "4.7.1", "Try again later")
	case "DEFER_IF_REJECT":
		a.kind = kindDeferIfReject
	case "PREPEND":
		a.kind = kindPrepend
	case "WARN", "INFO":
		a.kind = kindDunno
	case "HOLD":
		a.kind = kindHold
	case "DISCARD":
		a.kind = kindDiscard
	case "FILTER", "REDIRECT", "BCC", "SHUTDOWN", "STARTTLS", "STARTTLS_NEVER":
		a.kind = kindUnsupported
	default:
		switch {
		case reasonCode(word) > 0:
			a.Name = word
			a.Code = reasonCode(word)
			a.kind = kindReply
			a.Enhanced, a.Text = splitEnhanced(text, a.Code/100, fmt.Sprintf("%d.7.1", a.Code/100), "Access denied")
		case allDigits(word) && text == "":
			// An all-numerical result is OK in access(5) (pop-before-smtp).
			a.kind = kindOK
		case isRestriction(word):
			// A restriction name (reject_unknown_client_hostname, ...):
			// Postfix would evaluate it; we have no such restrictions.
			a.kind = kindUnsupported
		default:
			return Action{}, fmt.Errorf("%w: unknown action %q", errMalformed, clip(s))
		}
	}
	return a, nil
}

// reasonCode is the code of a "4NN" or "5NN" action word, or 0.
func reasonCode(w string) int {
	if len(w) != 3 || (w[0] != '4' && w[0] != '5') || !allDigits(w) {
		return 0
	}
	n, _ := strconv.Atoi(w)
	return n
}

func allDigits(w string) bool {
	if w == "" {
		return false
	}
	for i := 0; i < len(w); i++ {
		if w[i] < '0' || w[i] > '9' {
			return false
		}
	}
	return true
}

// isRestriction reports whether w looks like a Postfix restriction name
// (lower case words joined by underscores, such as permit_mynetworks).
func isRestriction(w string) bool {
	if !strings.Contains(w, "_") {
		return false
	}
	for i := 0; i < len(w); i++ {
		if c := w[i]; !(c >= 'a' && c <= 'z' || c == '_') {
			return false
		}
	}
	return true
}

// splitEnhanced takes an enhanced status code off the front of text
// ("4.2.0 Greylisted"). A code of the wrong class (a 5.x.x in a DEFER)
// gets the reply's class, as the reply must agree with itself; def is
// used when the text has none, and defText when there is no text.
func splitEnhanced(text string, class int, def, defText string) (string, string) {
	enh := def
	if first, rest, _ := strings.Cut(text, " "); looksEnhanced(first) {
		enh, text = strconv.Itoa(class)+first[1:], strings.TrimSpace(rest)
	}
	if text == "" {
		text = defText
	}
	return enh, text
}

// looksEnhanced reports whether s is class.subject.detail with a class of
// 2, 4 or 5 and 1-3 digits in each other part (RFC 3463).
func looksEnhanced(s string) bool {
	parts := strings.Split(s, ".")
	if len(parts) != 3 || len(parts[0]) != 1 || strings.IndexByte("245", parts[0][0]) < 0 {
		return false
	}
	for _, p := range parts[1:] {
		if len(p) == 0 || len(p) > 3 || !allDigits(p) {
			return false
		}
	}
	return true
}

// header splits a PREPEND's text "Name: value" into a field name and
// value; ok is false when it is not a header field.
func header(text string) (name, value string, ok bool) {
	name, value, ok = strings.Cut(text, ":")
	if !ok || name == "" || len(name) > 998 {
		return "", "", false
	}
	for i := 0; i < len(name); i++ {
		if c := name[i]; c <= ' ' || c > '~' {
			return "", "", false
		}
	}
	return name, strings.TrimSpace(value), true
}
