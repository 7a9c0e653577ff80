"""What one classified entry of a matched report does, written on the caller's connection
(gateway.bounces.ingest runs it in the transaction that stores the report).

    hard       suppressed (`hard_bounce`, the rule as its note); the recipient becomes
               bounced (from delivered or pending), and a delivered message with it, or
               one it leaves nothing pending (gateway.queue.states); `bounced`
    soft       counted per address; at [bounces] soft_limit within the last soft_window
               (a sliding window: each bounce counts for soft_window after it),
               suppressed (`soft_bounce`); `soft_bounce`
    policy     `policy_block` and a log line: a block says nothing of the address
    complaint  suppressed (`complaint`); `complaint`
    auto_reply, ignore: nothing

A hard entry that moves a recipient into bounced is told to the envelope sender of SMTP
mail as a bounce during delivery is (gateway.queue.notify, `[delivery] notify_sender`):
`tell_sender`, one RFC 3464 report per report and message, in the same transaction. The
rule, here and in delivery (gateway.queue.store): whoever moves a recipient into bounced,
its first final state, tells, in the transaction of that move; nobody else does. So:

    delivered  the upstream had taken it: the report tells; a delivered message becomes
               bounced
    pending    not settled yet (deferred, queued, held): the report tells, and the
               recipient is final, so no attempt goes to it again. The message, when that
               was its last pending recipient and no worker holds it, is settled as
               bounced here; with others pending, its attempts go on and its last one
               settles it as bounced
    claimed    pending, and a worker is sending it right now: the report tells; the
               worker's record takes no result for a recipient no longer pending (nor
               does its notification name it), and settles the message bounced if it
               would have been delivered or has nothing pending left
               (storage.queue_sql.SETTLE_TAKEN). The upstream may have taken it all the
               same: the recipient stays bounced, as told, and the attempt writes no
               event for it (the report's stays its last, counted once)
    final      bounced (by an attempt or a report), cancelled...: nobody is told again

The message's row is locked first (`lock_message`), as an attempt's record locks it first,
so of a report and an attempt recording the same recipient at once (or two reports)
exactly one moves it, and each reads what the other committed. A report met again, a
second report about the recipient, or a reclassification finds it bounced already and
tells nobody; a reclassification away from hard does not unsend it. A report that bounces
a recipient of HTTP mail, of a null sender or of a notification, or whose sender is
suppressed, or with notify_sender off, tells nobody; it is applied all the same.

Every event carries `async: true` and the report's classification (`detail`), through the
same outbox as every other event, so webhooks get them. Suppressions are added only if
absent (an operator's own entry stands), and their note ends with the report that caused
them (`[bounce report 12]`): `undo` lifts exactly those when the report is reclassified,
then puts back each one another processed report still justifies (its own hard or complaint
entry for that address, a complaint before a hard bounce, the newest first), under that
report's mark: a report that found the address suppressed already added nothing of its own.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass

from sqlalchemy import Connection

from gateway.addresses import mailbox_key
from gateway.message import QueuedMessage
from gateway.queue import events, ids, states
from gateway.queue.notify import HEADER_PREFIX, Notifier, reported
from gateway.queue.store import notification_rows
from storage import bounce_reports as stored
from storage import queue_sql
from storage import suppressions as stored_suppressions

log = logging.getLogger("postern.bounces")

SUPPRESSING = {"hard": "hard_bounce", "complaint": "complaint"}
REASONS = ("hard_bounce", "complaint", "soft_bounce")  # the suppressions a report adds
EVENT_OF = {
    "hard": events.BOUNCED,
    "soft": events.SOFT_BOUNCE,
    "policy": events.POLICY_BLOCK,
    "complaint": events.COMPLAINT,
}


@dataclass(frozen=True)
class Hit:
    """One entry of a report, matched to a recipient of a message, and its class."""

    report_id: int
    message_id: str
    recipient: str  # as the message's recipient row has it
    key: str  # its mailbox key (suppressions, soft counts)
    cls: str
    rule: str
    reason: str
    status: str = ""  # the enhanced status code the report gave
    diagnostic: str = ""
    smtp_code: str = ""
    source: str = ""


@dataclass(frozen=True)
class SoftPolicy:
    limit: int
    window: float


@dataclass(frozen=True)
class Applied:
    """What one hit did: the addresses (keys) it suppressed, and whether it moved its
    recipient into bounced (delivered or pending before, bounced now: the sender is told)."""

    suppressed: list[str]
    bounced_now: bool = False


def apply(conn: Connection, hit: Hit, soft: SoftPolicy, now: float) -> Applied:
    """Write what `hit` does."""
    kind = EVENT_OF.get(hit.cls)
    if kind is None:  # auto_reply, ignore
        return Applied([])
    status, bounced_now = _message_status(conn, hit, now)
    suppressed = _suppress(conn, hit, soft, now)
    conn.execute(events.INSERT_EVENT, [_event(kind, hit, status, now)])
    if hit.cls == "policy":
        log.warning(
            "policy block reported for %s (%s, rule %s): %s",
            hit.message_id, hit.status, hit.rule, hit.diagnostic[:200],
        )  # fmt: skip
    return Applied(suppressed, bounced_now)


def _message_status(conn: Connection, hit: Hit, now: float) -> tuple[str, bool]:
    """The message's status after `hit` (a hard bounce may change it), and whether `hit`
    moved its recipient into bounced (from delivered or from pending: its sender is told)."""
    if hit.cls != "hard":
        return _status_of(conn, hit.message_id), False
    response = f"{hit.status} {hit.diagnostic}".strip() or "bounced by a report"
    # The message's row first, locked: an attempt recording it right now is waited for and
    # read as it left it; one recorded later sees this bounce (storage.queue_sql).
    status = stored.lock_message(conn, hit.message_id) or "delivered"
    was = stored.bounce_recipient(conn, hit.message_id, hit.recipient, response, now)
    after = states.after_late_bounce(status)
    if after is not None and stored.set_final_status(conn, hit.message_id, status, after, now):
        return after, was is not None
    # What it would settle as were nothing pending; settle_unclaimed checks that in SQL.
    settled = states.after_late_bounce(status, if_nothing_pending=True)
    if was != "pending" or settled is None:
        return status, was is not None
    if stored.settle_unclaimed(conn, hit.message_id, settled, response, now):
        return settled, True
    return status, True


def _status_of(conn: Connection, message_id: str) -> str:
    message = stored.message_of(conn, message_id)
    return str(message.status) if message is not None else "delivered"


def tell_sender(
    conn: Connection, notifier: Notifier, bounced_now: list[Hit], now: float
) -> str | None:
    """Store the notification to the message's envelope sender naming the recipients
    `bounced_now` (hits of one report, about one message, that moved them from delivered or
    pending to bounced), with the remote's Status and Diagnostic-Code: SMTP mail with a
    sender that is not null (never a notification's), not suppressed. Its message id, or
    None."""
    row = stored.message_of(conn, bounced_now[0].message_id)
    if row is None:
        return None
    # Only the header is returned: the rest of a body of up to 20 MB stays on disk.
    body = queue_sql.body_prefix(conn, row.id, HEADER_PREFIX) or b""  # b"": retention took it
    message = QueuedMessage(
        id=row.id, mail_from=row.mail_from, recipients=[h.recipient for h in bounced_now],
        content=body, attempts=0, created_at=row.created_at, source=row.source,
    )  # fmt: skip
    if not notifier.wanted(message, message.source):
        return None
    if stored.suppressed(conn, mailbox_key(message.envelope_sender)):
        return None
    results = {hit.recipient: reported(hit.status, hit.diagnostic) for hit in bounced_now}
    notice_id = ids.new_id_for(False)
    rows = notification_rows(notifier.bounce(message, results, now), notice_id, now)
    for statement, params in rows.steps:
        conn.execute(statement, params)
    return notice_id


def _suppress(conn: Connection, hit: Hit, soft: SoftPolicy, now: float) -> list[str]:
    reason = SUPPRESSING.get(hit.cls)
    note = hit.rule
    if hit.cls == "soft":
        seen = stored.count_soft(conn, hit.key, now, soft.window, keep=soft.limit)
        if seen >= soft.limit:
            reason, note = "soft_bounce", f"{hit.rule}: {seen} soft bounces within the window"
    if reason is None:
        return []
    note = f"{note[:450]} {mark(hit.report_id)}"
    row = {"email": hit.key, "reason": reason, "created_at": now, "note": note}
    conn.execute(stored_suppressions.add_if_absent(conn.dialect.name == "sqlite"), [row])
    return [hit.key]


def mark(report_id: int) -> str:
    """How a suppression's note names the report that caused it (its end)."""
    return f"[bounce report {report_id}]"


def undo(conn: Connection, report_id: int, keys: list[str]) -> list[str]:
    """Lift the suppressions of `keys` (mailbox keys) that report `report_id` itself added
    (a report's reason, and a note ending with its mark); an operator's entry, or one
    another report added, stays. The keys lifted."""
    return stored.remove_suppressions_noted(conn, keys, REASONS, mark(report_id))


def reestablish(
    conn: Connection, report_id: int, keys: list[str], spellings: list[str], now: float
) -> list[str]:
    """After `undo` lifted `keys`: suppress again each one that another processed report
    still justifies (a hard or complaint entry matched to it; a complaint first, then the
    newest), noted with that report's mark. `spellings` are the addresses as the message
    recipients' rows have them. The keys suppressed again."""
    if not keys:
        return []
    best: dict[str, tuple[int, int, str, str]] = {}  # key: (rank, id, class, rule)
    for row in stored.processed_for(conn, spellings, keys, report_id):
        try:
            entries = json.loads(row.entries or "[]")
        except ValueError:
            continue
        for entry in entries if isinstance(entries, list) else []:
            if not isinstance(entry, dict) or entry.get("cls") not in SUPPRESSING:
                continue
            key = mailbox_key(str(entry.get("matched") or ""))
            if key not in keys:
                continue
            rank = (1 if entry["cls"] == "complaint" else 0, int(row.id))
            if key not in best or rank > best[key][:2]:
                best[key] = (*rank, str(entry["cls"]), str(entry.get("rule") or ""))
    rows = [
        {
            "email": key,
            "reason": SUPPRESSING[cls],
            "created_at": now,
            "note": f"{rule[:450]} {mark(other)}",
        }
        for key, (_, other, cls, rule) in sorted(best.items())
    ]
    if rows:
        conn.execute(stored_suppressions.add_if_absent(conn.dialect.name == "sqlite"), rows)
    return sorted(best)


def _event(kind: str, hit: Hit, status: str, now: float) -> dict[str, object]:
    row = events.row(
        kind, hit.message_id, status, now, hit.recipient,
        response=hit.diagnostic[:1000] or hit.reason, detail=detail(hit),
    )  # fmt: skip
    row["enhanced"] = hit.status[:16] or None
    row["code"] = int(hit.smtp_code) if hit.smtp_code.isdigit() else None
    return row


def detail(hit: Hit) -> str:
    """The keys a report's event adds to the public event. No nulls: SQLite merges them in
    with json_patch, which drops null members."""
    bounce = {
        "report_id": hit.report_id,
        "classification": hit.cls,
        "rule": hit.rule,
        "reason": hit.reason,
        "diagnostic": hit.diagnostic,
        "status": hit.status,
        "source": hit.source,
    }
    return json.dumps({"async": True, "bounce": bounce}, separators=(",", ":"))
