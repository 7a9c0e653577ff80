"""Every reply the SMTP door gives, and the one table turning an error into its reply.

A reply is code, RFC 3463 enhanced status and text; a `{name}` in the text is filled in
when it is sent. aiosmtpd's own replies lack the enhanced status: `with_enhanced_code` adds
it on the way out. The detail of an internal error goes to the log, never to the client (a
generic 451 4.3.0, so that clients keep the message).
"""

from __future__ import annotations

from typing import Any

from gateway.errors import StorageFull, StorageUnavailable
from gateway.intake.pipeline import (
    AliasUnverified,
    AllSuppressed,
    NoRoute,
    NoSuchAccount,
    NotPermitted,
    UnknownAlias,
)
from storage.idempotency import Duplicate, KeyReused


class Reply(str):
    """One reply line, as sent (a str: aiosmtpd takes it as it is), with its parts."""

    code: int
    enhanced: str  # "" for a reply that has none (354)
    text: str

    def __new__(cls, code: int, enhanced: str, text: str) -> Reply:
        reply = super().__new__(cls, " ".join(part for part in (str(code), enhanced, text) if part))
        reply.code, reply.enhanced, reply.text = code, enhanced, text
        return reply

    @property
    def status(self) -> tuple[int, str]:
        return self.code, self.enhanced

    @property
    def line(self) -> bytes:
        """As written on the wire, for a reply sent past aiosmtpd."""
        return f"{self}\r\n".encode()


# The session
TOO_MANY_CONNECTIONS = Reply(421, "4.7.0", "Too many connections, try again later")
SESSION_TOO_LONG = Reply(421, "4.4.2", "Session time limit reached, closing connection")
BAD_HELO = Reply(501, "5.5.4", "Control characters in the EHLO/HELO name")
CONTROL_IN_COMMAND = Reply(501, "5.5.4", "Control characters in the command")
BYE = Reply(221, "2.0.0", "Bye")

# AUTH (gateway.smtpd.auth)
AUTH_INVALID = Reply(535, "5.7.8", "Authentication credentials invalid")  # aiosmtpd's words
AUTH_TOO_MANY_FAILURES = Reply(
    421, "4.7.0", "Too many failed authentication attempts, closing connection"
)
AUTH_OVER_BUDGET = Reply(421, "4.7.0", "Too many failed authentication attempts, try again later")
AUTH_KEY_REVOKED = Reply(
    530, "5.7.0", "Authentication required: this session's API key was revoked"
)
AUTH_KEY_RATE = Reply(
    451, "4.7.0", "This API key's rate limit is reached, try again in {seconds} s"
)
AUTH_UNAVAILABLE = Reply(454, "4.7.0", "Temporary authentication failure")  # RFC 4954

# The envelope
OK_SENDER = Reply(250, "2.1.0", "Sender OK")
OK_RECIPIENT = Reply(250, "2.1.5", "Recipient OK")
BAD_ADDRESS = Reply(501, "5.1.3", "Bad address syntax: {problem}")
TOO_MANY_RECIPIENTS = Reply(452, "4.5.3", "Too many recipients")
SUPPRESSED = Reply(550, "5.7.1", "Recipient is suppressed (bounced, complained or unsubscribed)")
NOT_PERMITTED = Reply(550, "5.7.1", "{reason}")

# DATA
NEED_RECIPIENT = Reply(503, "5.5.1", "Error: need RCPT command")  # aiosmtpd's words
DATA_SYNTAX = Reply(501, "5.5.4", "Syntax: DATA")
START_DATA = Reply(354, "", "End data with <CR><LF>.<CR><LF>")
NO_ROOM = Reply(452, "4.3.1", "Too much mail in transit, try again later")  # the DATA budget
TOO_BIG = Reply(552, "5.3.4", "Message too big")
SIZE_EXCEEDED = Reply(552, "5.3.4", "Message size exceeds fixed maximum message size")
LINE_TOO_LONG = Reply(500, "5.5.2", "Line too long (over 998 bytes)")
HEADER_TOO_BIG = Reply(552, "5.3.4", "Message header too big (over {limit} bytes)")
TOO_MANY_HOPS = Reply(554, "5.4.6", "Too many Received headers: a mail loop?")
BAD_CONTENT = Reply(550, "5.6.0", "Message refused: {problem}")

# The end of DATA: intake's answer
OK = Reply(250, "2.0.0", "OK")
QUEUED = Reply(250, "2.0.0", "OK queued as {message_id}")
UNKNOWN_ALIAS = Reply(550, "5.7.1", "Unknown X-Postern-Alias-Id")
UNKNOWN_ACCOUNT = Reply(550, "5.7.1", "Unknown connected account")  # HTTP's account_id only
ALIAS_NOT_VERIFIED = Reply(550, "5.7.1", "The alias of X-Postern-Alias-Id is not verified yet")
NO_ROUTE = Reply(550, "5.7.1", "No route: {reason}")
ALL_SUPPRESSED = Reply(550, "5.7.1", "Every recipient is suppressed")
KEY_REUSED = Reply(
    550,
    "5.7.1",
    "X-Postern-Idempotency-Key already used within 24 h for a different message "
    "({message_id}); use a new key",
)
STORAGE_FULL = Reply(452, "4.3.1", "Insufficient system storage, please try again later")
TEMPORARY = Reply(451, "4.3.0", "Temporary failure, please try again later")

# An error a submission raised -> its reply; a `{name}` of the text is the error's attribute.
# The nearest class of the error's MRO counts; an error of no class here is a bug (TEMPORARY).
ERRORS: dict[type[Exception], Reply] = {
    UnknownAlias: UNKNOWN_ALIAS,
    NoSuchAccount: UNKNOWN_ACCOUNT,
    AliasUnverified: ALIAS_NOT_VERIFIED,
    NoRoute: NO_ROUTE,
    AllSuppressed: ALL_SUPPRESSED,
    NotPermitted: NOT_PERMITTED,
    Duplicate: QUEUED,  # X-Postern-Idempotency-Key seen: the first message stands
    KeyReused: KEY_REUSED,  # ... for another message: a client error, not a retry
    StorageFull: STORAGE_FULL,
    StorageUnavailable: TEMPORARY,
}


def for_error(error: BaseException) -> str | None:
    """The reply to `error` from ERRORS, or None when it has none."""
    for kind in type(error).__mro__:
        reply = ERRORS.get(kind)
        if reply is not None:
            return reply.format_map(_Attributes(error))
    return None


class _Attributes:
    """An error's attributes as the mapping str.format_map reads."""

    def __init__(self, error: BaseException) -> None:
        self._error = error

    def __getitem__(self, name: str) -> Any:
        return getattr(self._error, name)


# aiosmtpd's replies lack enhanced codes (RFC 3463): the default of each code, and the
# replies reworded whole.
_ENHANCED_DEFAULT = {
    "421": "4.3.0",
    "451": "4.3.0",
    "454": "4.7.0",
    "500": "5.5.2",
    "501": "5.5.4",
    "502": "5.5.1",
    "503": "5.5.1",
    "504": "5.5.4",
    "530": "5.7.0",
    "550": "5.0.0",
    "552": "5.3.4",
    "553": "5.1.3",
    "554": "5.0.0",
    "555": "5.5.4",
}
_REWORDED = {
    "552 Error: message size exceeds fixed maximum message size": SIZE_EXCEEDED,
    "250 OK": OK,
    "221 Bye": BYE,
}


def with_enhanced_code(reply: str) -> str:
    """`reply` as sent: aiosmtpd's own with the enhanced status it lacks."""
    if reply in _REWORDED:
        return _REWORDED[reply]
    code, _, text = reply.partition(" ")
    enhanced = _ENHANCED_DEFAULT.get(code)
    if enhanced is None or text[:2] in ("2.", "4.", "5."):
        return reply
    return f"{code} {enhanced} {text}"
