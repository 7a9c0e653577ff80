"""PostgreSQL for tests: the database at `POSTERN_TEST_PG_URL` (default
`postgresql+asyncpg://postgres@127.0.0.1:5432/test`), held by one test at a time and emptied
of Postern's tables for it. An unreachable PostgreSQL skips the test, unless
`POSTERN_TEST_PG` is set (CI sets it): then it is a failure.

Under pytest-xdist each worker process has a database of its own beside that one (`test` ->
`test_gw0_1a2b3c4d`: the worker and the run), made at its first PostgreSQL test and dropped
when the worker ends (`drop_worker_database`, from tests/conftest.py), so that the workers'
PostgreSQL tests run side by side instead of queueing for one database.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import asyncpg
import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url

from gateway.queue.store import Queue
from storage.db import Database, open_database
from storage.models import metadata

PG_URL = os.environ.get("POSTERN_TEST_PG_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/test")
# Held for the whole of one PostgreSQL test, so that two test processes sharing one database
# (two developers, or a server where a worker may not create its own) never drop each
# other's tables mid-test. Advisory locks are per database: workers' own never contend.
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


# --- one database per xdist worker ---------------------------------------------------------

_WORKER = os.environ.get("PYTEST_XDIST_WORKER", "")  # "gw0", "gw1"... ; "" without xdist
_RUN = os.environ.get("PYTEST_XDIST_TESTRUNUID", "")[:8]  # two runs at once never share one
_worker_url: str | None = None  # this worker's database, once made


def worker_database_name(url: str = PG_URL) -> str:
    """The database this xdist worker uses: `test` -> `test_gw0_1a2b3c4d`."""
    return "_".join(filter(None, [make_url(url).database, _WORKER, _RUN]))


async def _admin(statement: str) -> None:
    """One statement on the configured database's server (CREATE/DROP DATABASE cannot run
    in a transaction, and need a connection to a database other than the one they name)."""
    conn = await asyncio.wait_for(asyncpg.connect(asyncpg_dsn(PG_URL)), _CONNECT_TIMEOUT)
    try:
        await asyncio.wait_for(conn.execute(statement), _LOCK_TIMEOUT)
    finally:
        await conn.close()


async def _test_database_url() -> str:
    """The URL a PostgreSQL test uses: PG_URL itself, or under xdist the worker's own
    database, made on first use."""
    global _worker_url
    if not _WORKER:
        return PG_URL
    if _worker_url is None:
        name = worker_database_name()
        try:
            await _admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')  # a killed run's
            await _admin(f'CREATE DATABASE "{name}"')
        except asyncpg.InsufficientPrivilegeError:
            return PG_URL  # no CREATEDB: share PG_URL, one test at a time (PG_TEST_LOCK)
        _worker_url = make_url(PG_URL).set(database=name).render_as_string(hide_password=False)
    return _worker_url


def drop_worker_database() -> None:
    """Drop this worker's database, if it made one (at the end of the worker's session)."""
    global _worker_url
    if _worker_url is None:
        return
    name, _worker_url = worker_database_name(), None
    asyncio.run(_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@asynccontextmanager
async def clean_postgresql() -> AsyncIterator[str]:
    """PostgreSQL with no Postern tables, held (PG_TEST_LOCK) for this test alone: its URL."""
    await require_pg(PG_URL)
    url = await _test_database_url()
    lock = await asyncio.wait_for(asyncpg.connect(asyncpg_dsn(url)), _CONNECT_TIMEOUT)
    try:
        await asyncio.wait_for(
            lock.execute("SELECT pg_advisory_lock($1)", PG_TEST_LOCK), _LOCK_TIMEOUT
        )
        db = open_database(url)
        try:
            await asyncio.wait_for(db.transaction(metadata.drop_all), _LOCK_TIMEOUT)
        finally:
            await db.dispose()
        yield url
    finally:
        await lock.close()  # also releases the advisory lock


# On PostgreSQL an event is settled (readable by the event stream and the webhooks) once no
# transaction older than its own is open anywhere in the cluster (pg_snapshot_xmin is
# cluster-wide): other databases' transactions too, such as another pytest-xdist worker's.
# Bounded: a test's own open transaction never lets its events settle.
_SETTLE_TIMEOUT = 30.0
_UNSETTLED = text(
    "SELECT count(*) FROM event WHERE txid >= pg_snapshot_xmin(pg_current_snapshot())::text::bigint"
)


async def events_settled(db: Database) -> None:
    """Wait until every event written is settled (at once on SQLite, which commits serially)."""
    deadline = time.monotonic() + _SETTLE_TIMEOUT
    while not db.is_sqlite and await db.read(lambda c: c.execute(_UNSETTLED).scalar()):
        assert time.monotonic() < deadline, "events still unsettled: a transaction stays open"
        await asyncio.sleep(0.02)


# `await make_queue("node-b", lease=1)`: a Queue with its own started Writer.
MakeQueue = Callable[..., Awaitable[Queue]]
