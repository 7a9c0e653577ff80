"""The headers of the returned message: what matching needs (Message-ID, the reference
headers) and what a person reads (From, To, Subject)."""

from __future__ import annotations

from collections.abc import Sequence
from email.message import Message

from gateway.bounces import mime
from gateway.bounces.model import Limits, Returned

RETURNED_TYPES = ("message/rfc822", "message/global")
HEADER_TYPES = ("text/rfc822-headers", "message/global-headers", "message/rfc822-headers")


def from_part(part: Message, refs: Sequence[str], limits: Limits) -> Returned | None:
    """The returned headers a MIME part carries, or None when it carries none."""
    kind = mime.content_type(part)
    if kind in RETURNED_TYPES:
        payload = part.get_payload()
        if isinstance(payload, list) and payload and isinstance(payload[0], Message):
            return from_headers(payload[0], refs, limits)
        return from_text(mime.text_of(part, limits.max_text), refs, limits)
    if kind in HEADER_TYPES:
        return from_text(mime.text_of(part, limits.max_text), refs, limits)
    return None


def from_text(text: str, refs: Sequence[str], limits: Limits) -> Returned | None:
    """The header block at the start of `text`, or None when it holds none we use."""
    return from_headers(mime.headers_from_text(text), refs, limits)


def from_headers(headers: Message, refs: Sequence[str], limits: Limits) -> Returned | None:
    cap = limits.max_header
    found = tuple((name, mime.header(headers, name, cap)) for name in refs)
    returned = Returned(
        message_id=message_id(mime.header(headers, "Message-ID", cap)),
        from_=mime.header(headers, "From", cap),
        to=mime.header(headers, "To", cap),
        subject=mime.header(headers, "Subject", cap),
        return_path=mime.header(headers, "Return-Path", cap),
        refs=tuple((name, value) for name, value in found if value),
    )
    return returned if returned != Returned() else None


def message_id(value: str) -> str:
    """A Message-ID in its `<left@right>` form, as the sender wrote it in angle brackets:
    some systems return it without them (RFC 5965's own example does)."""
    value = value.replace(" ", "")
    if value and "@" in value and not value.startswith("<"):
        return f"<{value}>"
    return value
