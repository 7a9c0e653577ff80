"""Fixtures for the storage tests: every test runs against SQLite and PostgreSQL.

SQLite is a real file in the test's tmp_path. PostgreSQL is the database at
`POSTERN_TEST_PG_URL` (default `postgresql+asyncpg://postgres@127.0.0.1:5432/test`) with every
Postern table dropped before each test. An unreachable PostgreSQL skips its half of the tests,
unless `POSTERN_TEST_PG` is set (CI sets it): then it is a failure.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path

import asyncpg
import pytest
from sqlmodel import SQLModel

import storage.models  # noqa: F401  (registers every table on SQLModel.metadata)
from gateway.queue.store import Queue
from storage.db import Database, create_schema, database_url, open_database
from storage.writer import Writer

PG_URL = os.environ.get("POSTERN_TEST_PG_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/test")
# Held for the whole of one PostgreSQL test, so that two test processes sharing the
# database (xdist, two developers) never drop each other's tables mid-test.
_PG_TEST_LOCK = 73_020_001
_CONNECT_TIMEOUT = 5.0
_LOCK_TIMEOUT = 60.0
_STOP_TIMEOUT = 10.0

_pg_problem_cache: dict[str, str | None] = {}


def _asyncpg_dsn(url: str) -> str:
    return "postgresql://" + url.split("://", 1)[1]


async def _pg_problem(url: str) -> str | None:
    """None when PostgreSQL at `url` accepts a connection, else why not (cached)."""
    if url not in _pg_problem_cache:
        try:
            conn = await asyncio.wait_for(
                asyncpg.connect(_asyncpg_dsn(url)), timeout=_CONNECT_TIMEOUT
            )
        except Exception as error:  # any failure to connect means "unreachable" here
            _pg_problem_cache[url] = f"{type(error).__name__}: {error}"
        else:
            await conn.close()
            _pg_problem_cache[url] = None
    return _pg_problem_cache[url]


async def _require_pg(url: str) -> None:
    problem = await _pg_problem(url)
    if problem is None:
        return
    message = f"PostgreSQL at {url} is unreachable ({problem})"
    if os.environ.get("POSTERN_TEST_PG"):
        pytest.fail(f"{message}; POSTERN_TEST_PG is set, so PostgreSQL tests must run")
    pytest.skip(f"{message}; set POSTERN_TEST_PG=1 to make this a failure")


@pytest.fixture(params=["sqlite", "postgresql"])
async def backend(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Database]:
    """A Database with the Postern schema created, on a fresh SQLite file or a clean PG."""
    if request.param == "sqlite":
        db = open_database(database_url("", tmp_path))
        await create_schema(db)
        try:
            yield db
        finally:
            await db.dispose()
        return

    await _require_pg(PG_URL)
    lock = await asyncio.wait_for(asyncpg.connect(_asyncpg_dsn(PG_URL)), _CONNECT_TIMEOUT)
    try:
        await asyncio.wait_for(
            lock.execute("SELECT pg_advisory_lock($1)", _PG_TEST_LOCK), _LOCK_TIMEOUT
        )
        db = open_database(PG_URL)
        try:
            await asyncio.wait_for(db.transaction(SQLModel.metadata.drop_all), _LOCK_TIMEOUT)
            await create_schema(db)
            yield db
        finally:
            await db.dispose()
    finally:
        await lock.close()  # also releases the advisory lock


@pytest.fixture
async def other_db(backend: Database) -> AsyncIterator[Database]:
    """A second, independent connection pool to the same database (another node)."""
    db = open_database(backend.url)
    try:
        yield db
    finally:
        await db.dispose()


@pytest.fixture
async def writer(backend: Database) -> AsyncIterator[Writer]:
    """A started group-commit writer, stopped at teardown."""
    started = Writer(backend)
    started.start()
    try:
        yield started
    finally:
        await asyncio.wait_for(started.stop(), _STOP_TIMEOUT)


MakeQueue = Callable[..., Awaitable[Queue]]


@pytest.fixture
async def make_queue(backend: Database) -> AsyncIterator[MakeQueue]:
    """Build a Queue with its own started Writer: `await make_queue("node-b", lease=1)`."""
    writers: list[Writer] = []

    async def factory(
        node_id: str = "node-a",
        *,
        schedule: Sequence[float] = (60.0, 300.0, 900.0),
        max_age: float = 3600.0,
        lease: float = 600.0,
        db: Database | None = None,
    ) -> Queue:
        own = Writer(db or backend)
        own.start()
        writers.append(own)
        return Queue(db or backend, own, node_id, schedule, max_age, lease)

    try:
        yield factory
    finally:
        for own in writers:
            await asyncio.wait_for(own.stop(), _STOP_TIMEOUT)


@pytest.fixture
async def queue(make_queue: MakeQueue) -> Queue:
    """node-a's Queue: schedule 60 s, 300 s, 900 s; max_age 1 h; lease 10 min."""
    return await make_queue("node-a")
