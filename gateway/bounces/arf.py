"""RFC 5965 complaint reports (ARF): the fields of `message/feedback-report`."""

from __future__ import annotations

from email.message import Message

from gateway.bounces import dsn, mime
from gateway.bounces.model import Entry, Feedback, Limits, Returned

FEEDBACK_TYPE = "message/feedback-report"


def fields(part: Message, limits: Limits) -> Message:
    """The report's fields: the email package parses a message/* part's payload as a
    message (the fields are its headers); a form it left as text is parsed here."""
    payload = part.get_payload()
    if isinstance(payload, list) and payload and isinstance(payload[0], Message):
        return payload[0]
    return mime.headers_from_text(mime.text_of(part, limits.max_text))


def feedback(fields: Message, limits: Limits) -> Feedback:
    cap = limits.max_header
    most = limits.max_recipients
    rcpts = [dsn.address(v) for v in mime.headers(fields, "Original-Rcpt-To", cap, most)]
    return Feedback(
        feedback_type=mime.header(fields, "Feedback-Type", 50).lower(),
        user_agent=mime.header(fields, "User-Agent", cap),
        original_mail_from=dsn.address(mime.header(fields, "Original-Mail-From", cap)),
        original_rcpt_to=tuple(r for r in rcpts if r)[: limits.max_recipients],
        source_ip=mime.header(fields, "Source-IP", 100),
        arrival_date=mime.header(fields, "Arrival-Date", 100),
        reported_domain=mime.header(fields, "Reported-Domain", 255).lower(),
    )


def entries(report: Feedback, returned: Returned | None) -> tuple[Entry, ...]:
    """One entry per Original-Rcpt-To; without one (providers often redact it), the
    returned message's single To, else one entry with no recipient (matched by its
    returned headers)."""
    recipients = report.original_rcpt_to
    if not recipients and returned is not None:
        recipients = tuple(r for r in [dsn.address(returned.to)] if r)
    kind = report.feedback_type
    return tuple(
        Entry(recipient=r, kind="complaint", feedback_type=kind) for r in recipients or ("",)
    )
