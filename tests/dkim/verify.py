#!/usr/bin/env python3
"""Verifies the DKIM signatures of messages with dkimpy, an implementation independent of ours.

    verify.py --keys KEYS.json FILE...

KEYS.json maps DNS names to TXT values, e.g.
  {"s1._domainkey.example.com": "v=DKIM1; k=rsa; p=MIIB..."}
and stands in for DNS (dkimpy's `dnsfunc`). Each FILE is a transaction recorded by
tests/smtp/smtp_server.py (`tx-*.json`: the message is `data_b64`) or a raw message.

Prints one JSON object per FILE, in order:
  {"file": F, "size": octets, "signatures": [{"d": .., "s": .., "a": .., "c": .., "h": ..,
   "valid": true|false, "error": null|text}]}
A message without DKIM-Signature has "signatures": []. Exit status 3 (and {"skip": why}) when
dkimpy or PyNaCl is missing; 0 otherwise, whatever the results: the caller asserts.
"""
import base64
import json
import logging
import re
import sys


def main(argv):
    if len(argv) < 3 or argv[0] != "--keys":
        print(__doc__, file=sys.stderr)
        return 2
    try:
        import dkim
        import nacl.signing  # noqa: F401  (dkimpy needs it for ed25519-sha256)
    except ImportError as e:
        print(json.dumps({"skip": "dkimpy or PyNaCl is not installed (%s): run scripts/setup-python-env" % e}))
        return 3
    with open(argv[1]) as f:
        keys = {k.lower().rstrip("."): v for k, v in json.load(f).items()}

    def dnsfunc(name, timeout=5):
        if isinstance(name, bytes):
            name = name.decode()
        v = keys.get(name.lower().rstrip("."))
        return v.encode() if v is not None else None

    quiet = logging.getLogger("dkim-verify")
    quiet.addHandler(logging.NullHandler())
    quiet.propagate = False
    for path in argv[2:]:
        with open(path, "rb") as f:
            raw = f.read()
        if path.endswith(".json"):
            msg = base64.b64decode(json.loads(raw)["data_b64"])
        else:
            msg = raw
        del raw
        d = dkim.DKIM(msg, logger=quiet)
        n = sum(1 for name, _ in d.headers if name.lower() == b"dkim-signature")
        sigs = []
        for i in range(n):
            tags = {}
            try:
                tags = dkim.util.parse_tag_value(
                    [v for name, v in d.headers if name.lower() == b"dkim-signature"][i])
            except Exception:
                pass
            entry = {k: re.sub(rb"\s+", b"", tags.get(k.encode(), b"")).decode("ascii", "replace")
                     for k in ("d", "s", "a", "c", "h")}
            try:
                entry["valid"] = bool(d.verify(idx=i, dnsfunc=dnsfunc))
                entry["error"] = None
            except Exception as e:  # a malformed signature is a failed one, said why
                entry["valid"] = False
                entry["error"] = "%s: %s" % (type(e).__name__, e)
            sigs.append(entry)
        print(json.dumps({"file": path, "size": len(msg), "signatures": sigs}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
