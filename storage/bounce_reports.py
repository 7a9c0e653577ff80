"""Reports that came back, as stored (table `bounce_report`), and the rows their effects
change: soft-bounce counts, a recipient bounced after delivery, the message's status.

gateway.bounces.ingest decides what to write and runs it all in one transaction; this
module only says how. A report is inserted once: `insert` does nothing when its
`dedupe_key` or `content_hash` is already there (two nodes, a restart mid-sync) and says so.

A report's identity (`content_hash`) is the SHA-256 of its bytes, scoped to the envelope
recipient it came for when it came with one (`identity`): one SMTP transaction to the
bounce listener with several VERP recipients is one report per recipient (each about its
own message), and the same bytes sent again to the same recipient are one report. The hash
of the bytes alone is kept too (`raw_hash`): the same bytes met without a recipient (an
upload, an inbox) after the listener took them, or before, are one report with them.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Connection,
    Row,
    bindparam,
    delete,
    false,
    func,
    or_,
    select,
    update,
)

from storage.dialects import dialect_module
from storage.errors import StorageError
from storage.models import BounceReport, MailAccount, Message, Recipient, SoftBounce, Suppression

BR = BounceReport
SB = SoftBounce
M = Message
R = Recipient
MA = MailAccount
SUP = Suppression

STATUSES = ("processed", "unmatched", "unparsed", "ignored")
LIST_COLUMNS = tuple(c for c in BR.columns if c.name != "raw")


def content_hash(raw: bytes) -> str:
    return hashlib.sha256(raw).hexdigest()


def scope(envelope_recipient: str | None) -> str | None:
    """The envelope recipient as a report's identity uses it (a VERP address: any case)."""
    found = (envelope_recipient or "").strip().strip("<>").strip().lower()
    return found or None


def identity(digest: str, envelope_recipient: str | None) -> str:
    """A report's identity: the hash of its bytes (`digest`), or, when it came for an
    envelope recipient, a hash of that recipient and `digest` (64 hex digits either way)."""
    scoped = scope(envelope_recipient)
    if scoped is None:
        return digest
    return hashlib.sha256(f"{scoped}\0{digest}".encode()).hexdigest()


def dedupe_key(
    digest: str,
    account_id: str | None,
    mailbox: str | None,
    uidvalidity: int | None,
    uid: int | None,
) -> str:
    """What makes a report one: its place in an IMAP mailbox when it has one (the same
    message fetched again after a restart), else its identity (`digest` is that)."""
    if account_id is None or mailbox is None or uidvalidity is None or uid is None:
        return f"sha256:{digest}"
    place = f"{account_id}\0{mailbox}\0{uidvalidity}\0{uid}".encode()
    return f"imap:{hashlib.sha256(place).hexdigest()}"


def insert(conn: Connection, row: dict[str, Any]) -> int | None:
    """Insert a report; its id, or None when it was there already (nothing written)."""
    dialect = dialect_module(conn.dialect.name)
    statement = dialect.insert(BR).values(**row).on_conflict_do_nothing().returning(BR.c.id)
    found = conn.execute(statement).scalar()
    return None if found is None else int(found)


def existing(
    conn: Connection, key: str, ident: str, digest: str, envelope_recipient: str | None
) -> int | None:
    """The id of the report already stored under `key` or `ident`. For a report that came
    for no envelope recipient (an upload, an inbox), also one with the same bytes stored
    for any recipient (`raw_hash`: the listener met it first); for one that came for a
    recipient, also one with the same bytes (`digest`) stored for no recipient or for this
    very one (earlier versions stored a listener report under the bare hash of its bytes,
    for its first recipient only)."""
    query = select(BR.c.id).where(or_(BR.c.dedupe_key == key, BR.c.content_hash == ident))
    found = conn.execute(query.limit(1)).scalar()
    if found is not None:
        return int(found)
    if ident == digest:
        same_bytes = select(BR.c.id).where(BR.c.raw_hash == digest).order_by(BR.c.id)
        found = conn.execute(same_bytes.limit(1)).scalar()
        return None if found is None else int(found)
    scoped = scope(envelope_recipient)
    same = select(BR.c.id, BR.c.envelope_recipient).where(BR.c.content_hash == digest)
    for row in conn.execute(same.limit(1)):  # content_hash is unique: one row at most
        if row.envelope_recipient is None or scope(row.envelope_recipient) == scoped:
            return int(row.id)
    return None


def status(conn: Connection, report_id: int) -> str | None:
    """The stored report's status (None: no such report)."""
    found = conn.execute(select(BR.c.status).where(BR.c.id == report_id)).scalar()
    return None if found is None else str(found)


def lock(conn: Connection, report_id: int) -> bool:
    """Hold the report's row until the transaction ends (PostgreSQL: FOR UPDATE, so two
    operators' changes of one report run one after the other; SQLite has one writer);
    False when there is no such report."""
    query = select(BR.c.id).where(BR.c.id == report_id).with_for_update()
    return conn.execute(query).first() is not None


def update_report(conn: Connection, report_id: int, **values: Any) -> None:
    conn.execute(update(BR).where(BR.c.id == report_id).values(**values))


@dataclass(frozen=True)
class Viewer:
    """Whose reports a caller sees when not everyone's (api.bounce_ops says who): those
    matched to a message sent by `user_id` (by session or by any of their keys) or, for a
    key made at the console, by `api_key_id`; and, for a connected account `user_id` owns,
    those of a message that left through it and those that arrived in its mailbox (matched
    or not). Any other report matched to no message (or to one retention deleted) is in
    none of these."""

    user_id: str | None = None
    api_key_id: str | None = None


def _seen_by(viewer: Viewer) -> ColumnElement[bool]:
    """Over `bounce_report` outer-joined to its message."""
    allowed: list[ColumnElement[bool]] = []
    if viewer.user_id is not None:
        allowed.append(M.c.user_id == viewer.user_id)
        owned = select(MA.c.id).where(MA.c.user_id == viewer.user_id)
        allowed.append(M.c.pool_id.in_(owned))  # an account's route is its id (gateway.routing)
        allowed.append(BR.c.account_id.in_(owned))  # arrived in its mailbox
    if viewer.api_key_id is not None:
        allowed.append(M.c.api_key_id == viewer.api_key_id)
    return or_(*allowed) if allowed else false()


def get(conn: Connection, report_id: int, viewer: Viewer | None = None) -> Row[Any] | None:
    """The report, with its message's `sender_user_id` and `sender_key_id` (None when
    unmatched or the message is gone); None when there is none or `viewer` may not see it
    (None: everyone's)."""
    sender = (M.c.user_id.label("sender_user_id"), M.c.api_key_id.label("sender_key_id"))
    query = (
        select(BR, *sender)
        .select_from(BR.outerjoin(M, M.c.id == BR.c.message_id))
        .where(BR.c.id == report_id)
    )
    if viewer is not None:
        query = query.where(_seen_by(viewer))
    return conn.execute(query).first()


@dataclass(frozen=True)
class Page:
    rows: list[Row[Any]]
    next_cursor: int | None  # the id to pass as `before` for the next page


def page(
    conn: Connection,
    statuses: Sequence[str] | None,
    limit: int,
    before: int | None,
    viewer: Viewer | None = None,
) -> Page:
    """Newest first, without the raw bytes; `statuses` None is every status, `viewer` None
    everyone's reports."""
    query = select(*LIST_COLUMNS).order_by(BR.c.id.desc()).limit(limit + 1)
    if viewer is not None:
        query = query.outerjoin(M, M.c.id == BR.c.message_id).where(_seen_by(viewer))
    if statuses:
        query = query.where(BR.c.status.in_(list(statuses)))
    if before is not None:
        query = query.where(BR.c.id < before)
    rows = list(conn.execute(query))
    more = len(rows) > limit
    rows = rows[:limit]
    return Page(rows, int(rows[-1].id) if more and rows else None)


# --- the message a report names ----------------------------------------------------------


def message_of(conn: Connection, message_id: str) -> Row[Any, Any, Any, Any, Any, Any] | None:
    """The message (id, status, due_at, and what a notification to its sender needs: source,
    mail_from, created_at) or None when there is none (or no longer)."""
    columns = (M.c.id, M.c.status, M.c.due_at, M.c.source, M.c.mail_from, M.c.created_at)
    query = select(*columns).where(M.c.id == message_id)
    return conn.execute(query).first()


@dataclass(frozen=True)
class Sender:
    """Whose messages a report may act on when it came from a caller who may act only on
    their own mail (api.bounce_ops.uploader says who): those sent by `user_id` (by session
    or any of their keys) or, for a key made at the console, by `api_key_id`. The same rule
    as reading a message (api.message_ops.restriction) and reclassifying a report."""

    user_id: str | None = None
    api_key_id: str | None = None


def _sent_by(sender: Sender) -> ColumnElement[bool]:
    if sender.user_id is not None:
        return M.c.user_id == sender.user_id
    if sender.api_key_id is not None:
        return M.c.api_key_id == sender.api_key_id
    return false()


def sent_by(conn: Connection, message_id: str, sender: Sender) -> bool:
    """Whether `sender` sent the message."""
    query = select(M.c.id).where(M.c.id == message_id, _sent_by(sender))
    return conn.execute(query).first() is not None


def messages_by_header(
    conn: Connection, header_message_id: str, sender: Sender | None = None
) -> list[Row[Any]]:
    """(id, created_at) of the two most recent messages whose own Message-ID is this one
    (ix_message_header_id), of those `sender` sent when given: one is a match, two say it
    is ambiguous."""
    query = (
        select(M.c.id, M.c.created_at)
        .where(M.c.header_message_id == header_message_id)
        .order_by(M.c.created_at.desc(), M.c.id.desc())
        .limit(2)
    )
    if sender is not None:
        query = query.where(_sent_by(sender))
    return list(conn.execute(query))


def recipients_of(conn: Connection, message_id: str) -> list[tuple[str, str]]:
    """(email, status) of each of the message's recipients."""
    query = select(R.c.email, R.c.status).where(R.c.message_id == message_id)
    return [(row.email, row.status) for row in conn.execute(query)]


def lock_message(conn: Connection, message_id: str) -> str | None:
    """The message's status, its row locked until the transaction ends (PostgreSQL: an
    attempt's record of it, which updates that row first, is waited for and then read; one
    that comes after waits for this transaction; SQLite has one writer). None: no message."""
    query = select(M.c.status).where(M.c.id == message_id)
    if conn.dialect.name != "sqlite":
        query = query.with_for_update()
    status = conn.execute(query).scalar()
    return None if status is None else str(status)


def bounce_recipient(
    conn: Connection, message_id: str, email: str, response: str, now: float
) -> str | None:
    """A recipient the upstream had taken, or that is still pending, becomes bounced; the
    status it had ("delivered" or "pending"), None when it changed nothing (final already:
    bounced, cancelled...; or no such recipient). The caller holds the message's row
    (`lock_message`), as an attempt's record does: what it reads here is what the last
    writer committed, and the one that moves the recipient is the one that tells."""
    current = select(R.c.status).where(R.c.message_id == message_id, R.c.email == email)
    was = conn.execute(current).scalar()
    if was not in ("delivered", "pending"):
        return None
    changed = conn.execute(
        update(R)
        .where(R.c.message_id == message_id, R.c.email == email, R.c.status == was)
        .values(status="bounced", response=response[:1000], updated_at=now)
    )
    return str(was) if changed.rowcount else None


def suppressed(conn: Connection, key: str) -> bool:
    """Whether the mailbox `key` (a mailbox key) is on the suppression list."""
    return conn.execute(select(SUP.c.email).where(SUP.c.email == key)).first() is not None


def set_final_status(conn: Connection, message_id: str, old: str, new: str, now: float) -> bool:
    """A final message (no work left, so no worker holds it) from `old` to `new`."""
    changed = conn.execute(
        update(M)
        .where(M.c.id == message_id, M.c.status == old, M.c.due_at.is_(None))
        .values(status=new, updated_at=now)
    )
    return bool(changed.rowcount)


def settle_unclaimed(
    conn: Connection, message_id: str, new: str, response: str, now: float
) -> bool:
    """A message with work left that no worker holds (unclaimed, or held by an operator)
    and no recipient pending any more becomes `new`, final (never due again): the report
    that bounced its last pending recipient settles it, as its next attempt would have.
    A message a worker holds is left to that worker's record (gateway.queue.store), which
    sees the recipient final and settles it the same way. One UPDATE: the conditions hold
    at the moment it writes."""
    pending = select(R.c.id).where(R.c.message_id == message_id, R.c.status == "pending")
    changed = conn.execute(
        update(M)
        .where(
            M.c.id == message_id,
            M.c.due_at.is_not(None),
            M.c.claimed_by.is_(None),
            ~pending.exists(),
        )
        .values(
            status=new, due_at=None, held_at=None, last_response=response[:1000], updated_at=now
        )
    )
    return bool(changed.rowcount)


# --- soft bounces ------------------------------------------------------------------------


MAX_RECENT = 1000  # times kept per address: more than any soft_limit a window needs


def count_soft(
    conn: Connection, email: str, now: float, window: float, keep: int = MAX_RECENT
) -> int:
    """Count one soft bounce of `email` (a mailbox key); how many it had within the last
    `window` (a sliding window: each bounce counts for `window` after it, then no more).
    The times are kept (`recent`, at most the latest `keep`: the limit that decides), with
    `first_at` the oldest of them and `last_at` the newest. A row from before `recent` was
    kept (schema 10) is read as its bounces at `first_at` and the last at `last_at`."""
    row = _locked_soft(conn, email, now)
    within = sorted(t for t in _recent(row) if now - t < window)
    times = (within[-(keep - 1) :] if keep > 1 else []) + [now]
    values = {
        "bounces": len(times), "first_at": times[0], "last_at": now,
        "recent": json.dumps(times, separators=(",", ":")),
    }  # fmt: skip
    conn.execute(update(SB).where(SB.c.email == email).values(**values))
    return len(times)


def _locked_soft(conn: Connection, email: str, now: float) -> Any:
    """The address's row, held until the transaction ends: created empty if there is none
    (INSERT ... ON CONFLICT DO NOTHING, then SELECT ... FOR UPDATE), so two soft bounces
    of a new address at once on PostgreSQL neither collide on the key nor lose a count
    (SQLite has one writer)."""
    dialect = dialect_module(conn.dialect.name)
    empty = {"email": email, "bounces": 0, "first_at": now, "last_at": now, "recent": "[]"}
    for _ in range(3):  # the retention sweep may delete it between the two statements
        conn.execute(dialect.insert(SB).values(**empty).on_conflict_do_nothing())
        row = conn.execute(select(SB).where(SB.c.email == email).with_for_update()).first()
        if row is not None:
            return row
    raise StorageError(f"soft_bounce row of {email} deleted each time it was written")


def _recent(row: Any) -> list[float]:
    if row.recent:
        try:
            found = json.loads(row.recent)
        except ValueError:
            found = None
        if isinstance(found, list):
            return [float(t) for t in found if isinstance(t, int | float)]
    count = max(int(row.bounces or 0), 1)
    return [float(row.first_at)] * (count - 1) + [float(row.last_at)]


def remove_suppressions_noted(
    conn: Connection, keys: Sequence[str], reasons: Sequence[str], mark: str
) -> list[str]:
    """Delete the suppressions of `keys` whose reason is one of `reasons` and whose note
    ends with `mark` (what one report added); the keys deleted."""
    if not keys:
        return []
    statement = (
        delete(SUP)
        .where(
            SUP.c.email.in_(list(keys)),
            SUP.c.reason.in_(list(reasons)),
            SUP.c.note.endswith(mark, autoescape=True),
        )
        .returning(SUP.c.email)
    )
    return [str(email) for email in conn.execute(statement).scalars()]


def processed_for(
    conn: Connection, emails: Sequence[str], keys: Sequence[str], excluding: int
) -> list[Row[Any]]:
    """(id, entries) of the processed reports, other than `excluding`, that may speak of
    one of `keys` (mailbox keys): about a message with a recipient spelled as one of
    `emails` (ix_recipient_email_time), or whose entries name a key in any case (a rare
    operator's action: it reads the processed reports, which retention bounds). The caller
    reads the entries for what they say."""
    if not emails and not keys:
        return []
    about = select(R.c.message_id).where(R.c.email.in_(sorted(set(emails))))
    named = [func.lower(BR.c.entries).contains(key, autoescape=True) for key in sorted(set(keys))]
    query = (
        select(BR.c.id, BR.c.entries)
        .where(BR.c.status == "processed", BR.c.id != excluding)
        .where(or_(BR.c.message_id.in_(about), *named))
        .order_by(BR.c.id.desc())
    )
    return list(conn.execute(query))


# A delivery to these addresses (`email`, mailbox keys) forgets their soft bounces: run in
# the attempt's own transaction (gateway.queue.store), one primary-key delete each.
FORGET_SOFT = delete(SB).where(SB.c.email == bindparam("soft_email"))


def as_json(row: Any, with_raw: bool = False) -> dict[str, Any]:
    """A report's public shape (times as UNIX seconds: each door formats them)."""
    entries = json.loads(row.entries or "[]")
    found = {
        "id": int(row.id), "received_at": row.received_at, "source": row.source,
        "account_id": row.account_id, "mailbox": row.mailbox, "uid": row.uid,
        "kind": row.kind, "format": row.format, "status": row.status, "error": row.error,
        "message_id": row.message_id, "recipient": row.recipient,
        "matched_by": row.matched_by, "classification": row.cls, "rule": row.rule,
        "reason": row.reason, "size": row.size,
        "entries": entries if isinstance(entries, list) else [],
    }  # fmt: skip
    if with_raw:
        raw = bytes(row.raw)
        found["raw"] = raw.decode("utf-8", "backslashreplace")
        found["truncated"] = len(raw) < row.size
    return found
