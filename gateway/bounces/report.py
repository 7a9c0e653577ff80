"""`parse`: one raw report in, one `Report` out; never an exception, at bounded cost.

The order of the questions decides what a message is, so it is spelled out here:

1. no header fields at all, or an exception from the email package -> `unparsed`;
2. a `message/feedback-report` part -> `complaint` (RFC 5965);
3. a `message/delivery-status` part -> `dsn` (RFC 3464), whatever else it says
   (Postfix and Exim mark their DSNs `Auto-Submitted: auto-replied`);
4. an auto-reply marker (X-Autoreply, Precedence: auto_reply, an out-of-office subject)
   -> `auto_reply`: a vacation message is never read as a bounce;
5. a plain-text bounce one of the fallback parsers recognises -> `dsn`;
6. `Auto-Submitted` other than `no` -> `auto_reply` (RFC 3834), unless it comes from a
   mail system (MAILER-DAEMON, postmaster): a bounce in a form no parser knows is `other`,
   listed for a person to read, rather than an auto-reply quietly ignored;
7. a multipart whose structure is broken -> `unparsed`, with the parser's defects;
8. anything else -> `other`.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence
from email.message import Message
from typing import Any

from gateway.bounces import arf, autoreply, dsn, fallback, mime, returned
from gateway.bounces.model import DEFAULT_LIMITS, Entry, Limits, Report, Returned, Stats

REF_HEADERS = ("X-Postern-Ref",)
_ADDRESSED_TO = ("Delivered-To", "X-Original-To", "Envelope-To", "X-Envelope-To", "To")
_BROKEN = {
    "NoBoundaryInMultipartDefect",
    "StartBoundaryNotFoundDefect",
    "MultipartInvariantViolationDefect",
    "MissingHeaderBodySeparatorDefect",
    "CloseBoundaryNotFoundDefect",  # cut short: a truncated report
}
_ANGLE = re.compile(r"<([^<>\s]*)>")


def parse(
    raw: bytes,
    *,
    ref_headers: Sequence[str] = REF_HEADERS,
    limits: Limits = DEFAULT_LIMITS,
) -> Report:
    """What the report `raw` says. `ref_headers` are the reference headers to read from the
    returned message (kept under the names given). Never raises."""
    if isinstance(raw, str):  # a caller's slip, not a reason to raise
        raw = raw.encode("utf-8", "surrogateescape")
    try:
        return _parse(raw, tuple(ref_headers), limits)
    except Exception as error:  # the contract: a report that cannot be read is `unparsed`
        text = f"{type(error).__name__}: {error}"
        return Report(kind="unparsed", error=text[: limits.max_diagnostic])


def _parse(raw: bytes, refs: tuple[str, ...], limits: Limits) -> Report:
    message, end = mime.from_bytes(raw, limits.max_bytes, limits.max_parts)
    parts = list(mime.walk(message, limits.max_parts))
    stats = Stats(end, len(parts), end < len(raw))
    base = _Base(message, parts, refs, limits, stats)
    if not message.keys():
        return base.report("unparsed", error="no header fields")
    for read in (_complaint, _delivery_status, _marked_auto_reply, _plain_bounce):
        found = read(base)
        if found is not None:
            return found
    signal = autoreply.auto_submitted(message)
    if signal and not autoreply.from_a_mail_system(message):
        return base.auto_reply(signal)
    broken = sorted(set(mime.defects(message)) & _BROKEN)
    if broken and mime.content_type(message).startswith("multipart/"):
        return base.report("unparsed", error="broken MIME structure: " + ", ".join(broken))
    return base.report("other")


class _Base:
    """What every kind of report shares, read once."""

    def __init__(
        self,
        message: Message,
        parts: list[Message],
        refs: tuple[str, ...],
        limits: Limits,
        stats: Stats,
    ) -> None:
        self.message, self.parts, self.refs, self.limits = message, parts, refs, limits
        self.stats = stats
        self.returned = _first_returned(parts, refs, limits)

    def report(self, kind: str, **fields: Any) -> Report:
        cap = self.limits.max_header
        common = Report(
            kind=kind,
            returned=self.returned,
            subject=mime.header(self.message, "Subject", cap),
            from_=mime.header(self.message, "From", cap),
            addressed_to=_addressed_to(self.message, cap),
            stats=self.stats,
        )
        return dataclasses.replace(common, **fields)

    def auto_reply(self, signal: str) -> Report:
        sender = dsn.address(mime.header(self.message, "From", self.limits.max_header))
        entry = Entry(recipient=sender, kind="auto_reply")
        return self.report(
            "auto_reply", format="rfc3834", entries=(entry,), auto_reply_signal=signal
        )

    def capped(self, entries: Sequence[Entry]) -> tuple[tuple[Entry, ...], Stats]:
        kept = tuple(entries[: self.limits.max_recipients])
        stats = self.stats
        cut = len(entries) > len(kept)
        return kept, Stats(stats.bytes_parsed, stats.parts_walked, stats.truncated, cut)


def _first_returned(parts: list[Message], refs: tuple[str, ...], limits: Limits) -> Returned | None:
    for part in parts:
        found = returned.from_part(part, refs, limits)
        if found is not None:
            return found
    return None


def _addressed_to(message: Message, cap: int) -> tuple[str, ...]:
    """The addresses the report was delivered to, as written (a VERP token keeps its case)."""
    found = []
    for name in _ADDRESSED_TO:
        for value in mime.headers(message, name, cap):
            inside = _ANGLE.search(value)
            address = (inside.group(1) if inside else value).strip()
            if "@" in address and " " not in address and "," not in address:
                found.append(address)
    return tuple(found)


def _complaint(base: _Base) -> Report | None:
    part = next((p for p in base.parts if mime.content_type(p) == arf.FEEDBACK_TYPE), None)
    if part is None:
        return None
    fields = arf.fields(part, base.limits)
    feedback = arf.feedback(fields, base.limits)
    entries, stats = base.capped(arf.entries(feedback, base.returned))
    mta = dsn.typed_value(mime.header(fields, "Reporting-MTA", base.limits.max_header))
    return base.report(
        "complaint",
        format="arf",
        entries=entries,
        feedback=feedback,
        reporting_mta=mta,
        stats=stats,
    )


def _delivery_status(base: _Base) -> Report | None:
    found = [p for p in base.parts if mime.content_type(p) in dsn.DSN_TYPES]
    if not found:
        return None
    per_message: list[tuple[str, str]] = []
    entries: list[Entry] = []
    for part in found:
        blocks = dsn.blocks(part, base.limits)
        per_message.extend(dsn.per_message(block) for block in blocks[:1])
        entries.extend(e for e in (dsn.entry(b, base.limits) for b in blocks) if e)
    mta, envelope_id = per_message[0] if per_message else ("", "")
    kept, stats = base.capped(entries)
    return base.report(
        "dsn",
        format="rfc3464",
        entries=kept,
        reporting_mta=mta,
        envelope_id=envelope_id,
        stats=stats,
    )


def _marked_auto_reply(base: _Base) -> Report | None:
    signal = autoreply.marker(base.message)
    return base.auto_reply(signal) if signal else None


def _plain_bounce(base: _Base) -> Report | None:
    text = fallback.Text(subject=mime.header(base.message, "Subject", 300), body=_body(base))
    found = fallback.read(text, base.limits)
    if found is None:
        return None
    kept, stats = base.capped(found.entries)
    quoted = returned.from_text(found.copy, base.refs, base.limits) if found.copy else None
    return base.report(
        "dsn", format=found.format, entries=kept, returned=base.returned or quoted, stats=stats
    )


_TAG = re.compile(r"<[^<>]{0,2000}>")


def _body(base: _Base) -> str:
    """The plain text of the report's own parts (the HTML's text when it has no plain
    part), at most `max_text` characters, with "\\n" line ends."""
    plain = _texts(base, "text/plain")
    text = plain or _TAG.sub(" ", _texts(base, "text/html"))
    return text.replace("\r\n", "\n")[: base.limits.max_text]


def _texts(base: _Base, kind: str) -> str:
    budget, texts = base.limits.max_text, []
    for part in base.parts:
        if budget <= 0:
            break
        if mime.content_type(part) == kind and not part.is_multipart():
            text = mime.text_of(part, budget)
            texts.append(text)
            budget -= len(text)
    return "\n".join(texts)
