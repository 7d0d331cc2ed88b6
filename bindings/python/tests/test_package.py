"""The package surface: names, version, docstrings, typing marker."""

from __future__ import annotations

import inspect
import re
from importlib import resources

import qmail
import qmail._qmail


def test_public_names() -> None:
    assert sorted(qmail.__all__) == sorted(
        [
            "ERROR_CLASSES",
            "AttachmentError",
            "CorruptSpoolFile",
            "InvalidAddress",
            "InvalidArgument",
            "InvalidHeader",
            "InvalidMessage",
            "Message",
            "MessageStatus",
            "NoSpoolConfigured",
            "QmailError",
            "Spool",
            "SpoolError",
            "__version__",
            "parse_mailbox",
            "set_default_spool",
            "submit_message",
        ]
    )
    for name in qmail.__all__:
        assert getattr(qmail, name) is getattr(qmail._qmail, name)


def test_version_is_pep440() -> None:
    assert re.fullmatch(r"\d+\.\d+\.\d+((a|b|rc)\d+)?", qmail.__version__)


def test_docstrings_on_everything_public() -> None:
    import qmail.django

    objects = [qmail, qmail._qmail, qmail.django, qmail.django.EmailBackend, qmail.django.EmailBackend.send_messages]
    for name in qmail.__all__:
        obj = getattr(qmail, name)
        if inspect.isclass(obj) or callable(obj):
            objects.append(obj)
    for cls in (qmail.Message, qmail.Spool):
        for attr, value in vars(cls).items():
            if not attr.startswith("_"):
                objects.append(value)
    objects.append(qmail._qmail._read_spool_file)
    for obj in objects:
        assert (obj.__doc__ or "").strip(), obj


def test_signatures_are_introspectable() -> None:
    assert str(inspect.signature(qmail.submit_message)) == "(message, /, spool=None, envelope_from=None, recipients=None, *, not_before=None, priority=None)"
    assert str(inspect.signature(qmail.Message.submit)) == "(self, /, spool=None)"
    params = inspect.signature(qmail.Message).parameters
    assert list(params)[:3] == ["from_", "to", "cc"]
    assert all(p.kind is inspect.Parameter.KEYWORD_ONLY for p in params.values())


def test_typed_package() -> None:
    files = resources.files("qmail")
    assert files.joinpath("py.typed").is_file()
    assert files.joinpath("_qmail.pyi").is_file()
