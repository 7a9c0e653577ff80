"""The SQL of webhook delivery: each webhook reads the events table through a cursor.

    event (written with each change)
      --sender: the events after the webhook's cursor, POST, 2xx--> the cursor moves past them
      --non-2xx / error--> the cursor stays; the webhook backs off
      --older than max_age--> the cursor skips them (+ a `dropped` attempt row)

Nothing is written per event for webhooks: a POST of a batch moves one cursor.

A cursor is a position (txid, id) in commit order. On SQLite commits are serial, so ids are
committed in order: txid is always 0 and the position is the id. On PostgreSQL an id is taken
before its transaction commits, and a later one can commit first; each event also keeps its
transaction's id (`txid`), events are read in (txid, id) order, and only those of
transactions older than every transaction still open (the snapshot's xmin): no event can
later appear before them. A webhook therefore waits for the oldest open write transaction
on the server; Postern's own are short.

A webhook is sent by one node at a time: the node writes its id to `claimed_by` and keeps
`claimed_until` ahead of the clock while it works; a dead node's lease lapses.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from functools import cache
from typing import Any, NamedTuple

from sqlalchemy import (
    ColumnElement,
    Connection,
    Select,
    and_,
    bindparam,
    delete,
    exists,
    func,
    insert,
    or_,
    select,
    text,
    tuple_,
    update,
)

from storage import event_json
from storage.models import Event, MessageMeta, Webhook, WebhookAttempt

W = Webhook
A = WebhookAttempt
E = Event
META = MessageMeta

_INSERT_ATTEMPT = insert(A)


class Position(NamedTuple):
    txid: int
    id: int


START = Position(0, 0)


_SETTLED = text("event.txid < pg_snapshot_xmin(pg_current_snapshot())::text::bigint")


def horizon(conn: Connection) -> Position:
    """The last event that is committed with none still able to appear before it (START
    when there is none): it moves only when events are written."""
    if conn.dialect.name == "postgresql":
        query = select(E.c.txid, E.c.id).where(_SETTLED).order_by(E.c.txid.desc(), E.c.id.desc())
    else:
        query = select(E.c.txid, E.c.id).order_by(E.c.id.desc())
    row = conn.execute(query.limit(1)).first()
    return position_of(row) if row is not None else START


def compare_position(dialect: str, op: Callable[[Any, Any], Any], txid: Any, id_: Any) -> Any:
    """`op` between an event's position and (txid, id_): by (txid, id) on PostgreSQL, by the
    rowid alone on SQLite (txid is 0 there, and the rowid is read in order without a sort)."""
    if dialect == "postgresql":
        return op(tuple_(E.c.txid, E.c.id), tuple_(txid, id_))
    return op(E.c.id, id_)


def _after(conn: Connection, position: Position) -> ColumnElement[bool]:
    result: ColumnElement[bool] = compare_position(
        conn.dialect.name, operator.gt, position.txid, position.id
    )
    return result


@cache
def _between(dialect: str, filtered: bool) -> Select[Any]:
    """The events in (after, upto] (parameters a_txid, a_id, u_txid, u_id) of the wanted
    `types` when `filtered`, in commit order. Built once: these run for every POST."""
    query = select(E).where(
        compare_position(dialect, operator.gt, bindparam("a_txid"), bindparam("a_id")),
        compare_position(dialect, operator.le, bindparam("u_txid"), bindparam("u_id")),
    )
    order = (E.c.txid, E.c.id) if dialect == "postgresql" else (E.c.id,)
    query = query.order_by(*order)
    if filtered:
        query = query.where(E.c.type.in_(bindparam("types", expanding=True)))
    return query


def _range(
    after: Position, upto: Position, types: Collection[str] | None, **more: Any
) -> dict[str, Any]:
    params: dict[str, Any] = {
        "a_txid": after.txid, "a_id": after.id, "u_txid": upto.txid, "u_id": upto.id, **more
    }  # fmt: skip
    if types is not None:
        params["types"] = sorted(types)
    return params


def position_of(row: Any) -> Position:
    return Position(int(row.txid), int(row.id))


def cursor_of(row: Any) -> Position:
    """A webhook row's cursor."""
    return Position(int(row.cursor_txid), int(row.cursor_id))


class Owed(NamedTuple):
    """An event to send: where it stands, when it was written, and its public JSON."""

    txid: int
    id: int
    created_at: float
    json: str


def batch(
    conn: Connection,
    after: Position,
    upto: Position,
    types: Collection[str] | None,
    limit: int,
) -> list[Owed]:
    """The next events to send, each already in its public JSON shape (storage.event_json,
    with the message's tags and metadata), made by the database: a POST of hundreds of
    events then costs Python a join of strings instead of hundreds of dicts."""
    query = _batch(conn.dialect.name, types is not None)
    rows = conn.execute(query, _range(after, upto, types, limit=limit))
    return [Owed(*row) for row in rows]


@cache
def _batch(dialect: str, filtered: bool) -> Select[Any]:
    query = _between(dialect, filtered).limit(bindparam("limit")).subquery()
    shaped = select(
        query.c.txid,
        query.c.id,
        query.c.created_at,
        event_json.as_sql(dialect, query, META.c.tags, META.c.metadata_json),
    )
    return shaped.select_from(
        query.outerjoin(META, META.c.message_id == query.c.message_id)
    ).order_by(query.c.txid, query.c.id)


COUNT_CAP = 1_000_000  # counts of events (dropped, replayed) stop here: they stay cheap


def count_between(
    conn: Connection, after: Position, upto: Position, types: Collection[str] | None
) -> int:
    """Events in (after, upto] of the wanted `types`, at most COUNT_CAP counted."""
    between = _between(conn.dialect.name, types is not None).order_by(None)
    query = between.with_only_columns(E.c.id).limit(COUNT_CAP).subquery()
    counted = conn.execute(select(func.count()).select_from(query), _range(after, upto, types))
    return int(counted.scalar() or 0)


def count_after(conn: Connection, after: Position, cap: int) -> int:
    """Events after `after`, at most `cap` counted."""
    query = select(E.c.id).where(_after(conn, after)).limit(cap).subquery()
    return int(conn.execute(select(func.count()).select_from(query)).scalar() or 0)


def first_since(conn: Connection, since: float) -> Position | None:
    """The first event written at or after `since` (found by time through its index; close
    enough to commit order for a replay)."""
    row = conn.execute(
        select(E.c.txid, E.c.id).where(E.c.created_at >= since).order_by(E.c.created_at).limit(1)
    ).first()
    return position_of(row) if row is not None else None


def before(position: Position) -> Position:
    """The position just before an event's: moving a cursor there sends that event next."""
    return Position(position.txid, position.id - 1)


# --- leases -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Claimed:
    id: str
    failures: int


def _free(now: float) -> ColumnElement[bool]:
    return and_(
        W.c.is_active.is_(True),
        W.c.next_attempt_at <= now,
        or_(W.c.claimed_by.is_(None), W.c.claimed_until < now),
    )


def due(conn: Connection, now: float, skip: Collection[str]) -> list[str]:
    """Webhooks that are active, due, free and have an event after their cursor (a read, so
    an idle node writes nothing)."""
    query = select(W.c.id, W.c.cursor_txid, W.c.cursor_id).where(_free(now))
    if skip:
        query = query.where(W.c.id.not_in(list(skip)))
    found = []
    for row in conn.execute(query).all():
        after = _after(conn, cursor_of(row))
        if conn.execute(select(E.c.id).where(after).limit(1)).first() is not None:
            found.append(row.id)
    return found


def claim(
    conn: Connection, node: str, now: float, until: float, ids: Sequence[str]
) -> list[Claimed]:
    """Lease to `node` those of `ids` still active, due and free."""
    if not ids:
        return []
    rows = conn.execute(
        update(W)
        .where(W.c.id.in_(list(ids)), _free(now))
        .values(claimed_by=node, claimed_until=until)
        .returning(W.c.id, W.c.failures)
    ).all()
    return [Claimed(row.id, row.failures) for row in rows]


def renew(conn: Connection, webhook_id: str, node: str, until: float) -> bool:
    """Extend this node's lease; False when it no longer holds it (or the webhook is gone
    or inactive)."""
    done = conn.execute(
        update(W)
        .where(W.c.id == webhook_id, W.c.claimed_by == node, W.c.is_active.is_(True))
        .values(claimed_until=until)
    )
    return bool(done.rowcount)


def release(conn: Connection, node: str, webhook_id: str | None = None) -> None:
    """Give back one webhook's lease, or every lease `node` holds (start-up, shutdown)."""
    query = update(W).where(W.c.claimed_by == node)
    if webhook_id is not None:
        query = query.where(W.c.id == webhook_id)
    conn.execute(query.values(claimed_by=None, claimed_until=None))


# --- sending ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class WebhookState:
    """What the sender needs to know of a webhook right now."""

    url: str
    secret_enc: str = field(repr=False)
    active: bool
    holder: str | None
    cursor: Position
    event_types: tuple[str, ...]
    final_only: bool
    replayed: Position  # events up to here were replayed at replayed_at
    replayed_at: float

    def written_at(self, event: Owed) -> float:
        """When the event counts as written, for max_age: a replay makes it new again."""
        if self.replayed_at and Position(event.txid, event.id) <= self.replayed:
            return max(event.created_at, self.replayed_at)
        return event.created_at


def target(conn: Connection, webhook_id: str) -> WebhookState | None:
    row = conn.execute(select(W).where(W.c.id == webhook_id)).first()
    if row is None:
        return None
    return WebhookState(
        url=row.url,
        secret_enc=row.secret_enc,
        active=row.is_active,
        holder=row.claimed_by,
        cursor=cursor_of(row),
        event_types=tuple(row.event_types.split()),
        final_only=row.final_only,
        replayed=Position(row.replayed_txid, row.replayed_id),
        replayed_at=row.replayed_at,
    )


def attempt_row(
    webhook_id: str,
    at: float,
    events: int,
    outcome: str,
    status_code: int | None = None,
    error: str = "",
    duration_ms: float = 0.0,
) -> dict[str, Any]:
    return {
        "webhook_id": webhook_id,
        "at": at,
        "events": events,
        "status_code": status_code,
        "error": error[:500],
        "duration_ms": round(duration_ms, 1),
        "outcome": outcome,
    }


def advance(
    conn: Connection, webhook_id: str, node: str, seen: WebhookState, new: Position
) -> bool:
    """Move the cursor from where it was in `seen` to `new` (sent, or skipped) if this node
    still holds the lease and nobody changed it meanwhile: a replay moves it back, or, when it
    is further back already, marks what it replayed (replayed_at), which a skip past max_age
    read before it must not undo. False when it stayed."""
    old = seen.cursor
    done = conn.execute(
        update(W)
        .where(
            W.c.id == webhook_id,
            W.c.claimed_by == node,
            W.c.cursor_txid == old.txid,
            W.c.cursor_id == old.id,
            W.c.replayed_at == seen.replayed_at,
        )
        .values(cursor_txid=new.txid, cursor_id=new.id)
    )
    return bool(done.rowcount)


def delivered(
    conn: Connection,
    webhook_id: str,
    node: str,
    moved: tuple[WebhookState, Position],
    attempt: dict[str, Any],
    until: float,
) -> bool:
    """The receiver took a batch: move the cursor (as seen, to new) past it, log the
    attempt, clear the back-off, renew the lease. False when this node has lost the lease."""
    advance(conn, webhook_id, node, *moved)
    log_attempt(conn, attempt)
    done = conn.execute(
        update(W)
        .where(W.c.id == webhook_id, W.c.claimed_by == node)
        .values(failures=0, next_attempt_at=0.0, claimed_until=until)
    )
    return bool(done.rowcount)


def log_attempt(conn: Connection, attempt: dict[str, Any]) -> None:
    conn.execute(_INSERT_ATTEMPT, attempt)


def failed(
    conn: Connection,
    webhook_id: str,
    node: str,
    attempt: dict[str, Any],
    retry_at: float,
) -> None:
    """The POST failed: log it, count it, wait until `retry_at`, give the lease back."""
    log_attempt(conn, attempt)
    conn.execute(
        update(W)
        .where(W.c.id == webhook_id, W.c.claimed_by == node)
        .values(
            failures=W.c.failures + 1,
            next_attempt_at=retry_at,
            claimed_by=None,
            claimed_until=None,
        )
    )


def young_from(conn: Connection, after: Position, cutoff: float) -> Position | None:
    """Where, after `after`, events written at or after `cutoff` start (by time, then commit
    order: close enough for dropping what is past max_age)."""
    row = conn.execute(
        select(E.c.txid, E.c.id)
        .where(_after(conn, after), E.c.created_at >= cutoff)
        .order_by(E.c.created_at)
        .limit(1)
    ).first()
    return position_of(row) if row is not None else None


def rewind(conn: Connection, webhook_id: str, start: Position, upto: Position, at: float) -> bool:
    """Replay: move an active webhook's cursor back to `start` (unless it is further back
    already) and count events up to `upto` as written `at`. False: no such active webhook."""
    row = conn.execute(
        select(W.c.cursor_txid, W.c.cursor_id).where(W.c.id == webhook_id, W.c.is_active.is_(True))
    ).first()
    if row is None:
        return False
    values: dict[str, Any] = {"replayed_txid": upto.txid, "replayed_id": upto.id, "replayed_at": at}
    if start < cursor_of(row):
        values.update(cursor_txid=start.txid, cursor_id=start.id)
    conn.execute(update(W).where(W.c.id == webhook_id).values(**values))
    return True


_PRUNE = delete(A).where(A.c.webhook_id == bindparam("w_id"), A.c.id < bindparam("below"))


def prune_attempts(conn: Connection, keep: int) -> int:
    """Keep only the latest `keep` attempt rows of each webhook."""
    removed = 0
    for (webhook_id,) in conn.execute(select(W.c.id)).all():
        below = conn.execute(
            select(A.c.id)
            .where(A.c.webhook_id == webhook_id)
            .order_by(A.c.id.desc())
            .offset(keep - 1)
            .limit(1)
        ).scalar()
        if below is not None:
            removed += conn.execute(_PRUNE, {"w_id": webhook_id, "below": below}).rowcount
    # A POST that ended after its webhook was deleted still wrote its attempt row.
    orphans = delete(A).where(~exists().where(W.c.id == A.c.webhook_id))
    return removed + int(conn.execute(orphans).rowcount)
