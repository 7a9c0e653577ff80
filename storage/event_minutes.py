"""The charted events per minute, rolled up: what the Live page and the pools page chart,
read without aggregating the event table's last hour.

    event (written with each change)
      --roll(): the events after the roll's position, in commit order, up to the horizon,
                at most `limit`--> counted into event_minute, and the position moves past
                them, in ONE transaction (a roll cut short anywhere leaves both as they were)
    event_minute (minute, pool, type, user_id) + the events after the position (the tail)
      --per_minute(), per_pool_minute()--> the same answers as storage.event_stream's raw
                aggregation, in one statement (one snapshot: an event is in the rollup or
                in the tail, never both, never neither)

The roll reads the events as a webhook does (storage.webhook_outbox): in (txid, id) order
on PostgreSQL, only up to the horizon (no event can later commit before it), so that every
event at or before the position is counted and none after it. One node of many rolls: the
roll's row is leased (`claimed_by` until `claimed_until`, a conditional UPDATE, renewed by
each roll); and the position moves only from where the roll read it, so that two rolls
overlapping (a lease that lapsed mid-roll) cannot both count the same events.

An event removed by retention stays counted (retention keeps messages for days; the charts
show the last hour). The rows themselves go after KEEP (storage.retention.purge_minutes).
"""

from __future__ import annotations

import operator
from collections.abc import Sequence
from typing import Any

from sqlalchemy import (
    Connection,
    Float,
    Integer,
    Select,
    and_,
    case,
    cast,
    func,
    literal,
    or_,
    select,
    tuple_,
    union_all,
    update,
)

from storage import event_stream
from storage.dialects import dialect_module
from storage.event_stream import CHARTED, EventFilter, MinuteStats, epoch_minute
from storage.models import Event, EventMinute, EventRoll, Message
from storage.webhook_outbox import (
    START,
    Position,
    before,
    compare_position,
    first_since,
    horizon,
    position_of,
)

E = Event
M = Message
EM = EventMinute
R = EventRoll

ROLL = "minutes"  # the roll's row in event_roll
KEEP = 2 * 86400.0  # seconds a minute's counts are kept (retention's purge)
TAIL_CAP = 20_000  # events after the position a reader aggregates raw; past it, all raw
_KEY = ("minute", "pool", "type", "user_id")
_ORDER = {True: (E.c.txid, E.c.id), False: (E.c.id,)}  # commit order: PostgreSQL's, SQLite's

__all__ = ["KEEP", "ROLL", "TAIL_CAP", "per_minute", "per_pool_minute", "position"]
__all__ += ["release", "roll"]


# --- the roll ----------------------------------------------------------------------------------


def position(conn: Connection) -> Position | None:
    """The roll's position: every event at or before it is counted (None: never rolled)."""
    row = conn.execute(select(R.c.position_txid, R.c.position_id).where(R.c.name == ROLL)).first()
    return None if row is None else Position(int(row[0]), int(row[1]))


def _start(conn: Connection, now: float) -> Position:
    """Where a first roll starts: at the start, unless the table holds events older than
    KEEP (a database upgraded with a long history): then before the first event of the
    last KEEP seconds by time (older ones would be purged at once; events are written in
    about time order, so none of the window's is skipped)."""
    keep = now - KEEP
    oldest = conn.execute(select(func.min(E.c.created_at))).scalar()  # ix_event_created
    if oldest is None or oldest >= keep:
        return START
    first = first_since(conn, keep)
    return before(first) if first is not None else horizon(conn)


def _insert(dialect: str) -> Any:
    return dialect_module(dialect).insert


def _claim(conn: Connection, node: str, now: float, until: float) -> bool:
    dialect = conn.dialect.name
    if position(conn) is None:
        at = _start(conn, now)
        values = {"name": ROLL, "position_txid": at.txid, "position_id": at.id}
        conn.execute(_insert(dialect)(R).values(**values).on_conflict_do_nothing())
    claimed = conn.execute(
        update(R)
        .where(
            R.c.name == ROLL,
            or_(R.c.claimed_by.is_(None), R.c.claimed_until < now, R.c.claimed_by == node),
        )
        .values(claimed_by=node, claimed_until=until)
    )
    return claimed.rowcount == 1


def _events(conn: Connection, after: Position, upto: Position, limit: int) -> list[Any]:
    """The events in (after, upto], in commit order, at most `limit`: each one's position,
    minute, type, pool, upstream time and owner."""
    dialect = conn.dialect.name
    minute = epoch_minute(dialect, E.c.created_at)
    columns = (E.c.txid, E.c.id, minute, E.c.type, E.c.pool, E.c.upstream_seconds, M.c.user_id)
    query = (
        select(*columns)
        .select_from(E.outerjoin(M, M.c.id == E.c.message_id))
        .where(
            compare_position(dialect, operator.gt, after.txid, after.id),
            compare_position(dialect, operator.le, upto.txid, upto.id),
        )
        .order_by(*_ORDER[dialect == "postgresql"])
        .limit(limit)
    )
    return list(conn.execute(query))


def _counted(rows: Sequence[Any]) -> list[dict[str, Any]]:
    """The charted events of `rows`, counted per (minute, pool, type, owner)."""
    found: dict[tuple[int, str, str, str], dict[str, Any]] = {}
    for row in rows:
        if row[3] not in CHARTED:
            continue
        key = (int(row[2]), row[4] or "", row[3], row[6] or "")
        slot = found.get(key)
        if slot is None:
            slot = found[key] = dict(zip(_KEY, key, strict=True))
            slot.update(count=0, latency_count=0, latency_sum=0.0, latency_max=None)
        slot["count"] += 1
        seconds = row[5]
        if seconds is not None:
            slot["latency_count"] += 1
            slot["latency_sum"] += float(seconds)
            worst = slot["latency_max"]
            slot["latency_max"] = float(seconds) if worst is None else max(worst, float(seconds))
    return list(found.values())


def _add(conn: Connection, counts: list[dict[str, Any]]) -> None:
    """Add `counts` to event_minute's rows (made when missing)."""
    dialect = conn.dialect.name
    insert = _insert(dialect)(EM)
    new = insert.excluded
    larger = func.greatest if dialect == "postgresql" else func.max  # SQLite's max(a, b)
    upsert = insert.on_conflict_do_update(
        index_elements=list(_KEY),
        set_={
            "count": EM.c.count + new.count,
            "latency_count": EM.c.latency_count + new.latency_count,
            "latency_sum": EM.c.latency_sum + new.latency_sum,
            "latency_max": larger(  # NULL (no latency yet) on either side loses
                func.coalesce(EM.c.latency_max, new.latency_max),
                func.coalesce(new.latency_max, EM.c.latency_max),
            ),
        },
    )
    conn.execute(upsert, counts)


def roll(conn: Connection, node: str, now: float, until: float, limit: int) -> int | None:
    """One roll, in the caller's transaction: lease the roll to `node` until `until`, count
    the charted events after the position (at most `limit` events read, up to the horizon)
    into event_minute and move the position past them. How many events were read (fewer
    than `limit`: caught up), or None when another node holds the lease.

    Everything happens in the transaction: if it does not commit, the counts and the
    position stay as they were, and the next roll reads the same events again."""
    if not _claim(conn, node, now, until):
        return None
    at = position(conn)  # read after the claim: on PostgreSQL the row is locked now
    assert at is not None
    upto = horizon(conn)
    rows = _events(conn, at, upto, limit)
    counts = _counted(rows)
    if counts:
        _add(conn, counts)
    to = upto if len(rows) < limit else position_of(rows[-1])
    if to != at:
        moved = conn.execute(
            update(R)
            .where(
                R.c.name == ROLL,
                R.c.claimed_by == node,
                R.c.position_txid == at.txid,
                R.c.position_id == at.id,
            )
            .values(position_txid=to.txid, position_id=to.id)
        )
        if moved.rowcount != 1:  # cannot happen under the row's lock; never count twice
            raise RuntimeError("the roll's position moved under it")
    return len(rows)


def release(conn: Connection, node: str) -> None:
    """Give the roll's lease back (a node stopping or starting): another node may roll now."""
    conn.execute(
        update(R)
        .where(R.c.name == ROLL, R.c.claimed_by == node)
        .values(claimed_by=None, claimed_until=None)
    )


def epoch_minute_of(at: float) -> int:
    """The minute (since the epoch) of a time: that of event_stream.epoch_minute."""
    return int(at // 60)


# --- the readers -------------------------------------------------------------------------------


def _rollable(flt: EventFilter) -> bool:
    """Whether the rollup can answer the filter: by type, pool and owner only."""
    return (
        flt.message_id is None
        and flt.recipient is None
        and flt.tag is None
        and not flt.subject
        and flt.client is None
        and flt.api_key_id is None
    )


def _small_tail(conn: Connection) -> Position | None:
    """The roll's position, if the roll has run and fewer than TAIL_CAP events are after
    it; else None (a roller far behind, or stopped: the raw aggregation is then the cheaper
    read)."""
    at = position(conn)
    if at is None:
        return None
    dialect = conn.dialect.name
    # The TAIL_CAP-th event after it, in commit order: an ordered read of ix_event_order
    # (the rowid on SQLite) that stops there; a count could be planned as a table scan.
    query = (
        select(E.c.id)
        .where(compare_position(dialect, operator.gt, at.txid, at.id))
        .order_by(*_ORDER[dialect == "postgresql"])
        .offset(TAIL_CAP - 1)
        .limit(1)
    )
    return at if conn.execute(query).first() is None else None


def _after_roll(dialect: str, seen: Position) -> Any:
    """An event is after the roll's position, read by the same statement (one snapshot: the
    rollup and the tail then meet exactly). The position `seen` before it is a bound the
    planner can estimate (the subqueries' values are unknown to it): the position only
    moves forward, so every event after the current one is after `seen` too."""
    txid = select(R.c.position_txid).where(R.c.name == ROLL).scalar_subquery()
    id_ = select(R.c.position_id).where(R.c.name == ROLL).scalar_subquery()
    if dialect == "postgresql":
        after = tuple_(E.c.txid, E.c.id) > tuple_(txid, id_)
        return and_(E.c.txid >= seen.txid, after)
    return and_(E.c.id > seen.id, E.c.id > id_)


def _sources(
    dialect: str,
    since: float,
    flt: EventFilter,
    seen: Position,
    pools: Sequence[str] | None = None,
) -> Select[Any]:
    """The window's counts per minute and type (and pool, when `pools` are given: of those
    pools): the rollup's rows plus the tail's events, grouped together. Each row: [pool,]
    minute, type, count, latency_count, latency_sum, latency_max."""
    first = epoch_minute_of(since)
    rolled = select(
        EM.c.pool, EM.c.minute, EM.c.type, EM.c.count, EM.c.latency_count, EM.c.latency_sum,
        EM.c.latency_max,
    ).where(EM.c.minute >= first, EM.c.type.in_(flt.types or CHARTED))  # fmt: skip
    seconds = E.c.upstream_seconds
    tail = (
        select(
            func.coalesce(E.c.pool, ""),
            epoch_minute(dialect, E.c.created_at),
            E.c.type,
            literal(1, Integer),
            case((seconds.is_(None), 0), else_=1),
            func.coalesce(seconds, cast(literal(0.0), Float)),
            seconds,
        )
        .select_from(E.join(M, M.c.id == E.c.message_id) if flt.user_id else E)
        # `+ 0`: read after the position (a few rows), never the hour on ix_event_created
        .where(_after_roll(dialect, seen), E.c.created_at + 0 >= since, E.c.type.in_(CHARTED))
    )
    if flt.types:
        tail = tail.where(E.c.type.in_(flt.types))
    if flt.pool is not None:
        rolled = rolled.where(EM.c.pool == flt.pool)
        tail = tail.where(E.c.pool == flt.pool)
    if flt.user_id is not None:
        rolled = rolled.where(EM.c.user_id == flt.user_id)
        # on the event's message (by its key), not every message of the owner's index
        tail = tail.where(func.coalesce(M.c.user_id, "") == flt.user_id)
    if pools is not None:
        rolled = rolled.where(EM.c.pool.in_(pools))
        tail = tail.where(E.c.pool.in_(pools))
    both = union_all(rolled, tail).subquery()
    c = both.c
    keys = (c[1], c[2]) if pools is None else (c[0], c[1], c[2])
    counted = select(
        *keys,
        func.sum(c[3]), func.sum(c[4]), func.sum(c[5]), func.max(c[6]),
    ).group_by(*keys)  # fmt: skip
    return counted


def per_minute(conn: Connection, since: float, flt: EventFilter) -> list[MinuteStats]:
    """What storage.event_stream.per_minute answers (per minute since `since`, on a minute,
    the charted events), read from event_minute: the window's rows (at most minutes x pools
    x types, for one owner when `flt.user_id`), plus the events after the roll's position,
    which the roll has not counted yet (the tail: a few seconds' worth while it keeps up).

    Raw (event_stream.per_minute) when the rollup cannot answer: a filter by recipient,
    message_id, tag, subject or client, a restriction by api_key_id (the rollup counts per
    owner, not per key), no roll yet, or a tail of TAIL_CAP events or more (a roller far
    behind)."""
    seen = _small_tail(conn) if _rollable(flt) else None
    if seen is None:
        return event_stream.per_minute(conn, since, flt)
    first = epoch_minute_of(since)
    found: dict[int, dict[str, Any]] = {}
    for at, kind, count, timed, total, worst in conn.execute(
        _sources(conn.dialect.name, since, flt, seen)
    ):
        minute = int(at) - first
        slot = found.setdefault(minute, {"minute": minute})
        slot[kind] = int(count)
        if kind == "delivered" and timed:
            slot["latency_mean"], slot["latency_max"] = float(total) / int(timed), float(worst)
    return [MinuteStats(**found[m]) for m in sorted(found)]


def per_pool_minute(
    conn: Connection, since: float, pools: list[str]
) -> dict[str, list[MinuteStats]]:
    """What storage.event_stream.per_pool_minute answers (per pool of `pools` and minute
    since `since`, every sender's charted events), read from event_minute plus the tail, as
    per_minute; raw when the roll has not run or is TAIL_CAP events or more behind."""
    if not pools:
        return {}
    seen = _small_tail(conn)
    if seen is None:
        return event_stream.per_pool_minute(conn, since, pools)
    first = epoch_minute_of(since)
    query = _sources(conn.dialect.name, since, EventFilter(), seen, pools)
    found: dict[str, dict[int, dict[str, Any]]] = {}
    for pool, at, kind, count, *_ in conn.execute(query):
        minute = int(at) - first
        slot = found.setdefault(pool, {}).setdefault(minute, {"minute": minute})
        slot[kind] = int(count)
    return {
        pool: [MinuteStats(**minutes[m]) for m in sorted(minutes)]
        for pool, minutes in found.items()
    }
