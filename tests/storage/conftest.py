"""Fixtures for the storage tests: every test runs against SQLite and PostgreSQL.

SQLite is a real file in the test's tmp_path. PostgreSQL is the database of
tests/support/databases.py, with every Postern table dropped before each test and held by
that test alone.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import pytest

from gateway.queue.store import Queue
from storage.db import Database, create_schema, database_url, open_database
from storage.writer import Writer
from tests.support.databases import MakeQueue, clean_postgresql

_STOP_TIMEOUT = 10.0


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

    async with clean_postgresql() as url:
        db = open_database(url)
        try:
            await create_schema(db)
            yield db
        finally:
            await db.dispose()


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
