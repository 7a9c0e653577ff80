"""PostgreSQL's pooled connections: checked at checkout without a round trip, and one the
server closed is never handed out (storage.db._refuse_if_hung_up)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import pytest
from sqlalchemy import Connection, func, insert, select, text
from sqlalchemy.dialects.postgresql.asyncpg import AsyncAdapt_asyncpg_connection

from storage.db import Database, create_schema, open_database
from storage.models import Meta
from tests.support.databases import clean_postgresql


@pytest.fixture
async def pg() -> AsyncIterator[Database]:
    async with clean_postgresql() as url:
        db = open_database(url)
        try:
            await create_schema(db)
            yield db
        finally:
            await db.dispose()


def backend_pid(conn: Connection) -> int:
    return int(conn.execute(text("SELECT pg_backend_pid()")).scalar_one())


async def test_a_checkout_sends_nothing_before_the_work(
    pg: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SQLAlchemy's pre-ping on asyncpg is three round trips a checkout (BEGIN, an empty
    query, ROLLBACK): none is made."""
    pings = 0
    ping = AsyncAdapt_asyncpg_connection.ping

    def counted(self: AsyncAdapt_asyncpg_connection) -> None:
        nonlocal pings
        pings += 1
        ping(self)

    monkeypatch.setattr(AsyncAdapt_asyncpg_connection, "ping", counted)
    for n in range(5):
        await pg.read(backend_pid)
        await pg.transaction(
            lambda conn, n=n: conn.execute(insert(Meta), {"key": f"c{n}", "value": "1"})
        )
    assert pings == 0


async def test_a_connection_the_server_closed_is_not_handed_out(pg: Database) -> None:
    """A restart or pg_terminate_backend closes every idle pooled connection: the next
    read and the next write open new ones rather than failing on a dead one."""
    before = await pg.read(backend_pid)
    async with second_pool(pg) as admin:
        await admin.read(
            lambda conn: conn.execute(
                text(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                    " WHERE datname = current_database() AND pid <> pg_backend_pid()"
                )
            ).all()
        )
        await wait_gone(admin, before)
    await asyncio.sleep(0.2)  # the loop reads the server's goodbye (loopback: microseconds)

    after = await pg.read(backend_pid)
    assert after != before
    await pg.transaction(lambda conn: conn.execute(insert(Meta), {"key": "after", "value": "1"}))
    stored = await pg.read(
        lambda conn: conn.execute(
            select(func.count()).select_from(Meta).where(Meta.c.key == "after")
        ).scalar()
    )
    assert stored == 1


@contextlib.asynccontextmanager
async def second_pool(db: Database) -> AsyncIterator[Database]:
    """Another pool on the same database (another node's), disposed on exit."""
    other = open_database(db.url)
    try:
        yield other
    finally:
        await other.dispose()


async def wait_gone(admin: Database, pid: int) -> None:
    """Until the server has no session `pid` (up to 5 s)."""

    def alive(conn: Connection) -> bool:
        query = text("SELECT count(*) FROM pg_stat_activity WHERE pid = :pid")
        return bool(conn.execute(query, {"pid": pid}).scalar_one())

    for _ in range(100):
        if not await admin.read(alive):
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"session {pid} still alive after 5 s")
