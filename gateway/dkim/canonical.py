"""What a DKIM signature hashes: the header fields it covers and RFC 6376's relaxed
canonicalisation of them and of the body, byte for byte dkimpy's.

dkimpy's own header parse and relaxed canonicalisation run Python loops and regular
expressions over every line; these are C-speed byte operations, held equal to dkimpy's
`rfc822_parse`, `Relaxed` and `select_headers` by property tests. The content must already be
canonical (CRLF line ends only, no NUL).
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from dkim.canonicalization import correct_empty_body

from gateway.dkim.errors import MessageFormatError
from gateway.headers import header_fields

#: RFC 6376 §5.4: signed when present, in this order; From once more (over-signed)
#: so that a From added in transit breaks the signature.
SIGNED_HEADERS: tuple[bytes, ...] = (
    b"from",
    b"to",
    b"cc",
    b"subject",
    b"date",
    b"message-id",
    b"reply-to",
    b"mime-version",
    b"content-type",
    b"list-unsubscribe",
    b"list-unsubscribe-post",
)
OVERSIGNED: tuple[bytes, ...] = (b"from",)

_FIELD_NAME = re.compile(rb"[\x21-\x39\x3b-\x7e]+")  # printable, no colon (RFC 5322 §2.2)
_TAB_TO_SPACE = bytes.maketrans(b"\t", b" ")


# --- the header fields -----------------------------------------------------------------


def parse_message(message: bytes) -> tuple[list[tuple[bytes, bytes]], bytes]:
    """(name, raw value) of each header field, and the body, as dkimpy's `rfc822_parse`
    parses canonical content (the value keeps its folds and final CRLF; an mbox ``From ``
    line is skipped), without splitting and joining the body's lines. One difference: a
    line starting with a colon is refused (dkimpy would take ``::x`` as a field named
    ``:``); such a message goes unsigned."""
    if message.startswith(b"\r\n"):
        return [], message[2:]
    end = message.find(b"\r\n\r\n")
    block, body = (message, b"") if end < 0 else (message[: end + 2], message[end + 4 :])
    if block[:1] in (b" ", b"\t"):
        raise MessageFormatError("the header starts with a continuation line")
    # Whole fields in one pass (joining folded lines one at a time is quadratic); the folds
    # under an mbox line go to the field before it, as dkimpy adds them, hence the lists.
    names: list[bytes] = []
    values: list[list[bytes]] = []
    for field in header_fields(block):
        if not field:
            continue  # the empty tail of a block without a blank line after it
        line, fold, folded = field.partition(b"\r\n")
        name, colon, _ = line.partition(b":")
        if colon and _FIELD_NAME.fullmatch(name):
            names.append(name)
            values.append([field[len(name) + 1 :], b"\r\n"])
        elif not line.startswith(b"From "):
            raise MessageFormatError(f"not a header field: {line[:60]!r}")
        elif fold:
            if not values:
                raise MessageFormatError("the header starts with a continuation line")
            values[-1] += (folded, b"\r\n")
    return [(name, b"".join(value)) for name, value in zip(names, values, strict=True)], body


def signed_header_names(present: Iterable[bytes]) -> tuple[bytes, ...]:
    """h= for a message whose header field names are `present`: each listed field as often
    as it occurs, in SIGNED_HEADERS order, plus one more of each OVERSIGNED field."""
    counts: dict[bytes, int] = {}
    for name in present:
        key = bytes(name).lower()
        counts[key] = counts.get(key, 0) + 1
    names: list[bytes] = []
    for name in SIGNED_HEADERS:
        names.extend([name] * counts.get(name, 0))
    for name in OVERSIGNED:
        if counts.get(name):
            names.append(name)
    return tuple(names)


def select_fields(
    fields: list[tuple[bytes, bytes]], include: tuple[bytes, ...]
) -> list[tuple[bytes, bytes]]:
    """The fields h= names, each name's occurrences from the last up (RFC 6376 §5.4.2),
    with lower-cased names; a name listed more often than present (over-signing) adds none."""
    found: list[tuple[bytes, bytes]] = []
    below: dict[bytes, int] = {}
    for name in include:
        i = below.get(name, len(fields))
        while i > 0:
            i -= 1
            if fields[i][0].lower() == name:
                found.append((name, fields[i][1]))
                break
        below[name] = i
    return found


# --- relaxed canonicalisation --------------------------------------------------------------


def relaxed_header_value(value: bytes) -> bytes:
    """RFC 6376 §3.4.2 relaxed header value, byte for byte dkimpy's: unfolded, every run of
    spaces and tabs one space, stripped."""
    return _single_spaces(value.replace(b"\r\n", b"")).strip()


def relaxed_body(body: bytes) -> bytes:
    """RFC 6376 §3.4.4 relaxed body canonicalisation, byte for byte dkimpy's `Relaxed`.

    dkimpy runs two regular expressions that rewrite every run of whitespace, single spaces
    included: about 4 ms per 100 KB of prose. The same result from C-speed byte operations:
    tabs become spaces, runs of spaces halve until single (a few passes), and the one space
    left before a line end goes. A property test holds this equal to dkimpy's
    `Relaxed.canonicalize_body`.
    """
    body = _single_spaces(body)
    if b" \r\n" in body:
        body = body.replace(b" \r\n", b"\r\n")
    return correct_empty_body(_strip_trailing_lines(body))


def _single_spaces(data: bytes) -> bytes:
    """Every run of spaces and tabs one space (dkimpy's `compress_whitespace`), with C-speed
    byte operations: tabs become spaces, then runs of spaces halve until single."""
    if b"\t" in data:
        data = data.translate(_TAB_TO_SPACE)
    while b"  " in data:
        data = data.replace(b"  ", b" ")
    return data


def _strip_trailing_lines(body: bytes) -> bytes:
    """dkimpy's `strip_trailing_lines` (the body ends with exactly one CRLF) for canonical
    content, where a trailing run of CR and LF is CRLFs: one `rstrip` rather than its
    Python loop over every empty line at the end (seconds for a hostile message of them)."""
    return body[: len(body.rstrip(b"\r\n"))] + b"\r\n"
