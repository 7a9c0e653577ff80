"""storage.throttle on SQLite and PostgreSQL: the rolling window, the daily cap, and two
nodes racing for the same pool's last slots (PostgreSQL: the pool row lock)."""

from __future__ import annotations

import asyncio
import time

from sqlalchemy import Connection, func, select

from storage import throttle as sql
from storage.db import Database
from storage.models import Pool

P = Pool.__table__  # type: ignore[attr-defined]
POOL = "smtp_limited"


async def _add_pool(db: Database) -> None:
    await db.transaction(
        lambda conn: conn.execute(
            P.insert().values(id=POOL, name="limited", host="127.0.0.1", port=25,
                              created_at=time.time())
        )
    )  # fmt: skip


async def _reserve(db: Database, now: float, count: int, window: float, daily: int) -> object:
    return await db.transaction(lambda conn: sql.reserve(conn, POOL, now, count, window, daily))


async def test_rolling_window(backend: Database) -> None:
    await _add_pool(backend)
    start = 1_000_000.0
    granted = [await _reserve(backend, start + i, 3, 10.0, 0) for i in range(3)]
    assert all(isinstance(g, int) and g > 0 for g in granted)
    refused = await _reserve(backend, start + 5, 3, 10.0, 0)
    assert isinstance(refused, sql.Refused) and refused.reason == "rate"
    assert refused.slots == (start + 10, start + 11, start + 12)
    # The first send leaves the window at start + 10: one slot again, and only one.
    assert isinstance(await _reserve(backend, start + 10.5, 3, 10.0, 0), int)
    assert isinstance(await _reserve(backend, start + 10.6, 3, 10.0, 0), sql.Refused)


async def test_a_sent_row_moves_its_window(backend: Database) -> None:
    await _add_pool(backend)
    send_id = await _reserve(backend, 100.0, 1, 10.0, 0)
    await backend.transaction(
        lambda conn: conn.execute(sql.SENT, {"send_id": send_id, "done": 104.0})
    )
    refused = await _reserve(backend, 111.0, 1, 10.0, 0)  # 10 s after the answer, not the start
    assert isinstance(refused, sql.Refused) and refused.slots == (114.0,)


async def test_daily_cap_until_utc_midnight(backend: Database) -> None:
    await _add_pool(backend)
    noon = 1_700_049_600.0  # 2023-11-15 12:00 UTC
    assert sql.utc_day(noon) == "2023-11-15"
    for _ in range(2):
        assert await _reserve(backend, noon, 0, 0.0, 2) == 0
    refused = await _reserve(backend, noon + 60, 0, 0.0, 2)
    assert isinstance(refused, sql.Refused) and refused.reason == "daily"
    assert refused.slots == (1_700_092_800.0,)  # 2023-11-16 00:00 UTC
    assert await _reserve(backend, 1_700_092_800.0, 0, 0.0, 2) == 0  # a new day


async def test_two_nodes_never_exceed_the_limit(backend: Database, other_db: Database) -> None:
    await _add_pool(backend)
    now = time.time()
    tries = [_reserve(db, now, 10, 60.0, 0) for _ in range(20) for db in (backend, other_db)]
    results = await asyncio.gather(*tries)
    assert sum(isinstance(r, int) for r in results) == 10

    def rows(conn: Connection) -> int:
        return int(conn.execute(select(func.count()).select_from(sql.PS)).scalar_one())

    assert await backend.read(rows) == 10


async def test_prune_drops_what_no_limit_counts(backend: Database) -> None:
    await _add_pool(backend)
    now = 2_000_000_000.0
    await _reserve(backend, now - 3 * 86400, 5, 60.0, 5)
    await _reserve(backend, now, 5, 60.0, 5)
    await backend.transaction(lambda conn: sql.prune(conn, now))

    def counts(conn: Connection) -> tuple[int, int]:
        sends = conn.execute(select(func.count()).select_from(sql.PS)).scalar_one()
        days = conn.execute(select(func.count()).select_from(sql.PD)).scalar_one()
        return int(sends), int(days)

    assert await backend.read(counts) == (1, 1)
