"""The SQL of webhook delivery: fan events out to deliveries, lease a webhook to one sender,
read its oldest deliveries, and record how a POST went.

    event (pending) --dispatch--> webhook_delivery (one per webhook that wants it)
                                  --sender: POST, 2xx--> deleted (+ an attempt row)
                                  --non-2xx / error--> kept; the webhook backs off
                                  --older than max_age--> dropped (+ an attempt row)

A webhook is sent by one node at a time: the node writes its id to `claimed_by` and keeps
`claimed_until` ahead of the clock while it works; a dead node's lease lapses.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, bindparam, delete, exists, insert, or_, select, text, update

from storage.models import Event, Webhook, WebhookAttempt, WebhookDelivery
from storage.webhooks import lock_outbox, wanted_types

W = Webhook.__table__  # type: ignore[attr-defined]
D = WebhookDelivery.__table__  # type: ignore[attr-defined]
A = WebhookAttempt.__table__  # type: ignore[attr-defined]
E = Event.__table__  # type: ignore[attr-defined]

PENDING = text("event.pending")  # as written, so that SQLite uses the partial index
_INSERT_DELIVERY = insert(D)
_INSERT_ATTEMPT = insert(A)


@dataclass(frozen=True)
class Dispatched:
    events: int  # events fanned out (their pending flag cleared)
    deliveries: int  # deliveries queued for them
    webhooks: frozenset[str]  # the webhooks that got some


def dispatch(conn: Connection, final: Collection[str], now: float, limit: int) -> Dispatched:
    """In the caller's transaction: queue a delivery of each pending event (oldest first, at
    most `limit`) to every active webhook that wants it, and clear their pending flag.

    On PostgreSQL only one node dispatches at a time (a try-lock: a busy node skips a turn),
    so delivery ids follow event ids across nodes."""
    if not lock_outbox(conn, wait=False):
        return Dispatched(0, 0, frozenset())
    pending = select(E.c.id, E.c.type).where(PENDING).order_by(E.c.id).limit(limit)
    if conn.dialect.name == "postgresql":
        pending = pending.with_for_update(skip_locked=True)
    ids = pending.with_only_columns(E.c.id)
    hooks = conn.execute(
        select(W.c.id, W.c.event_types, W.c.final_only).where(W.c.is_active.is_(True))
    ).all()
    if not hooks:  # nobody listens: just clear the flag
        cleared = conn.execute(
            update(E).where(E.c.id.in_(ids.scalar_subquery())).values(pending=False)
        )
        return Dispatched(int(cleared.rowcount), 0, frozenset())
    rows = conn.execute(pending).all()
    if not rows:
        return Dispatched(0, 0, frozenset())
    filters = [(h.id, wanted_types(h.event_types.split(), h.final_only, final)) for h in hooks]
    deliveries = [
        {"webhook_id": hook, "event_id": row.id, "created_at": now}
        for row in rows
        for hook, types in filters
        if types is None or row.type in types
    ]
    if deliveries:
        conn.execute(_INSERT_DELIVERY, deliveries)
    conn.execute(
        update(E).where(E.c.id.in_([row.id for row in rows])).values(pending=False),
    )
    return Dispatched(len(rows), len(deliveries), frozenset(d["webhook_id"] for d in deliveries))


# --- leases -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Claimed:
    id: str
    failures: int


def claim(
    conn: Connection, node: str, now: float, until: float, skip: Collection[str]
) -> list[Claimed]:
    """Lease to `node` every active webhook that is due, free, and owed something."""
    owed = exists().where(D.c.webhook_id == W.c.id)
    free = or_(W.c.claimed_by.is_(None), W.c.claimed_until < now)
    query = update(W).where(W.c.is_active.is_(True), W.c.next_attempt_at <= now, free, owed)
    if skip:
        query = query.where(W.c.id.not_in(list(skip)))
    rows = conn.execute(
        query.values(claimed_by=node, claimed_until=until).returning(W.c.id, W.c.failures)
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
class Target:
    """What the sender needs to know of a webhook right now."""

    url: str
    secret_enc: str
    active: bool
    holder: str | None


def target(conn: Connection, webhook_id: str) -> Target | None:
    row = conn.execute(
        select(W.c.url, W.c.secret_enc, W.c.is_active, W.c.claimed_by).where(W.c.id == webhook_id)
    ).first()
    if row is None:
        return None
    return Target(row.url, row.secret_enc, row.is_active, row.claimed_by)


@dataclass(frozen=True)
class Owed:
    delivery_id: int
    event_id: int
    created_at: float


def oldest(conn: Connection, webhook_id: str, limit: int) -> list[Owed]:
    """The webhook's oldest deliveries, in id order."""
    rows = conn.execute(
        select(D.c.id, D.c.event_id, D.c.created_at)
        .where(D.c.webhook_id == webhook_id)
        .order_by(D.c.id)
        .limit(limit)
    )
    return [Owed(row.id, row.event_id, row.created_at) for row in rows]


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


def delivered(
    conn: Connection,
    webhook_id: str,
    node: str,
    delivery_ids: Sequence[int],
    attempt: dict[str, Any],
    until: float,
) -> bool:
    """The receiver took these: delete them, log the attempt, clear the back-off, renew the
    lease. False when this node has lost the lease (the deliveries are gone all the same)."""
    conn.execute(delete(D).where(D.c.id.in_(list(delivery_ids))))
    conn.execute(_INSERT_ATTEMPT, attempt)
    done = conn.execute(
        update(W)
        .where(W.c.id == webhook_id, W.c.claimed_by == node)
        .values(failures=0, next_attempt_at=0.0, claimed_until=until)
    )
    return bool(done.rowcount)


def forget(conn: Connection, ids: Sequence[int]) -> None:
    """Delete deliveries whose events no longer exist."""
    conn.execute(delete(D).where(D.c.id.in_(list(ids))))


def failed(
    conn: Connection,
    webhook_id: str,
    node: str,
    attempt: dict[str, Any],
    retry_at: float,
) -> None:
    """The POST failed: log it, count it, wait until `retry_at`, give the lease back."""
    conn.execute(_INSERT_ATTEMPT, attempt)
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


def drop_older(conn: Connection, webhook_id: str, before: float, now: float) -> int:
    """Drop the webhook's deliveries queued before `before` (past max_age); logs one
    `dropped` attempt with their number."""
    dropped = conn.execute(
        delete(D).where(D.c.webhook_id == webhook_id, D.c.created_at < before)
    ).rowcount
    if dropped:
        conn.execute(
            _INSERT_ATTEMPT,
            attempt_row(webhook_id, now, dropped, "dropped", error="older than max_age"),
        )
    return int(dropped)


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
