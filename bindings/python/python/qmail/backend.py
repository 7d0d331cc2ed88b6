"""The framework-neutral part of qmail's web-framework backends.

Django's ``EmailMessage`` API is shared by Django itself and by Flask-Mailman (a port of it), so
one :class:`SpoolSender` serves both: :mod:`qmail.django` and :mod:`qmail.flask_mailman` are thin
adapters to their framework's ``BaseEmailBackend``. Everything about the mail itself is decided
by the Rust core (through :func:`qmail.submit_message` and :func:`qmail.parse_mailbox`).

For each message, :meth:`SpoolSender.send`:

- checks ``from_email`` and every ``to``, ``cc`` and ``bcc`` element as strictly as Django's SMTP
  backend does: each element is exactly one address (``"a@x, d@y"`` in one element raises
  :class:`qmail.InvalidAddress`, a :class:`ValueError`, naming ``to``), whatever
  ``fail_silently`` says, as Django's SMTP backend raises ``ValueError`` there too;
- serialises the message with the framework (``message.message()``) and spools those bytes with
  the envelope MAIL FROM ``from_email``, RCPT TO ``to + cc + bcc`` (Bcc only in the envelope);
- takes the spool priority from ``message.qmail_priority`` (``1``..``5`` or ``"high"`` ...)
  when set, else from the ``X-Priority`` / ``Importance`` headers (the core reads them);
- holds the message until ``message.send_at`` (a :class:`datetime.datetime`) when set;
- records the queue id on the message as ``message.qmail_queue_id``.

A ``List-Unsubscribe`` (and ``List-Unsubscribe-Post``) given in ``headers=`` is checked by the
core's RFC 2369 / RFC 8058 rule, the same as :meth:`qmail.Message.list_unsubscribe`.

Submitting is a local, durable file write that releases the GIL: from asyncio code, call a
backend through ``await asyncio.to_thread(...)``.
"""

from __future__ import annotations

import datetime
import email.policy
import inspect
import os
import threading
from collections.abc import Iterable, Sequence
from typing import Any, Optional, Protocol, Union

from . import InvalidAddress, QmailError, Spool, SpoolError, parse_mailbox, submit_message

__all__ = ["SpoolSender", "SpoolSetting", "DjangoStyleMessage", "spool_for"]

SpoolSetting = Union[str, "os.PathLike[str]", Iterable[Union[str, "os.PathLike[str]"]], Spool]
"""A spool setting: a directory, a ``QMAIL_SPOOL``-style list (``"/a:/b"``), an iterable of
directories, or a :class:`qmail.Spool`."""


class DjangoStyleMessage(Protocol):
    """What :class:`SpoolSender` reads from a message (Django's and Flask-Mailman's
    ``EmailMessage``)."""

    from_email: str
    to: Sequence[str]
    cc: Sequence[str]
    bcc: Sequence[str]

    def recipients(self) -> list[str]: ...

    def message(self, *args: Any, **kwargs: Any) -> Any: ...


_spools: dict[Any, Spool] = {}
_spools_lock = threading.Lock()


def spool_for(value: SpoolSetting | None) -> Spool | None:
    """The :class:`qmail.Spool` for a setting value, made once per distinct value (so that
    round-robin over several spools goes on across backend instances). ``None`` means the
    process default (:func:`qmail.set_default_spool`, else ``QMAIL_SPOOL`` in the environment).

    Raises:
        qmail.InvalidArgument: a relative or space-padded directory (``field`` = ``"spool"``).
        qmail.NoSpoolConfigured: an empty list.
    """
    if value is None or isinstance(value, Spool):
        return value
    if isinstance(value, (str, os.PathLike)):
        key: Any = os.fspath(value)
        arg: Any = value
    else:
        arg = [os.fspath(p) for p in value]
        key = tuple(arg)
    with _spools_lock:
        spool = _spools.get(key)
        if spool is None:
            spool = _spools[key] = Spool(arg)
        return spool


def _takes_policy(message: Any) -> bool:
    try:
        return "policy" in inspect.signature(message.message).parameters
    except (TypeError, ValueError):
        return False


class SpoolSender:
    """Spools Django-API email messages (Django, Flask-Mailman) for the qmail dispatcher.

    Args:
        spool: where messages go (see :data:`SpoolSetting`); ``None`` = the process default.
        fail_silently: when True, a message the spool cannot take (:class:`qmail.SpoolError`,
            including :class:`qmail.NoSpoolConfigured`) is skipped and not counted instead of
            raising. Bad addresses and messages raise whatever this says.
    """

    def __init__(self, spool: SpoolSetting | None = None, fail_silently: bool = False) -> None:
        self.spool = spool_for(spool)
        self.fail_silently = fail_silently

    def send(self, message: DjangoStyleMessage) -> Optional[str]:
        """Spools one message; returns its queue id (also set as
        ``message.qmail_queue_id``), or ``None`` for a message without recipients (skipped,
        as Django does) or one skipped by ``fail_silently``.

        Raises:
            qmail.InvalidAddress: a bad ``from_email`` (``field`` = ``"from_email"``) or a
                ``to`` / ``cc`` / ``bcc`` element that is not exactly one address.
            qmail.InvalidMessage, qmail.InvalidHeader, qmail.InvalidArgument: the serialised
                message breaks a core rule (e.g. a bad ``List-Unsubscribe`` URI).
            TypeError: ``send_at`` is not a datetime.
            qmail.SpoolError: the spool cannot be written (unless ``fail_silently``).
        """
        if not message.recipients():
            return None
        envelope_from = parse_mailbox(message.from_email, "from_email")[1]
        recipients: list[str] = []
        for field in ("to", "cc", "bcc"):
            for address in getattr(message, field, None) or ():
                recipients.append(parse_mailbox(address, field)[1])
        send_at = getattr(message, "send_at", None)
        if send_at is not None and not isinstance(send_at, datetime.datetime):
            raise TypeError(f"send_at: expected a datetime.datetime, not {type(send_at).__name__}")
        priority = getattr(message, "qmail_priority", None)
        composed = message.message(policy=email.policy.SMTP) if _takes_policy(message) else message.message()
        try:
            queue_id = submit_message(
                composed,
                spool=self.spool,
                envelope_from=envelope_from,
                recipients=recipients,
                not_before=send_at,
                priority=priority,
            )
        except SpoolError:
            if self.fail_silently:
                return None
            raise
        try:
            setattr(message, "qmail_queue_id", queue_id)
        except AttributeError:  # a message class with __slots__
            pass
        return queue_id

    def send_messages(self, messages: Sequence[DjangoStyleMessage] | None) -> int:
        """Spools each message; returns how many were spooled (see :meth:`send`)."""
        sent = 0
        for message in messages or ():
            if self.send(message) is not None:
                sent += 1
        return sent


# re-exported for the adapters' docs
_ = (InvalidAddress, QmailError)
