"""A Django email backend that spools mail for the qmail dispatcher (Django 4.2 to 6.1).

With ``EMAIL_BACKEND`` (every version)::

    EMAIL_BACKEND = "qmail.django.EmailBackend"
    QMAIL_SPOOL = "/var/spool/qmail"   # or "/a:/b", a list of directories, or a qmail.Spool

With Django 6.1's ``MAILERS`` (``send_mail(..., using="bulk")`` picks an alias)::

    MAILERS = {
        "default": {"BACKEND": "qmail.django.EmailBackend", "OPTIONS": {"spool": "/var/spool/qmail"}},
        "bulk": {"BACKEND": "qmail.django.EmailBackend", "OPTIONS": {"spool": "/var/spool/bulk"}},
    }

OPTIONS: ``spool`` (as ``QMAIL_SPOOL``) and ``fail_silently``. Without a spool in either place
the process default is used (:func:`qmail.set_default_spool`, else the ``QMAIL_SPOOL``
environment variable).

Per message (see :mod:`qmail.backend`): addresses are checked as strictly as Django's SMTP
backend checks them; ``msg.qmail_priority = "high"`` (or ``X-Priority`` / ``Importance`` in
``headers``) sets the spool priority; ``msg.send_at = datetime`` holds the message until then;
after sending, ``msg.qmail_queue_id`` is the spool's queue id.

Add ``"qmail.django"`` to ``INSTALLED_APPS`` and ``manage.py check`` reports a spool that is
missing, not a directory, not writable, relative, or not configured at all
(:mod:`qmail.django.checks`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import django.conf
from django.core.mail import EmailMessage
from django.core.mail.backends.base import BaseEmailBackend

from ..backend import SpoolSender, SpoolSetting

__all__ = ["EmailBackend"]


class EmailBackend(BaseEmailBackend):  # type: ignore[misc]  # Django is untyped
    """Spools Django email messages for the qmail dispatcher.

    Args:
        fail_silently: when True, a message the spool cannot take is skipped (and not
            counted) instead of raising :class:`qmail.SpoolError`. Bad addresses raise
            regardless, as with Django's SMTP backend.
        spool: overrides the ``QMAIL_SPOOL`` setting (same forms); the ``MAILERS`` option.
        **kwargs: passed to Django (``alias`` from ``MAILERS``); Django 6.1 refuses unknown
            ``OPTIONS`` naming them.
    """

    def __init__(self, fail_silently: bool = False, spool: SpoolSetting | None = None, **kwargs: Any) -> None:
        # fail_silently is not passed on: Django 6.1's BaseEmailBackend warns about it (it is
        # deprecated there for backends that do not handle it) and this backend handles it
        super().__init__(**kwargs)
        if spool is None:
            spool = getattr(django.conf.settings, "QMAIL_SPOOL", None)
        self.fail_silently = fail_silently
        self._sender = SpoolSender(spool, fail_silently=fail_silently)
        self.spool = self._sender.spool

    def send_messages(self, email_messages: Sequence[EmailMessage]) -> int:
        """Spools each message; returns how many were spooled.

        A message without recipients is skipped, as Django's SMTP backend does. Each spooled
        message gets ``qmail_queue_id``.

        Raises:
            qmail.InvalidAddress: a bad address (whatever ``fail_silently`` says).
            qmail.QmailError: a message cannot be spooled (a spool error only unless
                ``fail_silently``).
        """
        self._sender.fail_silently = self.fail_silently
        return self._sender.send_messages(email_messages)
