"""Submit latency of the qmail Python binding beside smtplib sending the same 2 KiB message to a
local Postfix, in the same run.

    python bench/python/submit_latency.py --port PORT [--spool DIR] [--n 2000] [--warmup 200]

Run it through bench/python/run.sh, which installs the release build and starts the Postfix.
Each figure is the time from the call until the message is safe: for qmail, written (and, when
durable, fsynced: file and directory) into the spool; for smtplib, Postfix's 250 reply to the
final dot (Postfix has then fsynced its own queue file). One message at a time.

The paths take turns in rounds (each round runs every path for n/rounds messages, then waits
until Postfix has delivered what it accepted), so that load from elsewhere on the machine falls
on all of them alike. The "floor" paths write the same bytes with plain os calls (create, write,
fsync, rename, fsync the directory): what the disk costs, whoever writes.
"""

from __future__ import annotations

import argparse
import json
import os
import smtplib
import statistics
import tempfile
import time
from collections.abc import Callable
from email.message import EmailMessage
from pathlib import Path

import qmail

LINE = "The quick brown fox jumps over the lazy dog, 0123456789 and back again.\n"  # 73 bytes
TEXT = (LINE * 29)[:2048]
FROM, TO, SUBJECT = "Shop <noreply@example.com>", "Customer <customer@example.org>", "Your order 42 has shipped"


def email_message() -> EmailMessage:
    m = EmailMessage()
    m["From"], m["To"], m["Subject"] = FROM, TO, SUBJECT
    m.set_content(TEXT)
    return m


def stats(samples: list[float]) -> dict[str, float]:
    s = sorted(samples)

    def q(p: float) -> float:
        return s[min(len(s) - 1, int(p * len(s)))]

    return {"n": len(s), "mean": statistics.fmean(s), "p50": q(0.5), "p90": q(0.9), "p99": q(0.99), "max": s[-1]}


def measure(once: Callable[[], object], n: int, samples: list[float]) -> None:
    for _ in range(n):
        t0 = time.perf_counter_ns()
        once()
        samples.append((time.perf_counter_ns() - t0) / 1e6)


def floor_writer(directory: Path, data: bytes, durable: bool) -> Callable[[], None]:
    """Writes `data` as a new file the way a spool commit does, with nothing else around it."""
    (directory / "tmp").mkdir(parents=True, exist_ok=True)
    (directory / "ready").mkdir(exist_ok=True)
    counter = iter(range(1 << 62))

    def write() -> None:
        name = f"{os.getpid()}.{next(counter)}"
        tmp = directory / "tmp" / name
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, data)
            if durable:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(tmp, directory / "ready" / name)
        if durable:
            dfd = os.open(directory / "ready", os.O_RDONLY)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)

    return write


def wait_for_delivery(maildir: Path | None, expected: int) -> None:
    """Waits (at most 60 s) until Postfix has delivered `expected` messages to `maildir`."""
    if maildir is None:
        return
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and len(os.listdir(maildir)) < expected:
        time.sleep(0.05)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--spool", type=Path)
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--warmup", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--maildir", type=Path, help="Postfix's Maildir new/, to wait for its deliveries between rounds")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    root = args.spool or Path(tempfile.mkdtemp(prefix="qmail-bench-python-"))
    durable = qmail.Spool(root / "durable")
    fast = qmail.Spool(root / "fast", durable=False)
    msg = qmail.Message(from_=FROM, to=TO, subject=SUBJECT, text=TEXT)
    stdlib = email_message()
    size = len(stdlib.as_bytes())

    smtp = smtplib.SMTP("127.0.0.1", args.port)
    smtp.ehlo()

    def smtp_new_connection() -> None:
        with smtplib.SMTP("127.0.0.1", args.port) as s:
            s.send_message(stdlib)

    data = stdlib.as_bytes(policy=stdlib.policy.clone(linesep="\r\n"))
    paths: list[tuple[str, Callable[[], object]]] = [
        ("floor: os write + fsync + rename + fsync dir", floor_writer(root / "floor-durable", data, True)),
        ("floor: os write + rename (no fsync)", floor_writer(root / "floor-fast", data, False)),
        ("qmail Message.submit (durable)", lambda: msg.submit(spool=durable)),
        ("qmail Message.submit (non-durable)", lambda: msg.submit(spool=fast)),
        ("qmail submit_message(EmailMessage) (durable)", lambda: qmail.submit_message(stdlib, spool=durable)),
        ("qmail submit_message(EmailMessage) (non-durable)", lambda: qmail.submit_message(stdlib, spool=fast)),
        ("smtplib → Postfix (one connection)", lambda: smtp.send_message(stdlib)),
        ("smtplib → Postfix (connection per message)", smtp_new_connection),
    ]
    results: dict[str, object] = {"n": args.n, "warmup": args.warmup, "rounds": args.rounds, "message_bytes": size}
    samples: dict[str, list[float]] = {name: [] for name, _ in paths}
    for name, once in paths:
        for _ in range(args.warmup):
            once()
    sent = 2 * args.warmup
    per_round = max(1, args.n // args.rounds)
    for _ in range(args.rounds):
        wait_for_delivery(args.maildir, sent)
        for name, once in paths:
            measure(once, per_round, samples[name])
            if name.startswith("smtplib"):
                sent += per_round
    smtp.quit()
    lat = {name: stats(s) for name, s in samples.items()}
    results["latency_ms"] = lat

    n = per_round * args.rounds
    print(f"latency, one at a time ({n} messages of {size} B per path in {args.rounds} rounds, after {args.warmup} warm-up), ms:")
    print(f"{'path':<50} {'mean':>8} {'p50':>8} {'p90':>8} {'p99':>8}")
    for name, r in lat.items():
        print(f"{name:<50} {r['mean']:8.3f} {r['p50']:8.3f} {r['p90']:8.3f} {r['p99']:8.3f}")
    smtp_p50 = lat["smtplib → Postfix (one connection)"]["p50"]
    smtp_mean = lat["smtplib → Postfix (one connection)"]["mean"]
    ratios = {}
    for name in paths[2:6]:
        r = lat[name[0]]
        ratios[name[0]] = {"p50": smtp_p50 / r["p50"], "mean": smtp_mean / r["mean"]}
    results["faster_than_smtplib_one_connection"] = ratios
    print("\nvs smtplib → Postfix (one connection): ×faster at p50 / on the mean (targets: durable ≥ 3×, non-durable ≥ 20×)")
    for name, r in ratios.items():
        print(f"{name:<50} {r['p50']:7.1f}× {r['mean']:7.1f}×")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, ensure_ascii=False))


if __name__ == "__main__":
    main()
