"""The mail log (logger `postern.mail`): one line per refusal, per accepted message and per
recipient of each delivery attempt, in Postfix's words so that its readers feel at home:

    NOQUEUE: reject: RCPT from [192.0.2.7]:50312: 550 5.7.1 Recipient is suppressed ...;
        from=<app@example.com> to=<ann@example.org> proto=ESMTP helo=<app.example.com>
    id=msg_… client=[192.0.2.7]:50312 key=key_… source=smtp from=<app@example.com>
        size=1834 nrcpt=1 message-id=<…@example.com>
    id=msg_… from=<app@example.com> to=<ann@example.org> relay=smtp.example.net[198.51.100.4]:587
        pool=ses delay=0.213 delays=0.004/0.093/0.116 dsn=2.0.0 size=1834 attempt=1
        status=delivered reply='250 2.0.0 Ok'

The lines of messages are formatted only when INFO is on. User input (addresses, EHLO
names, replies) is escaped by gateway.process.logs' formatter, as in every record.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from typing import Any

from gateway.headers import header_value
from gateway.message import DeliveryResult, Outcome, QueuedMessage, Submission

log = logging.getLogger("postern.mail")

_DSN = {Outcome.DELIVERED: "2.0.0", Outcome.DEFERRED: "4.0.0", Outcome.BOUNCED: "5.0.0"}


def client(peer: Any) -> str:
    """A socket address as `[host]:port` (`unknown` when there is none)."""
    if isinstance(peer, (tuple, list)) and len(peer) >= 2:
        return f"[{peer[0]}]:{peer[1]}"
    return str(peer) if peer else "unknown"


def client_address(peer: Any) -> str:
    """A socket address's host alone ("" when there is none, as for a Unix socket)."""
    if isinstance(peer, (tuple, list)) and len(peer) >= 2:
        return str(peer[0])
    return ""


def reject(stage: str, where: str, reply: str, details: str) -> None:
    """A refusal at either door: what was asked (`stage`), by whom, and the reply sent."""
    if details:
        log.info("NOQUEUE: reject: %s from %s: %s; %s", stage, where, reply, details)
    else:
        log.info("NOQUEUE: reject: %s from %s: %s", stage, where, reply)


def envelope(sender: str | None, recipients: list[str] | tuple[str, ...] = ()) -> str:
    """`from=<…> to=<…>,<…>` for what is known (nothing before MAIL FROM)."""
    parts = [] if sender is None else [f"from=<{sender}>"]
    if recipients:
        parts.append("to=" + ",".join(f"<{rcpt}>" for rcpt in recipients))
    return " ".join(parts)


def received(message_id: str, submission: Submission) -> None:
    """A message stored: who sent it, through which door, how big, to how many."""
    if not log.isEnabledFor(logging.INFO):
        return
    sender = submission.sender
    log.info(
        "id=%s client=%s key=%s source=%s from=<%s> size=%d nrcpt=%d message-id=%s",
        message_id,
        submission.client or "-",
        sender.api_key_id if sender else "-",
        submission.source,
        submission.mail_from,
        len(submission.content),
        len(submission.recipients),
        message_id_header(submission.content),
    )


def attempted(
    message: QueuedMessage, results: Mapping[str, DeliveryResult], pool: str | None
) -> None:
    """One line per recipient of a delivery attempt. `delay` runs from acceptance;
    `delays` splits it: before the upstream session (queue, retry schedule, DNS, failover),
    opening the session (0 when a pooled one was reused), and the SMTP transaction."""
    if not log.isEnabledFor(logging.INFO):
        return
    delay = max(0.0, time.time() - message.created_at)
    for rcpt, result in results.items():
        hop = result.hop
        connect, transfer = (hop.connect, hop.transfer) if hop else (0.0, 0.0)
        log.info(
            "id=%s from=<%s> to=<%s> relay=%s pool=%s delay=%.3f delays=%.3f/%.3f/%.3f dsn=%s "
            "size=%d attempt=%d status=%s reply=%r",
            message.id,
            message.mail_from,
            rcpt,
            hop.relay if hop else "none",
            pool or "none",
            delay,
            max(0.0, delay - connect - transfer),
            connect,
            transfer,
            result.enhanced or _DSN[result.outcome],
            len(message.content),
            message.attempts + 1,
            result.outcome.value,
            result.describe(),
        )


def waiting(message_id: str, pool: str, seconds: float, why: str) -> None:
    """A message held back by a pool's rate or daily limit (no attempt counted)."""
    log.info("id=%s pool=%s status=waiting for %.1fs: %s", message_id, pool, seconds, why)


def held(message_ids: list[str], released: bool = False) -> None:
    """An operator's hold or release (postsuper -h/-H), one line per message, after its
    commit."""
    what = "released from hold" if released else "placed on hold"
    for message_id in message_ids:
        log.info("id=%s status=%s", message_id, what)


def handed_back(message_id: str) -> None:
    """Cut off at shutdown before the upstream had the whole message: back to the queue."""
    log.info("id=%s status=handed back at shutdown (nothing sent)", message_id)


def message_id_header(content: bytes) -> str:
    """The Message-ID field's value (`none` without one), looked for in the header only."""
    value = header_value(content, b"message-id") or b""
    return value.decode("utf-8", "replace")[:300] or "none"
