"""Shared fixtures: a fresh spool per test, and reading spool files back.

Spool files are read two ways: the native helper ``qmail._qmail._read_spool_file`` (header and
body), and an independent parse of the documented layout (docs/spool-format.md) for the body:

    "QMAILSPL" | u16 LE version | u32 LE header length H | H bytes header | body
    | "QMAILEND" | u64 LE body length
"""

from __future__ import annotations

import email
import email.policy
import struct
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest

from qmail import _qmail


def spool_path(spool: Path, queue_id: str) -> Path:
    """The committed file of ``queue_id``: in ``ready/`` or ``scheduled/``."""
    for state in ("ready", "scheduled"):
        p = spool / state / queue_id
        if p.exists():
            return p
    raise AssertionError(f"{queue_id} is in neither ready/ nor scheduled/ of {spool}")


def parse_layout(data: bytes) -> bytes:
    """The body of a spool file, parsed from the documented layout (independently of qmail)."""
    assert data[:8] == b"QMAILSPL", data[:8]
    (version,) = struct.unpack_from("<H", data, 8)
    assert version == 1
    (hlen,) = struct.unpack_from("<I", data, 10)
    assert data[-16:-8] == b"QMAILEND"
    (blen,) = struct.unpack_from("<Q", data, len(data) - 8)
    body = data[14 + hlen : len(data) - 16]
    assert len(body) == blen
    return body


class Spooled:
    """A message read back from the spool."""

    def __init__(self, spool: Path, queue_id: str) -> None:
        self.path = spool_path(spool, queue_id)
        self.header: dict[str, Any]
        self.header, self.body = _qmail._read_spool_file(self.path)
        assert parse_layout(self.path.read_bytes()) == self.body

    @property
    def envelope_from(self) -> str:
        return self.header["mail_from"]

    @property
    def rcpt_to(self) -> list[str]:
        return self.header["rcpt_to"]

    @property
    def head(self) -> bytes:
        """The header section, with its final CRLF (without the empty line)."""
        return self.body.split(b"\r\n\r\n", 1)[0] + b"\r\n"

    def parsed(self) -> EmailMessage:
        """The message as parsed by Python's email package (policy.default): the independent
        parser."""
        msg = email.message_from_bytes(self.body, policy=email.policy.default)
        assert isinstance(msg, EmailMessage)
        return msg

    def header_names(self) -> list[str]:
        return [line.split(b":", 1)[0].decode() for line in self.head.split(b"\r\n") if line and line[:1] not in b" \t"]


@pytest.fixture
def spool(tmp_path: Path) -> Path:
    return tmp_path / "spool"


@pytest.fixture
def read(spool: Path):
    def read(queue_id: str, where: Path | None = None) -> Spooled:
        return Spooled(where or spool, queue_id)

    return read


def assert_wire_clean(body: bytes) -> None:
    """CRLF only, no bare CR or LF, no line over 998 octets."""
    assert b"\r\n" in body
    assert body.replace(b"\r\n", b"").count(b"\r") == 0
    assert body.replace(b"\r\n", b"").count(b"\n") == 0
    for line in body.split(b"\r\n"):
        assert len(line) <= 998
