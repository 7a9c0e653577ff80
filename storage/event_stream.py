"""The SQL of watching events live (GET /v1/events/stream) and of the dashboard's Live page.

A stream reads the events table as a webhook does (storage.webhook_outbox): in commit order,
from its position up to the horizon, the last event no uncommitted one can still appear
before (on PostgreSQL a later id can commit first; on SQLite the id is the order). Each read
is bounded (`limit` rows) and joined to its message, so that a member's stream shows only
their own mail, as GET /v1/messages does, and so that the search's criteria on the message
(its client's address, its Subject's words) are checked on the joined row in the same
statement: the read stays driven by the events' order, a key lookup per event.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass, replace
from typing import Any, NamedTuple

from sqlalchemy import BigInteger, Connection, Integer, Select, cast, exists, func, select

from storage import event_json
from storage.message_search import from_client, subject_has
from storage.models import Event, Message, MessageMeta, MessageTag
from storage.webhook_outbox import START, Position, compare_position, horizon, position_of

E = Event
M = Message
META = MessageMeta
TAG = MessageTag

__all__ = ["START", "EventFilter", "Position", "Streamed", "horizon", "read", "resume_at"]
__all__ += ["before_last"]
__all__ += ["CHARTED", "MinuteStats", "epoch_minute", "per_minute", "per_pool_minute", "recent"]


@dataclass(frozen=True)
class EventFilter:
    """Every criterion given must match; user_id / api_key_id say whose mail is seen."""

    types: tuple[str, ...] = ()
    message_id: str | None = None
    recipient: str | None = None
    pool: str | None = None
    tag: str | None = None
    # As storage.message_search.MessageFilter's (made by the same parser,
    # gateway.queue.operations.make_filter): words the Subject has, the client's key range.
    subject: tuple[str, ...] = ()
    client: tuple[str, str] | None = None
    user_id: str | None = None
    api_key_id: str | None = None


class Streamed(NamedTuple):
    """One event to send: its position (the stream's next start) and its public JSON."""

    position: Position
    id: int
    json: str


def _filtered(query: Select[Any], flt: EventFilter) -> Select[Any]:
    if flt.types:
        query = query.where(E.c.type.in_(flt.types))
    if flt.message_id is not None:
        query = query.where(E.c.message_id == flt.message_id)
    if flt.recipient is not None:
        query = query.where(E.c.recipient == flt.recipient)
    if flt.pool is not None:
        query = query.where(E.c.pool == flt.pool)
    if flt.tag is not None:  # on ix_message_tag_tag
        tagged = (TAG.c.tag == flt.tag) & (TAG.c.message_id == E.c.message_id)
        query = query.where(exists().where(tagged))
    if flt.subject:  # on the event's message: message_subject_word by primary key
        query = query.where(*subject_has(flt.subject))
    if flt.client is not None:  # on the event's message row, joined by its key
        query = query.where(from_client(flt.client))
    if flt.user_id is not None:
        query = query.where(M.c.user_id == flt.user_id)
    if flt.api_key_id is not None:
        query = query.where(M.c.api_key_id == flt.api_key_id)
    return query


def _shaped(dialect: str) -> Select[Any]:
    document = event_json.as_sql(dialect, E, META.c.tags, META.c.metadata_json)
    # An outer join: an event about no message (reputation_at_risk, message_id "") is in
    # the stream too; a member's or a key's filter on the message's owner leaves it out.
    joined = E.outerjoin(M, M.c.id == E.c.message_id).outerjoin(
        META, META.c.message_id == E.c.message_id
    )
    return select(E.c.txid, E.c.id, document).select_from(joined)


def read(
    conn: Connection, after: Position, upto: Position, flt: EventFilter, limit: int
) -> tuple[list[Streamed], Position]:
    """The events in (after, upto] that match, at most `limit`, in commit order, and where
    the next read starts: past the last one sent, or `upto` when fewer came (the rows in
    between did not match)."""
    dialect = conn.dialect.name
    query = _shaped(dialect).where(
        compare_position(dialect, operator.gt, after.txid, after.id),
        compare_position(dialect, operator.le, upto.txid, upto.id),
    )
    order = (E.c.txid, E.c.id) if dialect == "postgresql" else (E.c.id,)
    query = _filtered(query, flt).order_by(*order).limit(limit)
    rows = [Streamed(position_of(r), int(r.id), r[2]) for r in conn.execute(query)]
    if len(rows) < limit:
        return rows, upto
    return rows, rows[-1].position


def resume_at(conn: Connection, event_id: int) -> Position:
    """The position of a `Last-Event-ID`: that event's, or, if it is gone (pruned), just
    before the first event written after it (by id: close enough to commit order)."""
    row = conn.execute(select(E.c.txid, E.c.id).where(E.c.id == event_id)).first()
    if row is not None:
        return position_of(row)
    later = conn.execute(
        select(E.c.txid, E.c.id).where(E.c.id > event_id).order_by(E.c.id).limit(1)
    ).first()
    if later is None:
        return horizon(conn)
    return Position(int(later.txid), int(later.id) - 1)


def before_last(conn: Connection, count: int) -> Position:
    """Where to start to read the last `count` events written (by id, before any filter:
    `postern tail`'s first lines), up to the horizon."""
    if count <= 0:
        return horizon(conn)
    query = select(E.c.id).order_by(E.c.id.desc()).offset(count).limit(1)
    older = conn.execute(query).scalar()
    return START if older is None else resume_at(conn, int(older))


RECENT_SCAN = 5000  # the newest events an owner's recent ones are looked for among first


def recent(conn: Connection, flt: EventFilter, limit: int) -> list[str]:
    """The last `limit` events that match, newest first, as public JSON.

    An owner's (`flt.user_id`) on SQLite: first among the newest RECENT_SCAN events, each
    joined to its message by key (an owner with much mail: by the owner's index on message,
    SQLite would read every message of theirs, 100,000 of a million, to sort their events:
    430 ms); when fewer than `limit` are there, by the owner's messages (little mail).
    PostgreSQL's planner, with statistics, picks between the two itself (3-4 ms)."""
    shaped = _shaped(conn.dialect.name)
    if flt.user_id is not None and conn.dialect.name == "sqlite":
        newest = select(E.c.id).order_by(E.c.id.desc()).offset(RECENT_SCAN).limit(1)
        among = _filtered(shaped, replace(flt, user_id=None)).where(
            E.c.id > func.coalesce(newest.scalar_subquery(), 0),
            func.coalesce(M.c.user_id, "") == flt.user_id,  # not by the owner's index
        )
        found = [r[2] for r in conn.execute(among.order_by(E.c.id.desc()).limit(limit))]
        if len(found) == limit:
            return found
    query = _filtered(shaped, flt).order_by(E.c.id.desc()).limit(limit)
    return [r[2] for r in conn.execute(query)]


class MinuteStats(NamedTuple):
    """One minute's delivered, deferred and bounced events, and the upstream's SMTP
    transaction time of its deliveries (mean and worst, seconds)."""

    minute: int  # minutes after the window's start
    delivered: int = 0
    deferred: int = 0
    bounced: int = 0
    latency_mean: float | None = None
    latency_max: float | None = None


CHARTED = ("delivered", "deferred", "bounced")


def epoch_minute(dialect: str, created_at: Any) -> Any:
    """The minute of a time, in minutes since the epoch: the same expression wherever events
    are counted per minute (here, and storage.event_minutes' rollup), so that both bin an
    event alike."""
    if dialect == "postgresql":
        return cast(func.floor(created_at / 60.0), BigInteger)
    return cast(created_at / 60.0, Integer)  # SQLite truncates: times are never negative


def _minute(dialect: str, since: float) -> Any:
    """The minute after the window's start (`since`, on a minute)."""
    return epoch_minute(dialect, E.c.created_at) - int(since // 60)


def per_minute(conn: Connection, since: float, flt: EventFilter) -> list[MinuteStats]:
    """Per minute since `since` (on a minute), the charted events, read raw (by time on
    ix_event_created, one grouped row per minute and type): every event of the window is
    read. storage.event_minutes.per_minute answers the same from the per-minute rollup."""
    minute = _minute(conn.dialect.name, since).label("minute")
    latency = E.c.upstream_seconds
    query = (
        select(minute, E.c.type, func.count(), func.avg(latency), func.max(latency))
        .select_from(E.join(M, M.c.id == E.c.message_id))
        .where(E.c.created_at >= since, E.c.type.in_(CHARTED))
        .group_by(minute, E.c.type)
    )
    found: dict[int, dict[str, Any]] = {}
    for row in conn.execute(_filtered(query, flt)):
        slot = found.setdefault(int(row[0]), {"minute": int(row[0])})
        slot[row[1]] = int(row[2])
        if row[1] == "delivered" and row[3] is not None:
            slot["latency_mean"], slot["latency_max"] = float(row[3]), float(row[4])
    return [MinuteStats(**found[m]) for m in sorted(found)]


def per_pool_minute(
    conn: Connection, since: float, pools: list[str]
) -> dict[str, list[MinuteStats]]:
    """Per pool of `pools` and minute since `since`, its delivered, deferred and bounced
    events, every sender's (the pools page's throughput): one grouped row per pool, minute
    and type, read raw by time on ix_event_created (storage.event_minutes.per_pool_minute
    answers the same from the rollup)."""
    if not pools:
        return {}
    minute = _minute(conn.dialect.name, since).label("minute")
    query = (
        select(E.c.pool, minute, E.c.type, func.count())
        .where(E.c.created_at >= since, E.c.type.in_(CHARTED), E.c.pool.in_(pools))
        .group_by(E.c.pool, minute, E.c.type)
    )
    found: dict[str, dict[int, dict[str, Any]]] = {}
    for pool, at, kind, count in conn.execute(query):
        slot = found.setdefault(pool, {}).setdefault(int(at), {"minute": int(at)})
        slot[kind] = int(count)
    return {
        pool: [MinuteStats(**minutes[m]) for m in sorted(minutes)]
        for pool, minutes in found.items()
    }
