"""Byte-level checks and edits of raw RFC 5322 messages, without a full MIME parse.

The relay must not re-parse every message (speed) yet must strip its own control headers
and the Bcc fields, and refuse content that could smuggle a second message upstream.
"""

from __future__ import annotations

import email.header
import email.utils
import re
from dataclasses import dataclass

CONTROL_PREFIX = b"x-postern-"
MAX_LINE = 998  # bytes, without CRLF (RFC 5321 §4.5.3.1.6)


def canonical_problem(
    data: bytes | bytearray, start: int = 0, end: int | None = None
) -> str | None:
    """Why `data[start:end]` is not canonical (a bare CR or LF, a NUL), or None. What is
    signed and what is sent must be the same bytes: only canonical content is either.

    A megabyte at a time, never cut between a CR and its LF: a thread checking a large
    message (the DKIM signer's) lets the event loop run between the pieces."""
    end = len(data) if end is None else end
    while end - start > _PIECE:
        cut = start + _PIECE + (data[start + _PIECE - 1] == 13)  # 13: CR
        problem = _canonical_problem(data, start, cut)
        if problem:
            return problem
        start = cut
    return _canonical_problem(data, start, end)


_PIECE = 1 << 20


def _canonical_problem(data: bytes | bytearray, start: int, end: int) -> str | None:
    if data.find(b"\0", start, end) >= 0:
        return "NUL byte in message"
    crlf = data.count(b"\r\n", start, end)
    if data.count(b"\n", start, end) != crlf or data.count(b"\r", start, end) != crlf:
        return "bare CR or LF in message"
    return None


def content_problem(data: bytes) -> str | None:
    """Why `data` may not be relayed (not canonical, a line over 998 bytes), or None."""
    problem = canonical_problem(data)
    if problem:
        return problem
    if has_long_line(data):
        return "line longer than 998 bytes"
    return None


def has_long_line(data: bytes | bytearray, start: int = 0, end: int | None = None) -> bool:
    """Whether a line of `data[start:end]` (lines end at CRLF; `start` begins one) is longer
    than 998 bytes.

    Linear, with no object per line (a split makes one per line: 40 bytes for each empty
    line of a hostile message) and no regex (`[^\r\n]{999}` rescans up to 999 bytes per
    offset): from a line's start, the last CRLF within 999 bytes is the start of the next
    line to look from, so two steps cover at least 1000 bytes.
    """
    end = len(data) if end is None else end
    at = start  # the start of a line
    while end - at > MAX_LINE:
        last = data.rfind(b"\r\n", at, min(at + MAX_LINE + 2, end))
        if last < 0:
            return True
        at = last + 2
    return False


MAX_FROM = 4096  # bytes of a From value worth parsing: the stdlib parser costs ~4 µs a byte


def mailboxes(value: bytes) -> list[str] | None:
    """The addresses of a From field's value; None when one is no local@domain, or when the
    value is longer than MAX_FROM or nests comments deeper than the stack (RecursionError in
    the stdlib parser): one long field must not hold the event loop."""
    if len(value) > MAX_FROM:
        return None
    text = value.replace(b"\r\n", b"").decode("utf-8", "replace")
    try:
        pairs = email.utils.getaddresses([text])
    except RecursionError:
        return None
    found = []
    for _name, address in pairs:
        local, at, domain = address.rpartition("@")
        if not at or not local or not domain:
            return None
        found.append(address)
    return found


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
    size = header_size(data)
    return data[:size], data[size:]


_FIELD_START = re.compile(rb"\r\n(?![ \t])")  # a CRLF that no continuation line follows


def header_size(data: bytes) -> int:
    """Bytes of the header block of `data`, its final CRLF included (none when `data`
    begins with the blank line; all of it when there is none)."""
    if data.startswith(b"\r\n"):
        return 0
    end = data.find(b"\r\n\r\n")
    return len(data) if end < 0 else end + 2


def header_block(data: bytes) -> bytes:
    """The header block of `data`, its final CRLF included (split_header's first part),
    without copying the rest: of a 20 MB message, that copy was 20 MB of the event loop's
    time and memory per look at its header."""
    return data[: header_size(data)]


def header_fields(block: bytes) -> list[bytes]:
    """The header block split into whole fields (continuation lines kept with their field),
    in one pass: joining folded lines one by one is quadratic in a field's folds."""
    return _FIELD_START.split(block[:-2] if block.endswith(b"\r\n") else block)


def clean_header(data: bytes) -> Cleaned:
    """Take out the `X-Postern-*` fields (returning their values, unfolded and stripped) and
    the Bcc fields; count the Received fields; note whether Date and Message-ID are there.

    `data` is canonical (CRLF line ends only), so a field starts right after a LF and a
    continuation line never does: names are found by substring search over the lower-cased
    header (in C), and the fields are split only when one may have to be taken out. Every
    other field is kept byte for byte, in its place. Values keep bytes that are not
    UTF-8 as surrogates, for the field checks (gateway.intake.fields) to refuse.
    """
    block = header_block(data)
    low = b"\n" + block.lower()
    content, controls = data, dict[str, str]()
    if CONTROL_PREFIX in low or b"bcc" in low:  # perhaps in a value only: _taken decides
        content, controls = _taken(data, block)
    return Cleaned(
        content,
        controls,
        hops=_fields_named(low, b"\nreceived"),
        has_date=_fields_named(low, b"\ndate") > 0,
        has_message_id=_fields_named(low, b"\nmessage-id") > 0,
    )


def _taken(data: bytes, block: bytes) -> tuple[bytes, dict[str, str]]:
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
    rest = memoryview(data)[len(block) :]  # joined, not sliced first: one copy of the body
    return b"".join([*(field + b"\r\n" for field in kept), rest]), controls


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


MAX_MESSAGE_ID = 255  # characters of a Message-ID kept (storage's indexed column)
_VALUE = rb"[ \t]*:([^\r\n]*(?:\r\n[ \t][^\r\n]*)*)"  # a value with its continuation lines
_VALUE_PATTERNS: dict[bytes, re.Pattern[bytes]] = {}
_SPACE = re.compile(r"\s+")


def header_value(data: bytes, name: bytes) -> bytes | None:
    """The first `name` field's value in the header of `data` (folds joined, stripped), or
    None. One regex search bounded to the header block: no split, no MIME parse."""
    pattern = _VALUE_PATTERNS.get(name)
    if pattern is None:  # a handful of names, each compiled once (re's cache costs a lookup)
        pattern = re.compile(rb"^" + re.escape(name) + _VALUE, re.IGNORECASE | re.MULTILINE)
        _VALUE_PATTERNS[name] = pattern
    match = pattern.search(data, 0, header_size(data))
    return match.group(1).replace(b"\r\n", b"").strip() if match else None


def normal_message_id(value: str) -> str | None:
    """A Message-ID as Postern stores and looks it up: the first `<...>` (or the whole
    value, given without brackets), without white space, at most MAX_MESSAGE_ID
    characters; None when nothing is left. The one form both sides compare."""
    value = _SPACE.sub("", value)
    start = value.find("<")
    end = value.find(">", start + 1) if start >= 0 else -1
    core = value[start + 1 : end] if end > start >= 0 else value.strip("<>")
    return f"<{core}>"[:MAX_MESSAGE_ID] if core else None


MAX_SUBJECT = 2000  # bytes of a Subject value decoded for the search's words


def subject(data: bytes) -> str:
    """The message's Subject as people read it: RFC 2047 encoded words decoded (one that
    cannot be is kept as it came), "" without one. At most MAX_SUBJECT bytes are read."""
    value = header_value(data, b"subject")
    if not value:
        return ""
    raw = value[:MAX_SUBJECT].decode("utf-8", "replace")
    if "=?" not in raw:
        return raw
    try:
        return str(email.header.make_header(email.header.decode_header(raw)))
    except Exception:  # a broken encoded word, an unknown charset: as it came
        return raw


def message_id(data: bytes) -> str | None:
    """The message's own Message-ID in its normal form (normal_message_id), or None."""
    value = header_value(data, b"message-id")
    return normal_message_id(value.decode("utf-8", "replace")) if value else None
