"""RFC 3464 delivery status (`message/delivery-status`, and RFC 6533's global form): the
per-message fields and one `Entry` per recipient block."""

from __future__ import annotations

import re
from email.message import Message

from gateway.addresses import mailbox_key
from gateway.bounces import codes, mime
from gateway.bounces.model import ACTIONS, Entry, Limits

DSN_TYPES = ("message/delivery-status", "message/global-delivery-status")
_ANGLE = re.compile(r"<([^<>]*)>")
_TYPE = re.compile(r"[A-Za-z][A-Za-z0-9-]{0,19}")  # rfc822, dns, smtp, x-unix, utf-8


def blocks(part: Message, limits: Limits) -> list[Message]:
    """The field blocks of a delivery-status part: the email package splits the usual form
    itself; a form it leaves as text (the global one, a transfer encoding) is split here."""
    most = limits.max_recipients + 2  # the per-message block, and one to tell a cut
    payload = part.get_payload()
    if isinstance(payload, list):
        return [b for b in payload[:most] if isinstance(b, Message)]
    text = mime.text_of(part, limits.max_text)
    chunks = re.split(r"\r?\n[ \t]*\r?\n", text.strip())
    return [mime.headers_from_text(chunk) for chunk in chunks[:most]]


def typed_value(field: str) -> str:
    """`dns; mx.example.com` -> `mx.example.com`: the value after its type."""
    kind, semicolon, value = field.partition(";")
    if semicolon and _TYPE.fullmatch(kind.strip()):
        return value.strip()
    return field.strip()  # no type: "550 5.1.10 RESOLVER...; Recipient not found" stays whole


def address(field: str) -> str:
    """`rfc822; <Ann@Example.COM>` -> `ann@example.com`; "" when there is no address."""
    value = typed_value(field)
    inside = _ANGLE.search(value)
    value = (inside.group(1) if inside else value).strip().strip("\"'")
    if "@" not in value or any(c.isspace() or c == "," for c in value):
        return ""
    try:
        return mailbox_key(value)
    except Exception:  # an IDN the codec refuses: keyed as given, lower-cased
        return value.lower()


def entry(block: Message, limits: Limits) -> Entry | None:
    """The recipient block as an entry; None for a block that names no recipient."""
    final = address(mime.header(block, "Final-Recipient"))
    original = address(mime.header(block, "Original-Recipient"))
    if not (final or original):
        return None
    action = mime.header(block, "Action").lower().split(" ")[0]
    raw_diagnostic = mime.header(block, "Diagnostic-Code", limits.max_diagnostic * 2)
    diagnostic = typed_value(raw_diagnostic)[: limits.max_diagnostic]
    status = codes.enhanced(mime.header(block, "Status")) or _from_action(action)
    return Entry(
        recipient=final or original,
        action=action if action in ACTIONS else action[:20],
        status=codes.refine(status, diagnostic),
        diagnostic=diagnostic,
        remote_mta=typed_value(mime.header(block, "Remote-MTA")),
        smtp_code=codes.basic(diagnostic),
        original_recipient=original,
    )


def _from_action(action: str) -> str:
    """A block with no readable Status (RFC 3464 requires one) keeps its action's class."""
    return {"failed": "5.0.0", "delayed": "4.0.0"}.get(action, "")


def per_message(first: Message) -> tuple[str, str]:
    """(Reporting-MTA, Original-Envelope-Id) from the per-message block."""
    mta = typed_value(mime.header(first, "Reporting-MTA"))
    return mta, mime.header(first, "Original-Envelope-Id")
