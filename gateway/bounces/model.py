"""What a report that came back says, as plain frozen data (no I/O, no email objects).

A `Report` is what `gateway.bounces.report.parse` makes of one raw message: its kind, one
`Entry` per recipient it speaks of, the headers of the message it returns (`Returned`), and
for a complaint the ARF fields (`Feedback`). `Limits` bounds the work one report may cost.
"""

from __future__ import annotations

from dataclasses import dataclass, field

KINDS = ("dsn", "complaint", "auto_reply", "unparsed", "other")
ACTIONS = ("failed", "delayed", "delivered", "relayed", "expanded")


@dataclass(frozen=True)
class Limits:
    """The most one report may cost: a hostile or huge message is cut, never walked whole."""

    max_bytes: int = 1024 * 1024  # the prefix parsed; DSN parts precede the returned message
    max_parts: int = 64  # MIME parts looked at
    max_recipients: int = 50  # entries kept
    max_diagnostic: int = 1000  # characters of one diagnostic
    max_text: int = 64 * 1024  # characters of one text part the fallback parsers scan
    max_header: int = 1000  # characters of one header value kept


DEFAULT_LIMITS = Limits()


@dataclass(frozen=True)
class Entry:
    """One recipient's outcome. `status` is an enhanced code (`5.1.1`); when only a basic
    SMTP code was given it is that code's class (`550` -> `5.0.0`) and `smtp_code` keeps it.
    `kind` repeats the report's kind, so an entry alone can be classified."""

    recipient: str  # lower-cased addr-spec ("" when the report names none)
    action: str = ""  # failed | delayed | delivered | relayed | expanded ("" for complaints)
    status: str = ""
    diagnostic: str = ""  # bounded, whitespace collapsed, without its "smtp;" type
    remote_mta: str = ""
    smtp_code: str = ""  # the basic code (550) found in the diagnostic, if any
    original_recipient: str = ""
    kind: str = "dsn"
    feedback_type: str = ""  # a complaint's Feedback-Type (abuse, fraud, not-spam, ...)


@dataclass(frozen=True)
class Returned:
    """The headers of the message a report returns (message/rfc822, text/rfc822-headers, or
    the copy a plain-text bounce quotes). `refs` holds the reference headers asked for, by
    the name they were asked under, when present."""

    message_id: str = ""
    from_: str = ""
    to: str = ""
    subject: str = ""
    return_path: str = ""
    refs: tuple[tuple[str, str], ...] = ()

    def ref(self, name: str) -> str:
        """The value of the reference header `name` (any case), or ""."""
        wanted = name.lower()
        return next((value for key, value in self.refs if key.lower() == wanted), "")


@dataclass(frozen=True)
class Feedback:
    """The fields of an RFC 5965 `message/feedback-report`."""

    feedback_type: str = ""  # abuse, fraud, virus, other, not-spam, auth-failure (lower-case)
    user_agent: str = ""
    original_mail_from: str = ""
    original_rcpt_to: tuple[str, ...] = ()
    source_ip: str = ""
    arrival_date: str = ""
    reported_domain: str = ""


@dataclass(frozen=True)
class Stats:
    """The work the parse did, each bounded by `Limits`: tests read it instead of a clock."""

    bytes_parsed: int = 0
    parts_walked: int = 0
    truncated: bool = False  # the input was longer than max_bytes
    recipients_cut: bool = False  # the report named more than max_recipients recipients


@dataclass(frozen=True)
class Report:
    """One report. `format` says which parser read it: `rfc3464`, `arf`, `rfc3834`, or a
    fallback's name (`qmail`, `exim`, `postfix`, `gmail`, `microsoft`, `yahoo`)."""

    kind: str
    format: str = ""
    entries: tuple[Entry, ...] = ()
    returned: Returned | None = None
    reporting_mta: str = ""
    envelope_id: str = ""  # Original-Envelope-Id
    feedback: Feedback | None = None
    auto_reply_signal: str = ""  # what made it an auto-reply, e.g. "Auto-Submitted: auto-replied"
    error: str = ""  # why it is `unparsed`
    subject: str = ""
    from_: str = ""
    addressed_to: tuple[str, ...] = ()  # Delivered-To, X-Original-To, Envelope-To, To
    stats: Stats = field(default_factory=Stats)

    @property
    def recipients(self) -> tuple[str, ...]:
        return tuple(entry.recipient for entry in self.entries)
