"""``Spool.status`` and ``Spool.list``: where a submitted message is, read from real spool
directories (the dispatcher's directories and state files written as it writes them)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

import qmail


def _submit(spool: Path, to: str = "b@example.org") -> str:
    return qmail.Message(from_="a@example.com", to=to, subject="s", text="t").submit(spool=spool)


def test_queued_deferred_held_failed_delivered_unknown(tmp_path: Path) -> None:
    sp = qmail.Spool(tmp_path, durable=False)
    qid = _submit(tmp_path)
    s = sp.status(qid)
    assert (s.id, s.state, s.attempts, s.spool) == (qid, "queued", 0, tmp_path)

    # deferred, with the dispatcher's state file
    (tmp_path / "ready" / qid).rename(tmp_path / "deferred" / qid)
    (tmp_path / "state").mkdir(exist_ok=True)
    due = int(time.time()) + 600
    (tmp_path / "state" / f"{qid}.json").write_text(
        json.dumps(
            {
                "attempts": 1,
                "next_due": due,
                "history": [
                    {
                        "at_ms": 1,
                        "results": [
                            {
                                "rcpt": "b@example.org",
                                "status": "deferred",
                                "reply": {"code": 451, "text": "4.7.1 try later"},
                            }
                        ],
                    }
                ],
            }
        )
    )
    s = sp.status(qid)
    assert (s.state, s.attempts, s.next_attempt) == ("deferred", 1, due)
    assert s.last_reply == "451 4.7.1 try later"

    (tmp_path / "deferred" / qid).rename(tmp_path / "hold" / qid)
    assert sp.status(qid).state == "held"

    (tmp_path / "hold" / qid).rename(tmp_path / "failed" / qid)
    (tmp_path / "state" / f"{qid}.json").write_text(
        json.dumps(
            {
                "attempts": 2,
                "failed": [{"rcpt": "b@example.org", "reply": {"code": 550, "text": "no such user"}, "at": 1}],
            }
        )
    )
    s = sp.status(qid)
    assert s.state == "failed"
    assert s.reasons == ["<b@example.org>: 550 no such user"]

    # gone from the spool: the delivery log tells
    (tmp_path / "failed" / qid).unlink()
    assert sp.status(qid).state == "unknown"
    log = tmp_path / "delivery.log"
    log.write_text(
        json.dumps(
            {
                "ts_ms": 1_700_000_000_000,
                "id": qid,
                "attempt": 3,
                "relay": "mx",
                "recipients": ["b@example.org"],
                "code": 250,
                "reply": "ok",
                "results": [{"rcpt": "b@example.org", "status": "delivered", "reply": {"code": 250, "text": "ok"}}],
            }
        )
        + "\n{truncated\n"
    )
    s = sp.status(qid, delivery_log=log)
    assert (s.state, s.delivered_at, s.attempts) == ("delivered", 1_700_000_000, 3)


def test_list_filters(tmp_path: Path) -> None:
    sp = qmail.Spool(tmp_path, durable=False)
    a = _submit(tmp_path, "x@example.org")
    b = _submit(tmp_path, "y@example.net")
    (tmp_path / "ready" / b).rename(tmp_path / "hold" / b)
    every = sp.list()
    assert [m.id for m in every] == [a, b]
    assert every[0].sender == "a@example.com"
    assert every[0].recipients == ["x@example.org"]
    assert every[0].size and every[0].size > 50
    assert every[0].message_id and every[0].message_id.startswith("<")
    assert [m.id for m in sp.list(state="held")] == [b]
    assert [m.id for m in sp.list(state="queued,held", rcpt="@EXAMPLE.net")] == [b]
    assert sp.list(older=3600) == []
    assert len(sp.list(limit=1)) == 1
    with pytest.raises(qmail.InvalidArgument) as e:
        sp.list(state="lost")
    assert e.value.field == "state"


def test_bad_ids_and_spools(tmp_path: Path) -> None:
    sp = qmail.Spool(tmp_path, durable=False)
    with pytest.raises(qmail.InvalidArgument) as e:
        sp.status("../../etc/passwd")
    assert e.value.field == "queue_id"
    (tmp_path / "gone").mkdir()
    gone = qmail.Spool(tmp_path / "gone")
    (tmp_path / "gone").rmdir()
    with pytest.raises(qmail.SpoolError):
        gone.status("1796161977.025823.27723.0.fb24b8b0a77f2710.vm")
