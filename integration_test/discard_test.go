package integration_test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestDiscard accepts a message with the discard sub-handler and finds its
// per-message log line, with the queue id of the 250 reply, saying it was
// discarded.
func TestDiscard(t *testing.T) {
	logFile := filepath.Join(t.TempDir(), "esmtp.log")
	addr, _ := startCaddyfile(t, `{
	admin off
	persist_config off
	log {
		output file `+logFile+`
		level INFO
	}
	layer4 {
		127.0.0.1:%PORT% {
			route {
				esmtp {
					hostname sink.example.test
					discard
				}
			}
		}
	}
}
`)
	c := dial(t, addr)
	c.expect("220 ")
	c.send("EHLO client.test\r\nMAIL FROM:<a@client.test>\r\nRCPT TO:<b@example.test>\r\nDATA\r\n")
	c.expect("250 ")
	c.expect("250 ")
	c.expect("250 ")
	c.expect("354 ")
	c.send(stuffed(message) + ".\r\n")
	reply := c.expect("250 2.0.0 ")[0]
	queueID := strings.Fields(reply)[2]
	c.send("QUIT\r\n")
	c.expect("221 ")
	c.c.Close()

	logs, err := os.ReadFile(logFile)
	if err != nil {
		t.Fatal(err)
	}
	var found bool
	for _, l := range strings.Split(string(logs), "\n") {
		if strings.Contains(l, `"msg":"message"`) && strings.Contains(l, `"queue_id":"`+queueID+`"`) && strings.Contains(l, `"discarded":true`) {
			found = true
		}
	}
	if !found {
		t.Fatalf(`no "message" log line with "discarded":true for queue id %s in:\n%s`, queueID, logs)
	}
}
