"""Submitting from many threads at once, and the GIL being released while writing."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import qmail

THREADS = 8
PER_THREAD = 25


def test_eight_threads_submit_at_once(spool: Path, read) -> None:
    shared = qmail.Message(from_="a@example.com", to="shared@example.org", subject="shared", text="x")
    barrier = threading.Barrier(THREADS)
    results: dict[int, list[tuple[str, str]]] = {}
    errors: list[BaseException] = []

    def work(n: int) -> None:
        try:
            own = qmail.Message(from_="a@example.com", to=f"t{n}@example.org", subject=f"thread {n}", text="y")
            raw = f"From: a@example.com\r\nTo: raw{n}@example.org\r\nSubject: raw {n}\r\n\r\nz\r\n".encode()
            barrier.wait()
            out = []
            for i in range(PER_THREAD):
                if i % 3 == 0:
                    out.append((shared.submit(spool=spool), "shared"))
                elif i % 3 == 1:
                    out.append((own.submit(spool=spool), f"thread {n}"))
                else:
                    out.append((qmail.submit_message(raw, spool=spool), f"raw {n}"))
            results[n] = out
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors
    submitted = [pair for n in range(THREADS) for pair in results[n]]
    ids = [queue_id for queue_id, _ in submitted]
    assert len(ids) == THREADS * PER_THREAD
    assert len(set(ids)) == len(ids)
    assert sorted(p.name for p in (spool / "ready").iterdir()) == sorted(ids)
    assert list((spool / "tmp").iterdir()) == []
    message_ids = set()
    for queue_id, subject in submitted:
        s = read(queue_id)
        assert s.parsed()["Subject"] == subject
        message_ids.add(s.header["message_id"])
    assert len(message_ids) == len(ids)


def test_gil_is_released_while_rendering_and_writing(tmp_path: Path) -> None:
    """A submit that takes a while must not stop other Python threads: the longest pause seen by a
    busy Python loop is far shorter than the submit."""
    big = bytes(range(256)) * (24 * 4096)  # 24 MiB to base64-encode
    msg = qmail.Message(from_="a@example.com", to="b@example.org", text="big")
    msg.attach(big, filename="big.bin")
    spool = qmail.Spool(tmp_path / "spool", durable=False)
    msg.submit(spool=spool)  # warm up: directories, page cache
    done = threading.Event()
    span: list[float] = []

    def submit() -> None:
        t0 = time.perf_counter()
        msg.submit(spool=spool)
        span.append(time.perf_counter() - t0)
        done.set()

    t = threading.Thread(target=submit)
    last = time.perf_counter()
    longest = 0.0
    t.start()
    while not done.is_set():
        now = time.perf_counter()
        longest = max(longest, now - last)
        last = now
    t.join()
    (duration,) = span
    assert duration > 0.02, f"submit too fast to judge ({duration:.3f}s)"
    assert longest < duration / 2, f"Python was stopped for {longest:.3f}s of a {duration:.3f}s submit"
