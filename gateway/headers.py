"""Byte-level checks and edits of raw RFC 5322 messages, without a full MIME parse.

The relay must not re-parse every message (speed) yet must strip its own control headers
and the Bcc fields, and refuse content that could smuggle a second message upstream.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

CONTROL_PREFIX = b"x-postern-"
MAX_LINE = 998  # bytes, without CRLF (RFC 5321 §4.5.3.1.6)


def canonical_problem(data: bytes) -> str | None:
    """Why `data` is not canonical (a bare CR or LF, a NUL), or None. What is signed and
    what is sent must be the same bytes: only canonical content is either."""
    if b"\0" in data:
        return "NUL byte in message"
    crlf = data.count(b"\r\n")
    if data.count(b"\n") != crlf or data.count(b"\r") != crlf:
        return "bare CR or LF in message"
    return None


def content_problem(data: bytes) -> str | None:
    """Why `data` may not be relayed (not canonical, a line over 998 bytes), or None."""
    problem = canonical_problem(data)
    if problem:
        return problem
    # Linear in the size; a regex such as [^\r\n]{999} rescans up to 999 bytes per offset.
    if len(data) > MAX_LINE and max(map(len, data.split(b"\r\n"))) > MAX_LINE:
        return "line longer than 998 bytes"
    return None


MAX_HOPS = 50  # Received fields; past this the message is looping (RFC 5321 §6.3)
_BLIND = (b"bcc", b"resent-bcc")  # the envelope carries these recipients, the header must not
_COLON = re.compile(rb"[ \t]*:")


@dataclass(slots=True)
class Cleaned:
    """A submitted message after one pass over its header (as Postfix's cleanup does)."""

    content: bytes  # without its X-Postern-* and Bcc/Resent-Bcc fields, the rest as sent
    controls: dict[str, str]  # X-Postern-* values by lower-cased name without the prefix
    hops: int  # Received fields: the relays it has crossed
    has_date: bool
    has_message_id: bool


def split_header(data: bytes) -> tuple[bytes, bytes]:
    """(header block including its final CRLF, the rest from the blank line on)."""
    if data.startswith(b"\r\n"):
        return b"", data
    end = data.find(b"\r\n\r\n")
    if end < 0:
        return data, b""
    return data[: end + 2], data[end + 2 :]


def header_fields(block: bytes) -> list[bytes]:
    """The header block split into whole fields (continuation lines kept with their field)."""
    fields: list[bytes] = []
    for line in block.split(b"\r\n")[:-1] if block.endswith(b"\r\n") else block.split(b"\r\n"):
        if line[:1] in (b" ", b"\t") and fields:
            fields[-1] += b"\r\n" + line
        else:
            fields.append(line)
    return fields


def clean_header(data: bytes) -> Cleaned:
    """Take out the `X-Postern-*` fields (returning their values, unfolded and stripped) and
    the Bcc fields; count the Received fields; note whether Date and Message-ID are there.

    `data` is canonical (CRLF line ends only), so a field starts right after a LF and a
    continuation line never does: names are found by substring search over the lower-cased
    header (in C), and the fields are split only when one may have to be taken out. Every
    other field is kept byte for byte, in its place. Values keep bytes that are not
    UTF-8 as surrogates, for the field checks (gateway.fields) to refuse.
    """
    block, rest = split_header(data)
    low = b"\n" + block.lower()
    content, controls = data, dict[str, str]()
    if CONTROL_PREFIX in low or b"bcc" in low:  # perhaps in a value only: _taken decides
        content, controls = _taken(data, block, rest)
    return Cleaned(
        content,
        controls,
        hops=_fields_named(low, b"\nreceived"),
        has_date=_fields_named(low, b"\ndate") > 0,
        has_message_id=_fields_named(low, b"\nmessage-id") > 0,
    )


def _taken(data: bytes, block: bytes, rest: bytes) -> tuple[bytes, dict[str, str]]:
    """`data` without its control and Bcc fields (rebuilt only if it had one); the controls."""
    kept: list[bytes] = []
    controls: dict[str, str] = {}
    taken = False
    for field in header_fields(block):
        colon = field.find(b":")
        name = field[:colon].strip().lower() if colon > 0 else b""
        if name.startswith(CONTROL_PREFIX):
            value = field[colon + 1 :].replace(b"\r\n", b"").strip()
            key = name[len(CONTROL_PREFIX) :].decode("ascii", "replace")
            controls[key] = value.decode("utf-8", "surrogateescape")
            taken = True
        elif name in _BLIND:
            taken = True
        else:
            kept.append(field)
    if not taken:
        return data, controls
    return b"".join(field + b"\r\n" for field in kept) + rest, controls


def _fields_named(low: bytes, needle: bytes) -> int:
    """How many fields of a lower-cased header block (after a LF) are called `needle` (the
    name after a LF)."""
    count, at = 0, low.find(needle)
    while at >= 0:
        end = at + len(needle)
        # Not a longer name (date-x:); the obsolete form with space before the colon counts.
        if low[end : end + 1] == b":" or _COLON.match(low, end):
            count += 1
        at = low.find(needle, end)
    return count
