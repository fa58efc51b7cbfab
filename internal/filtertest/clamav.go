package filtertest

import (
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// EICAR is the EICAR anti-virus test file (68 bytes).
const EICAR = `X5O!P%@AP[4\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*`

// ClamAVMilter starts clamd with a one-signature database made here (the
// EICAR test file, as an .ndb body signature: freshclam cannot reach the
// Internet in tests) on a unix socket, and clamav-milter in front of it
// on a loopback port (Debian packages clamav-daemon and clamav-milter),
// both as the user clamav when the tests run as root. It returns the
// milter's address ("127.0.0.1:port"); both are stopped when the test
// ends. An infected message is rejected (OnInfected Reject), a failed
// scan deferred (OnFail Defer).
func ClamAVMilter(tb testing.TB) string {
	tb.Helper()
	clamd := Program(tb, "clamd", "clamav-daemon")
	milter := Program(tb, "clamav-milter", "clamav-milter")
	acct := AccountFor(tb, "clamav")
	dir := Dir(tb, acct)
	db := filepath.Join(dir, "db")
	if err := os.Mkdir(db, 0o755); err != nil {
		tb.Fatal(err)
	}
	Own(tb, acct, db)
	write := func(name, text string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(text), 0o644); err != nil {
			tb.Fatal(err)
		}
		Own(tb, acct, p)
		return p
	}
	write("db/eicar.ndb", "Eicar-Test-Signature:0:*:"+hex.EncodeToString([]byte(EICAR))+"\n")
	sock := filepath.Join(dir, "clamd.sock")
	clamdConf := write("clamd.conf", fmt.Sprintf(`Foreground yes
DatabaseDirectory %s
LocalSocket %s
LogFile %s
LogTime yes
ScanMail yes
`, db, sock, filepath.Join(dir, "clamd.log")))
	Own(tb, acct, dir)
	cmd := Command(acct, clamd, "--config-file="+clamdConf)
	cmd.Dir = dir
	Start(tb, cmd, Dials("unix", sock))

	addr := FreePort(tb)
	h, p, _ := strings.Cut(addr, ":")
	milterConf := write("clamav-milter.conf", fmt.Sprintf(`Foreground yes
MilterSocket inet:%s@%s
ClamdSocket unix:%s
OnInfected Reject
OnFail Defer
AddHeader Replace
LogFile %s
LogInfected Basic
`, p, h, sock, filepath.Join(dir, "clamav-milter.log")))
	mcmd := Command(acct, milter, "--config-file="+milterConf)
	mcmd.Dir = dir
	Start(tb, mcmd, MilterReady("tcp", addr))
	return addr
}
