"""Every error: its class, its builtin base, .code, .field, and never a crash."""

from __future__ import annotations

import datetime
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import qmail
from qmail import _qmail

CODES = {
    "InvalidArgument": qmail.InvalidArgument,
    "InvalidAddress": qmail.InvalidAddress,
    "InvalidHeader": qmail.InvalidHeader,
    "InvalidMessage": qmail.InvalidMessage,
    "Attachment": qmail.AttachmentError,
    "SpoolUnavailable": qmail.SpoolError,
    "NoSpoolConfigured": qmail.NoSpoolConfigured,
    "Corrupt": qmail.CorruptSpoolFile,
    "Io": qmail.SpoolError,
}


def test_every_core_code_has_a_class() -> None:
    assert qmail.ERROR_CLASSES == CODES
    for cls in CODES.values():
        assert issubclass(cls, qmail.QmailError)
        assert cls.__module__ == "qmail"
        assert cls.__doc__


def test_builtin_bases() -> None:
    for cls in (qmail.InvalidArgument, qmail.InvalidAddress, qmail.InvalidHeader, qmail.InvalidMessage):
        assert issubclass(cls, ValueError) and not issubclass(cls, OSError)
    for cls in (qmail.AttachmentError, qmail.SpoolError, qmail.NoSpoolConfigured, qmail.CorruptSpoolFile):
        assert issubclass(cls, OSError) and not issubclass(cls, ValueError)
    assert issubclass(qmail.NoSpoolConfigured, qmail.SpoolError)
    assert issubclass(qmail.CorruptSpoolFile, qmail.SpoolError)
    assert issubclass(qmail.QmailError, Exception)


def base(**kw):
    args = {"from_": "a@example.com", "to": "b@example.org", "text": "x"}
    args.update(kw)
    return args


def check(exc: pytest.ExceptionInfo, code: str, field: str | None) -> None:
    e = exc.value
    assert type(e) is CODES[code], type(e)
    assert e.code == code
    assert e.field == field
    assert e.message and e.message in str(e)
    if field is not None:
        assert str(e).endswith(f"{field}: {e.message}") or f"{field}: " in str(e)
    assert e.transient is (code in ("SpoolUnavailable", "Io"))


# (constructor arguments, code, field)
CONSTRUCTOR_ERRORS = [
    (dict(from_="not an address"), "InvalidAddress", "from"),
    (dict(from_=("Name\r\nBcc: x@example.org", "a@example.com")), "InvalidHeader", "from"),
    (dict(sender="@example.com"), "InvalidAddress", "sender"),
    (dict(to=["ok@example.org", "bad"]), "InvalidAddress", "to"),
    (dict(to="b@example.org\r\nBcc: leak@example.org"), "InvalidAddress", "to"),
    (dict(cc=("Ç", "no-at-sign")), "InvalidAddress", "cc"),
    (dict(bcc="x@"), "InvalidAddress", "bcc"),
    (dict(reply_to=("Support\r\nBcc: leak@example.org", "help@example.com")), "InvalidHeader", "reply_to"),
    (dict(reply_to=("Support", "help@example.com\r\nBcc: leak@example.org")), "InvalidAddress", "reply_to"),
    (dict(read_receipt_to="nope"), "InvalidAddress", "read_receipt_to"),
    (dict(subject="two\nlines"), "InvalidHeader", "subject"),
    (dict(subject="nul\x00"), "InvalidHeader", "subject"),
    (dict(text="nul\x00"), "InvalidMessage", "text"),
    (dict(html="<p>\x00</p>"), "InvalidMessage", "html"),
    (dict(headers={"X-Bad Name": "v"}), "InvalidHeader", "headers.X-Bad Name"),
    (dict(headers={"X-Ok": "v\r\nBcc: leak@example.org"}), "InvalidHeader", "headers.X-Ok"),
    (dict(headers={"Subject": "via headers"}), "InvalidHeader", "headers.Subject"),
    (dict(headers={"Bcc": "x@example.org"}), "InvalidHeader", "headers.Bcc"),
    (dict(headers={"Message-ID": "no-angle-brackets"}), "InvalidHeader", "headers.Message-ID"),
    (dict(headers={"Date": "yesterday"}), "InvalidHeader", "headers.Date"),
    (dict(priority=0), "InvalidArgument", "priority"),
    (dict(priority=6), "InvalidArgument", "priority"),
    (dict(priority="urgent"), "InvalidArgument", "priority"),
    (dict(envelope_from="bounces"), "InvalidAddress", "envelope_from"),
    (dict(not_before=datetime.datetime(1960, 1, 1, tzinfo=datetime.timezone.utc)), "InvalidArgument", "not_before"),
    (dict(spool=""), "InvalidArgument", "spool"),
]


@pytest.mark.parametrize("kw, code, field", CONSTRUCTOR_ERRORS, ids=[f"{c}-{f}" for _, c, f in CONSTRUCTOR_ERRORS])
def test_constructor_errors(kw, code: str, field: str) -> None:
    with pytest.raises(qmail.QmailError) as exc:
        qmail.Message(**base(**kw))
    check(exc, code, field)


def test_errors_are_catchable_as_builtins() -> None:
    with pytest.raises(ValueError):
        qmail.Message(**base(to="bad"))
    with pytest.raises(OSError):
        qmail.Message(**base()).attach("/nonexistent/file.pdf")


# (constructor arguments, code, field) of errors raised by submit (the whole message)
SUBMIT_ERRORS = [
    (dict(to=None), "InvalidMessage", "to"),
    (dict(to=[]), "InvalidMessage", "to"),
    (dict(html='<img src="cid:missing">'), "InvalidMessage", "html"),
]


@pytest.mark.parametrize("kw, code, field", SUBMIT_ERRORS)
def test_submit_errors(spool: Path, kw, code: str, field: str) -> None:
    msg = qmail.Message(**base(**kw))
    with pytest.raises(qmail.QmailError) as exc:
        msg.submit(spool=spool)
    check(exc, code, field)
    assert not (spool / "ready").exists() or not list((spool / "ready").iterdir())


def test_attachment_errors(tmp_path: Path, spool: Path) -> None:
    msg = qmail.Message(**base())
    with pytest.raises(qmail.QmailError) as exc:
        msg.attach(tmp_path / "missing.pdf")
    check(exc, "Attachment", "attachments[0]")
    assert exc.value.errno == 2
    with pytest.raises(qmail.QmailError) as exc:
        msg.attach(tmp_path)  # a directory
    check(exc, "Attachment", "attachments[0]")
    with pytest.raises(qmail.QmailError) as exc:
        msg.attach(b"x", filename="a.bin", content_type="not a type")
    check(exc, "InvalidArgument", "attachments[0]")
    with pytest.raises(qmail.QmailError) as exc:
        msg.attach(b"x", filename="bad\nname")
    check(exc, "InvalidArgument", "attachments[0]")
    msg.attach(b"fine", filename="ok.txt")
    with pytest.raises(qmail.QmailError) as exc:
        msg.attach(b"x", content_type="text")
    check(exc, "InvalidArgument", "attachments[1]")
    with pytest.raises(qmail.QmailError) as exc:
        msg.attach_inline(tmp_path / "missing.png", "logo")
    check(exc, "Attachment", "inline[0]")
    with pytest.raises(qmail.QmailError) as exc:
        msg.attach_inline(b"x", "bad cid")
    check(exc, "InvalidHeader", "inline[0]")
    with pytest.raises(qmail.QmailError) as exc:
        msg.attach_inline(b"x", "ok", content_type="image")
    check(exc, "InvalidArgument", "inline[0]")


def test_attachment_removed_before_submit(tmp_path: Path, spool: Path) -> None:
    f = tmp_path / "gone.txt"
    f.write_text("x")
    msg = qmail.Message(**base())
    msg.attach(f)
    f.unlink()
    with pytest.raises(qmail.QmailError) as exc:
        msg.submit(spool=spool)
    check(exc, "Attachment", "attachments[0]")
    assert list((spool / "tmp").iterdir()) == []
    assert list((spool / "ready").iterdir()) == []


def test_spool_unavailable(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    msg = qmail.Message(**base())
    with pytest.raises(qmail.QmailError) as exc:
        msg.submit(spool=blocker / "spool")
    check(exc, "SpoolUnavailable", "spool")
    assert exc.value.errno == 20  # ENOTDIR
    with pytest.raises(qmail.QmailError) as exc:
        msg.submit(spool=qmail.Spool([blocker / "a", blocker / "b"]))
    check(exc, "SpoolUnavailable", "spool")
    with pytest.raises(qmail.QmailError) as exc:
        qmail.submit_message(b"From: a@example.com\r\nTo: b@example.org\r\n\r\nx\r\n", spool=blocker)
    check(exc, "SpoolUnavailable", "spool")


def test_no_spool_configured() -> None:
    with pytest.raises(qmail.QmailError) as exc:
        qmail.set_default_spool("")
    check(exc, "NoSpoolConfigured", "spool")
    with pytest.raises(qmail.QmailError) as exc:
        qmail.set_default_spool([])
    check(exc, "NoSpoolConfigured", "spool")
    with pytest.raises(qmail.QmailError) as exc:
        qmail.Spool([])
    check(exc, "NoSpoolConfigured", "spool")
    with pytest.raises(qmail.QmailError) as exc:
        qmail.Message(**base()).submit(spool="")
    check(exc, "NoSpoolConfigured", "spool")


def test_set_default_spool_refuses_unlistable_path(tmp_path: Path) -> None:
    with pytest.raises(qmail.QmailError) as exc:
        qmail.set_default_spool([tmp_path / "a:b"])
    check(exc, "InvalidArgument", "spools")


def run_fresh(code: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """Runs ``code`` in a new interpreter (the process default spool is per process)."""
    clean = {k: v for k, v in os.environ.items() if k != "QMAIL_SPOOL"}
    clean.update(env)
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=clean, capture_output=True, text=True, timeout=60)


def test_nothing_configured_in_a_fresh_process() -> None:
    r = run_fresh(
        """
        import qmail
        for submit in (
            lambda: qmail.Message(from_="a@example.com", to="b@example.org", text="x").submit(),
            lambda: qmail.submit_message(b"From: a@example.com\\r\\nTo: b@example.org\\r\\n\\r\\nx\\r\\n"),
        ):
            try:
                submit()
            except qmail.NoSpoolConfigured as e:
                print(e.code, e.field, isinstance(e, qmail.SpoolError), isinstance(e, OSError))
        """,
        {},
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.split("\n")[:2] == ["NoSpoolConfigured spool True True"] * 2


def test_qmail_spool_environment_variable(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    r = run_fresh(
        """
        import qmail
        for _ in range(2):
            print(qmail.Message(from_="a@example.com", to="b@example.org", text="x").submit())
        """,
        {"QMAIL_SPOOL": f"{a}:{b}"},
    )
    assert r.returncode == 0, r.stderr
    first, second = r.stdout.split()
    assert (a / "ready" / first).exists()
    assert (b / "ready" / second).exists()


def test_spool_file_reader_errors(tmp_path: Path) -> None:
    with pytest.raises(qmail.QmailError) as exc:
        _qmail._read_spool_file(tmp_path / "missing")
    check(exc, "Io", None)
    assert exc.value.errno == 2
    bad = tmp_path / "bad"
    bad.write_bytes(b"NOTQMAIL" + b"\0" * 64)
    with pytest.raises(qmail.QmailError) as exc:
        _qmail._read_spool_file(bad)
    check(exc, "Corrupt", None)
    # a committed file cut short: the trailer is missing
    good_spool = tmp_path / "spool"
    queue_id = qmail.Message(**base()).submit(spool=good_spool)
    data = (good_spool / "ready" / queue_id).read_bytes()
    truncated = tmp_path / "truncated"
    truncated.write_bytes(data[:-5])
    with pytest.raises(qmail.CorruptSpoolFile) as exc:
        _qmail._read_spool_file(truncated)
    check(exc, "Corrupt", None)


@pytest.mark.parametrize(
    "call",
    [
        lambda: qmail.Message(from_=42, to="b@example.org"),
        lambda: qmail.Message(from_="a@example.com", to=[42]),
        lambda: qmail.Message(from_="a@example.com", to=("a", "b", "c")),
        lambda: qmail.Message(from_="a@example.com", to=42),
        lambda: qmail.Message(from_="a@example.com", to="b@example.org", subject=1),
        lambda: qmail.Message(from_="a@example.com", to="b@example.org", headers={"X": 1}),
        lambda: qmail.Message(from_="a@example.com", to="b@example.org", priority=1.5),
        lambda: qmail.Message(from_="a@example.com", to="b@example.org", not_before=1700000000),
        lambda: qmail.Message(from_="a@example.com", to="b@example.org", spool=42),
        lambda: qmail.Message(to="b@example.org"),
        lambda: qmail.Message(from_="a@example.com").attach(42),
        lambda: qmail.Message(from_="a@example.com").submit(spool=3.5),
        lambda: qmail.submit_message("From: a@example.com\r\n\r\nx"),
        lambda: qmail.submit_message(42),
        lambda: qmail.submit_message(b"From: a@example.com\r\n\r\n", recipients="b@example.org"),
        lambda: qmail.Spool(42),
    ],
)
def test_wrong_types_raise_type_error(call) -> None:
    with pytest.raises(TypeError):
        call()


def test_header_pairs_of_the_wrong_length() -> None:
    with pytest.raises(ValueError):
        qmail.Message(from_="a@example.com", to="b@example.org", headers=[("X",)])


def test_str_shows_field_and_message() -> None:
    with pytest.raises(qmail.InvalidAddress) as exc:
        qmail.Message(**base(to="nope"))
    assert str(exc.value).startswith("to: ")
    assert repr(exc.value).startswith("InvalidAddress(")
