"""RFC 5322 bytes from the fields of an HTTP send request, built with the stdlib `email`.

CPython 3.11.7 lacks three header-injection fixes (CVE-2024-6923, CVE-2025-11468,
CVE-2026-1299): its folder decodes RFC 2047 encoded-words found in a value and can write
the CR LF they hide as a real line break, i.e. a new header. So every header-bound field is
checked here before the email package sees it (no control characters, no line separators,
no encoded-word syntax), messages are built with `EmailMessage` and the SMTP policies only,
and the output is checked again: exactly the header fields we set, CRLF line ends, no line
over 998 bytes. Any doubt is a BuildError (a 400), never a message.
"""

from __future__ import annotations

import email.policy
import email.utils
from collections.abc import Sequence
from dataclasses import dataclass, field
from email.errors import MessageError
from email.headerregistry import Address, BaseHeader, HeaderRegistry
from email.message import EmailMessage, MIMEPart

import idna

from gateway.addresses import envelope_problem, normalise
from gateway.errors import InvalidInput
from gateway.headers import content_problem, header_block, header_fields
from gateway.intake.attachments import (
    Attachment,
    content_id_problem,
    filename_problem,
    type_problem,
)
from gateway.intake.fields import text_problem

MAX_NAME = 256


class _HeaderClasses(HeaderRegistry):
    """The stdlib registry creates a new class for every header it parses (a third of the
    build time, measured); the classes are identical each time, so each is made once."""

    def __init__(self) -> None:
        super().__init__()
        self._made: dict[type, type[BaseHeader]] = {}

    def __getitem__(self, name: str) -> type[BaseHeader]:
        kind = self.registry.get(name.lower(), self.default_class)
        made = self._made.get(kind)
        if made is None:
            made = self._made[kind] = super().__getitem__(name)
        return made


# The SMTP policies, unchanged but for the header factory above.
_SMTP = email.policy.SMTP.clone(header_factory=_HeaderClasses())
_SMTPUTF8 = email.policy.SMTPUTF8.clone(header_factory=_HeaderClasses())


@dataclass(frozen=True)
class Mailbox:
    email: str
    name: str | None = None


@dataclass(frozen=True)
class Draft:
    sender: Mailbox
    to: Sequence[Mailbox]
    subject: str
    text: str | None = None
    html: str | None = None
    cc: Sequence[Mailbox] = ()
    bcc: Sequence[Mailbox] = ()
    reply_to: Mailbox | None = None
    attachments: Sequence[Attachment] = ()


@dataclass(frozen=True)
class Problem:
    field: str  # "to[2].name"
    message: str


class BuildError(InvalidInput, ValueError):
    """The draft cannot become a message; `problems` say which field and why."""

    def __init__(self, problems: Sequence[Problem]) -> None:
        super().__init__("; ".join(f"{p.field}: {p.message}" for p in problems))
        self.problems = list(problems)


@dataclass(frozen=True)
class Built:
    mail_from: str  # envelope sender, domain in A-labels
    recipients: tuple[str, ...]  # To, Cc and Bcc, each mailbox once, in order
    content: bytes  # CRLF line ends
    message_id: str  # the Message-ID header value, with its angle brackets
    smtputf8: bool = field(default=False)  # some local part is not ASCII


def _split_address(value: str) -> tuple[str, str]:
    """(local part, domain in A-labels); ValueError with the reason when it is no address."""
    problem = text_problem(value, header=True) or envelope_problem(value)
    if problem:
        raise ValueError(problem)
    local, _, domain = value.rpartition("@")
    if domain.startswith("["):
        return local, domain
    if "." not in domain:
        raise ValueError("domain must have at least two labels")
    if not domain.isascii():
        try:
            domain = idna.encode(domain, uts46=True).decode("ascii")
        except idna.IDNAError as error:
            raise ValueError(f"bad international domain name ({error})") from None
    return local, domain


class _Builder:
    def __init__(self) -> None:
        self.problems: list[Problem] = []
        self.utf8 = False

    def mailbox(self, box: Mailbox, where: str) -> Address | None:
        try:
            local, domain = _split_address(box.email)
        except ValueError as error:
            self.problems.append(Problem(f"{where}.email", str(error)))
            return None
        name = box.name or ""
        problem = text_problem(name, header=True)
        if problem is None and len(name) > MAX_NAME:
            problem = f"longer than {MAX_NAME} characters"
        if problem:
            self.problems.append(Problem(f"{where}.name", problem))
            return None
        self.utf8 |= not local.isascii()
        try:
            return Address(display_name=name, username=local, domain=domain)
        except (ValueError, MessageError, IndexError) as error:
            self.problems.append(Problem(f"{where}.email", f"not a usable address ({error})"))
            return None

    def mailboxes(self, boxes: Sequence[Mailbox], where: str) -> list[Address]:
        built = [self.mailbox(box, f"{where}[{i}]") for i, box in enumerate(boxes)]
        return [address for address in built if address is not None]

    def attachments(self, attachments: Sequence[Attachment]) -> None:
        """Header-bound fields of each attachment (the API checks them first; this is the
        builder's own guard, as for every other header-bound field)."""
        for i, item in enumerate(attachments):
            where = f"attachments[{i}]"
            checks = [
                ("filename", filename_problem(item.filename)),
                ("content_type", type_problem(item.content_type)),
                ("content_id", item.content_id and content_id_problem(item.content_id)),
            ]
            for name, problem in checks:
                if problem:
                    self.problems.append(Problem(f"{where}.{name}", problem))

    def text(self, value: str | None, where: str, *, header: bool) -> None:
        problem = text_problem(value, header=header) if value is not None else None
        if problem:
            self.problems.append(Problem(where, problem))


def _envelope(address: Address) -> str:
    return f"{address.username}@{address.domain}"


def build(draft: Draft, hostname: str, *, date: str | None = None) -> Built:
    """The message and its envelope; BuildError listing every problem found."""
    check = _Builder()
    sender = check.mailbox(draft.sender, "from")
    to = check.mailboxes(draft.to, "to")
    cc = check.mailboxes(draft.cc, "cc")
    bcc = check.mailboxes(draft.bcc, "bcc")
    reply_to = check.mailbox(draft.reply_to, "reply_to") if draft.reply_to else None
    check.text(draft.subject, "subject", header=True)
    check.text(draft.text, "text", header=False)
    check.text(draft.html, "html", header=False)
    check.attachments(draft.attachments)
    if not (draft.text or draft.html):
        check.problems.append(Problem("text", "html or text is required"))
    if not draft.to:
        check.problems.append(Problem("to", "at least one recipient is required"))
    if check.problems or sender is None:
        raise BuildError(check.problems)

    policy = _SMTPUTF8 if check.utf8 else _SMTP
    message = EmailMessage(policy=policy)
    message_id = email.utils.make_msgid(domain=hostname)
    expected = ["From", "To"]
    try:
        message["From"] = sender
        message["To"] = to
        if cc:
            message["Cc"] = cc
            expected.append("Cc")
        if reply_to is not None:
            message["Reply-To"] = reply_to
            expected.append("Reply-To")
        message["Subject"] = draft.subject
        message["Date"] = date or email.utils.formatdate(usegmt=True)
        message["Message-ID"] = message_id
        expected += ["Subject", "Date", "Message-ID"]
        _set_content(message, draft)
        content = message.as_bytes()
    except (ValueError, MessageError, IndexError, TypeError) as error:
        # The email package refused (or tripped over) something the checks above let by.
        raise BuildError([Problem("message", f"cannot be encoded ({error})")]) from None
    _verify(content, expected)
    seen: set[str] = set()
    recipients = []
    for address in [*to, *cc, *bcc]:
        envelope = _envelope(address)
        if normalise(envelope) not in seen:
            seen.add(normalise(envelope))
            recipients.append(envelope)
    return Built(_envelope(sender), tuple(recipients), content, message_id, check.utf8)


def _set_content(message: EmailMessage, draft: Draft) -> None:
    """The MIME tree: the bodies (text, html or multipart/alternative of both); with inline
    parts and HTML, multipart/related(bodies, inline parts); with other attachments (or
    inline parts but no HTML to show them), multipart/mixed(that, attachments)."""
    if not draft.attachments:
        _set_bodies(message, draft.text, draft.html)
        return
    inline = [a for a in draft.attachments if a.content_id] if draft.html else []
    rest = [a for a in draft.attachments if a not in inline]
    message["MIME-Version"] = "1.0"  # set_content, which would add it, sets no multipart
    bodies = MIMEPart(policy=message.policy)
    _set_bodies(bodies, draft.text, draft.html)
    if inline:
        related = MIMEPart(policy=message.policy)
        related.make_related()
        related.set_param("type", bodies.get_content_type())  # RFC 2387 requires it
        _attach_all(related, [bodies, *(_part(a, message.policy) for a in inline)])
        bodies = related
    if not rest:
        _adopt(message, bodies)
        return
    message.make_mixed()
    _attach_all(message, [bodies, *(_part(a, message.policy) for a in rest)])


def _attach_all(container: MIMEPart, parts: Sequence[MIMEPart]) -> None:
    for part in parts:
        container.attach(part)


def _adopt(message: EmailMessage, part: MIMEPart) -> None:
    """Make `part`'s content (its Content-* fields and payload) the message's own."""
    for name, value in part.items():
        message[name] = value
    message.set_payload(part.get_payload())


def _part(attachment: Attachment, policy: email.policy.Policy) -> MIMEPart:
    """One attachment, base64; its filename in Content-Disposition and, for old clients,
    as Content-Type's `name` (both RFC 2231-encoded by the policy when not ASCII)."""
    part = MIMEPart(policy=policy)
    maintype, _, subtype = attachment.content_type.lower().partition("/")
    part.set_content(
        attachment.content,
        maintype,
        subtype,
        disposition="inline" if attachment.content_id else "attachment",
        filename=attachment.filename,
        cid=f"<{attachment.content_id}>" if attachment.content_id else None,
    )
    part.set_param("name", attachment.filename)
    return part


def _set_bodies(message: MIMEPart, text: str | None, html: str | None) -> None:
    # Non-ASCII bodies go quoted-printable so that the message is 7-bit clean and relays
    # through upstreams without 8BITMIME.
    def cte(body: str) -> str | None:
        return None if body.isascii() else "quoted-printable"

    if text and html:
        message.set_content(text, cte=cte(text))
        message.add_alternative(html, subtype="html", cte=cte(html))
        for part in message.iter_parts():
            del part["MIME-Version"]  # add_alternative repeats it in the part
    elif html:
        message.set_content(html, subtype="html", cte=cte(html))
    else:
        message.set_content(text or "", cte=cte(text or ""))


def _verify(content: bytes, expected: list[str]) -> None:
    """Refuse output whose shape is not what was asked for (defence in depth)."""
    problem = content_problem(content)
    head = header_block(content)
    names = [f.partition(b":")[0].decode("ascii", "replace") for f in header_fields(head)]
    wanted = sorted([*expected, "MIME-Version", "Content-Type"])
    top = sorted(name for name in names if name != "Content-Transfer-Encoding")
    if problem is None and (top != wanted or len(names) - len(top) > 1):
        problem = "unexpected header fields in the output"
    if problem:
        raise BuildError([Problem("message", f"refused after encoding: {problem}")])
