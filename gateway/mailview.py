"""A stored message's bytes as people read them: its header fields, its text, its HTML, its
attachments by name (never their bytes). The one parser behind the dashboard's message page
(web.pages.message, whose HTML only ever goes to a sandboxed frame) and the API's
GET /v1/messages/{id}/content.

Mail is hostile input: every step here tolerates what the email package rejects (an unknown
charset, a broken header, a part that is not what it says) and shows what it can rather than
fail. What is shown is bounded (SHOWN_CHARACTERS); the raw source has the rest.
"""

from __future__ import annotations

import email
import email.policy
from dataclasses import dataclass, field
from email.message import EmailMessage, Message

SHOWN_CHARACTERS = 200_000
MAX_HEADERS = 200
MAX_ATTACHMENTS = 100


@dataclass(frozen=True)
class Attachment:
    name: str
    content_type: str
    size: int
    content_id: str | None = None  # an inline part's Content-ID, without its angle brackets


@dataclass
class MailView:
    headers: list[tuple[str, str]] = field(default_factory=list)
    text: str | None = None
    html: str | None = None
    attachments: list[Attachment] = field(default_factory=list)
    cut: bool = False  # the text or HTML was longer than SHOWN_CHARACTERS

    @property
    def subject(self) -> str:
        return next((value for name, value in self.headers if name.lower() == "subject"), "")


def view(data: bytes) -> MailView:
    """The parts of `data` (a whole RFC 5322 message) worth showing; a message the email
    package cannot take apart at all is shown as text, as it came."""
    try:
        return _view(data)
    except Exception:
        shown = MailView()
        shown.text = _bounded(shown, data.decode("utf-8", "replace").replace("\r\n", "\n"))
        return shown


def _view(data: bytes) -> MailView:
    parsed = email.message_from_bytes(data, policy=email.policy.default)
    assert isinstance(parsed, EmailMessage)
    shown = MailView(headers=_headers(parsed))
    shown.text = _bounded(shown, _content(parsed.get_body(preferencelist=("plain",))))
    shown.html = _bounded(shown, _content(parsed.get_body(preferencelist=("html",))))
    if shown.text is None and shown.html is None and not parsed.is_multipart():
        shown.text = _bounded(shown, _content(parsed))  # text/plain by default, or odd type
    shown.attachments = _attachments(parsed)
    return shown


def _headers(parsed: EmailMessage) -> list[tuple[str, str]]:
    found: list[tuple[str, str]] = []
    for name, raw in list(parsed.raw_items())[:MAX_HEADERS]:
        try:
            value = str(parsed.policy.header_fetch_parse(name, raw))
        except Exception:  # a header the parser cannot decode: shown as it came
            value = raw
        found.append((name, " ".join(value.split())))
    return found


def _content(part: Message | None) -> str | None:
    if part is None:
        return None
    try:
        content = part.get_content()  # type: ignore[attr-defined]
    except Exception:  # unknown charset, broken transfer encoding: decode what is there
        payload = part.get_payload(decode=True)
        content = payload.decode("utf-8", "replace") if isinstance(payload, bytes) else None
    return content.replace("\r\n", "\n") if isinstance(content, str) else None


def _bounded(shown: MailView, content: str | None) -> str | None:
    if content is not None and len(content) > SHOWN_CHARACTERS:
        shown.cut = True
        return content[:SHOWN_CHARACTERS]
    return content


def _attachments(parsed: EmailMessage) -> list[Attachment]:
    found: list[Attachment] = []
    try:
        parts = list(parsed.iter_attachments()) if parsed.is_multipart() else []
    except Exception:
        return found
    for part in parts[:MAX_ATTACHMENTS]:
        payload = part.get_payload(decode=True)
        size = len(payload) if isinstance(payload, bytes) else 0
        name = part.get_filename() or "(no name)"
        found.append(Attachment(str(name), part.get_content_type(), size, _content_id(part)))
    return found


def _content_id(part: Message) -> str | None:
    try:
        raw = part.get("Content-ID")
    except Exception:  # a header the parser cannot decode: no id rather than no list
        return None
    value = " ".join(str(raw).split()).strip("<>") if raw is not None else ""
    return value[:998] or None
