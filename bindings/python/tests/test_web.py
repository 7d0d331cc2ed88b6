"""Issue 15 (Python side), issue 10 item 9 and issue 16 item 4 through the Python API: strings
with lone surrogates, error strings ``field: message``, raw messages without a separator, spool
paths, envelope_to, address lists in one string, RFC 2183 file names, list_unsubscribe, an
attachment swapped for a FIFO or /dev/zero, Flask-Mailman, the Flask-Mail recipe, asyncio.
Every spooled file is read back with Python's email package (policy.default)."""

from __future__ import annotations

import asyncio
import os
import threading
from pathlib import Path

import pytest

import qmail

SURROGATE = "caf\udce9"


def base(**kw: object) -> qmail.Message:
    args: dict[str, object] = {"from_": "a@example.com", "to": "b@example.org", "subject": "s", "text": "t"}
    args.update(kw)
    return qmail.Message(**args)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"subject": SURROGATE}, "subject"),
        ({"text": SURROGATE}, "text"),
        ({"html": SURROGATE}, "html"),
        ({"to": SURROGATE + "@example.org"}, "to"),
        ({"to": [(SURROGATE, "b@example.org")]}, "to"),
        ({"from_": (SURROGATE, "a@example.com")}, "from"),
        ({"headers": {"X-Tag": SURROGATE}}, "headers.X-Tag"),
        ({"envelope_from": SURROGATE + "@example.com"}, "envelope_from"),
    ],
)
def test_lone_surrogates_are_invalid_arguments(kwargs: dict[str, object], field: str) -> None:
    with pytest.raises(qmail.InvalidArgument) as exc:
        base(**kwargs)
    assert exc.value.field == field
    assert "surrogate" in exc.value.message
    assert not isinstance(exc.value, UnicodeError)


def test_surrogates_in_attach_and_raw(tmp_path: Path) -> None:
    m = base()
    with pytest.raises(qmail.InvalidArgument) as exc:
        m.attach(b"x", filename=SURROGATE)
    assert exc.value.field == "attachments[0]"
    with pytest.raises(qmail.InvalidArgument) as exc:
        m.list_unsubscribe("https://example.com/" + SURROGATE)
    assert exc.value.field == "list_unsubscribe.url"
    with pytest.raises(qmail.InvalidArgument) as exc:
        qmail.submit_message(b"From: a@example.com\r\nTo: b@example.org\r\n\r\nx", spool=tmp_path / "s", recipients=[SURROGATE])
    assert exc.value.field == "recipients"
    with pytest.raises(qmail.InvalidArgument) as exc:
        qmail.parse_mailbox(SURROGATE)
    assert exc.value.field == "address"


def test_error_strings_are_field_colon_message(tmp_path: Path) -> None:
    m = base()
    f = tmp_path / "a.txt"
    f.write_text("x")
    m.attach(f)
    f.unlink()
    with pytest.raises(qmail.AttachmentError) as exc:
        m.submit(spool=tmp_path / "spool")
    e = exc.value
    assert str(e) == f"attachments[0]: {e.message}"
    assert not str(e).startswith("[Errno")
    assert e.errno == 2
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(qmail.SpoolError) as sexc:
        base().submit(spool=blocker)
    assert str(sexc.value).startswith("spool: ")
    assert sexc.value.errno == 20


def test_raw_without_separator_is_refused(tmp_path: Path) -> None:
    with pytest.raises(qmail.InvalidMessage) as exc:
        qmail.submit_message(b"From: a@example.com\r\nTo: b@example.org\r\n", spool=tmp_path / "s")
    assert exc.value.field == "message"
    qid = qmail.submit_message(b"From: a@example.com\r\nTo: b@example.org\r\n\r\n", spool=tmp_path / "s")
    assert qid


@pytest.mark.parametrize("bad", ["relative/spool", " /tmp/spool", "/tmp/spool "])
def test_relative_or_padded_spool_paths_are_refused(bad: str) -> None:
    with pytest.raises(qmail.InvalidArgument) as exc:
        base().submit(spool=bad)
    assert exc.value.field == "spool"
    with pytest.raises(qmail.InvalidArgument) as exc:
        qmail.Spool(bad)
    assert exc.value.field == "spool"
    with pytest.raises(qmail.InvalidArgument) as exc:
        base(spool=bad)
    assert exc.value.field == "spool"


def test_envelope_to_and_address_lists(spool: Path, read) -> None:
    m = base(to="x@example.org, \"Last, First\" <y@example.org>", cc="c@example.org", envelope_to=["<only@example.net>"], priority="high")
    s = read(m.submit(spool=spool))
    assert s.rcpt_to == ["only@example.net"]
    assert s.header["priority"] == 2
    p = s.parsed()
    assert [a.addr_spec for a in p["To"].addresses] == ["x@example.org", "y@example.org"]
    assert p["To"].addresses[1].display_name == "Last, First"
    with pytest.raises(qmail.InvalidAddress) as exc:
        base(to="x@example.org, nope")
    assert exc.value.field == "to" and "nope" in exc.value.message
    with pytest.raises(qmail.InvalidAddress) as exc:
        base(from_="a@example.com, b@example.com")
    assert exc.value.field == "from" and "one mailbox" in exc.value.message
    assert qmail.parse_mailbox("Bob <bob@bücher.example>") == ("Bob", "bob@xn--bcher-kva.example")


def test_attachment_names_keep_only_the_final_component(spool: Path, read) -> None:
    m = base()
    m.attach(b"secret", filename="../../etc/passwd", content_type="text/plain")
    m.attach(b"x", filename="dir/report.pdf")
    m.attach_inline(b"GIF89a", cid="logo", content_type="image/gif", filename="img/logo.gif")
    s = read(m.submit(spool=spool))
    assert b"etc/passwd" not in s.body and b"dir/" not in s.body and b"img/" not in s.body
    names = [part.get_filename() for part in s.parsed().walk() if part.get_filename()]
    assert sorted(names) == ["logo.gif", "passwd", "report.pdf"]


def test_list_unsubscribe(spool: Path, read) -> None:
    m = base()
    m.list_unsubscribe("https://example.com/u?id=1", mailto="u@example.com")
    p = read(m.submit(spool=spool)).parsed()
    assert str(p["List-Unsubscribe"]) == "<https://example.com/u?id=1>, <mailto:u@example.com>"
    assert p["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    m = base()
    m.list_unsubscribe("http://example.com/u", one_click=False)
    p = read(m.submit(spool=spool)).parsed()
    assert p["List-Unsubscribe-Post"] is None
    for url, mailto, field in (
        ("http://example.com/u", None, "list_unsubscribe.url"),
        ("not a uri", None, "list_unsubscribe.url"),
        ("https://example.com/u", "not an address", "list_unsubscribe.mailto"),
    ):
        with pytest.raises(qmail.InvalidArgument) as exc:
            base().list_unsubscribe(url, mailto=mailto)
        assert exc.value.field == field


def submit_with_deadline(m: qmail.Message, spool: Path, seconds: float = 10.0) -> BaseException | str:
    out: list[BaseException | str] = []

    def run() -> None:
        try:
            out.append(m.submit(spool=spool))
        except BaseException as e:  # noqa: BLE001
            out.append(e)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(seconds)
    assert not t.is_alive(), f"submit still running after {seconds} s"
    return out[0]


@pytest.mark.parametrize("swap", ["fifo", "dev-zero"])
def test_attachment_swapped_for_fifo_or_device_fails_at_once(tmp_path: Path, swap: str) -> None:
    f = tmp_path / "report.pdf"
    f.write_bytes(b"%PDF" * 100)
    m = base()
    m.attach(f)
    f.unlink()
    if swap == "fifo":
        os.mkfifo(f)
    else:
        f.symlink_to("/dev/zero")
    r = submit_with_deadline(m, tmp_path / "spool")
    assert isinstance(r, qmail.AttachmentError), r
    assert r.field == "attachments[0]"
    assert "regular file" in r.message
    assert list((tmp_path / "spool" / "ready").iterdir()) == []
    assert list((tmp_path / "spool" / "tmp").iterdir()) == []


def test_asyncio_to_thread(spool: Path, read) -> None:
    async def main() -> list[str]:
        return list(await asyncio.gather(*(asyncio.to_thread(base(subject=f"n{i}").submit, spool) for i in range(8))))

    ids = asyncio.run(main())
    assert len(set(ids)) == 8
    assert {read(i).parsed()["Subject"] for i in ids} == {f"n{i}" for i in range(8)}


flask = pytest.importorskip("flask")


def test_flask_mailman_backend(tmp_path: Path, read) -> None:
    from flask_mailman import EmailMessage, Mail

    spool = tmp_path / "spool"
    app = flask.Flask("t")
    app.config.update(MAIL_BACKEND="qmail.flask_mailman.EmailBackend", QMAIL_SPOOL=str(spool), MAIL_DEFAULT_SENDER="site@example.com")
    Mail(app)
    with app.app_context():
        msg = EmailMessage("Hi", "body", "Shop <shop@example.com>", ["a@example.org"], bcc=["hidden@example.net"], headers={"X-Priority": "5"})
        assert msg.send() == 1
        s = read(msg.qmail_queue_id, spool)
        assert s.rcpt_to == ["a@example.org", "hidden@example.net"]
        assert s.envelope_from == "shop@example.com"
        assert s.header["priority"] == 5
        assert b"hidden@example.net" not in s.body
        assert s.parsed()["Subject"] == "Hi"
        bad = EmailMessage("Hi", "body", "shop@example.com", ["a@example.org, b@example.org"])
        with pytest.raises(qmail.InvalidAddress):
            bad.send()


def test_flask_mail_recipe_keeps_bcc(tmp_path: Path, read) -> None:
    """The README's Flask-Mail recipe: Flask-Mail has no backend hook, so the message is spooled
    with submit_message and its send_to (To + Cc + Bcc) as the envelope."""
    from flask_mail import Mail, Message

    spool = tmp_path / "spool"
    app = flask.Flask("t")
    app.config.update(MAIL_DEFAULT_SENDER="site@example.com")
    Mail(app)
    with app.app_context():
        msg = Message("Hi", recipients=["a@example.org"], cc=["c@example.org"], bcc=["hidden@example.net"], body="body")
        # --- the recipe ---
        queue_id = qmail.submit_message(msg.as_bytes(), spool=str(spool), envelope_from=qmail.parse_mailbox(msg.sender)[1], recipients=sorted(msg.send_to))
        # ---
    s = read(queue_id, spool)
    assert sorted(s.rcpt_to) == ["a@example.org", "c@example.org", "hidden@example.net"]
    assert b"hidden@example.net" not in s.body
    assert s.parsed()["Subject"] == "Hi"
