"""Retention: final messages leave storage, with everything about them, once old enough
(`purge_chunk`, after `[storage] retention`); their stored bodies go sooner
(`purge_bodies_chunk`, after `[storage] body_retention`), the metadata staying.

Only final messages go (`due_at` NULL: delivered, bounced, cancelled, sandbox); a message
with work left is never touched, however old (max_age bounds that). Each call deletes one
bounded chunk in one transaction, so a large purge never holds the database for long, and
a message is deleted whole or not at all.
"""

from __future__ import annotations

from sqlalchemy import Connection, delete, select

from storage.models import Event, Message, MessageBody, MessageMeta, MessageTag, Recipient

M = Message.__table__  # type: ignore[attr-defined]
FINAL = ("delivered", "bounced", "cancelled", "sandbox")
_SIDE_TABLES = (
    Recipient.__table__,  # type: ignore[attr-defined]
    Event.__table__,  # type: ignore[attr-defined]
    MessageMeta.__table__,  # type: ignore[attr-defined]
    MessageTag.__table__,  # type: ignore[attr-defined]
    MessageBody.__table__,  # type: ignore[attr-defined]
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


B = MessageBody.__table__  # type: ignore[attr-defined]


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
