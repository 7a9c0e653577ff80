"""The email package behind a fence: parse a bounded prefix, walk a bounded number of parts,
read headers and text so that a malformed part yields "" rather than an exception.

The structure is parsed with policy.compat32 and each header value read is decoded with
policy.default's header classes only after it was cut to a bounded length. Measured on
CPython 3.11: parsing with policy.default costs time quadratic in a Content-Type header's
parameters (87 KB of them: 7.6 s; compat32: 0.0 s) and ~17 times compat32's on many small
parts, since it builds a header object for every part's Content-Type as it parses. A
report is hostile input; its cost must not depend on what its sender put in a header.
"""

from __future__ import annotations

import contextlib
import email
import email.policy
import re
from collections.abc import Iterator
from email.message import Message
from email.parser import Parser

_SPACES = re.compile(r"\s+")
_FOLD = re.compile(r"\r?\n(?=[ \t])")
_HEADERS_ONLY = Parser(policy=email.policy.compat32)


def from_bytes(raw: bytes, max_bytes: int, max_parts: int) -> tuple[Message, int]:
    """The message parsed from at most `max_bytes` of `raw`, cut before its 4 * `max_parts`th
    boundary-like line ("--..."): no more parts are built than can be walked. Also how many
    bytes were parsed."""
    end = _boundary_cut(raw, min(len(raw), max_bytes), 4 * max_parts)
    return email.message_from_bytes(raw[:end], policy=email.policy.compat32), end


def _boundary_cut(raw: bytes, end: int, most: int) -> int:
    found = -1
    for _ in range(most):
        found = raw.find(b"\n--", found + 1, end)
        if found < 0:
            return end
    return found + 1  # the start of that line


def headers_from_text(text: str) -> Message:
    """The header block at the start of `text` (the body, if any, is not parsed)."""
    return _HEADERS_ONLY.parsestr(text.lstrip("\r\n"), headersonly=True)


def walk(message: Message, max_parts: int) -> Iterator[Message]:
    """The parts depth first, the message itself first, at most `max_parts` of them. A
    message/* part is not entered: a returned message's parts are the sender's, not the
    report's, and a delivery-status part's "parts" are its field blocks."""
    stack = [message]
    seen = 0
    while stack and seen < max_parts:
        part = stack.pop()
        seen += 1
        yield part
        if content_type(part).startswith("message/"):
            continue  # a returned message, or delivery-status field blocks: read by their owner
        children = _children(part)
        stack.extend(reversed(children[:max_parts]))


def _children(part: Message) -> list[Message]:
    if not part.is_multipart():
        return []
    payload = part.get_payload()
    if not isinstance(payload, list):
        return []
    return [child for child in payload if isinstance(child, Message)]


def content_type(part: Message) -> str:
    try:
        return part.get_content_type()
    except Exception:  # a content type that breaks the parser is no type we read
        return "application/octet-stream"


def header(part: Message, name: str, limit: int = 1000) -> str:
    """The first `name` field, decoded, unfolded, whitespace collapsed, at most `limit`
    characters; "" when absent."""
    return collapse(_read(part, name), limit)


def headers(part: Message, name: str, limit: int = 1000, most: int = 20) -> list[str]:
    """The first `most` `name` fields, each as `header` returns it."""
    try:
        values = (part.get_all(name) or [])[:most]
    except Exception:
        values = [value for key, value in part.raw_items() if key.lower() == name.lower()]
    return [collapse(_text(value, name), limit) for value in values[:most]]


def _read(part: Message, name: str) -> str:
    try:
        value = part.get(name)
    except Exception:
        value = next((v for k, v in part.raw_items() if k.lower() == name.lower()), None)
    return "" if value is None else _text(value, name)


def _text(value: object, name: str) -> str:
    """The value decoded (RFC 2047 words, 8-bit UTF-8), cut before policy.default sees it."""
    try:
        raw = str(value)[:_RAW_CAP]
    except Exception:  # a compat32 Header that cannot be rendered
        return ""
    raw = _FOLD.sub("", raw)
    with contextlib.suppress(UnicodeError):  # undecodable bytes were surrogate-escaped
        raw = raw.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    try:
        return str(email.policy.default.header_factory(name, raw))
    except Exception:  # a value the header classes cannot take: as written
        return raw


_RAW_CAP = 8000  # characters of a raw header value decoded: bounded work whatever the value


def collapse(text: str, limit: int) -> str:
    return _SPACES.sub(" ", text[: limit * 4]).strip()[:limit]


def text_of(part: Message, limit: int) -> str:
    """The decoded text of a leaf part, at most `limit` characters; "" when it has none."""
    with contextlib.suppress(Exception):
        payload = part.get_payload(decode=True)
        if isinstance(payload, bytes):
            return payload[: limit * 4].decode(_charset(part), "replace")[:limit]
    with contextlib.suppress(Exception):
        payload = part.get_payload()
        if isinstance(payload, str):
            return payload[:limit]
    return ""


def _charset(part: Message) -> str:
    try:
        charset = part.get_content_charset() or "utf-8"
        "".encode(charset)  # an unknown charset's name raises LookupError here
    except Exception:
        return "utf-8"
    return charset


def defects(message: Message) -> list[str]:
    """The structural defects the parser noted on the message and its first parts."""
    found: list[str] = []
    for part in walk(message, 16):
        found.extend(type(defect).__name__ for defect in getattr(part, "defects", []))
    return found
