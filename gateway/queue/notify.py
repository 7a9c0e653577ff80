"""Delivery status notifications (RFC 3464) back to the envelope sender of SMTP mail, as
Postfix's bounce daemon sends them: when recipients bounce (refused for good, or expired at
max_age), one `multipart/report; report-type=delivery-status` message to the envelope
sender naming each of them with the upstream's reply, and the original's header.

Pure: it builds the Submission; gateway.queue.store decides when (an attempt of SMTP mail
with a non-null sender that bounced some recipient, `[delivery] notify_sender` on) and
stores it in the very transaction that records the bounce, so it is never lost (committed
with it) and never doubled (written only if that attempt's record is). The notification
has the null sender (`MAIL FROM:<>`): a null sender is never notified, so a notification
that bounces in its turn makes none (no loop), and its source is `dsn`.

A recipient a report bounces (gateway.bounces.effects), whether the upstream had taken it
or it was still pending, is told the same way, with the report's Status and Diagnostic-Code
(`reported`), in the report's own transaction, when that recipient moves into bounced:
once. Whoever makes that move, an attempt or a report, tells; an attempt's record names
only recipients still pending when it is written.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import format_datetime, formatdate, make_msgid

from gateway.config import DeliveryConfig
from gateway.message import DeliveryResult, Outcome, QueuedMessage, Submission

SOURCE = "dsn"  # the `source` of a notification: never notified about itself
_HEADER_LIMIT = 64 * 1024  # of the original's header, returned as text/rfc822-headers
HEADER_PREFIX = _HEADER_LIMIT + 4  # of a body, enough for that (and the blank line after)
_UNSAFE = re.compile(r"[\x00-\x1f\x7f]+")


@dataclass(frozen=True)
class Notifier:
    """What a notification says of the node that sends it."""

    hostname: str  # Reporting-MTA, and the domain of MAILER-DAEMON
    delay_warning: float = 0.0  # a delay notice once deferred this long; 0: never
    max_age: float = 0.0  # for a delay notice's Will-Retry-Until

    def wanted(self, message: QueuedMessage, source: str) -> bool:
        """Whether a bounce of `message` is told to its envelope sender: SMTP mail (HTTP
        senders have webhooks) with a sender that is not null."""
        return source == "smtp" and bool(message.envelope_sender)

    def delay_due(self, message: QueuedMessage, now: float) -> bool:
        """Whether this attempt, which left recipients deferred, is the first to find the
        message older than delay_warning: the previous record (`updated_at`) was before that
        time, this one after it, so the notice goes once."""
        if self.delay_warning <= 0:
            return False
        threshold = message.age_from + self.delay_warning
        return message.updated_at < threshold <= now

    def bounce(
        self, message: QueuedMessage, bounced: Mapping[str, DeliveryResult], now: float
    ) -> Submission:
        """The notification of `bounced` (recipient -> its final result) to the sender."""
        return _notice(message, build_report(self.hostname, message, bounced, now))

    def delay(
        self, message: QueuedMessage, deferred: Mapping[str, DeliveryResult], now: float
    ) -> Submission:
        """The notice that `deferred` (recipient -> its last result) are still being tried."""
        until = message.age_from + self.max_age if self.max_age else None
        content = build_report(self.hostname, message, deferred, now, delayed_until=until)
        return _notice(message, content)


# The reply a remote's report quotes: a basic code (`550`, or `550-` of a multi-line reply),
# then perhaps an enhanced one (`5.1.1`), then the text.
_REPLY = re.compile(r"\s*([245]\d\d)(?:[ -]+|$)(?:([245]\.\d{1,3}\.\d{1,3})(?:\s+|$))?")


def reported(status: str, diagnostic: str) -> DeliveryResult:
    """A recipient bounced by a report that came back after the upstream took the message
    (gateway.bounces), as the result `bounce` tells: the report's Status, and its
    Diagnostic-Code as the reply, split into its codes and text so that the notification's
    Diagnostic-Code repeats it rather than prefixing the codes again."""
    found = _REPLY.match(diagnostic)
    code, text = None, diagnostic.strip()
    enhanced = status or None
    if found is not None:
        code, text = int(found.group(1)), diagnostic[found.end() :].strip()
        said = found.group(2)
        if said and enhanced is None:
            enhanced = said
        elif said and said != enhanced:  # the reply's own code differs: keep it in the text
            text = f"{said} {text}".strip()
    return DeliveryResult(Outcome.BOUNCED, code=code, enhanced=enhanced, text=text)


def notifier_for(hostname: str, delivery: DeliveryConfig) -> Notifier | None:
    """The Notifier of `[delivery]` (None: notify_sender off), for the queue and for what
    applies reports (serve's and `postern bounces reclassify`'s)."""
    if not delivery.notify_sender:
        return None
    return Notifier(hostname, delivery.delay_warning, delivery.max_age)


def _notice(message: QueuedMessage, content: bytes) -> Submission:
    """A notification about `message` to its envelope sender, from the null sender."""
    return Submission(
        mail_from="",
        recipients=(message.envelope_sender,),
        content=content,
        source=SOURCE,
        system=True,
    )


def _clean(text: str, limit: int = 900) -> str:
    """One line of ASCII: control characters (CR, LF) become spaces, the rest '?'."""
    line = _UNSAFE.sub(" ", text).strip()
    return line.encode("ascii", "replace").decode("ascii")[:limit]


def _status(result: DeliveryResult, delayed: bool = False) -> str:
    """The recipient's RFC 3463 status: its reply's, when of the right class (5 failed, 4
    delayed), else the class's generic one."""
    digit = "4" if delayed else "5"
    pattern = digit + r"\.\d{1,3}\.\d{1,3}"
    if result.enhanced and re.fullmatch(pattern, result.enhanced):
        return result.enhanced
    return f"{digit}.0.0"


def _date(moment: float) -> str:
    return format_datetime(datetime.fromtimestamp(moment, UTC))


def build_report(
    hostname: str,
    message: QueuedMessage,
    bounced: Mapping[str, DeliveryResult],
    now: float,
    *,
    delayed_until: float | None = None,
    delayed: bool = False,
) -> bytes:
    """An RFC 3464 report (RFC 5322 bytes, CRLF, 7-bit): a text part for people, the
    message/delivery-status part, and the original's header as text/rfc822-headers. With
    `delayed` (or `delayed_until`, the time it is tried until), a delay notice: the
    recipients are still being tried (Action: delayed, a 4.x.x Status)."""
    delayed = delayed or delayed_until is not None
    host = _clean(hostname, 253) or "localhost"
    boundary = f"postern-dsn-{secrets.token_hex(12)}"
    if delayed:
        told = [
            "####################################################################",
            "# THIS IS A WARNING ONLY.  YOU DO NOT NEED TO RESEND YOUR MESSAGE. #",
            "####################################################################",
            "",
            "Your message could not be delivered yet to one or more recipients.",
            "The mail system will keep trying"
            + (f" until {_date(delayed_until)}." if delayed_until is not None else "."),
        ]
    else:
        told = [
            "I'm sorry to have to inform you that your message could not",
            "be delivered to one or more recipients. It's attached below.",
        ]
    human = [f"This is the mail system at host {host}.", "", *told, ""]
    for rcpt, result in bounced.items():
        human.append(f"<{_clean(rcpt, 320)}>: {_clean(result.describe())}")
    status = [
        f"Reporting-MTA: dns; {host}",
        f"X-Postern-Queue-ID: {_clean(message.id, 64)}",
        f"Arrival-Date: {_date(message.created_at)}",
    ]
    for rcpt, result in bounced.items():
        status += [
            "",
            f"Final-Recipient: rfc822; {_clean(rcpt, 320)}",
            f"Original-Recipient: rfc822; {_clean(rcpt, 320)}",
            f"Action: {'delayed' if delayed else 'failed'}",
            f"Status: {_status(result, delayed)}",
        ]
        if result.hop is not None:
            relay = _clean(result.hop.relay.split("[", 1)[0], 253)
            if relay:
                status.append(f"Remote-MTA: dns; {relay}")
        status += [
            f"Diagnostic-Code: smtp; {_clean(result.describe()) or 'refused'}",
            f"Last-Attempt-Date: {_date(now)}",
        ]
        if delayed_until is not None:
            status.append(f"Will-Retry-Until: {_date(delayed_until)}")
    header = message.content.split(b"\r\n\r\n", 1)[0][:_HEADER_LIMIT]
    header_text = header.decode("ascii", "replace").replace("\ufffd", "?")
    subject = (
        "Delayed Mail (still being retried)" if delayed else "Undelivered Mail Returned to Sender"
    )
    lines = [
        f"From: Mail Delivery System <MAILER-DAEMON@{host}>",
        f"To: <{_clean(message.envelope_sender, 320)}>",
        f"Subject: {subject}",
        f"Date: {formatdate(now)}",
        f"Message-ID: {make_msgid(domain=host)}",
        "Auto-Submitted: auto-replied",
        "MIME-Version: 1.0",
        f'Content-Type: multipart/report; report-type=delivery-status; boundary="{boundary}"',
        "",
        "This is a MIME-encapsulated message.",
        "",
        f"--{boundary}",
        "Content-Description: Notification",
        "Content-Type: text/plain; charset=us-ascii",
        "",
        *human,
        "",
        f"--{boundary}",
        "Content-Description: Delivery report",
        "Content-Type: message/delivery-status",
        "",
        *status,
        "",
        f"--{boundary}",
        "Content-Description: Undelivered Message Headers",
        "Content-Type: text/rfc822-headers",
        "",
        *header_text.split("\r\n"),
        "",
        f"--{boundary}--",
        "",
    ]
    return "\r\n".join(_bounded(line) for line in lines).encode("ascii")


def _bounded(line: str) -> str:
    """No line over 998 characters (RFC 5322): a longer one is cut."""
    return line if len(line) <= 998 else line[:998]
