"""qmail: durable, fast email submission.

Build a message and spool it; the qmail dispatcher relays it over SMTP::

    import qmail

    qmail.set_default_spool("/var/spool/qmail")
    msg = qmail.Message(
        from_="Shop <noreply@example.com>",
        to=[("Customer", "customer@example.org")],
        subject="Your order",
        text="Thanks!",
    )
    queue_id = msg.submit()  # durable once this returns

Messages composed with Python's standard library go through :func:`submit_message`; Django
projects set ``EMAIL_BACKEND = "qmail.django.EmailBackend"`` (or use it in Django 6.1's
``MAILERS``), Flask-Mailman projects ``MAIL_BACKEND = "qmail.flask_mailman.EmailBackend"``.

asyncio: a submit is a short, local, durable file write that releases the GIL, so the plain
functions are the API; from a coroutine, run them in a thread::

    queue_id = await asyncio.to_thread(msg.submit)

(async twins would add nothing but a thread hop: there is no network to wait on.)

Every rule (address syntax, header checks, MIME, the spool format) lives in the Rust core,
``qmail-core``; this package is a thin, typed binding to it. Errors are :class:`QmailError`
subclasses carrying ``.code`` (a stable name) and ``.field`` (the field at fault).
"""

from ._qmail import (
    ERROR_CLASSES,
    AttachmentError,
    CorruptSpoolFile,
    InvalidAddress,
    InvalidArgument,
    InvalidHeader,
    InvalidMessage,
    Message,
    MessageStatus,
    NoSpoolConfigured,
    QmailError,
    Spool,
    SpoolError,
    __version__,
    parse_mailbox,
    set_default_spool,
    submit_message,
)

__all__ = [
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
