"""The SMTP replies on the wire, written out: tests assert through gateway.smtpd.replies, so
this is what keeps the constants themselves from drifting (clients and their logs match on
these texts). Changing one is a change of the protocol surface: change it here on purpose."""

from __future__ import annotations

import pytest

from gateway.smtpd import replies

WIRE = {
    "TOO_MANY_CONNECTIONS": "421 4.7.0 Too many connections, try again later",
    "SESSION_TOO_LONG": "421 4.4.2 Session time limit reached, closing connection",
    "BAD_HELO": "501 5.5.4 Control characters in the EHLO/HELO name",
    "CONTROL_IN_COMMAND": "501 5.5.4 Control characters in the command",
    "BYE": "221 2.0.0 Bye",
    "AUTH_INVALID": "535 5.7.8 Authentication credentials invalid",
    "AUTH_TOO_MANY_FAILURES": (
        "421 4.7.0 Too many failed authentication attempts, closing connection"
    ),
    "AUTH_OVER_BUDGET": "421 4.7.0 Too many failed authentication attempts, try again later",
    "AUTH_KEY_REVOKED": "530 5.7.0 Authentication required: this session's API key was revoked",
    "AUTH_KEY_RATE": "451 4.7.0 This API key's rate limit is reached, try again in {seconds} s",
    "AUTH_UNAVAILABLE": "454 4.7.0 Temporary authentication failure",
    "OK_SENDER": "250 2.1.0 Sender OK",
    "OK_RECIPIENT": "250 2.1.5 Recipient OK",
    "BAD_ADDRESS": "501 5.1.3 Bad address syntax: {problem}",
    "TOO_MANY_RECIPIENTS": "452 4.5.3 Too many recipients",
    "SUPPRESSED": "550 5.7.1 Recipient is suppressed (bounced, complained or unsubscribed)",
    "NOT_PERMITTED": "550 5.7.1 {reason}",
    "NEED_RECIPIENT": "503 5.5.1 Error: need RCPT command",
    "DATA_SYNTAX": "501 5.5.4 Syntax: DATA",
    "START_DATA": "354 End data with <CR><LF>.<CR><LF>",
    "NO_ROOM": "452 4.3.1 Too much mail in transit, try again later",
    "TOO_BIG": "552 5.3.4 Message too big",
    "SIZE_EXCEEDED": "552 5.3.4 Message size exceeds fixed maximum message size",
    "LINE_TOO_LONG": "500 5.5.2 Line too long (over 998 bytes)",
    "HEADER_TOO_BIG": "552 5.3.4 Message header too big (over {limit} bytes)",
    "TOO_MANY_HOPS": "554 5.4.6 Too many Received headers: a mail loop?",
    "BAD_CONTENT": "550 5.6.0 Message refused: {problem}",
    "OK": "250 2.0.0 OK",
    "QUEUED": "250 2.0.0 OK queued as {message_id}",
    "UNKNOWN_ALIAS": "550 5.7.1 Unknown X-Postern-Alias-Id",
    "UNKNOWN_ACCOUNT": "550 5.7.1 Unknown connected account",
    "ALIAS_NOT_VERIFIED": "550 5.7.1 The alias of X-Postern-Alias-Id is not verified yet",
    "NO_ROUTE": "550 5.7.1 No route: {reason}",
    "ALL_SUPPRESSED": "550 5.7.1 Every recipient is suppressed",
    "KEY_REUSED": (
        "550 5.7.1 X-Postern-Idempotency-Key already used within 24 h for a different message"
        " ({message_id}); use a new key"
    ),
    "STORAGE_FULL": "452 4.3.1 Insufficient system storage, please try again later",
    "TEMPORARY": "451 4.3.0 Temporary failure, please try again later",
}


@pytest.mark.parametrize(("name", "text"), sorted(WIRE.items()))
def test_each_reply_is_the_text_clients_see(name: str, text: str) -> None:
    assert str(getattr(replies, name)) == text


def test_every_reply_is_written_out_here() -> None:
    constants = {k for k, v in vars(replies).items() if isinstance(v, replies.Reply)}
    assert constants == set(WIRE)
