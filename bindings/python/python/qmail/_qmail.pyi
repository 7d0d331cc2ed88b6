"""The native module of qmail (``qmail._qmail``). Import :mod:`qmail` instead.

Every rule (address syntax, header checks, MIME, the spool format) lives in the Rust core; this
module converts Python values and errors, and releases the GIL while a message is rendered and
written, so submitting from many threads at once is safe and runs in parallel.
"""

import datetime
import os
import pathlib
from collections.abc import Iterable, Mapping
from email.message import Message as _EmailMessage
from typing import Any, Final, Literal, TypeAlias, Union, final


__all__ = [
    "Message",
    "MessageStatus",
    "Spool",
    "_read_spool_file",
    "parse_mailbox",
    "set_default_spool",
    "submit_message",
    "__version__",
    "QmailError",
    "InvalidArgument",
    "InvalidAddress",
    "InvalidHeader",
    "InvalidMessage",
    "AttachmentError",
    "SpoolError",
    "NoSpoolConfigured",
    "CorruptSpoolFile",
    "ERROR_CLASSES",
]

__version__: Final[str]
"""The package version (PEP 440)."""

_Address: TypeAlias = Union[str, tuple[Union[str, None], str]]
"""A mailbox: ``"Name <a@example.com>"``, ``"a@example.com"`` or ``(name, address)``.

A name given in a tuple is raw text (any Unicode; quoting and RFC 2047 encoding are done when
rendering); in a string, a name with ``,`` or other specials must be quoted (RFC 5322 3.2.5).
"""

_Addresses: TypeAlias = Union[_Address, Iterable[_Address]]
"""One :data:`_Address`, or an iterable of them (a tuple is always one ``(name, address)``)."""

_StrPath: TypeAlias = Union[str, "os.PathLike[str]"]
"""A file-system path."""

_SpoolArg: TypeAlias = Union[_StrPath, "Spool"]
"""Where a message goes: one spool directory, or a :class:`Spool`."""

_Priority: TypeAlias = Union[int, Literal["highest", "high", "normal", "low", "lowest"], str]
"""``1`` (highest) .. ``5`` (lowest), or its name; written as X-Priority and Importance."""

@final
class Message:
    """An email to build and submit.

    Every argument is checked when given: the first bad one raises and names its field
    (``exc.field``). The message as a whole (a recipient, ``cid:`` references) is checked by
    :meth:`submit`. Date and Message-ID are generated at submit unless given in ``headers``.

    Args:
        from_: the From mailbox (RFC 5322 3.6.2).
        to: To recipients: a mailbox, a list of them, or one string holding an address list
            (``"a@example.org, B <b@example.org>"``, split by the core's RFC 5322 parser,
            every member strict). The same for cc, bcc and reply_to.
        cc: Cc recipients.
        bcc: Bcc recipients: envelope only, never written into the headers.
        reply_to: Reply-To mailboxes.
        sender: the Sender mailbox (the agent sending on behalf of From).
        subject: the Subject: any Unicode on one line (RFC 2047 encoded when needed).
        text: the text/plain body; line breaks become CRLF.
        html: the text/html body; with ``text`` too, both go in a multipart/alternative.
        headers: custom header fields, a mapping or ``(name, value)`` pairs. ``Message-ID`` and
            ``Date`` replace the generated ones; fields that have their own argument (From, To,
            Subject, Content-Type, ...) are refused.
        priority: X-Priority / Importance.
        envelope_from: MAIL FROM (the return path): an address, or ``"<>"`` for none.
            Default: Sender if given, else From.
        envelope_to: RCPT TO (RFC 5321 2.3.1): bare addresses replacing the recipients taken
            from to, cc and bcc (the headers stay as given).
        date: the Date header (default: the time of :meth:`submit`).
        not_before: hold the message until this time (a naive datetime is local time).
        read_receipt_to: ask for a read receipt (Disposition-Notification-To, RFC 8098).
        spool: where :meth:`submit` writes by default (else the process default).

    Raises:
        InvalidAddress: a malformed address (``field`` = ``"from"``, ``"to"``, ...).
        InvalidHeader: CR, LF or a control character in a header value or a display name, a
            bad header name, or a field with its own argument (``field`` = ``"headers.NAME"``).
        InvalidMessage: a NUL byte in ``text`` or ``html``.
        InvalidArgument: a priority outside 1..5, a negative ``not_before``, an empty spool.
        TypeError: an argument of the wrong type.

    Example:
        >>> msg = Message(from_="Shop <noreply@example.com>", to=["a@example.org"],
        ...               subject="Hi", text="Hello")
        >>> queue_id = msg.submit(spool="/var/spool/qmail")  # doctest: +SKIP
    """

    def __new__(
        cls,
        *,
        from_: _Address,
        to: _Addresses | None = None,
        cc: _Addresses | None = None,
        bcc: _Addresses | None = None,
        reply_to: _Addresses | None = None,
        sender: _Address | None = None,
        subject: str | None = None,
        text: str | None = None,
        html: str | None = None,
        headers: Mapping[str, str] | Iterable[tuple[str, str]] | None = None,
        priority: _Priority | None = None,
        envelope_from: str | None = None,
        envelope_to: str | Iterable[str] | None = None,
        not_before: datetime.datetime | None = None,
        read_receipt_to: _Address | None = None,
        date: datetime.datetime | None = None,
        spool: _SpoolArg | None = None,
    ) -> Message: ...
    def list_unsubscribe(self, url: str, /, mailto: str | None = None, one_click: bool = True) -> None:
        """Offers unsubscribing: ``List-Unsubscribe: <url>[, <mailto:...>]`` (RFC 2369) and,
        with ``one_click`` (the default), ``List-Unsubscribe-Post: List-Unsubscribe=One-Click``
        (RFC 8058), for which ``url`` must be ``https://``.

        Args:
            url: the unsubscribe URI, ``https://`` (``http://`` only with ``one_click=False``).
            mailto: a ``mailto:`` URI or a bare address, written after ``url``.
            one_click: write ``List-Unsubscribe-Post`` (RFC 8058).

        Raises:
            InvalidArgument: a bad URI (``field`` = ``"list_unsubscribe.url"`` or
                ``"list_unsubscribe.mailto"``).
        """
    def attach(
        self,
        path_or_bytes: _StrPath | bytes | bytearray | memoryview,
        /,
        filename: str | None = None,
        content_type: str | None = None,
    ) -> None:
        """Adds an attachment.

        Args:
            path_or_bytes: a file (``str`` or ``os.PathLike``), streamed from disk at submit
                time in bounded chunks; or the content itself (``bytes``-like, copied now).
            filename: the name written in Content-Disposition (RFC 2231 encoded when not
                ASCII), reduced to its final path component (RFC 2183 2.3:
                ``"../../etc/passwd"`` is written ``"passwd"``). Default: the file's name;
                none for bytes.
            content_type: the MIME type, e.g. ``"application/pdf"``. Default: guessed from
                the file name, else ``application/octet-stream``.

        Raises:
            AttachmentError: the file is missing or not a readable regular file
                (``field`` = ``"attachments[N]"``).
            InvalidArgument: a content type that is not ``type/subtype``, or a file name with
                control characters.
        """

    def attach_inline(
        self,
        path_or_bytes: _StrPath | bytes | bytearray | memoryview,
        /,
        cid: str,
        content_type: str | None = None,
        filename: str | None = None,
    ) -> None:
        """Adds an inline part (an image the HTML shows as ``<img src="cid:CID">``, RFC 2392).

        Args:
            path_or_bytes: a file (``str`` or ``os.PathLike``) or the content as bytes.
            cid: the Content-ID, without angle brackets.
            content_type: the MIME type. Default: guessed from the file name.
            filename: the name in the part's Content-Disposition (default: the file's name;
                reduced to its final path component).

        Raises:
            AttachmentError: the file cannot be read (``field`` = ``"inline[N]"``).
            InvalidHeader: a Content-ID that is not printable ASCII without specials.
            InvalidArgument: a bad content type.
        """

    def submit(self, spool: _SpoolArg | None = None) -> str:
        """Builds, renders and spools the message.

        The GIL is released while the message is rendered and written. Durability: with a
        durable spool (the default), once this returns the message survives a crash or power
        loss; the dispatcher never sees a half-written file.

        Args:
            spool: where to write; overrides the message's ``spool``. Default: the message's
                spool, else the process default (:func:`set_default_spool`, else the
                ``QMAIL_SPOOL`` environment variable).

        Returns:
            The queue id: the spool file's name, under which the dispatcher knows the message
            (not the Message-ID header).

        Raises:
            InvalidMessage: no recipient at all (``field`` = ``"to"``), or the HTML references
                ``cid:X`` with no inline part ``X`` (``field`` = ``"html"``).
            AttachmentError: an attached file cannot be read any more, is no longer a regular
                file (a FIFO or device swapped in fails at once), or changed size while it was
                read (``field`` = ``"attachments[N]"``).
            SpoolError: the spool cannot be written (transient: ``exc.transient`` is True).
            NoSpoolConfigured: no spool given and none configured.
        """

@final
class Spool:
    """One or more spool directories, with how to write them.

    Submits are spread round-robin over the directories; one that fails (share unreachable,
    disk full) is skipped and the next tried. Directories are opened (and created) at first
    use. Pass a ``Spool`` as ``spool=`` to :meth:`Message.submit` or :func:`submit_message`.

    Args:
        paths: a directory, a ``str`` list in ``QMAIL_SPOOL`` syntax (``"/a:/b"``), or an
            iterable of directories.
        durable: fsync the file and its directory on submit (default). ``False`` is faster; a
            crash may then lose the last submits, but never exposes a partial one.
        file_mode: the mode of spool files; default (``None``) the core's default (see
            docs/spool-format.md; the two-user layout's ``0o640``).

    Raises:
        NoSpoolConfigured: ``paths`` names no directory.
    """

    def __new__(
        cls,
        paths: _StrPath | Iterable[_StrPath],
        /,
        *,
        durable: bool = True,
        file_mode: int | None = None,
    ) -> Spool: ...
    @property
    def paths(self) -> list[pathlib.Path]:
        """The directories, in order."""

    @property
    def durable(self) -> bool:
        """Whether submits fsync the file and the directory."""

    @property
    def file_mode(self) -> int:
        """The mode of spool files."""

    def status(
        self, queue_id: str, /, *, delivery_log: _StrPath | None = None
    ) -> MessageStatus:
        """Where message ``queue_id`` (the id ``submit`` returned) is: the first directory that
        knows it answers. Read-only; safe beside running dispatchers.

        Args:
            queue_id: the queue id.
            delivery_log: the dispatcher's ``delivery_log`` file, to tell a delivered message
                from an unknown one when ``sent/`` does not keep delivered messages.

        Raises:
            InvalidArgument: ``queue_id`` is not a queue id (field ``queue_id``).
            SpoolError: a directory cannot be read (field ``spool``).
        """

    def list(
        self,
        *,
        state: str | None = None,
        rcpt: str | None = None,
        sender: str | None = None,
        older: int | None = None,
        limit: int | None = None,
    ) -> list[MessageStatus]:
        """The messages in the directories, oldest first, with their envelope (mailq).

        Args:
            state: only these states, comma-separated (``"deferred"``, ``"deferred,held"``).
            rcpt: only messages to this recipient (case-insensitive; ``"@domain"`` for a domain).
            sender: only messages from this envelope sender (same forms).
            older: only messages submitted more than this many seconds ago.
            limit: at most this many.

        Raises:
            InvalidArgument: an unknown state (field ``state``), a negative ``older``.
            SpoolError: a directory cannot be read.
        """

@final
class MessageStatus:
    """Where a message is, from :meth:`Spool.status` or :meth:`Spool.list`. Times are Unix
    seconds."""

    @property
    def id(self) -> str:
        """The queue id."""
    @property
    def state(
        self,
    ) -> Literal["queued", "scheduled", "active", "deferred", "held", "failed", "delivered", "unknown"]:
        """Where it is: waiting (``queued``), held until its not-before time (``scheduled``),
        being delivered (``active``), waiting for a retry (``deferred``), put on hold by an
        operator (``held``), failed for good (``failed``), ``delivered``, or ``unknown``."""
    @property
    def spool(self) -> pathlib.Path | None:
        """The spool directory it was found in."""
    @property
    def attempts(self) -> int:
        """Delivery attempts made so far."""
    @property
    def next_attempt(self) -> int | None:
        """When the next attempt is due (retry time, or not-before time)."""
    @property
    def last_reply(self) -> str | None:
        """The last reply, e.g. ``"451 4.7.1 try later"``."""
    @property
    def reasons(self) -> list[str]:
        """Why it failed: the message-level reason, then ``"<rcpt>: reply"`` per recipient."""
    @property
    def delivered_at(self) -> int | None:
        """When it was delivered."""
    @property
    def sender(self) -> str | None:
        """The envelope sender (``list`` only)."""
    @property
    def recipients(self) -> list[str]:
        """The envelope recipients still to do (``list`` only)."""
    @property
    def message_id(self) -> str | None:
        """The Message-ID header value (``list`` only)."""
    @property
    def created(self) -> int | None:
        """When it was submitted (``list`` only)."""
    @property
    def size(self) -> int | None:
        """The message size in bytes (``list`` only)."""

def set_default_spool(
    spools: _StrPath | Iterable[_StrPath],
    /,
    *,
    durable: bool = True,
    file_mode: int | None = None,
) -> None:
    """Sets the process-wide default spool(s), used when a submit names none.

    Without a call, the ``QMAIL_SPOOL`` environment variable is read (once, at the first submit
    that needs it).

    Args:
        spools: a directory, a ``str`` list in ``QMAIL_SPOOL`` syntax (``"/a:/b"``), or an
            iterable of directories.
        durable: fsync on submit (default); see :class:`Spool`.
        file_mode: the mode of spool files (default: the core's, see :class:`Spool`).

    Raises:
        NoSpoolConfigured: ``spools`` names no directory.
        InvalidArgument: a path that cannot be put in a list (it contains ``:``).
    """

def submit_message(
    message: _EmailMessage | bytes | bytearray | memoryview,
    /,
    spool: _SpoolArg | None = None,
    envelope_from: str | None = None,
    recipients: Iterable[str] | None = None,
    *,
    not_before: datetime.datetime | None = None,
    priority: _Priority | None = None,
) -> str:
    """Spools a message composed with Python's standard library, or any RFC 5322 bytes.

    An ``email.message.Message`` (or ``EmailMessage``) is serialised with its own
    ``as_bytes()``. The core then normalises line ends to CRLF, removes Bcc fields (their
    addresses stay in the envelope) and adds Date and Message-ID when missing; the bytes are
    otherwise spooled as they are. The GIL is released while parsing and writing.

    Args:
        message: the message.
        spool: where to write (see :meth:`Message.submit`).
        envelope_from: MAIL FROM: an address, or ``"<>"``. Default: Sender, else From.
        recipients: RCPT TO addresses (addr-specs). Default: To, Cc and Bcc.
        not_before: hold the message until this time.
        priority: the spool priority (the dispatcher's order). Default: read from the
            message's X-Priority, else Importance, else Priority header; else normal.

    Returns:
        The queue id.

    Raises:
        InvalidMessage: not an RFC 5322 message (no empty line after the header section, a NUL
            byte, a line over 998 octets, no From), or no recipient.
        InvalidHeader: a bad field name.
        InvalidAddress: a bad address in From/To/Cc/Bcc, ``envelope_from`` or ``recipients``.
        SpoolError: the spool cannot be written.
        NoSpoolConfigured: no spool given and none configured.
        TypeError: ``message`` is neither an email message nor bytes.

    Example:
        >>> from email.message import EmailMessage
        >>> m = EmailMessage()
        >>> m["From"], m["To"], m["Subject"] = "a@example.com", "b@example.org", "Hi"
        >>> m.set_content("Hello")
        >>> submit_message(m, spool="/var/spool/qmail")  # doctest: +SKIP
    """

def parse_mailbox(text: str, /, field: str = "address") -> tuple[str | None, str]:
    """Parses text that must hold exactly one mailbox, as strictly as the core does everywhere.

    Web-framework backends use it to check every envelope address before spooling, as Django's
    SMTP backend does.

    Args:
        text: ``"Name <a@example.com>"`` or ``"a@example.com"``.
        field: the name errors give as ``.field``.

    Returns:
        ``(display name or None, addr-spec)``; a non-ASCII domain comes back as IDNA A-labels.

    Raises:
        InvalidAddress: not exactly one valid mailbox (``"a@x, b@y"`` holds two).
        InvalidHeader: a control character in the display name.
        InvalidArgument: a lone surrogate in ``text``.
    """

def _read_spool_file(path: _StrPath) -> tuple[dict[str, Any], bytes]:
    """Reads a committed spool file back (test and operations support; not a stable API).

    Returns:
        ``(header, message)``: the header as a dict with ``version``, ``mail_from`` (``""`` for
        ``<>``), ``rcpt_to``, ``smtputf8``, ``eightbitmime``, ``created`` and ``not_before``
        (Unix seconds), ``priority`` (1..5) and ``message_id``; and the message bytes exactly as
        the dispatcher sends them (CRLF, not dot-stuffed).

    Raises:
        CorruptSpoolFile: not a complete spool file (bad magic, unknown version, truncated).
        SpoolError: the file cannot be read (``code`` ``"Io"``).
    """

class QmailError(Exception):
    """Base class of every qmail error.

    ``str(exc)`` is ``"FIELD: message"`` when a field is at fault.
    """

    code: str
    """The stable error code: qmail-core's ErrorKind name (a key of :data:`ERROR_CLASSES`)."""
    field: str | None
    """The field at fault: ``"to"``, ``"headers.X-Trace"``, ``"attachments[0]"``, or None."""
    message: str
    """The message without the field prefix."""
    transient: bool
    """True when a later try, or another spool, may succeed (spool and I/O failures)."""

class InvalidArgument(QmailError, ValueError):
    """A parameter is out of its domain (priority, content type, file name, file mode).

    Code ``InvalidArgument``."""

class InvalidAddress(QmailError, ValueError):
    """An address is malformed (RFC 5322 3.4, RFC 5321 4.1.2) or too long. Code
    ``InvalidAddress``."""

class InvalidHeader(QmailError, ValueError):
    """A header name or value is unacceptable: CR, LF or NUL in it, a bad field name
    (RFC 5322 2.2), or a field that has its own parameter. Code ``InvalidHeader``."""

class InvalidMessage(QmailError, ValueError):
    """The message as a whole is incomplete or inconsistent: no recipient, a ``cid:``
    reference without an inline part, raw bytes that are not RFC 5322. Code
    ``InvalidMessage``."""

class AttachmentError(QmailError, OSError):
    """An attachment file cannot be read. Code ``Attachment``; ``errno`` is set when the OS
    gave one."""

class SpoolError(QmailError, OSError):
    """A spool cannot be opened, written or read (codes ``SpoolUnavailable`` and ``Io``);
    ``errno`` is set when the OS gave one. Transient: another spool or a later try may work."""

class NoSpoolConfigured(SpoolError):
    """No spool was given, set with :func:`set_default_spool`, or found in ``QMAIL_SPOOL``.
    Code ``NoSpoolConfigured``."""

class CorruptSpoolFile(SpoolError):
    """A spool file cannot be parsed. Code ``Corrupt``."""

ERROR_CLASSES: Final[dict[str, type[QmailError]]]
"""Every error code of the core, mapped to the class raised for it."""
