# The test milter of the milter sub-handler's tests (pymilter, on
# libmilter): it takes the action that the message's Subject names, so
# that each action's result can be checked in the Maildir.
#   add-header insert-header change-header delete-header change-sender
#   add-rcpt del-rcpt replace-body quarantine discard reject tempfail
#   stall chain macros accept
# An envelope event can be refused too: HELO reject.test, MAIL FROM
# <reject@...>, RCPT TO <reject-*@...> (550 5.1.1, that recipient only),
# RCPT TO <discard@...> (the message is discarded).
import os
import sys
import time

import Milter

BIG_LINE = b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789abcdefghijklmnopqrstuvwxyzAB\r\n"
BIG_LINES = 15000  # 100 bytes each: 1.5 MB


class TestMilter(Milter.Base):
    def __init__(self):
        self.id = Milter.uniqueID()
        self.macros = {}

    def note(self, *names):
        for n in names:
            v = self.getsymval(n)
            if v is not None:
                self.macros[n] = v

    def connect(self, hostname, family, hostaddr):
        self.client = hostname
        self.note("j", "{daemon_name}", "{daemon_addr}", "{daemon_port}", "v", "_",
                  "{client_addr}", "{client_port}", "{client_name}", "{client_ptr}")
        return Milter.CONTINUE

    def hello(self, name):
        if name == "reject.test":
            self.setreply("550", "5.7.1", "HELO refused by the test milter")
            return Milter.REJECT
        self.note("{tls_version}", "{cipher}")
        return Milter.CONTINUE

    def envfrom(self, mailfrom, *args):
        self.subject = ""
        self.headers = []
        self.rcpts = []
        self.mailfrom = mailfrom
        self.args = args
        self.note("i", "{auth_type}", "{auth_authen}", "{mail_addr}", "{mail_host}")
        if mailfrom.startswith("<reject@"):
            return Milter.REJECT
        return Milter.CONTINUE

    def envrcpt(self, to, *args):
        self.note("{rcpt_addr}")
        if to.startswith("<reject-"):
            self.setreply("550", "5.1.1", "no such user here")
            return Milter.REJECT
        if to.startswith("<discard@"):
            return Milter.DISCARD
        self.rcpts.append(to)
        return Milter.CONTINUE

    def header(self, name, value):
        self.headers.append((name, value))
        if name.lower() == "subject":
            self.subject = value.strip()
        return Milter.CONTINUE

    def eoh(self):
        return Milter.CONTINUE

    def body(self, chunk):
        return Milter.CONTINUE

    def eom(self):
        s = self.subject
        if "stall" in s:
            time.sleep(60)
        if "reject" in s:
            self.setreply("550", "5.7.1", "refused by the test milter", "second line of the refusal")
            return Milter.REJECT
        if "tempfail" in s:
            self.setreply("451", "4.7.1", "deferred by the test milter", "try again later")
            return Milter.TEMPFAIL
        if "discard" in s:
            return Milter.DISCARD
        if "add-header" in s:
            self.addheader("X-Test-Added", "added by the test milter")
        if "insert-header" in s:
            # after the first field (our Received:)
            self.addheader("X-Test-Inserted", "inserted at 1", 1)
        if "change-header" in s:
            self.chgheader("Subject", 1, "changed by the test milter")
        if "delete-header" in s:
            self.chgheader("X-Delete-Me", 1, "")
        if "change-sender" in s:
            self.chgfrom("<new-sender@example.test>")
        if "add-rcpt" in s:
            self.addrcpt("<added@example.test>")
        if "del-rcpt" in s:
            self.delrcpt("<deleted@example.test>")
        if "replace-body" in s:
            for i in range(BIG_LINES // 100):
                self.replacebody(BIG_LINE * 100)
        if "quarantine" in s:
            self.quarantine("held by the test milter")
        if "chain" in s:
            seen = [v for (n, v) in self.headers if n.lower() == "x-test-chain"]
            if seen:
                self.chgheader("X-Test-Chain", 1, seen[0].strip() + " then second")
            else:
                self.addheader("X-Test-Chain", "first")
        if "macros" in s:
            self.addheader("X-Test-Macros", " ".join("%s=%s" % (k, v) for k, v in sorted(self.macros.items())))
            self.addheader("X-Test-Envelope", "from=%s args=%s rcpts=%s client=%s" % (
                self.mailfrom, ",".join(self.args), ",".join(self.rcpts), self.client))
        if "accept" in s:
            return Milter.ACCEPT
        return Milter.CONTINUE


def main():
    Milter.factory = TestMilter
    Milter.set_flags(Milter.ADDHDRS | Milter.CHGHDRS | Milter.CHGBODY | Milter.ADDRCPT |
                     Milter.DELRCPT | Milter.QUARANTINE | Milter.CHGFROM)
    sys.stdout.write("ready\n")
    sys.stdout.flush()
    Milter.runmilter("esmtp-test", sys.argv[1], 240)


if __name__ == "__main__":
    main()
