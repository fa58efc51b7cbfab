package rspamd

import (
	"strings"
	"testing"
)

// FuzzReply: any reply body gives either an error or a verdict with a
// known action, at most maxEdits edits whose names are header field
// names and at most maxSymbols symbol names without control characters;
// never a panic. Corpus: testdata/fuzz/FuzzReply.
func FuzzReply(f *testing.F) {
	for _, s := range []string{
		`{"action":"no action","score":1.3,"required_score":15,"symbols":{"MIME_GOOD":{"name":"MIME_GOOD","score":-0.1}}}`,
		`{"action":"reject","messages":{"smtp_message":"Gtube pattern"},"is_skipped":true}`,
		`{"action":"rewrite subject","subject":"*** SPAM *** hi"}`,
		`{"action":"add header","milter":{"spam_header":{"X-Junk":"yes"},"reject":"quarantine","no_action":false}}`,
		`{"action":"no action","milter":{"add_headers":{"X-A":"1","X-B":{"value":"2","order":-1},"X-C":[{"value":"3","index":0},"4"]},"remove_headers":{"X-A":0,"X-B":-2}}}`,
		`{"action":"no action","dkim-signature":["v=1; d=a","v=1; d=b"]}`,
		`{"action":"soft reject","score":1e400}`,
		`{"action":"greylist","milter":{"add_headers":{"X":{"value":"v","order":1e30}}}}`,
		`{"action":7}`,
		`[]`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		if len(body) > 1<<16 {
			return
		}
		v, err := parseReply(body)
		if err != nil {
			if v != nil {
				t.Fatalf("error %v with a verdict", err)
			}
			return
		}
		switch v.Action {
		case actionReject, actionSoftReject, actionGreylist, actionRewriteSubject,
			actionAddHeader, actionNoAction, actionDiscard, actionQuarantine:
		default:
			t.Fatalf("action %q", v.Action)
		}
		if len(v.Edits) > maxEdits || len(v.Symbols) > maxSymbols {
			t.Fatalf("%d edits, %d symbols", len(v.Edits), len(v.Symbols))
		}
		for _, e := range v.Edits {
			if !validName(e.Name) {
				t.Fatalf("edit of %q", e.Name)
			}
			if e.Index < -maxIndex || e.Index > maxIndex || e.N < -maxIndex || e.N > maxIndex {
				t.Fatalf("edit out of bounds: %+v", e)
			}
			if e.Op == editInsertFromEnd && e.Index >= 0 {
				t.Fatalf("insert from the end at %d", e.Index)
			}
		}
		for _, s := range append(v.Symbols, v.Message) {
			if strings.ContainsAny(s, "\r\n\x00") {
				t.Fatalf("control character in %q", s)
			}
		}
		if v.RejectAs != "" && v.RejectAs != "discard" && v.RejectAs != "quarantine" {
			t.Fatalf("reject as %q", v.RejectAs)
		}
	})
}
