"""qmail.Message: every argument, attach / attach_inline, submit and spools."""

from __future__ import annotations

import datetime
import os
import time
from pathlib import Path

import pytest

import qmail
from conftest import assert_wire_clean


def test_minimal_message(spool: Path, read) -> None:
    queue_id = qmail.Message(from_="a@example.com", to="b@example.org", text="hello").submit(spool=spool)
    assert isinstance(queue_id, str) and queue_id
    m = read(queue_id)
    assert m.envelope_from == "a@example.com"
    assert m.rcpt_to == ["b@example.org"]
    assert m.header["version"] == 1
    assert m.header["priority"] == 3
    assert m.header["not_before"] is None
    assert abs(m.header["created"] - time.time()) < 60
    msg = m.parsed()
    assert msg["From"] == "a@example.com"
    assert msg["To"] == "b@example.org"
    assert msg["Message-ID"] == m.header["message_id"]
    assert msg.get_content().rstrip("\r\n") == "hello"
    assert_wire_clean(m.body)


@pytest.mark.parametrize(
    "from_, name, addr",
    [
        ("shop@example.com", "", "shop@example.com"),
        ("Shop <shop@example.com>", "Shop", "shop@example.com"),
        ('"Shop, Inc." <shop@example.com>', "Shop, Inc.", "shop@example.com"),
        (("Shop, Inc.", "shop@example.com"), "Shop, Inc.", "shop@example.com"),
        ((None, "shop@example.com"), "", "shop@example.com"),
    ],
)
def test_address_forms(spool: Path, read, from_, name: str, addr: str) -> None:
    queue_id = qmail.Message(from_=from_, to="b@example.org", text="x").submit(spool=spool)
    msg = read(queue_id).parsed()
    (mailbox,) = msg["From"].addresses
    assert (mailbox.display_name, mailbox.addr_spec) == (name, addr)


def test_all_header_arguments(spool: Path, read) -> None:
    msg = qmail.Message(
        from_=("Élodie Dupont", "elodie@example.com"),
        sender="robot@example.com",
        to=["One <one@example.org>", ("Two", "two@example.org")],
        cc=("Three", "three@example.org"),
        bcc=["hidden@example.net", "One <one@example.org>"],
        reply_to=["help@example.com", "Desk <desk@example.com>"],
        subject="Grüße",
        text="plain",
        html="<p>html</p>",
        headers={"X-Campaign": "spring", "Message-ID": "<fixed-1@example.com>"},
        priority="high",
        read_receipt_to="receipts@example.com",
    )
    queue_id = msg.submit(spool=spool)
    m = read(queue_id)
    # Bcc: envelope only, de-duplicated; Sender is the envelope sender
    assert m.rcpt_to == ["one@example.org", "two@example.org", "three@example.org", "hidden@example.net"]
    assert m.envelope_from == "robot@example.com"
    assert b"hidden@example.net" not in m.body
    assert "Bcc" not in m.header_names()
    assert m.header["priority"] == 2
    assert m.header["message_id"] == "<fixed-1@example.com>"
    p = m.parsed()
    assert p["From"].addresses[0].display_name == "Élodie Dupont"
    assert p["Sender"] == "robot@example.com"
    assert [a.addr_spec for a in p["To"].addresses] == ["one@example.org", "two@example.org"]
    assert [a.display_name for a in p["To"].addresses] == ["One", "Two"]
    assert [a.addr_spec for a in p["Cc"].addresses] == ["three@example.org"]
    assert [a.addr_spec for a in p["Reply-To"].addresses] == ["help@example.com", "desk@example.com"]
    assert p["Subject"] == "Grüße"
    assert p["X-Campaign"] == "spring"
    assert p["Message-ID"] == "<fixed-1@example.com>"
    assert p["X-Priority"].startswith("2")
    assert p["Importance"].lower() == "high"
    assert p["Disposition-Notification-To"] == "receipts@example.com"
    assert p.get_content_type() == "multipart/alternative"
    parts = [part.get_content_type() for part in p.iter_parts()]
    assert parts == ["text/plain", "text/html"]
    assert m.head.isascii()


def test_headers_as_pairs_keep_duplicates(spool: Path, read) -> None:
    headers = [("X-Tag", "a"), ("X-Tag", "b")]
    queue_id = qmail.Message(from_="a@example.com", to="b@example.org", headers=headers, text="x").submit(spool=spool)
    assert read(queue_id).parsed().get_all("X-Tag") == ["a", "b"]


@pytest.mark.parametrize("priority, number", [(1, 1), (5, 5), ("lowest", 5), ("normal", 3), ("2", 2), ("HIGH", 2)])
def test_priority_forms(spool: Path, read, priority, number: int) -> None:
    queue_id = qmail.Message(from_="a@example.com", to="b@example.org", priority=priority, text="x").submit(spool=spool)
    assert read(queue_id).header["priority"] == number


@pytest.mark.parametrize("priority", [True, False, 1.5, None.__class__])
def test_priority_rejects_bools_and_other_types(priority) -> None:
    # bool is an int subclass: True must not silently mean "highest"
    with pytest.raises(TypeError):
        qmail.Message(from_="a@example.com", to="b@example.org", priority=priority, text="x")


@pytest.mark.parametrize("envelope_from, stored", [("bounces@example.com", "bounces@example.com"), ("<>", ""), ("<b@example.com>", "b@example.com")])
def test_envelope_from(spool: Path, read, envelope_from: str, stored: str) -> None:
    queue_id = qmail.Message(from_="a@example.com", to="b@example.org", envelope_from=envelope_from, text="x").submit(spool=spool)
    m = read(queue_id)
    assert m.envelope_from == stored
    assert m.parsed()["From"] == "a@example.com"


def test_not_before_future_is_scheduled(spool: Path, read) -> None:
    when = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(hours=2)
    queue_id = qmail.Message(from_="a@example.com", to="b@example.org", not_before=when, text="x").submit(spool=spool)
    m = read(queue_id)
    assert m.path.parent.name == "scheduled"
    assert m.header["not_before"] == int(when.timestamp())


def test_not_before_past_and_naive_datetime(spool: Path, read) -> None:
    when = datetime.datetime(2020, 1, 2, 3, 4, 5)  # naive: local time, as datetime.timestamp()
    queue_id = qmail.Message(from_="a@example.com", to="b@example.org", not_before=when, text="x").submit(spool=spool)
    m = read(queue_id)
    assert m.path.parent.name == "ready"
    assert m.header["not_before"] == int(when.timestamp())


def test_spool_given_at_construction_and_overridden_at_submit(tmp_path: Path, read) -> None:
    first, second = tmp_path / "first", tmp_path / "second"
    msg = qmail.Message(from_="a@example.com", to="b@example.org", text="x", spool=first)
    read(msg.submit(), first)
    read(msg.submit(spool=second), second)
    read(msg.submit(spool=qmail.Spool(second)), second)
    # each submit is a new message: new queue id, new Message-ID
    ids = {read(p.name, first).header["message_id"] for p in (first / "ready").iterdir()}
    ids |= {read(p.name, second).header["message_id"] for p in (second / "ready").iterdir()}
    assert len(ids) == 3


def test_spool_directories_are_created(spool: Path) -> None:
    qmail.Message(from_="a@example.com", to="b@example.org", text="x").submit(spool=str(spool))
    assert {p.name for p in spool.iterdir()} >= {"tmp", "ready", "scheduled", "active", "deferred", "failed", "corrupt"}
    assert list((spool / "tmp").iterdir()) == []
    (f,) = (spool / "ready").iterdir()
    assert f.stat().st_mode & 0o777 == 0o640  # group-readable: the dispatcher reads through the submit group (C2)
    assert qmail.Spool(spool).file_mode == 0o640  # the core's default, reported by qmail.Spool


def test_spool_object(tmp_path: Path, read) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    pool = qmail.Spool([a, str(b)], durable=False, file_mode=0o640)
    assert pool.paths == [a, b]
    assert pool.durable is False
    assert pool.file_mode == 0o640
    assert "durable=False" in repr(pool) and "0o640" in repr(pool)
    msg = qmail.Message(from_="a@example.com", to="b@example.org", text="x")
    ids = [msg.submit(spool=pool) for _ in range(4)]
    # round-robin over both spools
    assert len(list((a / "ready").iterdir())) == 2
    assert len(list((b / "ready").iterdir())) == 2
    for queue_id in ids:
        path = a / "ready" / queue_id if (a / "ready" / queue_id).exists() else b / "ready" / queue_id
        assert path.stat().st_mode & 0o777 == 0o640
    assert qmail.Spool(f"{a}:{b}").paths == [a, b]
    assert qmail.Spool(a).paths == [a]


def test_spool_skips_an_unavailable_directory(tmp_path: Path, read) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    good = tmp_path / "good"
    pool = qmail.Spool([blocker / "spool", good])
    msg = qmail.Message(from_="a@example.com", to="b@example.org", text="x")
    for _ in range(3):
        read(msg.submit(spool=pool), good)


def test_attach_path_pathlike_and_bytes(tmp_path: Path, spool: Path, read) -> None:
    pdf = tmp_path / "report.pdf"
    pdf.write_bytes(b"%PDF-1.4 fake")
    csv = tmp_path / "data.csv"
    csv.write_bytes(b"a,b\n1,2\n")
    msg = qmail.Message(from_="a@example.com", to="b@example.org", text="see attached")
    msg.attach(str(pdf))
    msg.attach(csv, filename="numbers.csv", content_type="text/csv")
    msg.attach(b"\x00\x01\x02", "blob.bin")
    msg.attach(bytearray(b"bytearray"), filename="ba.txt")
    msg.attach(memoryview(b"memoryview"), filename="mv.txt", content_type="text/plain")
    msg.attach(b"no name at all")
    p = read(msg.submit(spool=spool)).parsed()
    atts = list(p.iter_attachments())
    assert [a.get_filename() for a in atts] == ["report.pdf", "numbers.csv", "blob.bin", "ba.txt", "mv.txt", None]
    assert [a.get_content_type() for a in atts] == [
        "application/pdf",
        "text/csv",
        "application/octet-stream",
        "text/plain",
        "text/plain",
        "application/octet-stream",
    ]
    payloads = [a.get_payload(decode=True) for a in atts]
    assert payloads == [b"%PDF-1.4 fake", b"a,b\r\n1,2\r\n" if payloads[1].endswith(b"\r\n") else b"a,b\n1,2\n", b"\x00\x01\x02", b"bytearray", b"memoryview", b"no name at all"]


def test_attach_file_is_read_at_submit(tmp_path: Path, spool: Path, read) -> None:
    f = tmp_path / "late.txt"
    f.write_bytes(b"first")
    msg = qmail.Message(from_="a@example.com", to="b@example.org", text="x")
    msg.attach(f)
    f.write_bytes(b"second")
    (att,) = read(msg.submit(spool=spool)).parsed().iter_attachments()
    assert att.get_payload(decode=True) == b"second"


def test_attach_inline(tmp_path: Path, spool: Path, read) -> None:
    png = tmp_path / "logo.png"
    png.write_bytes(b"\x89PNG\r\n\x1a\nfake")
    msg = qmail.Message(
        from_="a@example.com",
        to="b@example.org",
        text="logo",
        html='<p><img src="cid:logo"><img src="cid:dot@x"></p>',
    )
    msg.attach_inline(png, "logo")
    msg.attach_inline(b"GIF89a", cid="dot@x", content_type="image/gif")
    p = read(msg.submit(spool=spool)).parsed()
    parts = {part["Content-ID"]: part for part in p.walk() if part["Content-ID"]}
    assert set(parts) == {"<logo>", "<dot@x>"}
    assert parts["<logo>"].get_content_type() == "image/png"
    assert parts["<logo>"].get_payload(decode=True) == b"\x89PNG\r\n\x1a\nfake"
    assert parts["<dot@x>"].get_content_type() == "image/gif"
    assert any(part.get_content_type() == "multipart/related" for part in p.walk())


def test_default_spool_set_in_process(tmp_path: Path, read) -> None:
    default = tmp_path / "default"
    qmail.set_default_spool(str(default))
    read(qmail.Message(from_="a@example.com", to="b@example.org", text="x").submit(), default)
    other = tmp_path / "other"
    qmail.set_default_spool(other, durable=False)
    read(qmail.Message(from_="a@example.com", to="b@example.org", text="x").submit(), other)
    lst = [tmp_path / "l1", tmp_path / "l2"]
    qmail.set_default_spool(lst)
    for _ in range(2):
        qmail.Message(from_="a@example.com", to="b@example.org", text="x").submit()
    assert [len(os.listdir(p / "ready")) for p in lst] == [1, 1]
    qmail.set_default_spool(f"{tmp_path / 's1'}:{tmp_path / 's2'}")
    for _ in range(2):
        qmail.submit_message(b"From: a@example.com\r\nTo: b@example.org\r\n\r\nx\r\n")
    assert [len(os.listdir(tmp_path / s / "ready")) for s in ("s1", "s2")] == [1, 1]
