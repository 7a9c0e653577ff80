"""What makes two requests "the same" for an idempotency key: a digest of each door's
canonical request. The same key with another digest is refused (HTTP 409
`idempotency_key_reused`, SMTP `550 5.7.1`) instead of answering the first result.

HTTP: the parsed body (defaults filled in, keys sorted: spelling and order do not count)
and the sandbox flag.

SMTP: what a client re-sending the same message keeps, not what its mail library makes
afresh for every copy. The envelope (sender, the set of recipients), the X-Postern-*
controls, the From, To, Cc, Reply-To and Subject fields (whitespace and folding aside), and
each body part's type and decoded content (text with LF line ends). Not the Date,
Message-ID, Received or DKIM-Signature fields, the MIME boundaries or the transfer
encodings, which a retry that rebuilds the message (Django, Rails, PHPMailer all do)
changes every time. A message the stdlib parser cannot take (MIME nested so deep that
it recurses too far) is digested as its raw bytes instead.
"""

from __future__ import annotations

import email
import email.policy
import hashlib
import json
from collections.abc import Sequence
from typing import Any

_ADDRESSED = ("from", "to", "cc", "reply-to", "subject")


def json_digest(value: Any) -> str:
    """Hex SHA-256 of `value` as canonical JSON (sorted keys, no spaces)."""
    canonical = json.dumps(value, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("ascii")).hexdigest()


def smtp_digest(
    mail_from: str, recipients: Sequence[str], controls: dict[str, str], content: bytes
) -> str:
    """The digest of an SMTP submission (`content` without Postern's own Received field)."""
    request: dict[str, Any] = {
        "mail_from": mail_from,
        "recipients": sorted(set(recipients)),
        "controls": controls,
    }
    try:
        request.update(_message(content))
    except Exception:  # RecursionError on MIME nested ~1000 deep, or any parse failure
        # A message the parser cannot take is still accepted: the same bytes, same digest.
        request["raw"] = hashlib.sha256(content).hexdigest()
    return json_digest(request)


def _message(content: bytes) -> dict[str, Any]:
    """The addressing fields and each body part's type and decoded content digest."""
    message = email.message_from_bytes(content, policy=email.policy.compat32)
    fields = {
        name: [" ".join(str(value).split()) for value in message.get_all(name, [])]
        for name in _ADDRESSED
    }
    parts = [
        [part.get_content_type(), hashlib.sha256(_payload(part)).hexdigest()]
        for part in message.walk()
        if not part.is_multipart()
    ]
    return {"fields": fields, "parts": parts}


def _payload(part: email.message.Message) -> bytes:
    """The decoded content; text with LF line ends (base64 text may carry either)."""
    payload = part.get_payload(decode=True)
    if not isinstance(payload, bytes):
        return b""
    return payload.replace(b"\r\n", b"\n") if part.get_content_maintype() == "text" else payload
