"""PostgreSQL for tests: the database at `POSTERN_TEST_PG_URL` (default
`postgresql+asyncpg://postgres@127.0.0.1:5432/test`), held by one test at a time and emptied
of Postern's tables for it. An unreachable PostgreSQL skips the test, unless
`POSTERN_TEST_PG` is set (CI sets it): then it is a failure.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import asyncpg
import pytest

from gateway.queue.store import Queue
from storage.db import open_database
from storage.models import metadata

PG_URL = os.environ.get("POSTERN_TEST_PG_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/test")
# Held for the whole of one PostgreSQL test, so that two test processes sharing the
# database (xdist, two developers) never drop each other's tables mid-test.
PG_TEST_LOCK = 73_020_001
_CONNECT_TIMEOUT = 5.0
_LOCK_TIMEOUT = 60.0

_pg_problem_cache: dict[str, str | None] = {}


def asyncpg_dsn(url: str) -> str:
    return "postgresql://" + url.split("://", 1)[1]


async def _pg_problem(url: str) -> str | None:
    """None when PostgreSQL at `url` accepts a connection, else why not (cached)."""
    if url not in _pg_problem_cache:
        try:
            conn = await asyncio.wait_for(
                asyncpg.connect(asyncpg_dsn(url)), timeout=_CONNECT_TIMEOUT
            )
        except Exception as error:  # any failure to connect means "unreachable" here
            _pg_problem_cache[url] = f"{type(error).__name__}: {error}"
        else:
            await conn.close()
            _pg_problem_cache[url] = None
    return _pg_problem_cache[url]


async def require_pg(url: str) -> None:
    problem = await _pg_problem(url)
    if problem is None:
        return
    message = f"PostgreSQL at {url} is unreachable ({problem})"
    if os.environ.get("POSTERN_TEST_PG"):
        pytest.fail(f"{message}; POSTERN_TEST_PG is set, so PostgreSQL tests must run")
    pytest.skip(f"{message}; set POSTERN_TEST_PG=1 to make this a failure")


@asynccontextmanager
async def clean_postgresql() -> AsyncIterator[str]:
    """PostgreSQL with no Postern tables, held (PG_TEST_LOCK) for this test alone: its URL."""
    await require_pg(PG_URL)
    lock = await asyncio.wait_for(asyncpg.connect(asyncpg_dsn(PG_URL)), _CONNECT_TIMEOUT)
    try:
        await asyncio.wait_for(
            lock.execute("SELECT pg_advisory_lock($1)", PG_TEST_LOCK), _LOCK_TIMEOUT
        )
        db = open_database(PG_URL)
        try:
            await asyncio.wait_for(db.transaction(metadata.drop_all), _LOCK_TIMEOUT)
        finally:
            await db.dispose()
        yield PG_URL
    finally:
        await lock.close()  # also releases the advisory lock


# `await make_queue("node-b", lease=1)`: a Queue with its own started Writer.
MakeQueue = Callable[..., Awaitable[Queue]]
