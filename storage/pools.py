"""SMTP pool records: those declared in the config file are upserted at start."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Sequence
from typing import Any

from sqlalchemy import Connection, select

from storage.db import Database
from storage.models import Pool

P = Pool.__table__  # type: ignore[attr-defined]

_FIELDS = (
    "name",
    "host",
    "port",
    "username",
    "encryption",
    "ip_pool",
    "priority",
    "max_connections",
    "is_default",
    "is_active",
    "from_email",
    "tls_verify",
)


def config_pool_id(name: str) -> str:
    """Stable across restarts and nodes, so queued mail keeps pointing at the same pool."""
    return "smtp_cfg_" + hashlib.sha256(name.encode()).hexdigest()[:16]


async def sync_config_pools(db: Database, pools: Sequence[Any]) -> None:
    """Make the stored config pools exactly those of the file (by name)."""
    now = time.time()
    wanted = {config_pool_id(pool.name): pool for pool in pools}

    def sync(conn: Connection) -> None:
        existing = {row.id for row in conn.execute(select(P.c.id).where(P.c.source == "config"))}
        for pool_id in existing - wanted.keys():
            conn.execute(P.delete().where(P.c.id == pool_id))
        for pool_id, pool in wanted.items():
            values = {name: getattr(pool, name) for name in _FIELDS}
            if pool_id in existing:
                conn.execute(P.update().where(P.c.id == pool_id).values(**values))
            else:
                conn.execute(
                    P.insert().values(
                        id=pool_id, source="config", password_enc="", created_at=now, **values
                    )
                )

    await db.transaction(sync)


async def list_pools(db: Database) -> list[Any]:
    return await db.read(lambda conn: list(conn.execute(select(P).order_by(P.c.priority, P.c.id))))
