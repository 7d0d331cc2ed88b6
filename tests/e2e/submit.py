"""The Python initiator of the end-to-end test (tests/e2e/run.py starts it).

    python submit.py HOST COUNT PHASE1 WORKDIR SPOOL_A SPOOL_B

Submits COUNT messages into the default spools (QMAIL_SPOOL=A:B, spread round-robin by the
core; every 10th message names its spool explicitly), four in five through the qmail API
(``qmail.Message``) and one in five as a standard-library ``EmailMessage`` through
``qmail.submit_message``. Every third message has one or two attachments of random bytes. After
PHASE1 messages it writes WORKDIR/gate/py-HOST.waiting and waits (bounded) for WORKDIR/gate/go.
One JSON line per message (with the SHA-256 of each attachment) goes to
WORKDIR/manifest/py-HOST.jsonl once its submit returned.
"""

import hashlib
import json
import os
import random
import sys
import time
from email.headerregistry import Address
from email.message import EmailMessage

import qmail


def wait_go(workdir: str, host: str) -> None:
    open(os.path.join(workdir, "gate", f"py-{host}.waiting"), "w").close()
    deadline = time.monotonic() + 600
    while not os.path.exists(os.path.join(workdir, "gate", "go")):
        if time.monotonic() > deadline:
            sys.exit(f"submit.py {host}: no go after 10 minutes")
        time.sleep(0.1)


def att_size(rng: random.Random) -> int:
    return 1024 + rng.randrange(200 * 1024 if rng.random() < 0.25 else 24 * 1024)


def main(host: str, count: int, phase1: int, workdir: str, spool_a: str, spool_b: str) -> None:
    rng = random.Random(f"py-{host}")
    out = open(os.path.join(workdir, "manifest", f"py-{host}.jsonl"), "w")
    for i in range(count):
        if i == phase1:
            wait_go(workdir, host)
        eid = f"{host}-py-{i:04d}"
        frm = ("Python Shop", f"shop-py@{host}.example.com")
        to = [("Zoë Ångström", f"py{i}@example.org")]
        if i % 4 == 3:
            to.append(("", f"py{i}.b@example.net"))
        cc = [("Müller, Jürgen", f"cc-py{i}@example.org")] if i % 3 == 1 else []
        bcc = [f"audit-py{i}@example.com"] if i % 5 == 2 else []
        subject = f"Rechnung für März {eid} ✓" if i % 4 == 0 else f"Order {eid} from the Python shop"
        text = f"Hello,\nE2E-MARKER {eid}\n.a line that starts with a dot\n..two dots\n.\nend\n"
        mid = f"<{eid}@e2e.qmail.test>" if i % 2 == 0 else None
        spool = (spool_a, spool_b)[(i // 10) % 2] if i % 10 == 5 else None
        atts = []
        if i % 3 == 0:
            for k in range(2 if i % 2 == 0 else 1):
                data = os.urandom(att_size(rng))
                atts.append((f"py-{eid}-{k}.bin", "application/octet-stream" if k else "image/png", data))

        if i % 5 == 4:
            api = "submit_message"
            em = EmailMessage()
            em["From"] = Address(frm[0], addr_spec=frm[1])
            em["To"] = [Address(n, addr_spec=a) for n, a in to]
            if cc:
                em["Cc"] = [Address(n, addr_spec=a) for n, a in cc]
            if bcc:
                em["Bcc"] = bcc
            em["Subject"] = subject
            em["X-E2E-Id"] = eid
            em["X-E2E-Host"] = host
            if mid:
                em["Message-ID"] = mid
            em.set_content(text)
            for name, ctype, data in atts:
                maintype, subtype = ctype.split("/")
                em.add_attachment(data, maintype=maintype, subtype=subtype, filename=name)
            qid = qmail.submit_message(em, spool=spool)
        else:
            api = "qmail.Message"
            headers = [("X-E2E-Id", eid), ("X-E2E-Host", host)]
            if mid:
                headers.append(("Message-ID", mid))
            msg = qmail.Message(
                from_=frm,
                to=to,
                cc=cc or None,
                bcc=bcc or None,
                subject=subject,
                text=text,
                html="<p>Hello from <b>Python</b></p>" if i % 2 else None,
                headers=headers,
                priority="high" if i % 7 == 0 else None,
            )
            for name, ctype, data in atts:
                msg.attach(data, filename=name, content_type=ctype)
            qid = msg.submit(spool) if spool else msg.submit()
        out.write(json.dumps({
            "id": eid, "qid": qid, "host": host, "lang": "py", "api": api,
            "from": list(frm), "to": [list(t) for t in to], "cc": [list(c) for c in cc], "bcc": bcc,
            "subject": subject, "message_id": mid, "spool": spool,
            "attachments": [{"filename": n, "content_type": c, "size": len(d),
                             "sha256": hashlib.sha256(d).hexdigest()} for n, c, d in atts],
        }, ensure_ascii=False) + "\n")
        out.flush()
    if phase1 >= count:
        wait_go(workdir, host)
    out.close()


if __name__ == "__main__":
    a = sys.argv[1:]
    if len(a) != 6:
        sys.exit("usage: submit.py HOST COUNT PHASE1 WORKDIR SPOOL_A SPOOL_B")
    main(a[0], int(a[1]), int(a[2]), a[3], a[4], a[5])
