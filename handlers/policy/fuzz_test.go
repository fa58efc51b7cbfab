package policy

import (
	"strings"
	"testing"
)

// FuzzParseAnswer: whatever a policy server sends, parsing the answer
// and its action never panics, and an accepted action is one the
// sub-handler can act on: a refusal has a 4xx or 5xx code and an
// enhanced status code of the same class, and nothing holds a line
// break.
func FuzzParseAnswer(f *testing.F) {
	for _, s := range []string{
		"action=DUNNO\n",
		"action=DEFER_IF_PERMIT 4.2.0 Greylisted, see http://postgrey.schweikert.ch/help/example.test.html\n",
		"action=PREPEND X-Greylist: delayed 1 seconds by postgrey-1.37 at mx; Wed, 02 Dec 2026 13:45:42 UTC\n",
		"action=REJECT 5.7.1 no\nfoo=bar\n",
		"action=550 5.1.1 unknown\n",
		"action=421\n",
		"action=OK\r\n",
		"action=12345\n",
		"action=\n",
		"action=DUNNO\naction=OK\n",
		"garbage\n",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, answer string) {
		lines := strings.Split(strings.TrimSuffix(answer, "\n"), "\n")
		action, err := ParseAnswer(lines)
		if err != nil {
			return
		}
		if action == "" || strings.ContainsAny(action, "\r\n") {
			t.Fatalf("action %q from %q", action, answer)
		}
		a, err := parseAction(action)
		if err != nil {
			return
		}
		if strings.ContainsAny(a.Text, "\r\n") {
			t.Fatalf("text %q from %q", a.Text, answer)
		}
		if a.kind == kindReply {
			if a.Code < 400 || a.Code > 599 || !looksEnhanced(a.Enhanced) || int(a.Enhanced[0]-'0') != a.Code/100 || a.Text == "" {
				t.Fatalf("reply %d %q %q from %q", a.Code, a.Enhanced, a.Text, answer)
			}
		}
	})
}
