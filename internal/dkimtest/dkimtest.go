// Package dkimtest holds what the dkim and dkim_sign tests share: keys
// generated for the test, their DNS records, and dkimpy (Debian's
// python3-dkim), the independent DKIM implementation the tests check
// against. Only tests use it.
package dkimtest

import (
	"bytes"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"encoding/pem"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
)

// Keys are an RSA (2048 bits) and an Ed25519 key pair.
type Keys struct {
	RSA     *rsa.PrivateKey
	Ed25519 ed25519.PrivateKey
}

var (
	keysOnce sync.Once
	keys     Keys
)

// GenKeys returns keys made once per test binary (RSA key generation is
// slow).
func GenKeys(tb testing.TB) Keys {
	tb.Helper()
	keysOnce.Do(func() {
		var err error
		if keys.RSA, err = rsa.GenerateKey(rand.Reader, 2048); err != nil {
			panic(err)
		}
		if _, keys.Ed25519, err = ed25519.GenerateKey(rand.Reader); err != nil {
			panic(err)
		}
	})
	return keys
}

// RSARecord is the DKIM TXT record of an RSA public key.
func RSARecord(k *rsa.PublicKey) string {
	der, err := x509.MarshalPKIXPublicKey(k)
	if err != nil {
		panic(err)
	}
	return "v=DKIM1; k=rsa; p=" + base64.StdEncoding.EncodeToString(der)
}

// Ed25519Record is the DKIM TXT record of an Ed25519 public key (RFC
// 8463: the raw 32 bytes).
func Ed25519Record(k ed25519.PrivateKey) string {
	return "v=DKIM1; k=ed25519; p=" + base64.StdEncoding.EncodeToString(k.Public().(ed25519.PublicKey))
}

// PKCS1 is the PEM "RSA PRIVATE KEY" form of k.
func PKCS1(k *rsa.PrivateKey) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(k)})
}

// PKCS8 is the PEM "PRIVATE KEY" form of k.
func PKCS8(k any) []byte {
	der, err := x509.MarshalPKCS8PrivateKey(k)
	if err != nil {
		panic(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})
}

// Seed is the base64 of an Ed25519 key's seed, the form dkimpy reads.
func Seed(k ed25519.PrivateKey) []byte {
	return []byte(base64.StdEncoding.EncodeToString(k.Seed()))
}

// WriteFile writes data to a new file in the test's temporary directory
// and returns its path.
func WriteFile(tb testing.TB, name string, data []byte) string {
	tb.Helper()
	p := filepath.Join(tb.TempDir(), name)
	if err := os.WriteFile(p, data, 0o600); err != nil {
		tb.Fatal(err)
	}
	return p
}

// script signs (sign <selector> <domain> <keyfile> <algorithm>: the
// DKIM-Signature field on stdout) or verifies (verify <name> <recordfile>:
// "pass" or "fail") the message on stdin with dkimpy.
const script = `
import sys, dkim
msg = sys.stdin.buffer.read()
if sys.argv[1] == "sign":
    sel, dom, keyfile, alg = sys.argv[2:6]
    key = open(keyfile, "rb").read()
    sig = dkim.sign(msg, sel.encode(), dom.encode(), key,
        signature_algorithm=alg.encode(),
        canonicalize=(b"relaxed", b"relaxed"),
        include_headers=[b"from", b"to", b"subject", b"date"])
    sys.stdout.buffer.write(sig)
else:
    name, recfile = sys.argv[2:4]
    rec = open(recfile, "rb").read()
    def dnsfunc(n, timeout=5):
        if isinstance(n, bytes):
            n = n.decode()
        return rec if n.rstrip(".").lower() == name.lower() else None
    print("pass" if dkim.verify(msg, dnsfunc=dnsfunc) else "fail")
`

// Python returns a python3 that has dkimpy (and PyNaCl, for Ed25519). It
// skips the test when there is none, or fails it when
// ESMTP_REQUIRE_CLIENTS=1 (as CI sets).
func Python(tb testing.TB) string {
	tb.Helper()
	for _, p := range []string{"/usr/bin/python3", "python3"} {
		if path, err := exec.LookPath(p); err == nil {
			if exec.Command(path, "-c", "import dkim, nacl").Run() == nil {
				return path
			}
		}
	}
	if os.Getenv("ESMTP_REQUIRE_CLIENTS") == "1" {
		tb.Fatal("python3-dkim is required (ESMTP_REQUIRE_CLIENTS=1) but not installed")
	}
	tb.Skip("python3-dkim (dkimpy) with python3-nacl not installed; .ci/run installs it")
	return ""
}

// PySign signs msg with dkimpy (relaxed/relaxed; From, To, Subject and
// Date) and returns the DKIM-Signature field, CRLF included. alg is
// "rsa-sha256" (keyfile: PEM) or "ed25519-sha256" (keyfile: Seed).
func PySign(tb testing.TB, python, selector, domain, keyfile, alg string, msg []byte) string {
	tb.Helper()
	out := run(tb, python, msg, "sign", selector, domain, keyfile, alg)
	sig := strings.ReplaceAll(strings.ReplaceAll(out, "\r\n", "\n"), "\n", "\r\n")
	if !strings.HasPrefix(sig, "DKIM-Signature:") {
		tb.Fatalf("dkimpy signed %q", out)
	}
	return sig
}

// PyVerify reports whether dkimpy verifies msg's first signature, with
// record as the only TXT record, at name.
func PyVerify(tb testing.TB, python, name, record string, msg []byte) bool {
	tb.Helper()
	rec := WriteFile(tb, "record", []byte(record))
	return strings.TrimSpace(run(tb, python, msg, "verify", name, rec)) == "pass"
}

func run(tb testing.TB, python string, stdin []byte, args ...string) string {
	tb.Helper()
	cmd := exec.Command(python, append([]string{"-c", script}, args...)...)
	cmd.Stdin = bytes.NewReader(stdin)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		tb.Fatalf("dkimpy %s: %v\n%s", args[0], err, stderr.String())
	}
	return string(out)
}
