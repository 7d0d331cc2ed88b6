"""Issue 15's Django items, on whatever Django version is installed (4.2, 5.2 or 6.1: see
scripts/test.d/45-webstacks.sh): MAILERS / OPTIONS / using= (6.1), no warnings, addresses as
strict as Django's SMTP backend, priority and send_at reaching the spool, qmail_queue_id,
List-Unsubscribe through headers=, and ``manage.py check``. Every spooled file is read back with
Python's email package (policy.default)."""

from __future__ import annotations

import datetime
import os
import warnings
from pathlib import Path

import pytest

django = pytest.importorskip("django")

import test_django  # noqa: E402,F401  (configures settings for this Django version)
from django.core import checks, mail  # noqa: E402
from django.test.utils import override_settings  # noqa: E402
from test_django import MAILERS  # noqa: E402

import qmail  # noqa: E402
from qmail.django import EmailBackend  # noqa: E402


def files(spool: Path, state: str = "ready") -> list[Path]:
    d = spool / state
    return sorted(d.iterdir()) if d.exists() else []


def test_no_warnings_on_send(spool: Path, read) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with override_settings(QMAIL_SPOOL=str(spool)):
            assert mail.send_mail("S", "B", "a@example.com", ["b@example.org"]) == 1
            msg = mail.EmailMessage("S", "B", "a@example.com", ["c@example.org"])
            assert msg.send() == 1
        EmailBackend(spool=spool).send_messages([mail.EmailMessage("S", "B", "a@example.com", ["d@example.org"])])
    assert len(files(spool)) == 3


@pytest.mark.skipif(not MAILERS, reason="MAILERS / using= are Django 6.1's")
def test_mailers_options_and_using(tmp_path: Path) -> None:
    bulk = tmp_path / "bulk"
    default = tmp_path / "default"
    config = {
        "default": {"BACKEND": "qmail.django.EmailBackend", "OPTIONS": {"spool": str(default)}},
        "bulk": {"BACKEND": "qmail.django.EmailBackend", "OPTIONS": {"spool": str(bulk), "fail_silently": False}},
    }
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with override_settings(MAILERS=config):
            assert mail.send_mail("S", "B", "a@example.com", ["b@example.org"]) == 1
            assert mail.send_mail("S", "B", "a@example.com", ["b@example.org"], using="bulk") == 1
            m = mail.EmailMessage("S", "B", "a@example.com", ["c@example.org"])
            assert m.send(using="bulk") == 1
            assert isinstance(mail.mailers["bulk"], EmailBackend)
    assert len(files(default)) == 1 and len(files(bulk)) == 2
    # an unknown option is refused by Django, naming it
    with override_settings(MAILERS={"default": {"BACKEND": "qmail.django.EmailBackend", "OPTIONS": {"spoool": "/x"}}}):
        with pytest.raises(mail.InvalidMailer, match="spoool"):
            mail.mailers.default


def test_addresses_as_strict_as_djangos_smtp_backend(spool: Path) -> None:
    backend = EmailBackend(spool=spool)
    # one element holding two addresses: Django's SMTP backend raises; so do we, naming "to"
    for kwargs, field in (
        ({"to": ["a@example.org, d@example.org"]}, "to"),
        ({"to": ["b@example.org"], "cc": ["x@"]}, "cc"),
        ({"to": ["b@example.org"], "bcc": ["Name <b@example.org"]}, "bcc"),
    ):
        msg = mail.EmailMessage("S", "B", "a@example.com", **kwargs)
        with pytest.raises(qmail.InvalidAddress) as exc:
            backend.send_messages([msg])
        assert exc.value.field == field
        assert isinstance(exc.value, ValueError)
    with pytest.raises(qmail.InvalidAddress) as exc:
        backend.send_messages([mail.EmailMessage("S", "B", "not an address", ["b@example.org"])])
    assert exc.value.field == "from_email"
    assert files(spool) == []


def test_priority_send_at_and_queue_id(spool: Path, read) -> None:
    backend = EmailBackend(spool=spool)
    m = mail.EmailMessage("S", "B", "a@example.com", ["b@example.org"], headers={"X-Priority": "1 (Highest)"})
    assert backend.send_messages([m]) == 1
    s = read(m.qmail_queue_id)
    assert s.header["priority"] == 1
    m = mail.EmailMessage("S", "B", "a@example.com", ["b@example.org"], headers={"Importance": "low"})
    backend.send_messages([m])
    assert read(m.qmail_queue_id).header["priority"] == 4
    m = mail.EmailMessage("S", "B", "a@example.com", ["b@example.org"])
    m.qmail_priority = "high"
    backend.send_messages([m])
    assert read(m.qmail_queue_id).header["priority"] == 2
    when = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(hours=2)
    m = mail.EmailMessage("S", "later", "a@example.com", ["b@example.org"])
    m.send_at = when
    backend.send_messages([m])
    s = read(m.qmail_queue_id)
    assert s.path.parent.name == "scheduled"
    assert s.header["not_before"] == int(when.timestamp())
    m = mail.EmailMessage("S", "B", "a@example.com", ["b@example.org"])
    m.send_at = "tomorrow"
    with pytest.raises(TypeError, match="send_at"):
        backend.send_messages([m])


def test_list_unsubscribe_through_headers(spool: Path, read) -> None:
    backend = EmailBackend(spool=spool)
    m = mail.EmailMessage(
        "News",
        "B",
        "news@example.com",
        ["b@example.org"],
        headers={"List-Unsubscribe": "<https://example.com/u/1>, <mailto:u@example.com>", "List-Unsubscribe-Post": "List-Unsubscribe=One-Click"},
    )
    backend.send_messages([m])
    p = read(m.qmail_queue_id).parsed()
    assert p["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert "https://example.com/u/1" in p["List-Unsubscribe"]
    bad = mail.EmailMessage(
        "News", "B", "news@example.com", ["b@example.org"], headers={"List-Unsubscribe": "<http://example.com/u>", "List-Unsubscribe-Post": "List-Unsubscribe=One-Click"}
    )
    with pytest.raises(qmail.InvalidArgument) as exc:
        backend.send_messages([bad])
    assert exc.value.field == "headers.List-Unsubscribe"


def ids(messages: list[checks.CheckMessage]) -> list[str]:
    return [m.id for m in messages]


def run_checks() -> list[checks.CheckMessage]:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return [m for m in checks.run_checks() if m.id and m.id.startswith("qmail.")]


def test_manage_py_check_reports_the_spool(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("QMAIL_SPOOL", raising=False)
    good = tmp_path / "spool"
    qmail.Spool(good)  # a Spool opens lazily: create the directories with one submit
    qmail.submit_message(b"From: a@example.com\r\nTo: b@example.org\r\n\r\nx\r\n", spool=good)
    if MAILERS:
        def configured(value: object) -> override_settings:
            options = {} if value is None else {"spool": value}
            return override_settings(MAILERS={"default": {"BACKEND": "qmail.django.EmailBackend", "OPTIONS": options}})
    else:
        def configured(value: object) -> override_settings:
            return override_settings(QMAIL_SPOOL=value)
    with configured(str(good)):
        assert run_checks() == []
    with configured(str(tmp_path / "missing")):
        assert ids(run_checks()) == ["qmail.E001"]
    with configured("relative/spool"):
        assert ids(run_checks()) == ["qmail.E003"]
    with configured(None):
        assert ids(run_checks()) == ["qmail.W001"]
    if os.geteuid() != 0:  # root writes everywhere
        (good / "tmp").chmod(0o500)
        try:
            with configured(str(good)):
                assert ids(run_checks()) == ["qmail.E002"]
        finally:
            (good / "tmp").chmod(0o700)
    not_dir = tmp_path / "file"
    not_dir.write_text("x")
    with configured(str(not_dir)):
        assert ids(run_checks()) == ["qmail.E002"]
