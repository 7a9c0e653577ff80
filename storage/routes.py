"""Transport-map entries made over the API (`/api/v1/routes`, `postern routes`): mail to a
recipient domain goes through a named pool or an ip_pool group. The config's `[[routes]]`
are never stored; gateway.routing weighs both (the config's first on the same domain)."""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, delete, select
from sqlalchemy.exc import IntegrityError

from storage.db import Database
from storage.errors import Refused
from storage.models import RecipientRoute

R = RecipientRoute


class RouteExists(Refused):
    """A stored route already names this recipient domain."""


@dataclass(frozen=True)
class RouteRecord:
    id: str
    recipient_domain: str
    pool: str | None
    ip_pool: str | None
    created_at: float
    created_by: str | None = None


def _record(row: Any) -> RouteRecord:
    return RouteRecord(
        id=row.id,
        recipient_domain=row.recipient_domain,
        pool=row.pool,
        ip_pool=row.ip_pool,
        created_at=row.created_at,
        created_by=row.created_by,
    )


async def add_route(
    db: Database,
    recipient_domain: str,
    *,
    pool: str | None = None,
    ip_pool: str | None = None,
    created_by: str | None = None,
) -> RouteRecord:
    """Store a route (its domain already checked and normalised; one of pool and ip_pool);
    RouteExists when the domain has one already."""
    record = RouteRecord(
        id="rte_" + secrets.token_hex(8),
        recipient_domain=recipient_domain,
        pool=pool,
        ip_pool=ip_pool,
        created_at=time.time(),
        created_by=created_by,
    )
    taken = f"a route for {recipient_domain} exists already: delete it first"

    def work(conn: Connection) -> RouteRecord:
        found = select(R.c.id).where(R.c.recipient_domain == recipient_domain)
        if conn.execute(found).first() is not None:
            raise RouteExists(taken)
        conn.execute(R.insert().values(**record.__dict__))
        return record

    try:
        return await db.transaction(work)
    except IntegrityError:  # a racing insert of the same domain
        raise RouteExists(taken) from None


async def list_routes(db: Database) -> list[RouteRecord]:
    query = select(R).order_by(R.c.recipient_domain)
    return await db.read(lambda conn: [_record(row) for row in conn.execute(query)])


async def get_route(db: Database, key: str) -> RouteRecord | None:
    """By id (rte_...) or by recipient domain."""
    column = R.c.id if key.startswith("rte_") else R.c.recipient_domain
    row = await db.read(lambda conn: conn.execute(select(R).where(column == key)).first())
    return None if row is None else _record(row)


async def delete_route(db: Database, route_id: str) -> RouteRecord | None:
    """Delete one route; None when there is none with that id."""

    def work(conn: Connection) -> RouteRecord | None:
        row = conn.execute(select(R).where(R.c.id == route_id)).first()
        if row is None:
            return None
        conn.execute(delete(R).where(R.c.id == route_id))
        return _record(row)

    return await db.transaction(work)
