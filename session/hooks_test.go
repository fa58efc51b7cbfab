package session

import (
	"context"
	"errors"
	"net"
	"strings"
	"sync"
	"testing"
	"time"
)

func TestEventsInOrder(t *testing.T) {
	for _, size := range []int{0, 1, 100, 511, 512, 513, 1500, 4096, 70000, 300000} {
		for _, mode := range []string{"DATA", "BDAT"} {
			rec := &recorder{}
			ts := start(t, Config{Hostname: "mx.example.org", ChunkSize: 512,
				Handlers: []SubHandler{{Name: "rec", Handler: rec}}})
			ts.cmd("EHLO client.example", 250, "")
			ts.mailTo("rcpt@example.com")
			msg := testMessage(size, uint64(size))
			if size == 0 {
				msg = ""
			}
			if mode == "DATA" {
				ts.sendData(stuff(msg))
			} else {
				ts.bdat(msg, true)
			}
			r := ts.expect(250, "2.0.0")
			id := strings.Fields(r.texts[0])[0]
			ts.send("QUIT")
			ts.expect(221, "2.0.0")
			ts.expectClosed()
			ts.wait()

			ev := rec.events()
			kinds := rec.kinds()
			wantPrefix := []string{"connect", "helo", "mail", "rcpt", "data", "header"}
			if strings.Join(kinds[:len(wantPrefix)], " ") != strings.Join(wantPrefix, " ") {
				t.Fatalf("%s %d: events %v", mode, size, kinds)
			}
			// Received: first
			rcv := ev[5]
			if rcv.arg != "Received" {
				t.Fatalf("first header %q", rcv.arg)
			}
			for _, w := range []string{"from client.example", "by mx.example.org", "with ESMTP", "id " + id, "for <rcpt@example.com>"} {
				if !strings.Contains(rcv.value, w) {
					t.Errorf("Received: %q lacks %q", rcv.value, w)
				}
			}
			if !strings.HasPrefix(string(rcv.raw), "Received: ") || !strings.HasSuffix(string(rcv.raw), "\r\n") ||
				strings.Contains(rcv.value, "\r") || strings.Contains(rcv.value, "\n") {
				t.Errorf("Received raw %q value %q", rcv.raw, rcv.value)
			}
			// then headers, eoh, body chunks, eom, close
			tail := strings.Join(kinds[len(wantPrefix):], " ")
			switch {
			case size == 0 && tail != "eoh eom verb close":
				t.Fatalf("%s empty: events %v", mode, kinds)
			case size > 0 && !strings.HasPrefix(tail, "header header header header eoh "),
				size > 0 && !strings.HasSuffix(tail, " eom verb close"):
				t.Fatalf("%s %d: events %v", mode, size, kinds)
			}
			var subject, empty *event
			for i := range ev {
				if ev[i].kind == "header" && ev[i].arg == "Subject" {
					subject = &ev[i]
				}
				if ev[i].kind == "header" && ev[i].arg == "X-Empty" {
					empty = &ev[i]
				}
				if ev[i].kind == "eoh" && size > 0 && string(ev[i].raw) != "\r\n" {
					t.Fatalf("eoh raw %q", ev[i].raw)
				}
				if ev[i].kind == "body" && (len(ev[i].raw) > 512 || len(ev[i].raw) == 0) {
					t.Fatalf("body chunk of %d bytes", len(ev[i].raw))
				}
			}
			if size > 0 {
				if subject == nil || subject.value != "a folded\tsubject line" ||
					string(subject.raw) != "Subject: a folded\r\n\tsubject line\r\n" {
					t.Fatalf("Subject event %+v", subject)
				}
				if empty == nil || empty.value != "" || string(empty.raw) != "X-Empty:\r\n" {
					t.Fatalf("X-Empty event %+v", empty)
				}
			}
			_, got := splitReceived(t, rec)
			if string(got) != msg {
				t.Fatalf("%s %d: reassembled content differs (%d vs %d bytes)", mode, size, len(got), len(msg))
			}
		}
	}
}

func TestEndOfHeadersWithoutBlankLine(t *testing.T) {
	rec := &recorder{}
	ts := start(t, Config{Handlers: []SubHandler{{Name: "rec", Handler: rec}}})
	ts.ehlo()
	for _, msg := range []string{
		"Subject: x\r\nthis line is not a header\r\nmore\r\n",
		" leading space\r\n",
		"no colon here\r\n\r\nbody\r\n",
		":empty name\r\n",
	} {
		rec.reset()
		ts.mailTo("b@example.com")
		ts.sendData(stuff(msg))
		ts.expect(250, "2.0.0")
		var eoh *event
		ev := rec.events()
		for i := range ev {
			if ev[i].kind == "eoh" {
				eoh = &ev[i]
			}
		}
		if eoh == nil || len(eoh.raw) != 0 {
			t.Fatalf("%q: eoh %+v", msg, eoh)
		}
		if _, got := splitReceived(t, rec); string(got) != msg {
			t.Fatalf("%q: hooks saw %q", msg, got)
		}
	}
}

func TestReceivedSanitized(t *testing.T) {
	rec := &recorder{}
	srv, _ := newServer(Config{Hostname: "mx.example.org", Handlers: []SubHandler{{Name: "rec", Handler: rec}}})
	ts := startOn(t, srv, ConnInfo{RemoteAddr: &net.TCPAddr{IP: net.ParseIP("192.0.2.7"), Port: 4000}})
	ts.cmd("EHLO (evil)\x01\x7f\xff;[x]<y>\"z\\", 250, "")
	ts.cmd("MAIL FROM:<a@example.com>", 250, "2.1.0")
	ts.cmd("RCPT TO:<\"we(ird)\\\"x\"@example.com>", 250, "2.1.5")
	ts.sendData(stuff("\r\nx\r\n"))
	ts.expect(250, "2.0.0")
	rcv, _ := splitReceived(t, rec)
	s := string(rcv)
	body := strings.TrimSuffix(s, "\r\n")
	for _, line := range strings.Split(body, "\r\n") {
		if strings.ContainsAny(line, "\r\n") {
			t.Fatalf("bare CR/LF in Received: %q", s)
		}
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; (c < 0x20 && c != '\r' && c != '\n' && c != '\t') || c > 0x7e {
			t.Fatalf("byte %#x in Received: %q", c, s)
		}
	}
	from := s[len("Received: from "):strings.Index(s, " ([192.0.2.7])")]
	if strings.ContainsAny(from, "()[]<>;\"\\ \t") {
		t.Fatalf("HELO name not sanitised: %q in %q", from, s)
	}
	if strings.Count(s, "(") != 1 || strings.Count(s, ")") != 1 {
		t.Fatalf("parentheses in Received: %q", s)
	}
	if !strings.Contains(s, "([192.0.2.7])") {
		t.Fatalf("no address literal in %q", s)
	}
	// HELO (not EHLO) names the protocol SMTP
	rec.reset()
	ts.cmd("HELO plain.example", 250, "")
	ts.mailTo("b@example.com", "c@example.com")
	ts.sendData(stuff("\r\nx\r\n"))
	ts.expect(250, "2.0.0")
	rcv, _ = splitReceived(t, rec)
	if !strings.Contains(string(rcv), "with SMTP id") || strings.Contains(string(rcv), "for <") {
		t.Fatalf("Received: %q", rcv)
	}
}

func TestFirstOpinionWins(t *testing.T) {
	var third int
	var mu sync.Mutex
	hs := []SubHandler{
		{Name: "none", Handler: mailFunc(func(ctx context.Context, s *Session, from Path, p Params) (*Reply, error) {
			return nil, nil
		})},
		{Name: "reject", Handler: mailFunc(func(ctx context.Context, s *Session, from Path, p Params) (*Reply, error) {
			if from.Mailbox == "bad@example.com" {
				return NewReply(550, "5.7.1", "no thanks"), nil
			}
			return nil, nil
		})},
		{Name: "accept", Handler: mailFunc(func(ctx context.Context, s *Session, from Path, p Params) (*Reply, error) {
			mu.Lock()
			third++
			mu.Unlock()
			return NewReply(250, "2.1.0", "third says ok"), nil
		})},
	}
	rec := &recorder{}
	hs = append(hs, SubHandler{Name: "rec", Handler: rec})
	ts := start(t, Config{Handlers: hs})
	ts.ehlo()
	r := ts.cmd("MAIL FROM:<bad@example.com>", 550, "5.7.1")
	if r.texts[0] != "no thanks" {
		t.Fatalf("reply %q", r.raw)
	}
	mu.Lock()
	if third != 0 {
		t.Fatalf("later handler asked after an opinion")
	}
	mu.Unlock()
	if rec.count("mail") != 0 || rec.count("abort") != 1 {
		t.Fatalf("events %v", rec.kinds())
	}
	r = ts.cmd("MAIL FROM:<good@example.com>", 250, "2.1.0")
	if r.texts[0] != "third says ok" {
		t.Fatalf("reply %q", r.raw)
	}
	if rec.count("mail") != 0 {
		t.Fatalf("rec asked after the third handler's opinion")
	}
}

func TestHookFailuresFailClosed(t *testing.T) {
	cases := map[string]func(ctx context.Context) (*Reply, error){
		"error":         func(ctx context.Context) (*Reply, error) { return nil, errors.New("disk on fire") },
		"panic":         func(ctx context.Context) (*Reply, error) { panic("boom") },
		"invalid code":  func(ctx context.Context) (*Reply, error) { return NewReply(999, "", "x"), nil },
		"code 199":      func(ctx context.Context) (*Reply, error) { return NewReply(199, "", "x"), nil },
		"bad enhanced":  func(ctx context.Context) (*Reply, error) { return NewReply(250, "5.1.1", "x"), nil },
		"bad enhanced2": func(ctx context.Context) (*Reply, error) { return NewReply(550, "5.1", "x"), nil },
		"2xx as error":  func(ctx context.Context) (*Reply, error) { return nil, NewReply(250, "2.0.0", "ok") },
		"bad as error":  func(ctx context.Context) (*Reply, error) { return nil, NewReply(550, "4.1.1", "x") },
		"timeout": func(ctx context.Context) (*Reply, error) {
			<-ctx.Done() // HandlerTimeout cancels it
			return NewReply(250, "2.0.0", "too late"), nil
		},
		"slow": func(ctx context.Context) (*Reply, error) {
			time.Sleep(700 * time.Millisecond) // ignores ctx, returns after HandlerTimeout
			return nil, nil
		},
	}
	for name, f := range cases {
		for _, event := range []string{"helo", "mail", "rcpt", "data", "eom", "header", "eoh", "body"} {
			streamed := event == "header" || event == "eoh" || event == "body"
			if streamed && (strings.Contains(name, "code") || strings.HasPrefix(name, "bad enhanced")) {
				continue // streamed hooks return only an error
			}
			t.Run(name+"/"+event, func(t *testing.T) {
				rec := &recorder{act: func(ctx context.Context, kind string) (*Reply, error) {
					if kind == event {
						return f(ctx)
					}
					return nil, nil
				}}
				t.Parallel()
				ts := start(t, Config{HandlerTimeout: 300 * time.Millisecond, Handlers: []SubHandler{{Name: "rec", Handler: rec}}})
				ts.send("EHLO client.example")
				if event == "helo" {
					ts.expect(451, "4.3.0")
					return
				}
				ts.expect(250, "")
				ts.send("MAIL FROM:<a@example.com>")
				if event == "mail" {
					ts.expect(451, "4.3.0")
					ts.cmd("RCPT TO:<b@example.com>", 503, "5.5.1")
					return
				}
				ts.expect(250, "2.1.0")
				ts.send("RCPT TO:<b@example.com>")
				if event == "rcpt" {
					ts.expect(451, "4.3.0")
					ts.cmd("DATA", 554, "5.5.1") // RFC 5321 3.3: no valid recipients
					return
				}
				ts.expect(250, "2.1.5")
				ts.send("DATA")
				if event == "data" {
					ts.expect(451, "4.3.0")
					ts.cmd("NOOP", 250, "2.0.0")
					if rec.count("abort") != 1 {
						t.Fatalf("events %v", rec.kinds())
					}
					return
				}
				ts.expect(354, "")
				ts.sendRaw(stuff("Subject: x\r\n\r\n" + strings.Repeat("body\r\n", 10)))
				ts.expect(451, "4.3.0")
				ts.cmd("NOOP", 250, "2.0.0")
				if rec.count("abort") != 1 {
					t.Fatalf("events %v", rec.kinds())
				}
				if event != "eom" && rec.count("eom") != 0 {
					t.Fatalf("end of message asked after a failure: %v", rec.kinds())
				}
			})
		}
	}
}

func TestReplyAsErrorFromBodyHook(t *testing.T) {
	for _, event := range []string{"header", "eoh", "body"} {
		rec := &recorder{act: func(ctx context.Context, kind string) (*Reply, error) {
			if kind == event {
				return nil, NewReply(554, "5.7.1", "content refused")
			}
			return nil, nil
		}}
		ts := start(t, Config{Handlers: []SubHandler{{Name: "rec", Handler: rec}}})
		ts.ehlo()
		ts.mailTo("b@example.com")
		ts.sendData(stuff("Subject: x\r\n\r\nbody\r\n"))
		r := ts.expect(554, "5.7.1")
		if r.texts[0] != "content refused" {
			t.Fatalf("reply %q", r.raw)
		}
		if rec.count("eom") != 0 || rec.count("abort") != 1 {
			t.Fatalf("%s: events %v", event, rec.kinds())
		}
	}
	// a 4xx *Reply wrapped in an error is found too
	h := bodyFunc(func(ctx context.Context, s *Session, c []byte) error {
		return errors.Join(errors.New("upstream"), NewReply(452, "4.3.1", "disk full"))
	})
	ts := start(t, Config{Handlers: []SubHandler{{Name: "b", Handler: h}}})
	ts.ehlo()
	ts.mailTo("b@example.com")
	ts.sendData(stuff("\r\nbody\r\n"))
	ts.expect(452, "4.3.1")
}

func TestEndOfMessageHooks(t *testing.T) {
	var calls []string
	var mu sync.Mutex
	mk := func(name string, r *Reply) eomFunc {
		return func(ctx context.Context, s *Session) (*Reply, error) {
			mu.Lock()
			calls = append(calls, name)
			mu.Unlock()
			if _, ok := ctx.Deadline(); !ok {
				return nil, errors.New("no deadline on the end-of-message context")
			}
			return r, nil
		}
	}
	ts := start(t, Config{Handlers: []SubHandler{
		{Name: "store1", Handler: mk("store1", nil)},
		{Name: "store2", Handler: mk("store2", nil)},
	}})
	ts.ehlo()
	ts.mailTo("b@example.com")
	ts.sendData(stuff("\r\nbody\r\n"))
	ts.expect(250, "2.0.0")
	if strings.Join(calls, ",") != "store1,store2" {
		t.Fatalf("calls %v", calls)
	}
	calls = nil
	ts2 := start(t, Config{Handlers: []SubHandler{
		{Name: "store1", Handler: mk("store1", NewReply(452, "4.3.1", "full"))},
		{Name: "store2", Handler: mk("store2", nil)},
	}})
	ts2.ehlo()
	ts2.mailTo("b@example.com")
	ts2.sendData(stuff("\r\nbody\r\n"))
	ts2.expect(452, "4.3.1")
	if strings.Join(calls, ",") != "store1" {
		t.Fatalf("calls %v", calls)
	}
}

func TestAbortHook(t *testing.T) {
	rec := &recorder{}
	ts := start(t, Config{Handlers: []SubHandler{{Name: "rec", Handler: rec}}})
	ts.ehlo()
	// RSET
	ts.mailTo("b@example.com")
	ts.cmd("RSET", 250, "2.0.0")
	// RSET without a transaction does not abort
	ts.cmd("RSET", 250, "2.0.0")
	// EHLO mid-transaction
	ts.mailTo("b@example.com")
	ts.ehlo()
	// a rejected message
	ts.mailTo("b@example.com")
	ts.sendData("\r\nbare\nLF\r\n.\r\n")
	ts.expect(550, "5.5.2")
	// disconnect mid-DATA
	ts.mailTo("b@example.com")
	ts.sendData("Subject: x\r\n\r\npartial\r\nNOOP\r\n")
	ts.conn.Close()
	if err := ts.wait(); err != nil {
		t.Fatalf("Serve after a client disconnect: %v", err)
	}
	var reasons []error
	for _, e := range rec.events() {
		if e.kind == "abort" {
			reasons = append(reasons, e.reason)
		}
	}
	want := []error{errReset, errReset, errRejected, errConnectionEnded}
	if len(reasons) != len(want) {
		t.Fatalf("abort reasons %v, want %v", reasons, want)
	}
	for i := range want {
		if !errors.Is(reasons[i], want[i]) {
			t.Fatalf("abort reasons %v, want %v", reasons, want)
		}
	}
	if rec.count("eom") != 0 || rec.count("close") != 1 {
		t.Fatalf("events %v", rec.kinds())
	}
	if k := rec.kinds(); k[len(k)-1] != "close" || k[len(k)-2] != "abort" {
		t.Fatalf("events %v", k)
	}
}

func TestShutdownIdle(t *testing.T) {
	rec := &recorder{}
	srv, _ := newServer(Config{Handlers: []SubHandler{{Name: "rec", Handler: rec}}})
	ts := startOn(t, srv, ConnInfo{})
	ts.ehlo()
	ts2 := startOn(t, srv, ConnInfo{}) // not even greeted
	done := srv.Shutdown()
	ts.expect(421, "4.3.2")
	ts.expectClosed()
	ts2.expect(421, "4.3.2")
	ts2.expectClosed()
	select {
	case <-done:
	case <-time.After(hangGuard):
		t.Fatal("Shutdown channel not closed")
	}
	if srv.Sessions() != 0 {
		t.Fatalf("%d sessions left", srv.Sessions())
	}
	// new connections are refused
	ts3 := startRaw(t, srv, ConnInfo{})
	ts3.expect(421, "4.3.2")
	ts3.expectClosed()
	// a second Shutdown returns the same, closed channel
	if d2 := srv.Shutdown(); d2 != done {
		t.Fatal("Shutdown returned a new channel")
	}
	if rec.count("close") != 2 {
		t.Fatalf("close hooks: %v", rec.kinds())
	}
}

func TestShutdownNoSessions(t *testing.T) {
	srv, _ := newServer(Config{})
	select {
	case <-srv.Shutdown():
	case <-time.After(hangGuard):
		t.Fatal("Shutdown channel not closed")
	}
}

func TestShutdownMidTransaction(t *testing.T) {
	for _, phase := range []string{"after RCPT", "in DATA", "in BDAT", "mid-line"} {
		t.Run(phase, func(t *testing.T) {
			rec := &recorder{}
			srv, _ := newServer(Config{Handlers: []SubHandler{{Name: "rec", Handler: rec}}})
			ts := startOn(t, srv, ConnInfo{})
			idle := startOn(t, srv, ConnInfo{})
			ts.ehlo()
			ts.mailTo("b@example.com")
			var done <-chan struct{}
			switch phase {
			case "after RCPT":
				done = srv.Shutdown()
				idle.expect(421, "4.3.2") // orders the check below after the drain began
				ts.sendData(stuff("Subject: x\r\n\r\nbody\r\n"))
			case "in DATA":
				ts.sendData("Subject: x\r\n\r\n")
				done = srv.Shutdown()
				idle.expect(421, "4.3.2")
				ts.sendRaw("body\r\n.\r\n")
			case "in BDAT":
				ts.sendRaw("BDAT 21 LAST\r\nSubject: x\r\n")
				done = srv.Shutdown()
				idle.expect(421, "4.3.2")
				ts.sendRaw("\r\nbody!\r\n")
			case "mid-line":
				ts.sendRaw("DA")
				done = srv.Shutdown()
				idle.expect(421, "4.3.2")
				ts.sendRaw("TA\r\n")
				ts.expect(354, "")
				ts.sendRaw(stuff("\r\nbody\r\n"))
			}
			ts.expect(250, "2.0.0")
			ts.expect(421, "4.3.2")
			ts.expectClosed()
			select {
			case <-done:
			case <-time.After(hangGuard):
				t.Fatal("Shutdown channel not closed")
			}
			if rec.count("eom") != 1 || rec.count("abort") != 0 {
				t.Fatalf("events %v", rec.kinds())
			}
		})
	}
}

func TestShutdownGraceEnds(t *testing.T) {
	rec := &recorder{}
	srv, _ := newServer(Config{GracePeriod: 200 * time.Millisecond, Handlers: []SubHandler{{Name: "rec", Handler: rec}}})
	ts := startOn(t, srv, ConnInfo{})
	ts.ehlo()
	ts.mailTo("b@example.com")
	ts.sendData("Subject: x\r\n\r\nnever finished")
	done := srv.Shutdown()
	ts.expect(421, "4.3.2")
	ts.expectClosed()
	<-done
	if rec.count("eom") != 0 || rec.count("abort") != 1 {
		t.Fatalf("events %v", rec.kinds())
	}
}

// TestShutdownRace starts the drain while many sessions are between a
// reply and their next read: none may miss it (each must get 421 4.3.2
// without waiting for the command timeout or the grace period, which are
// long here).
func TestShutdownRace(t *testing.T) {
	for round := 0; round < 20; round++ {
		srv, _ := newServer(Config{CommandTimeout: time.Hour, GracePeriod: time.Hour})
		var sessions []*testSession
		for i := 0; i < 10; i++ {
			ts := startOn(t, srv, ConnInfo{})
			ts.send("NOOP")
			sessions = append(sessions, ts)
		}
		done := srv.Shutdown()
		for _, ts := range sessions {
			for {
				r := ts.readReply()
				if r.code == 421 {
					break
				}
				if r.code != 250 {
					t.Fatalf("reply %q", r.raw)
				}
			}
			ts.expectClosed()
		}
		select {
		case <-done:
		case <-time.After(hangGuard):
			t.Fatal("Shutdown channel not closed")
		}
	}
}

func TestHookRepliesAndState(t *testing.T) {
	type key struct{}
	hs := []SubHandler{
		{Name: "helo", Handler: heloFunc(func(ctx context.Context, s *Session, name string) (*Reply, error) {
			if name == "bad.example" {
				return NewReply(550, "5.7.1", "go away"), nil
			}
			return nil, nil
		})},
		{Name: "rcpt", Handler: rcptFunc(func(ctx context.Context, s *Session, to Path, p Params) (*Reply, error) {
			switch to.Mailbox {
			case "nobody@example.com":
				return NewReply(550, "5.1.1", "no such user"), nil
			case "later@example.com":
				return NewReply(450, "4.2.1", "try later"), nil
			case "custom@example.com":
				return NewReply(251, "2.1.5", "will forward"), nil
			}
			return nil, nil
		})},
		{Name: "data", Handler: dataFunc(func(ctx context.Context, s *Session) (*Reply, error) {
			if s.Transaction().Recipients[0].Path.Mailbox == "refuse@example.com" {
				return NewReply(554, "5.7.1", "no data for you"), nil
			}
			s.Transaction().AddHeader("X-Added", "one")
			s.Transaction().AddHeader("X-Inject\r\nBcc", "x\r\nBcc: victim@example.com")
			s.Transaction().SetValue(key{}, "v")
			return NewReply(354, "", "go ahead, custom"), nil
		})},
	}
	rec := &recorder{}
	hs = append(hs, SubHandler{Name: "rec", Handler: rec})
	ts := start(t, Config{Handlers: hs})
	ts.cmd("EHLO bad.example", 550, "5.7.1")
	ts.cmd("MAIL FROM:<a@example.com>", 503, "5.5.1") // the rejected EHLO did not count
	ts.ehlo()
	ts.cmd("MAIL FROM:<a@example.com>", 250, "2.1.0")
	ts.cmd("RCPT TO:<nobody@example.com>", 550, "5.1.1")
	ts.cmd("RCPT TO:<later@example.com>", 450, "4.2.1")
	ts.cmd("DATA", 554, "5.5.1") // no recipient was added: "no valid recipients" (RFC 5321 3.3)
	ts.cmd("RCPT TO:<custom@example.com>", 251, "2.1.5")
	ts.send("DATA")
	if r := ts.expect(354, ""); r.texts[0] != "go ahead, custom" {
		t.Fatalf("354 %q", r.raw)
	}
	ts.sendRaw(stuff("Subject: s\r\n\r\nb\r\n"))
	ts.expect(250, "2.0.0")
	var names []string
	for _, e := range rec.events() {
		if e.kind == "header" {
			names = append(names, e.arg)
			if strings.Count(string(e.raw), "\r\n") != 1 && e.arg != "Received" {
				t.Fatalf("header raw %q has more than one line", e.raw)
			}
		}
	}
	if len(names) != 4 || names[0] != "Received" || names[1] != "X-Added" || names[3] != "Subject" {
		t.Fatalf("headers %q", names)
	}
	// a DataHook refusing BDAT: the chunk is still consumed
	ts.cmd("MAIL FROM:<a@example.com>", 250, "2.1.0")
	ts.cmd("RCPT TO:<refuse@example.com>", 250, "2.1.5")
	chunk := "NOOP\r\nNOOP\r\n"
	ts.bdat(chunk, true)
	ts.expect(554, "5.7.1")
	ts.cmd("RSET", 250, "2.0.0")
	ts.cmd("MAIL FROM:<a@example.com>", 250, "2.1.0")
	ts.cmd("RCPT TO:<refuse@example.com>", 250, "2.1.5")
	ts.cmd("DATA", 554, "5.7.1")
	ts.cmd("RCPT TO:<b@example.com>", 503, "5.5.1") // the refusal ended the transaction
}

func TestLoopbackTCP(t *testing.T) {
	rec := &recorder{}
	srv, _ := newServer(Config{Hostname: "mx.example.org", Handlers: []SubHandler{{Name: "rec", Handler: rec}}})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Skipf("no loopback: %v", err)
	}
	defer ln.Close()
	served := make(chan error, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			served <- err
			return
		}
		defer c.Close()
		served <- srv.Serve(context.Background(), c, ConnInfo{})
	}()
	cc, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	c := newTestClient(t, cc)
	c.expect(220, "")
	c.cmd("EHLO client.example", 250, "")
	c.send("MAIL FROM:<a@example.com>", "RCPT TO:<b@example.com>", "DATA")
	c.expect(250, "2.1.0")
	c.expect(250, "2.1.5")
	c.expect(354, "")
	msg := testMessage(200000, 7)
	c.sendRaw(stuff(msg))
	c.expect(250, "2.0.0")
	c.cmd("QUIT", 221, "2.0.0")
	c.expectClosed()
	if err := <-served; err != nil {
		t.Fatalf("Serve: %v", err)
	}
	rcv, got := splitReceived(t, rec)
	if !strings.Contains(string(rcv), "from client.example ([127.0.0.1])") {
		t.Fatalf("Received: %q", rcv)
	}
	if string(got) != msg {
		t.Fatalf("content differs")
	}
}

// TestSlowHookReplyDelivered: a hook that takes longer than the command or
// data timeout (but within HandlerTimeout) still gets its reply to the
// client; the timeouts bound the client's reads, not the server's work.
func TestSlowHookReplyDelivered(t *testing.T) {
	slow := func(ctx context.Context) (*Reply, error) {
		time.Sleep(1300 * time.Millisecond)
		return nil, nil
	}
	for _, event := range []string{"mail", "eom", "verb"} {
		t.Run(event, func(t *testing.T) {
			t.Parallel()
			rec := &recorder{act: func(ctx context.Context, kind string) (*Reply, error) {
				if kind == event {
					return slow(ctx)
				}
				return nil, nil
			}}
			ts := start(t, Config{CommandTimeout: time.Second, DataTimeout: time.Second,
				HandlerTimeout: time.Minute, Handlers: []SubHandler{{Name: "rec", Handler: rec}}})
			ts.send("EHLO client.example", "MAIL FROM:<a@example.com>", "RCPT TO:<b@example.com>", "DATA")
			ts.expect(250, "")
			ts.expect(250, "2.1.0")
			ts.expect(250, "2.1.5")
			ts.expect(354, "")
			ts.sendRaw(stuff("\r\nbody\r\n") + "NOOP\r\nQUIT\r\n")
			ts.expect(250, "2.0.0")
			ts.expect(250, "2.0.0")
			ts.expect(221, "2.0.0")
			ts.expectClosed()
		})
	}
}
