"""A Flask-Mailman email backend that spools mail for the qmail dispatcher.

Settings (Flask's ``app.config``)::

    MAIL_BACKEND = "qmail.flask_mailman.EmailBackend"
    QMAIL_SPOOL = "/var/spool/qmail"   # or "/a:/b", a list of directories, or a qmail.Spool

Flask-Mailman's ``EmailMessage`` is Django's API, so everything of :mod:`qmail.backend` holds:
strict addresses, Bcc in the envelope only, ``msg.qmail_priority``, ``msg.send_at`` and
``msg.qmail_queue_id``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from flask import current_app
from flask_mailman.backends.base import BaseEmailBackend

from .backend import DjangoStyleMessage, SpoolSender, SpoolSetting

__all__ = ["EmailBackend"]


class EmailBackend(BaseEmailBackend):  # type: ignore[misc]  # Flask-Mailman is untyped
    """Spools Flask-Mailman messages (see :class:`qmail.backend.SpoolSender`).

    Args:
        mailman: the Flask-Mailman extension (default: the current app's).
        fail_silently: skip messages the spool cannot take instead of raising.
        spool: overrides ``app.config["QMAIL_SPOOL"]``.
    """

    def __init__(self, mailman: Any = None, fail_silently: bool = False, spool: SpoolSetting | None = None, **kwargs: Any) -> None:
        super().__init__(mailman=mailman, fail_silently=fail_silently, **kwargs)
        if spool is None:
            spool = current_app.config.get("QMAIL_SPOOL")
        self._sender = SpoolSender(spool, fail_silently=fail_silently)

    def send_messages(self, email_messages: Sequence[DjangoStyleMessage]) -> int:
        """Spools each message; returns how many were spooled."""
        self._sender.fail_silently = self.fail_silently
        return self._sender.send_messages(email_messages)
