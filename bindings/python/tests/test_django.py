"""qmail.django.EmailBackend with Django from PyPI: send_mail, EmailMessage.send(),
EmailMultiAlternatives with attachments, fail_silently, and the QMAIL_SPOOL setting.

Runs on Django 4.2, 5.2 and 6.1 (scripts/test.d/45-webstacks.sh makes one venv each and runs this
file with warnings as errors). Django 6.1 is configured the 6.1 way (``MAILERS``), the others with
``EMAIL_BACKEND``; test_web_django.py covers the rest of issue 15's Django items.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

django = pytest.importorskip("django")

from django.conf import settings  # noqa: E402

MAILERS = django.VERSION >= (6, 1)

if not settings.configured:
    if MAILERS:
        settings.configure(
            MAILERS={"default": {"BACKEND": "qmail.django.EmailBackend"}},
            DEFAULT_FROM_EMAIL="Site <webmaster@example.com>",
            DEFAULT_CHARSET="utf-8",
            INSTALLED_APPS=["qmail.django"],
        )
    else:
        settings.configure(
            EMAIL_BACKEND="qmail.django.EmailBackend",
            DEFAULT_FROM_EMAIL="Site <webmaster@example.com>",
            DEFAULT_CHARSET="utf-8",
            INSTALLED_APPS=["qmail.django"],
        )
    django.setup()

from django.core import mail  # noqa: E402
from django.test.utils import override_settings  # noqa: E402

import qmail  # noqa: E402
from qmail.django import EmailBackend  # noqa: E402


def connection() -> Any:
    """The default connection, the way the running Django version wants it asked for."""
    if MAILERS:
        return mail.mailers.default
    return mail.get_connection()


def only_file(spool: Path, read):
    (path,) = (spool / "ready").iterdir()
    return read(path.name, spool)


def test_send_mail(spool: Path, read) -> None:
    with override_settings(QMAIL_SPOOL=str(spool)):
        n = mail.send_mail("Subject é", "Body text\n", "Shop <shop@example.com>", ["Customer <c@example.org>", "d@example.org"])
    assert n == 1
    s = only_file(spool, read)
    assert s.envelope_from == "shop@example.com"
    assert s.rcpt_to == ["c@example.org", "d@example.org"]
    p = s.parsed()
    assert p["Subject"] == "Subject é"
    assert p["From"].addresses[0].addr_spec == "shop@example.com"
    assert p.get_content().replace("\r\n", "\n") == "Body text\n"


def test_email_message_send_with_bcc_and_default_from(spool: Path, read) -> None:
    with override_settings(QMAIL_SPOOL=spool):
        msg = mail.EmailMessage("Hi", "text", to=["a@example.org"], cc=["b@example.org"], bcc=["hidden@example.net"], reply_to=["r@example.com"], headers={"X-Campaign": "spring"})
        assert msg.send() == 1
    s = only_file(spool, read)
    assert s.envelope_from == "webmaster@example.com"
    assert s.rcpt_to == ["a@example.org", "b@example.org", "hidden@example.net"]
    assert b"hidden@example.net" not in s.body
    p = s.parsed()
    assert p["X-Campaign"] == "spring"
    assert p["Reply-To"] == "r@example.com"
    assert p["Cc"] == "b@example.org"
    # the bytes are Django's own, line ends aside
    assert s.body.replace(b"\r\n", b"\n").rstrip(b"\n").endswith(b"\n\ntext")


def test_multi_alternatives_with_attachments(tmp_path: Path, spool: Path, read) -> None:
    f = tmp_path / "report.pdf"
    f.write_bytes(b"%PDF-1.4 fake pdf")
    msg = mail.EmailMultiAlternatives("Report", "plain body", "Reports <r@example.com>", ["boss@example.org"], connection=EmailBackend(spool=spool))
    msg.attach_alternative("<p>html body</p>", "text/html")
    msg.attach("notes.txt", "some notes", "text/plain")
    msg.attach("données.bin", b"\x00\x01\x02", "application/octet-stream")
    msg.attach_file(str(f))
    assert msg.send() == 1
    s = only_file(spool, read)
    assert s.envelope_from == "r@example.com"
    p = s.parsed()
    assert p.get_content_type() == "multipart/mixed"
    assert p.get_body(("html",)).get_content().strip() == "<p>html body</p>"
    assert p.get_body(("plain",)).get_content().strip() == "plain body"
    atts = {a.get_filename(): a for a in p.iter_attachments()}
    assert set(atts) == {"notes.txt", "données.bin", "report.pdf"}
    assert atts["données.bin"].get_payload(decode=True) == b"\x00\x01\x02"
    assert atts["report.pdf"].get_payload(decode=True) == b"%PDF-1.4 fake pdf"
    assert atts["report.pdf"].get_content_type() == "application/pdf"


def test_send_mass_mail_and_connection_reuse(spool: Path, read) -> None:
    with override_settings(QMAIL_SPOOL=[spool]):
        n = mail.send_mass_mail([("S1", "B1", "a@example.com", ["x@example.org"]), ("S2", "B2", "a@example.com", ["y@example.org"])])
        assert n == 2
        with connection() as conn:
            assert conn.send_messages([mail.EmailMessage("S3", "B3", "a@example.com", ["z@example.org"])]) == 1
    assert len(list((spool / "ready").iterdir())) == 3


def test_message_without_recipients_is_skipped(spool: Path) -> None:
    backend = EmailBackend(spool=spool)
    assert backend.send_messages([mail.EmailMessage("S", "B", "a@example.com", [])]) == 0
    assert backend.send_messages([]) == 0


def test_errors_raise_or_fail_silently(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    msg = mail.EmailMessage("S", "B", "a@example.com", ["b@example.org"])
    with pytest.raises(qmail.SpoolError) as exc:
        EmailBackend(spool=blocker).send_messages([msg])
    assert exc.value.code == "SpoolUnavailable"
    assert EmailBackend(spool=blocker, fail_silently=True).send_messages([msg]) == 0
    with override_settings(QMAIL_SPOOL=str(blocker)):
        if not MAILERS:  # send_mail(fail_silently=) is deprecated from 6.1 on
            assert mail.send_mail("S", "B", "a@example.com", ["b@example.org"], fail_silently=True) == 0
        with pytest.raises(qmail.SpoolError):
            mail.send_mail("S", "B", "a@example.com", ["b@example.org"])
    bad = mail.EmailMessage("S", "B", "a@example.com", ["not-an-address"])
    with pytest.raises(qmail.InvalidAddress) as exc:
        EmailBackend(spool=tmp_path / "spool").send_messages([bad])
    assert exc.value.field == "to"
    # as Django's SMTP backend: a bad address raises (ValueError) even with fail_silently
    good = mail.EmailMessage("S", "B", "a@example.com", ["b@example.org"])
    with pytest.raises(ValueError):
        EmailBackend(spool=tmp_path / "spool", fail_silently=True).send_messages([bad, good])
    assert EmailBackend(spool=tmp_path / "spool", fail_silently=True).send_messages([good]) == 1


def test_spool_setting_forms(tmp_path: Path, read) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    msg = mail.EmailMessage("S", "B", "a@example.com", ["b@example.org"])
    with override_settings(QMAIL_SPOOL=f"{a}:{b}"):
        for _ in range(2):
            connection().send_messages([msg])
    # one qmail.Spool per setting value: round-robin goes on across backend instances
    assert [len(list((p / "ready").iterdir())) for p in (a, b)] == [1, 1]
    spool_obj = qmail.Spool(tmp_path / "c", durable=False)
    with override_settings(QMAIL_SPOOL=spool_obj):
        connection().send_messages([msg])
    assert len(list((tmp_path / "c" / "ready").iterdir())) == 1


def test_process_default_without_setting(tmp_path: Path, read) -> None:
    qmail.set_default_spool(tmp_path / "default")
    assert getattr(settings, "QMAIL_SPOOL", None) is None
    assert mail.send_mail("S", "B", "a@example.com", ["b@example.org"]) == 1
    assert len(list((tmp_path / "default" / "ready").iterdir())) == 1
