"""Retention: final messages leave storage, with everything about them, once old enough
(`purge_chunk`, after `[storage] retention`); their stored bodies go sooner
(`purge_bodies_chunk`, after `[storage] body_retention`), the metadata staying; so do
the rows of what came back (gateway.bounces).

A large body's pieces (storage.pieces) are not deleted here: once its `message_body` row
is gone they are orphans, which storage.pieces.purge_orphans deletes a few at a time
(deleting 20 MB costs what writing them did, and must not hold the writer).

Only final messages go (`due_at` NULL: delivered, bounced, cancelled, sandbox); a message
with work left is never touched, however old (max_age bounds that). Each call deletes one
bounded chunk in one transaction, so a large purge never holds the database for long, and
a message is deleted whole or not at all.

What came back, each with its own rule:
- a bounce report (`bounce_report`) goes once received before the same limit as messages
  ([storage] retention): its message is gone by then, or soon. Its effects stay (the
  suppression, the recipient's status, the events until their message goes). Its dedupe
  keys go with it: an inbox never hands it over again (processed mail is flagged or moved
  and the sync reads only unflagged mail), and a sender retrying a month later is unheard of.
- a skipped inbox message's record (`inbox_skip`) goes by the same limit (from when it was
  skipped); the mail itself stays in the mailbox, flagged, as always.
- a soft-bounce count (`soft_bounce`) whose newest bounce is out of the sliding window
  ([bounces] soft_window) is dead: the next soft bounce of that address would count 1
  anyway (storage.bounce_reports.count_soft), so deleting it changes nothing but the size.

And the charted events' counts per minute (`event_minute`, storage.event_minutes) go once
their minute is older than event_minutes.KEEP (two days): the charts show the last hour.
"""

from __future__ import annotations

from sqlalchemy import Connection, delete, func, select, tuple_

from storage.event_minutes import epoch_minute_of
from storage.models import (
    BounceReport,
    Event,
    EventMinute,
    InboxSkip,
    Message,
    MessageBody,
    MessageMeta,
    MessageSubjectWord,
    MessageTag,
    Recipient,
    SoftBounce,
)

M = Message
B = MessageBody
BR = BounceReport
SB = SoftBounce
SK = InboxSkip
EM = EventMinute
FINAL = ("delivered", "bounced", "cancelled", "sandbox")
_SIDE_TABLES = (
    Recipient,
    Event,
    MessageMeta,
    MessageTag,
    MessageSubjectWord,
    MessageBody,
)


def purge_chunk(conn: Connection, before: float, limit: int = 1000) -> int:
    """Delete up to `limit` final messages created before `before`; how many went."""
    # created_at narrows through the index; updated_at (when it became final) decides, so
    # that a message deferred for days keeps its fresh final events as long as the rest.
    old = (
        select(M.c.id)
        .where(
            M.c.status.in_(FINAL),
            M.c.created_at < before,
            M.c.updated_at < before,
            M.c.due_at.is_(None),
        )
        .limit(limit)
    )
    if conn.dialect.name == "postgresql":
        old = old.with_for_update(skip_locked=True)  # two nodes purging take different rows
    ids = list(conn.execute(old).scalars())
    if not ids:
        return 0
    for table in _SIDE_TABLES:
        conn.execute(delete(table).where(table.c.message_id.in_(ids)))
    conn.execute(delete(M).where(M.c.id.in_(ids), M.c.due_at.is_(None)))
    return len(ids)


def purge_reports(conn: Connection, before: float, limit: int = 1000) -> int:
    """Delete up to `limit` bounce reports received before `before`; how many went.

    Read in id order, oldest first, by the primary key (no index on received_at: ids follow
    arrival), and stopped at the first report not yet old, so a chunk reads at most `limit`
    rows. A report a node with a clock behind stored after a newer one waits until the one
    before it goes: late by at most the clocks' difference. Deleting twice is harmless, so
    two nodes sweeping at once need no lock."""
    rows = conn.execute(select(BR.c.id, BR.c.received_at).order_by(BR.c.id).limit(limit))
    ids: list[int] = []
    for row in rows:
        if row.received_at >= before:
            break
        ids.append(int(row.id))
    if ids:
        conn.execute(delete(BR).where(BR.c.id.in_(ids), BR.c.received_at < before))
    return len(ids)


def purge_skips(conn: Connection, before: float, limit: int = 1000) -> int:
    """Delete up to `limit` records of skipped inbox messages made before `before`. The
    table holds only the messages too big to hand over, so it is read without an index."""
    key = (SK.c.account_id, SK.c.mailbox, SK.c.uidvalidity, SK.c.uid)
    old = [
        tuple(row)
        for row in conn.execute(select(*key).where(SK.c.created_at < before).limit(limit))
    ]
    if old:
        conn.execute(delete(SK).where(tuple_(*key).in_(old), SK.c.created_at < before))
    return len(old)


def purge_soft(conn: Connection, window_started_before: float, limit: int = 1000) -> int:
    """Delete up to `limit` soft-bounce counts whose newest bounce is before
    `window_started_before` (now - [bounces] soft_window): out of the sliding window, they
    count nothing any more. A count that took a bounce meanwhile has a new `last_at` and
    stays (the delete checks again).
    The table holds one row per address soft-bounced within the window; it is read without
    an index, which no write then pays for: with 100,000 live rows the scan took 5-11 ms on
    PostgreSQL and 13-34 ms on SQLite (measured on a busy 2-core machine), once a sweep."""
    stale = select(SB.c.email).where(SB.c.last_at < window_started_before).limit(limit)
    emails = list(conn.execute(stale).scalars())
    if emails:
        conn.execute(delete(SB).where(SB.c.email.in_(emails), SB.c.last_at < window_started_before))
    return len(emails)


def purge_bodies_chunk(conn: Connection, before: float, limit: int = 1000) -> int:
    """Delete the stored bodies of up to `limit` final messages that became final before
    `before`; how many went. It reads the bodies table (only the recent ones are there) and
    each one's message by its key, never a scan of every message kept."""
    old = (
        select(B.c.message_id)
        .select_from(B.join(M, M.c.id == B.c.message_id))
        .where(M.c.due_at.is_(None), M.c.status.in_(FINAL), M.c.updated_at < before)
        .limit(limit)
    )
    if conn.dialect.name == "postgresql":
        old = old.with_for_update(of=B, skip_locked=True)
    ids = list(conn.execute(old).scalars())
    if not ids:
        return 0
    conn.execute(delete(B).where(B.c.message_id.in_(ids)))
    return len(ids)


def purge_minutes(conn: Connection, before_time: float, limit: int = 1000) -> int:
    """Delete the counts of up to `limit` rows' minutes (whole minutes: a few more rows at
    most) older than `before_time`, oldest first, read on the primary key; how many went."""
    older = epoch_minute_of(before_time)
    oldest = select(EM.c.minute).where(EM.c.minute < older).order_by(EM.c.minute).limit(limit)
    last = conn.execute(select(func.max(oldest.subquery().c.minute))).scalar()
    if last is None:
        return 0
    gone = conn.execute(delete(EM).where(EM.c.minute <= int(last), EM.c.minute < older))
    return int(gone.rowcount or 0)
