"""One case list, four front ends (see qmail-core/tests/cases_bytes.rs): every input of the
``build`` and ``model`` cases of tests/cases/cases.json, built through the Python API and
spooled, gives exactly the expected file of tests/cases/expected/ (the bytes, boundaries
numbered; or ``Kind field`` for a refusal), the same file the Rust, Node and C runs compare
with."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

import qmail
from conftest import Spooled
from test_cases import address, addresses, expand

ROOT = Path(__file__).resolve().parents[3]
CASES = json.loads((ROOT / "tests" / "cases" / "cases.json").read_text(encoding="utf-8"))
EXPECTED = ROOT / "tests" / "cases" / "expected"
INPUTS = [(c["id"], n + 1, i) for c in CASES if c["layer"] in ("build", "model") for n, i in enumerate(c["inputs"])]
BOUNDARY = re.compile(rb"=_qm_([0-9a-f]{24})")


def normalise(body: bytes) -> bytes:
    seen: list[bytes] = []

    def number(m: re.Match[bytes]) -> bytes:
        if m.group(1) not in seen:
            seen.append(m.group(1))
        return b"=_qm_%d" % (seen.index(m.group(1)) + 1)

    return BOUNDARY.sub(number, body)


def fixed(case_id: str, n: int, case_input: dict[str, Any]) -> dict[str, Any]:
    i = dict(case_input)
    headers = dict(i.get("headers") or {})
    if not any(k.lower() == "date" for k in headers):
        headers["Date"] = "Tue, 01 Dec 2026 10:00:00 +0000"
    if not any(k.lower() == "message-id" for k in headers):
        headers["Message-ID"] = f"<{case_id}-{n}@cases.example>"
    i["headers"] = headers
    return i


def outcome(case_input: dict[str, Any], spool: Path) -> tuple[str, bytes]:
    i = expand(case_input)
    kw: dict[str, Any] = {"from_": address(i["from"])}
    for key in ("reply_to", "to", "cc", "bcc"):
        if key in i:
            kw[key] = addresses(i[key])
    for key in ("subject", "text", "html", "headers", "priority", "envelope_to"):
        if key in i:
            kw[key] = i[key]
    try:
        msg = qmail.Message(**kw)
        for att in i.get("attachments", []):
            data = bytes.fromhex(att["content_hex"]) if "content_hex" in att else att["content"].encode()
            msg.attach(data, filename=att.get("filename"), content_type=att.get("content_type"))
        if "list_unsubscribe" in i:
            lu = i["list_unsubscribe"]
            msg.list_unsubscribe(lu["url"], mailto=lu.get("mailto"), one_click=lu.get("one_click", True))
        queue_id = msg.submit(spool=spool)
    except qmail.QmailError as e:
        return "err", f"{e.code} {e.field or '-'}\n".encode()
    return "eml", normalise(Spooled(spool, queue_id).body)


@pytest.mark.parametrize("case_id, n, case_input", INPUTS, ids=[f"{c}-{n}" for c, n, _ in INPUTS])
def test_case_input_gives_the_expected_file(case_id: str, n: int, case_input: dict[str, Any], tmp_path: Path) -> None:
    kind, got = outcome(fixed(case_id, n, case_input), tmp_path / "spool")
    path = EXPECTED / f"{case_id}-{n}.{kind}"
    assert path.exists(), f"{path.name} missing: the Rust run (QMAIL_BLESS=1) has the other outcome"
    want = path.read_bytes()
    assert got == want
