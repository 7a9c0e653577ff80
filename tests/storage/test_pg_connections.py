"""PostgreSQL's pooled connections: checked at checkout without a round trip unless idle for
a while, and one the server closed is never handed out (storage.db._refuse_if_hung_up)."""

from __future__ import annotations

import asyncio

import pytest
from sqlalchemy import Connection, func, insert, select, text
from sqlalchemy.dialects.postgresql.asyncpg import AsyncAdapt_asyncpg_connection

import storage.db
from storage.db import Database
from storage.models import Meta

# The storage fixtures' `backend`, on PostgreSQL alone.
pytestmark = pytest.mark.parametrize("backend", ["postgresql"], indirect=True)


def backend_pid(conn: Connection) -> int:
    return int(conn.execute(text("SELECT pg_backend_pid()")).scalar_one())


@pytest.fixture
def pings(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The backend pid of each ping sent (SQLAlchemy's, on asyncpg: BEGIN, an empty
    query, ROLLBACK), counted as they go."""
    sent: list[int] = []
    ping = AsyncAdapt_asyncpg_connection.ping

    def counted(self: AsyncAdapt_asyncpg_connection) -> None:
        sent.append(self.driver_connection.get_server_pid())
        ping(self)

    monkeypatch.setattr(AsyncAdapt_asyncpg_connection, "ping", counted)
    return sent


async def test_a_busy_checkout_sends_nothing_before_the_work(
    backend: Database, pings: list[int]
) -> None:
    for n in range(5):
        await backend.read(backend_pid)
        await backend.transaction(
            lambda conn, n=n: conn.execute(insert(Meta), {"key": f"c{n}", "value": "1"})
        )
    assert pings == []


async def test_a_connection_idle_for_a_while_is_pinged_first(
    backend: Database, pings: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A firewall may have dropped it: the ping finds out, not the work. (The idle limit is
    moved rather than waited for.)"""
    monkeypatch.setattr(storage.db, "IDLE_PING_AFTER", 3600.0)
    first = await backend.read(backend_pid)
    assert pings == []
    monkeypatch.setattr(storage.db, "IDLE_PING_AFTER", 0.0)  # every pooled one "idle"
    assert await backend.read(backend_pid) == first
    assert pings == [first]
    monkeypatch.setattr(storage.db, "IDLE_PING_AFTER", 3600.0)
    await backend.read(backend_pid)
    assert pings == [first]


async def test_connections_the_server_closed_are_not_handed_out(
    backend: Database, other_db: Database
) -> None:
    """A restart or pg_terminate_backend closes the idle pooled connections: the next read
    and the next write each meet one, and each gets a new connection instead."""
    pids = await asyncio.gather(*(backend.read(held_a_moment) for _ in range(2)))
    assert len(set(pids)) == 2  # both in the pool now
    for pid in pids:
        await other_db.read(
            lambda conn, pid=pid: conn.execute(
                text("SELECT pg_terminate_backend(:pid)"), {"pid": pid}
            ).scalar()
        )
        await wait_gone(other_db, pid)
    assert await other_db.read(sessions_left) == 0  # the pool held those two alone
    await asyncio.sleep(0.2)  # the loop reads the server's goodbye (loopback: microseconds)

    assert await backend.read(backend_pid) not in pids
    await backend.transaction(
        lambda conn: conn.execute(insert(Meta), {"key": "after", "value": "1"})
    )
    stored = await backend.read(
        lambda conn: conn.execute(
            select(func.count()).select_from(Meta).where(Meta.c.key == "after")
        ).scalar()
    )
    assert stored == 1


def held_a_moment(conn: Connection) -> int:
    """This session's pid, the connection held 0.2 s (two at once take two)."""
    conn.execute(text("SELECT pg_sleep(0.2)"))
    return backend_pid(conn)


def sessions_left(conn: Connection) -> int:
    """Client sessions on this database but this one and the test lock's (tests/support)."""
    query = text(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
        " AND backend_type = 'client backend' AND pid <> pg_backend_pid()"
        " AND pid NOT IN"
        " (SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND pid IS NOT NULL)"
    )
    return int(conn.execute(query).scalar_one())


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
