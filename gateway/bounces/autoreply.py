"""RFC 3834 auto-replies and out-of-office answers: never a bounce.

Two strengths of signal. A *marker* (X-Autoreply, X-Autorespond, Precedence: auto_reply,
an out-of-office subject) is only ever set on auto-replies, so it wins over the plain-text
bounce parsers. `Auto-Submitted` is set on bounces too (Postfix and Exim mark theirs
auto-replied), so it makes an auto-reply only once no bounce parser recognised the message.
"""

from __future__ import annotations

import re
from email.message import Message

from gateway.bounces import mime

# Subjects of vacation and out-of-office answers, as the common clients word them.
_SUBJECT = re.compile(
    r"^\s*(?:"
    r"out of (?:the )?office|automatic reply|auto(?:matic)?[- ]?(?:reply|response)|autoreply"
    r"|vacation(?: reply| response)?\b|away from (?:the|my) office|on vacation"
    r"|abwesenheitsnotiz|automatische antwort|abwesend"
    r"|réponse automatique|reponse automatique|absence du bureau|message d'absence"
    r"|respuesta automática|respuesta automatica|fuera de la oficina"
    r"|risposta automatica|fuori sede|automatisch antwoord|afwezig"
    r"|resposta automática|ausente|automatiskt svar|autosvar|frånvaro"
    r")",
    re.IGNORECASE,
)


def marker(message: Message) -> str:
    """The header that marks `message` as an auto-reply beyond doubt, as text; or ""."""
    for name in ("X-Autoreply", "X-Autorespond", "X-Autoresponder"):
        value = mime.header(message, name, 100)
        if value and value.lower() not in ("no", "false", "0"):
            return f"{name}: {value}"
    precedence = mime.header(message, "Precedence", 100).lower()
    if precedence == "auto_reply":
        return "Precedence: auto_reply"
    subject = mime.header(message, "Subject", 300)
    if _SUBJECT.match(subject):
        return f"Subject: {subject[:80]}"
    return ""


def auto_submitted(message: Message) -> str:
    """`Auto-Submitted: auto-replied` or `auto-generated` (any other value but `no`), or ""."""
    value = mime.header(message, "Auto-Submitted", 100).lower()
    keyword = re.split(r"[;(\s]", value.strip(), maxsplit=1)[0]  # no parameters, no comment
    if keyword and keyword != "no":
        return f"Auto-Submitted: {keyword}"
    return ""


_MAIL_SYSTEMS = ("mailer-daemon", "mail-daemon", "postmaster", "mail.delivery.system")


def from_a_mail_system(message: Message) -> bool:
    """Whether the From is a mail system's own address (bounces come from those)."""
    sender = mime.header(message, "From", 300).lower()
    return any(f"{name}@" in sender for name in _MAIL_SYSTEMS)
