"""Byte-level checks and edits of raw RFC 5322 messages, without a full MIME parse.

The relay must not re-parse every message (speed) yet must strip its own control headers
and refuse content that could smuggle a second message upstream.
"""

from __future__ import annotations

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


def hop_count(data: bytes) -> int:
    """How many Received fields the header carries (relays it has crossed)."""
    block, _ = split_header(data)
    return sum(1 for field in header_fields(block) if field[:9].lower() == b"received:")


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


def take_control_headers(data: bytes) -> tuple[bytes, dict[str, str]]:
    """Remove every `X-Postern-*` field; return the message without them and their values.

    Names are returned lower-cased without the prefix ('alias-id', 'sandbox', ...); the
    value is unfolded and stripped, and bytes that are not UTF-8 stay as surrogates, for
    the field checks (gateway.fields) to refuse.
    """
    block, rest = split_header(data)
    if CONTROL_PREFIX not in block.lower():
        return data, {}
    kept: list[bytes] = []
    controls: dict[str, str] = {}
    for field in header_fields(block):
        name, colon, value = field.partition(b":")
        if colon and name.strip().lower().startswith(CONTROL_PREFIX):
            key = name.strip().lower()[len(CONTROL_PREFIX) :].decode("ascii", "replace")
            unfolded = value.replace(b"\r\n", b"").strip()
            controls[key] = unfolded.decode("utf-8", "surrogateescape")
        else:
            kept.append(field)
    new_block = b"".join(field + b"\r\n" for field in kept)
    return new_block + rest, controls
