"""A Django email backend that spools mail for the qmail dispatcher.

Settings::

    EMAIL_BACKEND = "qmail.django.EmailBackend"
    QMAIL_SPOOL = "/var/spool/qmail"   # or "/a:/b", a list of directories, or a qmail.Spool

Without ``QMAIL_SPOOL`` the process default is used (:func:`qmail.set_default_spool`, else the
``QMAIL_SPOOL`` environment variable). ``send_mail``, ``EmailMessage.send()`` and
``EmailMultiAlternatives`` (with attachments) all go through :meth:`EmailBackend.send_messages`.

Each Django message is serialised by Django itself (``message.message()``) and spooled with
:func:`qmail.submit_message`; the envelope is the one Django's SMTP backend would use:
MAIL FROM ``from_email`` and RCPT TO ``recipients()`` (To, Cc and Bcc), reduced to their
addr-spec as :mod:`smtplib` does. A submit is a local, durable file write: there is no
connection to open or close.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterable, Sequence
from email.utils import parseaddr
from typing import Any, Union

import django.conf
from django.core.mail import EmailMessage
from django.core.mail.backends.base import BaseEmailBackend

from . import QmailError, Spool, submit_message

__all__ = ["EmailBackend"]

_SpoolSetting = Union[str, "os.PathLike[str]", Iterable[Union[str, "os.PathLike[str]"]], Spool]

_spools: dict[Any, Spool] = {}
_spools_lock = threading.Lock()


def _spool(value: _SpoolSetting | None) -> Spool | None:
    """The :class:`qmail.Spool` for a ``QMAIL_SPOOL`` value, made once per distinct value (so
    round-robin over several spools goes on across backend instances)."""
    if value is None or isinstance(value, Spool):
        return value
    if isinstance(value, (str, os.PathLike)):
        key: Any = os.fspath(value)
    else:
        value = [os.fspath(p) for p in value]
        key = tuple(value)
    with _spools_lock:
        spool = _spools.get(key)
        if spool is None:
            spool = _spools[key] = Spool(value)
        return spool


def _addr_spec(address: str) -> str:
    """The addr-spec of ``"Name <a@example.com>"`` as smtplib sends it; the text unchanged
    when it does not parse, so that qmail reports the bad address."""
    return parseaddr(address)[1] or address


class EmailBackend(BaseEmailBackend):  # type: ignore[misc]  # Django is untyped
    """Spools Django email messages for the qmail dispatcher.

    Args:
        fail_silently: when True, a message that cannot be spooled is skipped (and not
            counted) instead of raising :class:`qmail.QmailError`.
        spool: overrides the ``QMAIL_SPOOL`` setting (same forms).
    """

    def __init__(self, fail_silently: bool = False, spool: _SpoolSetting | None = None, **kwargs: Any) -> None:
        super().__init__(fail_silently=fail_silently, **kwargs)
        self.spool = _spool(spool if spool is not None else getattr(django.conf.settings, "QMAIL_SPOOL", None))

    def send_messages(self, email_messages: Sequence[EmailMessage]) -> int:
        """Spools each message; returns how many were spooled.

        A message without recipients is skipped, as Django's SMTP backend does.

        Raises:
            qmail.QmailError: a message cannot be spooled (unless ``fail_silently``).
        """
        sent = 0
        for message in email_messages or ():
            recipients = message.recipients()
            if not recipients:
                continue
            try:
                submit_message(
                    message.message(),
                    spool=self.spool,
                    envelope_from=_addr_spec(message.from_email),
                    recipients=[_addr_spec(r) for r in recipients],
                )
            except QmailError:
                if not self.fail_silently:
                    raise
                continue
            sent += 1
        return sent
