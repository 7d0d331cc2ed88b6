"""qmail.submit_message: messages composed with Python's email package round-trip."""

from __future__ import annotations

import datetime
import email.policy
from email.message import EmailMessage, Message
from email.mime.multipart import MIMEMultipart
from email.mime.text import MIMEText
from pathlib import Path

import pytest

import qmail
from conftest import assert_wire_clean


def crlf(b: bytes) -> bytes:
    return b.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


def without_bcc(b: bytes) -> bytes:
    """The bytes with Bcc fields (and their continuation lines) removed."""
    head, sep, body = b.partition(b"\r\n\r\n")
    out, skipping = [], False
    for line in head.split(b"\r\n"):
        if line[:1] in (b" ", b"\t"):
            if not skipping:
                out.append(line)
            continue
        skipping = line.lower().startswith(b"bcc:")
        if not skipping:
            out.append(line)
    return b"\r\n".join(out) + sep + body


def rich_message() -> EmailMessage:
    m = EmailMessage()
    m["From"] = "Élodie Dupont <elodie@example.com>"
    m["To"] = '"Şmith, John" <smith@example.org>, b@example.org'
    m["Cc"] = "c@example.org"
    m["Bcc"] = "hidden@example.net, other.hidden@example.net"
    m["Subject"] = "Grüße aus Köln — a long subject line that the email package will fold over several lines"
    m["Date"] = "Tue, 01 Jul 2025 10:00:00 +0000"
    m["Message-ID"] = "<round-trip-1@example.com>"
    m.set_content("Hello,\n\nplain text with ünïcödé.\n.\nA line that starts with a dot.\n")
    m.add_alternative("<p>Hello <b>HTML</b></p>\n", subtype="html")
    m.add_attachment(bytes(range(256)) * 40, maintype="application", subtype="octet-stream", filename="blob.bin")
    m.add_attachment("a,b\n1,2\n", subtype="csv", filename="données.csv")
    return m


def test_round_trip_equals_the_standard_library_bytes(spool: Path, read) -> None:
    m = rich_message()
    expected = m.as_bytes(policy=email.policy.SMTP)
    queue_id = qmail.submit_message(m, spool=spool)
    s = read(queue_id)
    assert s.body == without_bcc(crlf(expected))
    assert crlf(s.body) == s.body
    assert_wire_clean(s.body)
    assert s.rcpt_to == ["smith@example.org", "b@example.org", "c@example.org", "hidden@example.net", "other.hidden@example.net"]
    assert s.envelope_from == "elodie@example.com"
    assert s.header["message_id"] == "<round-trip-1@example.com>"
    assert "Bcc" not in s.header_names()
    assert b"hidden@example.net" not in s.body
    parsed = s.parsed()
    assert parsed["Subject"] == m["Subject"]
    atts = list(parsed.iter_attachments())
    assert [a.get_filename() for a in atts] == ["blob.bin", "données.csv"]
    assert atts[0].get_payload(decode=True) == bytes(range(256)) * 40


def test_bytes_forms_and_date_message_id_added(spool: Path, read) -> None:
    raw = b"From: a@example.com\nTo: b@example.org\nBcc: c@example.net\nSubject: raw\n\nline 1\nline 2\n"
    for form in (raw, bytearray(raw), memoryview(raw), raw.replace(b"\n", b"\r\n")):
        s = read(qmail.submit_message(form, spool=spool))
        assert s.rcpt_to == ["b@example.org", "c@example.net"]
        p = s.parsed()
        assert p["Message-ID"] == s.header["message_id"]
        assert p["Date"] is not None and p["Date"].datetime is not None
        assert s.body.split(b"\r\n\r\n", 1)[1] == b"line 1\r\nline 2\r\n"
        assert b"c@example.net" not in s.body
        assert_wire_clean(s.body)


def test_envelope_overrides(spool: Path, read) -> None:
    m = EmailMessage()
    m["From"] = "a@example.com"
    m["Sender"] = "list@example.com"
    m["To"] = "b@example.org"
    m.set_content("x")
    s = read(qmail.submit_message(m, spool=spool))
    assert s.envelope_from == "list@example.com"
    s = read(qmail.submit_message(m, spool, "bounce@example.com", ["x@example.org", "y@example.org"]))
    assert s.envelope_from == "bounce@example.com"
    assert s.rcpt_to == ["x@example.org", "y@example.org"]
    s = read(qmail.submit_message(m, spool=spool, envelope_from="<>", recipients=("z@example.org",)))
    assert s.envelope_from == ""
    assert s.rcpt_to == ["z@example.org"]


def test_not_before_and_spool_object(tmp_path: Path, read) -> None:
    m = EmailMessage()
    m["From"], m["To"] = "a@example.com", "b@example.org"
    m.set_content("x")
    when = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(days=1)
    pool = qmail.Spool(tmp_path / "s", durable=False)
    s = read(qmail.submit_message(m, spool=pool, not_before=when), tmp_path / "s")
    assert s.path.parent.name == "scheduled"
    assert s.header["not_before"] == int(when.timestamp())


def test_compat32_messages(spool: Path, read) -> None:
    legacy = Message()
    legacy["From"] = "a@example.com"
    legacy["To"] = "b@example.org"
    legacy.set_payload("From the start of a line\n")
    s = read(qmail.submit_message(legacy, spool=spool))
    assert s.body.split(b"\r\n\r\n", 1)[1] == b"From the start of a line\r\n"  # not mangled to '>From'
    multi = MIMEMultipart("alternative")
    multi["From"] = "a@example.com"
    multi["To"] = "b@example.org"
    multi.attach(MIMEText("plain", "plain", "utf-8"))
    multi.attach(MIMEText("<p>html</p>", "html", "utf-8"))
    s = read(qmail.submit_message(multi, spool=spool))
    # the message has no Message-ID and no Date: the core adds them in front, the rest is as is
    added, rest = s.body.split(b"\r\n", 2)[:2], s.body.split(b"\r\n", 2)[2]
    assert sorted(line.split(b":")[0] for line in added) == [b"Date", b"Message-ID"]
    assert rest == crlf(multi.as_bytes())
    assert [p.get_content_type() for p in s.parsed().iter_parts()] == ["text/plain", "text/html"]


RAW_ERRORS = [
    (b"no header section at all", "InvalidMessage", "message"),
    (b"From: a@example.com\r\nTo: b@example.org\r\n\r\nnul \x00 byte\r\n", "InvalidMessage", "message"),
    (b"From: a@example.com\r\nTo: b@example.org\r\n\r\n" + b"x" * 1200 + b"\r\n", "InvalidMessage", "message"),
    (b"To: b@example.org\r\n\r\nno from\r\n", "InvalidMessage", "message"),
    (b"From: a@example.com\r\n\r\nno recipient\r\n", "InvalidMessage", "recipients"),
    (b"From: a@example.com\r\nTo: b@example.org\r\nX Bad: v\r\n\r\nx\r\n", "InvalidHeader", "headers.X Bad"),
    (b"From: a@example.com\r\nTo: not-an-address\r\n\r\nx\r\n", "InvalidAddress", "to"),
    (b"From: nobody\r\nTo: b@example.org\r\n\r\nx\r\n", "InvalidAddress", "from"),
]


@pytest.mark.parametrize("raw, code, field", RAW_ERRORS)
def test_raw_errors(spool: Path, raw: bytes, code: str, field: str) -> None:
    with pytest.raises(qmail.QmailError) as exc:
        qmail.submit_message(raw, spool=spool)
    assert type(exc.value) is qmail.ERROR_CLASSES[code]
    assert (exc.value.code, exc.value.field) == (code, field)


def test_argument_errors(spool: Path) -> None:
    raw = b"From: a@example.com\r\nTo: b@example.org\r\n\r\nx\r\n"
    with pytest.raises(qmail.InvalidAddress) as exc:
        qmail.submit_message(raw, spool=spool, envelope_from="bad")
    assert (exc.value.code, exc.value.field) == ("InvalidAddress", "envelope_from")
    with pytest.raises(qmail.InvalidAddress) as exc:
        qmail.submit_message(raw, spool=spool, recipients=["ok@example.org", "bad\r\nRCPT TO:<x@example.org>"])
    assert (exc.value.code, exc.value.field) == ("InvalidAddress", "recipients")
    with pytest.raises(qmail.InvalidMessage) as exc:
        qmail.submit_message(raw, spool=spool, recipients=[])
    assert (exc.value.code, exc.value.field) == ("InvalidMessage", "recipients")
