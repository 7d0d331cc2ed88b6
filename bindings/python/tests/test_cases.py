"""The `layer: build` cases of tests/cases/cases.json through the Python API.

Each case's inputs are built with qmail.Message and submitted; its `expect` lines are asserted on
the spool file with Python's `email` package (policy.default) as the independent parser. The
neighbours of each input (other fields, other positions of the bad byte) are tried as well.
"""

from __future__ import annotations

import email.header
import json
import re
from email.utils import getaddresses, parsedate_to_datetime
from pathlib import Path
from typing import Any

import pytest

import qmail
from conftest import Spooled, assert_wire_clean

CASES_FILE = Path(__file__).resolve().parents[3] / "tests" / "cases" / "cases.json"
CASES = {c["id"]: c for c in json.loads(CASES_FILE.read_text(encoding="utf-8"))}
BUILD_CASES = ["Q-01", "Q-03", "Q-08", "Q-09", "Q-10", "Q-14", "Q-15"]
ENCODED_WORD = re.compile(rb"=\?([^?]+)\?([QqBb])\?([^?]*)\?=")


def test_every_build_case_is_covered() -> None:
    assert sorted(c["id"] for c in CASES.values() if c["layer"] == "build") == BUILD_CASES


def expand(value: Any) -> Any:
    """`"a*1500"` means 1,500 copies of `a` (cases README)."""
    if isinstance(value, str):
        return re.sub(r"([A-Za-z])\*(\d+)", lambda m: m.group(1) * int(m.group(2)), value)
    if isinstance(value, list):
        return [expand(v) for v in value]
    if isinstance(value, dict):
        return {k: expand(v) for k, v in value.items()}
    return value


def address(a: Any) -> Any:
    if isinstance(a, str):
        return a
    return (a.get("name"), a["address"])


def addresses(v: Any) -> Any:
    return [address(a) for a in v] if isinstance(v, list) else address(v)


def build(case_input: dict[str, Any]) -> qmail.Message:
    """A qmail.Message from a case input."""
    i = expand(case_input)
    kw: dict[str, Any] = {"from_": address(i["from"])}
    for key in ("to", "cc", "bcc", "reply_to"):
        if key in i:
            kw[key] = addresses(i[key])
    for key in ("subject", "text", "html", "headers"):
        if key in i:
            kw[key] = i[key]
    msg = qmail.Message(**kw)
    for att in i.get("attachments", []):
        data = bytes.fromhex(att["content_hex"]) if "content_hex" in att else att["content"].encode()
        msg.attach(data, filename=att["filename"], content_type=att["content_type"])
    return msg


def submit(case_input: dict[str, Any], spool: Path) -> Spooled:
    queue_id = build(case_input).submit(spool=spool)
    s = Spooled(spool, queue_id)
    assert_wire_clean(s.body)
    return s


def assert_header_section_safe(s: Spooled) -> None:
    """Every CRLF inside the header section is followed by SP or HTAB except the final empty line,
    and no header line starts with Bcc:."""
    head = s.head
    lines = head[:-2].split(b"\r\n")
    for line in lines[1:]:
        assert line[:1] in (b" ", b"\t") or re.match(rb"^[!-9;-~]+:", line), line
    assert not any(line.lower().startswith(b"bcc:") for line in lines)
    assert b"\r" not in head.replace(b"\r\n", b"") and b"\n" not in head.replace(b"\r\n", b"")


# --- Q-01 -------------------------------------------------------------------------------------


def test_q01_crlf_in_address_is_refused(spool: Path) -> None:
    case = CASES["Q-01"]
    with pytest.raises(qmail.InvalidAddress) as exc:
        build(case["inputs"][1])
    assert (exc.value.code, exc.value.field) == ("InvalidAddress", "reply_to")
    assert not spool.exists()


def test_q01_crlf_in_display_name(spool: Path) -> None:
    case = CASES["Q-01"]
    try:
        s = submit(case["inputs"][0], spool)
    except qmail.InvalidHeader as e:
        assert (e.code, e.field) == ("InvalidHeader", "reply_to")
    else:  # written as encoded-words / a quoted phrase without raw CR or LF
        assert_header_section_safe(s)
        assert s.rcpt_to == ["customer@example.org"]


BAD_BYTES = ["\r\n", "\n", "\r", "\r\nBcc: leak@example.org", "\x00"]


@pytest.mark.parametrize("field", ["from", "to", "cc", "bcc", "reply_to"])
@pytest.mark.parametrize("bad", BAD_BYTES)
@pytest.mark.parametrize("where", ["start", "middle", "end"])
def test_q01_neighbours(spool: Path, field: str, bad: str, where: str) -> None:
    name = {"start": bad + "Support", "middle": "Sup" + bad + "port", "end": "Support" + bad}[where]
    addr = {"start": bad + "help@example.com", "middle": "help" + bad + "@example.com", "end": "help@example.com" + bad}[where]
    base = {"from_": ("Shop", "noreply@example.com"), "to": [("Customer", "customer@example.org")], "subject": "s", "text": "t"}
    key = "from_" if field == "from" else field
    # in the display name: refused (InvalidHeader) or written safely
    try:
        msg = qmail.Message(**dict(base, **{key: (name, "help@example.com")}))
    except qmail.InvalidHeader as e:
        assert e.field == field
    else:
        s = Spooled(spool, msg.submit(spool=spool))
        assert_header_section_safe(s)
    # in the address, as a tuple and inside a string: always refused, naming the field
    for value in ((None, addr), f"Support <{addr}>", addr):
        with pytest.raises((qmail.InvalidAddress, qmail.InvalidHeader)) as exc:
            qmail.Message(**dict(base, **{key: value}))
        assert exc.value.field == field


def test_q01_envelope_of_a_built_neighbour(spool: Path) -> None:
    i = dict(CASES["Q-01"]["inputs"][0])
    i["reply_to"] = {"name": "Support: Bcc leak@example.org", "address": "help@example.com"}
    s = submit(i, spool)
    assert_header_section_safe(s)
    assert s.rcpt_to == ["customer@example.org"]
    assert s.parsed()["Reply-To"].addresses[0].display_name == "Support: Bcc leak@example.org"


# --- Q-03 -------------------------------------------------------------------------------------


def test_q03_trailing_newline(spool: Path) -> None:
    i = CASES["Q-03"]["inputs"][0]
    try:
        s = submit(i, spool)
    except qmail.InvalidHeader as e:
        assert e.field in ("subject", "headers.X-Campaign")
    else:
        head, _, body = s.body.partition(b"\r\n\r\n")
        assert body.startswith(b"Body line 1")
        assert_header_section_safe(s)
    # each field alone as well
    for only in ({"subject": "Invoice 42\n"}, {"headers": {"X-Campaign": "spring\r\n"}}):
        j = {k: v for k, v in i.items() if k not in ("subject", "headers")} | only
        try:
            s = submit(j, spool)
        except qmail.InvalidHeader as e:
            assert e.field == ("subject" if "subject" in only else "headers.X-Campaign")
        else:
            assert s.body.partition(b"\r\n\r\n")[2].startswith(b"Body line 1")


@pytest.mark.parametrize(
    "subject",
    [
        "Invoice =?UTF-8?Q?=0A?=Bcc: leak@example.org",
        "=?UTF-8?B?DQpCY2M6IGxlYWtAZXhhbXBsZS5vcmc=?=",
        "Grüße =?utf-8?q?=0D=0A?= Bcc: x@example.org",
    ],
)
def test_q03_encoded_word_lookalike_in_subject(spool: Path, subject: str) -> None:
    i = dict(CASES["Q-03"]["inputs"][1], subject=subject)
    s = submit(i, spool)
    # the raw Subject field (unfolded)
    m = re.search(rb"\r\nSubject:(.*?)\r\n(?![ \t])", b"\r\n" + s.head, re.S)
    assert m
    raw_value = m.group(1).replace(b"\r\n", b"")
    decoded = str(email.header.make_header(email.header.decode_header(raw_value.decode("ascii").strip())))
    assert decoded == subject
    for charset, enc, text in ENCODED_WORD.findall(raw_value):
        part = email.header.decode_header(f"=?{charset.decode()}?{enc.decode()}?{text.decode()}?=")[0]
        data = part[0] if isinstance(part[0], bytes) else part[0].encode()
        assert b"\r" not in data and b"\n" not in data
    assert s.parsed()["Subject"] == subject
    assert "Bcc" not in s.header_names()
    assert s.rcpt_to == ["customer@example.org"]


@pytest.mark.parametrize("name", ["X-Bad Name", "X-Evil:\r\nBcc", "X-Colon:", "", "X-Ünicode", "X-Tab\t", "X-Del\x7f"])
def test_q03_bad_header_names_refused(spool: Path, name: str) -> None:
    i = dict(CASES["Q-03"]["inputs"][2], headers={name: "v"})
    with pytest.raises(qmail.InvalidHeader) as exc:
        build(i)
    assert exc.value.code == "InvalidHeader"
    assert exc.value.field == f"headers.{name}" or exc.value.field.startswith("headers.")


def test_q03_inputs_3_and_4_refused() -> None:
    for i in CASES["Q-03"]["inputs"][2:]:
        with pytest.raises(qmail.InvalidHeader) as exc:
            build(i)
        assert exc.value.field.startswith("headers.")


# --- Q-08 -------------------------------------------------------------------------------------


def test_q08_long_lines(spool: Path) -> None:
    i = CASES["Q-08"]["inputs"][0]
    want = expand(i)
    try:
        s = submit(i, spool)
    except qmail.QmailError as e:
        # only X-Trace may be refused, with a clear error
        assert isinstance(e, qmail.InvalidHeader) and e.field == "headers.X-Trace"
        i = {k: v for k, v in i.items() if k != "headers"}
        s = submit(i, spool)
    else:
        assert s.parsed()["X-Trace"] == want["headers"]["X-Trace"]
    p = s.parsed()
    for subtype in ("plain", "html"):
        part = p.get_body((subtype,))
        assert part["Content-Transfer-Encoding"].lower() in ("quoted-printable", "base64")
        raw_body = part.get_payload(decode=False)
        assert all(len(line) <= 76 for line in raw_body.splitlines())
    assert p.get_body(("plain",)).get_content().replace("\r\n", "\n").rstrip("\n") == want["text"]
    html = p.get_body(("html",)).get_content().replace("\r\n", "\n").rstrip("\n")
    assert html == want["html"]
    assert "https://example.com/t?u=" + "a" * 1500 in html


@pytest.mark.parametrize("length", [997, 998, 999, 5000])
def test_q08_neighbours(spool: Path, length: int) -> None:
    s = submit(
        {
            "from": {"address": "noreply@example.com"},
            "to": [{"address": "customer@example.org"}],
            "subject": "s" * length,
            "text": "x" * length + "\n" + "y" * 3,
            "html": "<p>" + "z" * length + "</p>",
        },
        spool,
    )
    p = s.parsed()
    assert p["Subject"] == "s" * length
    assert p.get_body(("plain",)).get_content().replace("\r\n", "\n").rstrip("\n") == "x" * length + "\n" + "yyy"


# --- Q-09 -------------------------------------------------------------------------------------


def test_q09_non_ascii_display_names(spool: Path) -> None:
    i = CASES["Q-09"]["inputs"][0]
    s = submit(i, spool)
    assert s.head.isascii()  # no SMTPUTF8 needed here
    assert s.header["smtputf8"] is False
    # never an encoded-word inside double quotes; ',' and '"' never raw inside an encoded-word
    for line in s.head.split(b"\r\n"):
        for quoted in re.findall(rb'"(?:[^"\\]|\\.)*"', line):
            assert b"=?" not in quoted
    for charset, enc, text in ENCODED_WORD.findall(s.head):
        if enc in b"Qq":
            assert b"," not in text and b'"' not in text
    p = s.parsed()
    for field, key in (("From", "from"), ("To", "to"), ("Cc", "cc")):
        want = [(w["name"], w["address"]) for w in (i[key] if isinstance(i[key], list) else [i[key]])]
        # policy.default: exactly one mailbox per input, same address and display name ...
        got = [(a.display_name, a.addr_spec) for a in p[field].addresses]
        assert [a for _, a in got] == [a for _, a in want]
        raw = raw_field(s, field)
        for (got_name, _), (want_name, _), (raw_name, _) in zip(got, want, getaddresses([raw])):
            if len(ENCODED_WORD.findall(raw_name.encode())) == 1:
                assert got_name == want_name
            else:
                # ... except that CPython's phrase parser keeps the folding white space between
                # two adjacent encoded-words, which RFC 2047 6.2 says to drop ('lo ng')
                assert got_name.replace(" ", "") == want_name.replace(" ", "")
            # the email package's RFC 2047 decoder (email.header) gets the name exactly
            assert str(email.header.make_header(email.header.decode_header(raw_name))) == want_name


def raw_field(s: Spooled, name: str) -> str:
    """The unfolded raw value of header field `name`."""
    m = re.search(rb"\r\n" + name.encode() + rb":(.*?)\r\n(?![ \t])", b"\r\n" + s.head, re.S | re.I)
    assert m, name
    return m.group(1).replace(b"\r\n", b"").decode("ascii").strip()


# --- Q-10 -------------------------------------------------------------------------------------


def test_q10_attachment_file_names(spool: Path) -> None:
    i = CASES["Q-10"]["inputs"][0]
    s = submit(i, spool)
    p = s.parsed()
    atts = list(p.iter_attachments())
    assert [a.get_filename() for a in atts] == [a["filename"] for a in i["attachments"]]
    for a, want in zip(atts, i["attachments"]):
        data = bytes.fromhex(want["content_hex"]) if "content_hex" in want else want["content"].encode()
        assert a.get_payload(decode=True) == data
        assert a.get_content_type() == want["content_type"]
    # raw Content-Disposition fields, unfolded
    dispositions = [
        m.group(1).replace(b"\r\n", b"")
        for m in re.finditer(rb"\r\nContent-Disposition:(.*?)\r\n(?![ \t])", s.body, re.S | re.I)
    ]
    assert len(dispositions) == 4
    for d in dispositions:
        d = d.strip()
        assert d.startswith(b"attachment;")
        assert d.isascii()
        # the parameter name itself is never encoded
        for param in d.split(b";")[1:]:
            name = param.strip().split(b"=", 1)[0]
            assert re.fullmatch(rb"filename(\*\d+)?\*?", name), name
    non_ascii = dispositions[:3]
    assert b"filename*=utf-8''T%C3%B6%C3%B6%C3%B6st.pdf" in non_ascii[0].replace(b"UTF-8", b"utf-8") or b"filename*0*=" in non_ascii[0]
    for d in non_ascii[1:]:
        assert b"filename*=utf-8''" in d.replace(b"UTF-8", b"utf-8") or b"filename*0*=utf-8''" in d.replace(b"UTF-8", b"utf-8")
    # the ASCII name: filename="plain-ascii.txt" (a token is the same value, RFC 2045 5.1)
    assert re.search(rb'filename=("plain-ascii\.txt"|plain-ascii\.txt)(;|$)', dispositions[3].strip()), dispositions[3]


# --- Q-14 -------------------------------------------------------------------------------------

DATE_RE = re.compile(r"^(?:(?:Mon|Tue|Wed|Thu|Fri|Sat|Sun), )?\d{1,2} (?:Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec) \d{4} \d{2}:\d{2}(?::\d{2})? [+-]\d{4}$")
MSGID_RE = re.compile(r"^<[^\s<>@]+@[^\s<>@]+>$")


def test_q14_date_and_message_id(spool: Path) -> None:
    first, second = CASES["Q-14"]["inputs"]
    for i in (first, second):
        s = submit(i, spool)
        names = [n.lower() for n in s.header_names()]
        assert names.count("date") == 1 and names.count("from") == 1 and names.count("message-id") == 1
        p = s.parsed()
        assert DATE_RE.match(str(p["Date"])), p["Date"]
        assert parsedate_to_datetime(str(p["Date"])) is not None
        assert MSGID_RE.match(str(p["Message-ID"])), p["Message-ID"]
        assert s.header["message_id"] == p["Message-ID"]  # the same in the spool header and the message
        if i is second:
            assert p["Message-ID"] == "<fixed-1@example.com>"
            assert p["Date"] == "Tue, 01 Jul 2025 10:00:00 +0000"


def test_q14_message_ids_unique_over_10000_builds(tmp_path: Path) -> None:
    pool = qmail.Spool(tmp_path / "spool", durable=False)
    msg = build(CASES["Q-14"]["inputs"][0])
    ids = [msg.submit(spool=pool) for _ in range(10_000)]
    assert len(set(ids)) == 10_000
    message_ids = set()
    for queue_id in ids:
        header, _ = qmail._qmail._read_spool_file(tmp_path / "spool" / "ready" / queue_id)
        message_ids.add(header["message_id"])
    assert len(message_ids) == 10_000
    assert all(MSGID_RE.match(m) for m in message_ids)


# --- Q-15 -------------------------------------------------------------------------------------


def test_q15_html_with_and_without_text(spool: Path) -> None:
    only_html, both = CASES["Q-15"]["inputs"]
    p = submit(both, spool).parsed()
    assert p.get_content_type() == "multipart/alternative"
    parts = list(p.iter_parts())
    assert [x.get_content_type() for x in parts] == ["text/plain", "text/html"]
    assert all(x.get_content_charset() == "utf-8" for x in parts)
    p = submit(only_html, spool).parsed()
    if p.get_content_type() == "multipart/alternative":
        plain, html = list(p.iter_parts())
        assert plain.get_content_type() == "text/plain" and html.get_content_type() == "text/html"
        assert plain.get_content().strip() == "Job 42 finished."
    else:
        assert p.get_content_type() == "text/html"
    for s in (submit(only_html, spool), submit(both, spool)):
        for part in s.parsed().walk():
            if part.is_multipart():
                continue
            assert part.get_payload(decode=True).strip()
            if part.get_content_maintype() == "text":
                assert part.get_content_charset() == "utf-8"
