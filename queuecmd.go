package esmtp

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/caddyserver/caddy/v2"
	caddycmd "github.com/caddyserver/caddy/v2/cmd"
	"github.com/spf13/cobra"
)

func init() {
	caddycmd.RegisterCommand(caddycmd.Command{
		Name:  "esmtp",
		Usage: "queue list|flush|retry|delete",
		Short: "Operates the esmtp queues of a running Caddy",
		Long: `
Operates the queues of the esmtp handlers of a running Caddy through its
admin API (/esmtp/queue), as 'caddy reload' and 'caddy stop' use it: the
admin address is --address, else the admin listener of --config, else
Caddy's default (localhost:2019).

  caddy esmtp queue list [--json]       the queued messages (like postqueue -p)
  caddy esmtp queue flush               every message's next attempt now
  caddy esmtp queue retry <id>          one message's next attempt now
  caddy esmtp queue delete <id> [--bounce]
                                        remove a message; with --bounce its
                                        recipients not yet delivered fail and
                                        the sender gets a DSN (without, like
                                        postsuper -d, nobody is told)

--dir <queue directory> limits list and flush to one queue (and picks the
queue of an id that is in more than one).
`,
		CobraFunc: func(cmd *cobra.Command) {
			q := &cobra.Command{
				Use:   "queue",
				Short: "Lists, flushes, retries and deletes queued messages",
			}
			cmd.AddCommand(q)
			sub := func(use, short string, args cobra.PositionalArgs, f func(caddycmd.Flags, []string) (int, error)) *cobra.Command {
				c := &cobra.Command{
					Use:   use,
					Short: short,
					Args:  args,
					RunE: func(c *cobra.Command, args []string) error {
						return caddycmd.WrapCommandFuncForCobra(func(fl caddycmd.Flags) (int, error) {
							return f(fl, args)
						})(c, args)
					},
				}
				c.Flags().StringP("config", "c", "", "Configuration file to read the admin address from, if --address is not used")
				c.Flags().StringP("adapter", "a", "", "Name of config adapter to apply (when --config is used)")
				c.Flags().String("address", "", "The address of the admin API endpoint, if not the default")
				c.Flags().String("dir", "", "Only the queue in this directory")
				c.Flags().Bool("json", false, "Print the admin API's JSON")
				q.AddCommand(c)
				return c
			}
			sub("list [--json] [--dir <dir>] [--address <addr>] [--config <path>]", "Lists the queued messages", cobra.NoArgs, cmdQueueList)
			sub("flush [--dir <dir>]", "Makes every queued message's next attempt due now", cobra.NoArgs, cmdQueueFlush)
			sub("retry <id>", "Makes a queued message's next attempt due now", cobra.ExactArgs(1), cmdQueueRetry)
			del := sub("delete <id> [--bounce]", "Removes a queued message", cobra.ExactArgs(1), cmdQueueDelete)
			del.Flags().Bool("bounce", false, "Fail the recipients not yet delivered and send the sender a DSN")
		},
	})
}

// queueRequest calls the admin API's /esmtp/queue<path> with the
// command's flags and returns the body of a 2xx answer (AdminAPIRequest
// turns any other into an error that carries the API's message).
func queueRequest(fl caddycmd.Flags, method, path string, query url.Values) ([]byte, error) {
	addr, err := caddycmd.DetermineAdminAPIAddress(fl.String("address"), nil, fl.String("config"), fl.String("adapter"))
	if err != nil {
		return nil, fmt.Errorf("couldn't determine admin API address: %v", err)
	}
	if query == nil {
		query = url.Values{}
	}
	if d := fl.String("dir"); d != "" {
		query.Set("dir", d)
	}
	uri := queueAPIPath + path
	if len(query) > 0 {
		uri += "?" + query.Encode()
	}
	resp, err := caddycmd.AdminAPIRequest(addr, method, uri, nil, nil)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	return io.ReadAll(io.LimitReader(resp.Body, 256<<20))
}

func cmdQueueList(fl caddycmd.Flags, _ []string) (int, error) {
	body, err := queueRequest(fl, http.MethodGet, "", nil)
	if err != nil {
		return caddy.ExitCodeFailedStartup, err
	}
	if fl.Bool("json") {
		os.Stdout.Write(body)
		return caddy.ExitCodeSuccess, nil
	}
	var entries []QueueEntry
	if err := json.Unmarshal(body, &entries); err != nil {
		return caddy.ExitCodeFailedStartup, fmt.Errorf("decoding the queue listing: %v", err)
	}
	writeQueueTable(os.Stdout, entries, time.Now())
	return caddy.ExitCodeSuccess, nil
}

func cmdQueueFlush(fl caddycmd.Flags, _ []string) (int, error) {
	return queueAction(fl, http.MethodPost, "/flush", nil)
}

func cmdQueueRetry(fl caddycmd.Flags, args []string) (int, error) {
	return queueAction(fl, http.MethodPost, "/"+url.PathEscape(args[0])+"/retry", nil)
}

func cmdQueueDelete(fl caddycmd.Flags, args []string) (int, error) {
	return queueAction(fl, http.MethodDelete, "/"+url.PathEscape(args[0]), url.Values{"bounce": {fmt.Sprint(fl.Bool("bounce"))}})
}

// queueAction runs a flush, retry or delete and says what it did.
func queueAction(fl caddycmd.Flags, method, path string, query url.Values) (int, error) {
	body, err := queueRequest(fl, method, path, query)
	if err != nil {
		return caddy.ExitCodeFailedStartup, err
	}
	if fl.Bool("json") {
		os.Stdout.Write(body)
		return caddy.ExitCodeSuccess, nil
	}
	var a QueueAction
	if err := json.Unmarshal(body, &a); err != nil {
		return caddy.ExitCodeFailedStartup, fmt.Errorf("decoding the answer: %v", err)
	}
	fmt.Println(describeAction(a))
	return caddy.ExitCodeSuccess, nil
}

// describeAction is the line `caddy esmtp queue` prints after an action.
func describeAction(a QueueAction) string {
	switch a.Action {
	case "flush":
		return fmt.Sprintf("%s to be tried now", plural(a.Entries, "message"))
	case "retry":
		return fmt.Sprintf("%s: to be tried now", a.ID)
	case "delete":
		if a.Bounce {
			return fmt.Sprintf("%s: deleted; the sender gets a DSN for the recipients not delivered", a.ID)
		}
		return fmt.Sprintf("%s: deleted", a.ID)
	}
	return a.Action
}

// writeQueueTable writes entries the way postqueue -p does: a line per
// message (id, size, arrival, age, sender), then a line per recipient
// with its state, attempts and last reply; a total at the end.
func writeQueueTable(w io.Writer, entries []QueueEntry, now time.Time) {
	if len(entries) == 0 {
		fmt.Fprintln(w, "Mail queue is empty")
		return
	}
	dirs := map[string]bool{}
	for _, e := range entries {
		dirs[e.Dir] = true
	}
	var b bytes.Buffer
	tw := tabwriter.NewWriter(&b, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "QUEUE ID\tSIZE\tARRIVAL\tAGE\tSENDER/RECIPIENT\tSTATE\tTRIES\tNEXT/LAST REPLY")
	var size int64
	dir := ""
	for _, e := range entries {
		if len(dirs) > 1 && e.Dir != dir {
			dir = e.Dir
			fmt.Fprintf(tw, "# %s\t\t\t\t\t\t\t\n", dir)
		}
		size += e.Size
		from := e.From
		if from == "" {
			from = "<>"
		}
		next := ""
		if !e.NextAttempt.IsZero() {
			next = "next in " + shortDuration(e.NextAttempt.Sub(now))
			if !e.NextAttempt.After(now) {
				next = "next now"
			}
		}
		fmt.Fprintf(tw, "%s\t%d\t%s\t%s\t%s\t\t%d\t%s\n", e.ID, e.Size, e.Arrival.Local().Format("2006-01-02 15:04:05"),
			shortDuration(time.Duration(e.AgeSeconds)*time.Second), from, e.Attempts, next)
		for _, r := range e.Recipients {
			reply := ""
			if r.Reply != nil {
				reply = strings.TrimSpace(fmt.Sprintf("%d %s %s", r.Reply.Code, r.Reply.Enhanced, r.Reply.Text))
				reply = strings.Join(strings.Fields(reply), " ")
				if len(reply) > 100 {
					reply = reply[:97] + "..."
				}
				reply = "(" + reply + ")"
			}
			if r.Reason != "" {
				reply = strings.TrimSpace(r.Reason + " " + reply)
			}
			fmt.Fprintf(tw, "\t\t\t\t  %s\t%s\t%d\t%s\n", r.Addr, r.State, r.Attempts, reply)
		}
	}
	tw.Flush()
	for line := range strings.Lines(b.String()) { // no padding after the last cell
		fmt.Fprintln(w, strings.TrimRight(line, " \n"))
	}
	fmt.Fprintf(w, "-- %s in %s.\n", humanSize(size), plural(len(entries), "message"))
}

func plural(n int, word string) string {
	if n == 1 {
		return "1 " + word
	}
	return fmt.Sprintf("%d %ss", n, word)
}

// humanSize writes n bytes in KiB as postqueue does (Kbytes), MiB above.
func humanSize(n int64) string {
	switch {
	case n < 1024:
		return fmt.Sprintf("%d bytes", n)
	case n < 1<<20:
		return fmt.Sprintf("%d KiB", (n+1023)/1024)
	}
	return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
}

// shortDuration is a duration in its largest unit: 42s, 5m, 3h, 2d.
func shortDuration(d time.Duration) string {
	switch {
	case d < 0:
		return "0s"
	case d < time.Minute:
		return fmt.Sprintf("%ds", int(d/time.Second))
	case d < time.Hour:
		return fmt.Sprintf("%dm", int(d/time.Minute))
	case d < 48*time.Hour:
		return fmt.Sprintf("%dh", int(d/time.Hour))
	}
	return fmt.Sprintf("%dd", int(d/(24*time.Hour)))
}
