"""Recorded sends for the reputation tests: messages and their events written straight
into a real database (SQLite or PostgreSQL), as delivery and the bounce processing write
them, so the roll-up and the score read what they would in service."""

from __future__ import annotations

import itertools
from typing import Any

from sqlalchemy import Connection, insert

from gateway.message import DeliveryResult, Outcome
from gateway.queue import events
from storage.db import Database
from storage.models import Message

M = Message
_ids = itertools.count(1)


async def record_sends(
    db: Database,
    pool: str,
    mail_from: str,
    at: float,
    *,
    delivered: int = 0,
    bounced: int = 0,
    complaints: int = 0,
    deferred: int = 0,
    late_bounces: int = 0,
    waited: int = 0,
) -> None:
    """One message From `mail_from` sent through `pool` at `at` with these recipients'
    outcomes (`deferred`: a receiver's 451 reply; `late_bounces`: hard bounces reported
    later, whose events name no pool; `waited`: Postern's own waiting for a limit,
    `deferred` with no reply, as Queue.postpone writes it)."""
    message_id = f"rep{next(_ids):08d}"

    def work(conn: Connection) -> None:
        conn.execute(
            insert(M).values(
                id=message_id, status="delivered", source="http", mail_from=mail_from,
                last_pool=pool, created_at=at, updated_at=at, attempts=1, size=10,
                forced_attempts=0, route_default=False,
            )
        )  # fmt: skip
        rows: list[dict[str, Any]] = []
        reply = DeliveryResult(Outcome.DEFERRED, 451, "4.7.1", "try again later")
        plan = [
            (events.DELIVERED, delivered, pool, None),
            (events.BOUNCED, bounced, pool, None),
            (events.COMPLAINT, complaints, None, None),
            (events.DEFERRED, deferred, pool, reply),
            (events.BOUNCED, late_bounces, None, None),
            (events.DEFERRED, waited, pool, None),
        ]
        for kind, count, named, result in plan:
            rows += [
                events.row(
                    kind,
                    message_id,
                    "delivered",
                    at,
                    f"r{i}@example.net",
                    pool=named,
                    result=result,
                    response=None if result else "waiting: pool relay",
                )
                for i in range(count)
            ]
        if rows:
            conn.execute(events.INSERT_EVENT, rows)

    await db.transaction(work)
