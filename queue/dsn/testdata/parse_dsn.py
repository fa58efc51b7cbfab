# Parses a DSN (stdin) with Python's email package and prints what it
# found as JSON: the independent check of dsn_test.go.
import email, email.policy, json, sys

raw = sys.stdin.buffer.read()
msg = email.message_from_bytes(raw, policy=email.policy.default)
out = {
    "defects": [type(d).__name__ for d in msg.defects],
    "content_type": msg.get_content_type(),
    "report_type": msg.get_param("report-type"),
    "to": str(msg["To"]),
    "from": str(msg["From"]),
    "subject": str(msg["Subject"]),
    "auto_submitted": str(msg["Auto-Submitted"]),
    "parts": [],
    "blocks": [],
    "original_subject": None,
    "original_body": None,
    "original_headers": None,
    "text": None,
}
parts = msg.get_payload()
for p in parts:
    out["defects"] += [type(d).__name__ for d in p.defects]
    ct = p.get_content_type()
    out["parts"].append(ct)
    if ct == "text/plain":
        out["text"] = p.get_content()
    elif ct == "message/delivery-status":
        for block in p.get_payload():
            out["blocks"].append([[k, str(v)] for k, v in block.items()])
    elif ct == "message/global-delivery-status":
        # Python has no special case for it: a message whose header is the
        # first block and whose body holds the others.
        body = p.get_payload(0).as_bytes(policy=email.policy.SMTPUTF8).decode("utf-8")
        for chunk in body.replace("\r\n", "\n").split("\n\n"):
            if not chunk.strip():
                continue
            b = email.message_from_string(chunk + "\n", policy=email.policy.default)
            out["blocks"].append([[k, str(v)] for k, v in b.items()])
    elif ct in ("message/rfc822", "message/global"):
        inner = p.get_payload(0)
        out["original_subject"] = str(inner["Subject"])
        out["original_body"] = inner.get_payload(decode=False) if not inner.is_multipart() else None
    elif ct in ("text/rfc822-headers", "message/global-headers"):
        if p.is_multipart():  # message/global-headers: Python parses it as a message
            out["original_headers"] = p.get_payload(0).as_bytes(policy=email.policy.SMTPUTF8).decode("utf-8")
        else:
            out["original_headers"] = p.get_payload(decode=True).decode("utf-8", "replace")
print(json.dumps(out))
