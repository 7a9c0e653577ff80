"""Bounces without a delivery-status part, in the words of the mail systems that send them.

Each parser is a small function tried in order (`PARSERS`); each first checks its
signature (a sentence only that system writes) and returns None when it is absent, so
an ordinary message is never read as a bounce. They scan text already cut to
`Limits.max_text` characters; every regular expression below is linear in it.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from gateway.bounces import codes, dsn, mime
from gateway.bounces.model import Entry, Limits

# Bounded and unambiguous (labels hold no dot), so a search costs O(text), never O(text²).
_ADDR = r"[^\s<>@\"',;:()\[\]]{1,64}@(?:[\w-]{1,63}\.){1,8}[\w-]{1,63}"
_LINES = r"(?:[^\n]+(?:\n|\Z))*"  # non-empty lines up to a blank one, one way to split them


@dataclass(frozen=True)
class Text:
    """What a fallback parser reads: the subject and the plain text of the report."""

    subject: str
    body: str  # line ends are "\n"


@dataclass(frozen=True)
class Bounce:
    format: str
    entries: tuple[Entry, ...]
    copy: str = ""  # the quoted copy of the returned message, where its headers are


def _entry(recipient: str, diagnostic: str, limits: Limits, action: str = "failed") -> Entry:
    diagnostic = mime.collapse(diagnostic, limits.max_diagnostic)
    status, code = codes.status_of(diagnostic)
    host = re.search(r"\bhost ([\w.-]+)\s*\[", diagnostic)
    return Entry(
        recipient=dsn.address(recipient),
        action=action,
        status=status or ("4.0.0" if action == "delayed" else "5.0.0"),
        diagnostic=diagnostic,
        remote_mta=host.group(1) if host else "",
        smtp_code=code,
    )


def _before(body: str, *markers: str) -> tuple[str, str]:
    """(the text before the first marker present, the text after it)."""
    for marker in markers:
        head, found, tail = body.partition(marker)
        if found:
            return head, tail.split("\n", 1)[-1] if "\n" in tail else ""
    return body, ""


def _angle_blocks(text: str) -> Iterator[tuple[str, str]]:
    """qmail's form: `<addr>:` on its own line, then the reason up to a blank line."""
    pattern = rf"^<({_ADDR})>:[ \t]*\n({_LINES})"
    for found in re.finditer(pattern, text, re.MULTILINE):
        yield found.group(1), found.group(2)


def qmail(text: Text, limits: Limits) -> Bounce | None:
    if "This is the qmail-send program" not in text.body:
        return None
    report, copy = _before(text.body, "--- Below this line is a copy of the message.")
    entries = [_entry(a, r, limits) for a, r in _angle_blocks(report)]
    return Bounce("qmail", tuple(entries), copy)


def yahoo(text: Text, limits: Limits) -> Bounce | None:
    if "we were unable to deliver your message to the following address" not in text.body:
        return None
    report, copy = _before(text.body, "--- Below this line is a copy of the message.")
    entries = [_entry(a, r, limits) for a, r in _angle_blocks(report)]
    return Bounce("yahoo", tuple(entries), copy)


_EXIM_COPY = ("------ This is a copy of the message", "------ This is a copy of the body")


def exim(text: Text, limits: Limits) -> Bounce | None:
    if "This message was created automatically by mail delivery software." not in text.body:
        return None
    report, copy = _before(text.body, *_EXIM_COPY)
    action = "delayed" if "has not yet been delivered" in report else "failed"
    pattern = rf"^  <?({_ADDR})>?[^\n]*\n((?:(?:    |\t)[^\n]*(?:\n|\Z))*)"
    found = re.finditer(pattern, report, re.MULTILINE)
    entries = [_entry(f.group(1), f.group(2), limits, action) for f in found]
    return Bounce("exim", tuple(entries), copy)


def postfix(text: Text, limits: Limits) -> Bounce | None:
    if "This is the mail system at host" not in text.body:
        return None
    action = "delayed" if "THIS IS A WARNING ONLY" in text.body else "failed"
    pattern = rf"^<({_ADDR})>(?: \(expanded from <[^>\n]*>\))?: ([^\n]*(?:\n    [^\n]*)*)"
    found = re.finditer(pattern, text.body, re.MULTILINE)
    entries = [_entry(f.group(1), f.group(2), limits, action) for f in found]
    return Bounce("postfix", tuple(entries))


_GMAIL_SIGNS = ("Address not found", "Message not delivered", "Delivery incomplete")


def gmail(text: Text, limits: Limits) -> Bounce | None:
    subject_says = text.subject.startswith("Delivery Status Notification")
    if not (subject_says or any(f"** {sign} **" in text.body for sign in _GMAIL_SIGNS)):
        return None
    report, copy = _before(text.body, "----- Original message -----")
    action = "delayed" if _delay(report) or "(Delay)" in text.subject else "failed"
    diagnostic = _gmail_diagnostic(report)
    recipients = _gmail_recipients(report)
    entries = [_entry(r, diagnostic, limits, action) for r in recipients]
    return Bounce("gmail", tuple(entries), copy) if entries else None


def _gmail_recipients(report: str) -> list[str]:
    listed = re.search(
        r"following recipient[^\n]*:[ \t]*\n(?:[ \t]*\n)*((?:[ \t]+\S+[ \t]*(?:\n|\Z))+)", report
    )
    if listed:
        return re.findall(_ADDR, listed.group(1))
    sentence = re.search(rf"(?:delivered|delivering your message) to ({_ADDR})", report)
    return [sentence.group(1)] if sentence else []


def _gmail_diagnostic(report: str) -> str:
    said = re.search(
        r"(?:The response (?:from the remote server )?was|The error that the other server "
        rf"returned was):?[ \t]*\n({_LINES})",
        report,
    )
    if said:
        return said.group(1)
    first = re.search(r"Your message (?:wasn't|couldn't be) delivered[^\n]*", report)
    return first.group(0) if first else ""


def microsoft(text: Text, limits: Limits) -> Bounce | None:
    body = text.body
    signed = "Delivery has failed to these recipients or groups" in body
    if not (signed or "Diagnostic information for administrators" in body):
        return None
    report, copy = _before(body, "Original message headers:")
    _, admin = _before(report, "Diagnostic information for administrators")
    entries = [_entry(a, d, limits) for a, d in _microsoft_blocks(admin)]
    if not entries:
        _, listed = _before(report, "Delivery has failed to these recipients or groups")
        first = re.search(_ADDR, listed)
        entries = [_entry(first.group(0), "", limits)] if first else []
    return Bounce("microsoft", tuple(entries), copy)


def _microsoft_blocks(admin: str) -> Iterator[tuple[str, str]]:
    """An address on its own line, the server's words on the next non-empty one."""
    pattern = rf"^[ \t]*({_ADDR})[ \t]*\n(?:[ \t]*\n)*[ \t]*([^\n]+)"
    for found in re.finditer(pattern, admin, re.MULTILINE):
        said = found.group(2).strip()
        quoted = re.match(r"Remote Server returned '(.*)'?$", said)
        yield found.group(1), (quoted.group(1).rstrip("'") if quoted else said.strip("#"))


def _delay(text: str) -> bool:
    return bool(re.search(r"temporary (?:error|problem)|will (?:retry|keep trying)", text))


PARSERS: tuple[Callable[[Text, Limits], Bounce | None], ...] = (
    qmail,
    yahoo,
    exim,
    postfix,
    gmail,
    microsoft,
)


def read(text: Text, limits: Limits) -> Bounce | None:
    """The first parser that recognises the text and finds a recipient in it."""
    for parser in PARSERS:
        found = parser(text, limits)
        if found is not None and found.entries:
            return found
    return None
