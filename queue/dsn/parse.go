package dsn

import (
	"errors"
	"fmt"
	"strings"
)

// Field is one field of a delivery-status block.
type Field struct {
	// Name is the field name as written.
	Name string
	// Value is the unfolded value, spaces around it trimmed.
	Value string
}

// Fields are the fields of one block, in order.
type Fields []Field

// Get returns the value of the first field called name (case-insensitive)
// and whether there is one.
func (fs Fields) Get(name string) (string, bool) {
	for _, f := range fs {
		if strings.EqualFold(f.Name, name) {
			return f.Value, true
		}
	}
	return "", false
}

// Status is a parsed message/delivery-status body.
type Status struct {
	// Message is the per-message block (Reporting-MTA, ...).
	Message Fields
	// Recipients are the per-recipient blocks.
	Recipients []Fields
}

// maxStatus bounds what ParseDeliveryStatus reads.
const maxStatus = 1 << 20

// ParseDeliveryStatus parses the body of a message/delivery-status (or
// message/global-delivery-status) part (RFC 3464 2.1): blocks of header
// fields separated by blank lines, the first per-message, each other per
// recipient. Lines may end in CRLF or LF; folded lines are unfolded.
// It checks the structure and the fields RFC 3464 requires (Reporting-MTA
// in the first block; Final-Recipient, Action and Status in every other),
// not the syntax of each value.
func ParseDeliveryStatus(b []byte) (*Status, error) {
	if len(b) > maxStatus {
		return nil, errors.New("dsn: delivery-status too large")
	}
	s := strings.ReplaceAll(string(b), "\r\n", "\n")
	if strings.IndexByte(s, '\r') >= 0 {
		return nil, errors.New("dsn: bare CR in delivery-status")
	}
	var blocks []Fields
	var cur Fields
	for line := range strings.SplitSeq(s, "\n") {
		switch {
		case strings.TrimRight(line, " \t") == "":
			if cur != nil {
				blocks = append(blocks, cur)
				cur = nil
			}
		case line[0] == ' ' || line[0] == '\t':
			if len(cur) == 0 {
				return nil, errors.New("dsn: continuation line without a field")
			}
			f := &cur[len(cur)-1]
			f.Value = strings.TrimSpace(f.Value + " " + strings.TrimSpace(line))
		default:
			name, value, ok := strings.Cut(line, ":")
			if !ok || !isFieldName(name) {
				return nil, fmt.Errorf("dsn: bad field line %q", truncate(line))
			}
			cur = append(cur, Field{Name: name, Value: strings.TrimSpace(value)})
		}
	}
	if cur != nil {
		blocks = append(blocks, cur)
	}
	if len(blocks) < 2 {
		return nil, errors.New("dsn: no per-recipient block")
	}
	st := &Status{Message: blocks[0], Recipients: blocks[1:]}
	if _, ok := st.Message.Get("Reporting-MTA"); !ok {
		return nil, errors.New("dsn: no Reporting-MTA")
	}
	for i, r := range st.Recipients {
		for _, name := range []string{"Final-Recipient", "Action", "Status"} {
			if _, ok := r.Get(name); !ok {
				return nil, fmt.Errorf("dsn: recipient block %d has no %s", i+1, name)
			}
		}
	}
	return st, nil
}

// isFieldName: printable ASCII but ":" and space (RFC 5322 ftext).
func isFieldName(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		if s[i] < 33 || s[i] > 126 {
			return false
		}
	}
	return true
}

func truncate(s string) string {
	if len(s) > 40 {
		return s[:40] + "..."
	}
	return s
}
