"""Group commit (storage.writer) on real databases: every test runs on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import fcntl
import os
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Connection, insert, select, text
from sqlalchemy.exc import DBAPIError, OperationalError

from storage import paths, write_lock
from storage.db import Database, create_schema, database_url, open_database
from storage.models import Meta
from storage.pieces import PIECE
from storage.writer import Batch, StorageFull, StorageUnavailable, Writer, WriterStopped

META = Meta
INSERT = insert(META)
WAIT = 10.0  # bound on every wait below


def put(key: str, value: str = "v") -> Batch:
    batch = Batch()
    batch.add(INSERT, {"key": key, "value": value})
    return batch


async def stored(db: Database, prefix: str) -> dict[str, str]:
    def query(conn: Connection) -> dict[str, str]:
        rows = conn.execute(select(META.c.key, META.c.value).where(META.c.key.like(prefix + "%")))
        return {row.key: row.value for row in rows}

    return await db.read(query)


async def test_concurrent_submits_share_commits(backend: Database, writer: Writer) -> None:
    def work(index: int) -> Any:
        def run(conn: Connection) -> int:
            conn.execute(INSERT, {"key": f"fn{index:03d}", "value": str(index)})
            return index

        return run

    before = writer.commits
    jobs = [writer.submit(put(f"batch{i:03d}")) for i in range(150)]
    jobs += [writer.submit(work(i)) for i in range(50)]
    async with asyncio.timeout(WAIT):
        results = await asyncio.gather(*jobs)

    assert results[:150] == [None] * 150
    assert results[150:] == list(range(50))  # each caller gets its own function's result
    commits = writer.commits - before
    assert 1 <= commits < len(jobs), f"{len(jobs)} jobs took {commits} commits"
    assert len(await stored(backend, "batch")) == 150
    assert await stored(backend, "fn") == {f"fn{i:03d}": str(i) for i in range(50)}


async def test_callers_answered_only_after_commit(writer: Writer, other_db: Database) -> None:
    """Another connection sees each write as soon as its submit returns."""
    missing: list[str] = []

    async def one(index: int) -> None:
        key = f"seen{index:03d}"
        if index % 2:
            await writer.submit(put(key))
        else:
            await writer.submit(lambda conn: conn.execute(INSERT, {"key": key, "value": "v"}))
        if key not in await stored(other_db, key):
            missing.append(key)

    async with asyncio.timeout(WAIT):
        await asyncio.gather(*(one(i) for i in range(100)))
    assert missing == []


async def test_failing_job_fails_alone(backend: Database, writer: Writer) -> None:
    def broken(conn: Connection) -> None:
        conn.execute(INSERT, {"key": "ok_never", "value": "v"})
        raise ValueError("bad job")

    jobs: list[Any] = [writer.submit(put(f"ok{i:02d}")) for i in range(20)]
    jobs.insert(5, writer.submit(put("schema_version")))  # clashes with the stored row
    jobs.insert(12, writer.submit(put("ok_twice", "first")))
    jobs.insert(13, writer.submit(put("ok_twice", "second")))  # clashes with its neighbour
    jobs.insert(15, writer.submit(broken))
    async with asyncio.timeout(WAIT):
        results = await asyncio.gather(*jobs, return_exceptions=True)

    assert isinstance(results[5], StorageUnavailable)
    assert isinstance(results[15], ValueError)
    assert [r is None for r in results[12:14]].count(True) == 1
    assert [isinstance(r, StorageUnavailable) for r in results[12:14]].count(True) == 1
    others = [r for i, r in enumerate(results) if i not in (5, 12, 13, 15)]
    assert others == [None] * 20
    saved = await stored(backend, "ok")
    assert set(saved) == {f"ok{i:02d}" for i in range(20)} | {"ok_twice"}
    assert saved["ok_twice"] in ("first", "second")
    assert (await stored(backend, "schema_version"))["schema_version"] != "v"


async def test_writer_still_works_after_a_failure(backend: Database, writer: Writer) -> None:
    with pytest.raises(StorageUnavailable):
        await asyncio.wait_for(writer.submit(put("schema_version")), WAIT)
    await asyncio.wait_for(writer.submit(put("after_failure")), WAIT)
    assert await stored(backend, "after_failure") == {"after_failure": "v"}


async def test_stop_finishes_queued_work(backend: Database, writer: Writer) -> None:
    tasks = [asyncio.create_task(writer.submit(put(f"queued{i:03d}"))) for i in range(100)]
    await asyncio.sleep(0)  # every task has handed in its job
    await asyncio.wait_for(writer.stop(), WAIT)

    assert all(task.done() for task in tasks)
    assert [task.result() for task in tasks] == [None] * 100
    assert len(await stored(backend, "queued")) == 100


async def test_submit_after_stop_raises(writer: Writer) -> None:
    await asyncio.wait_for(writer.stop(), WAIT)
    with pytest.raises(StorageUnavailable):
        await asyncio.wait_for(writer.submit(put("too_late")), WAIT)


async def test_submit_racing_stop_is_answered(backend: Database, writer: Writer) -> None:
    """A job handed in while stop() is under way is committed or refused, never left hanging."""
    stopping = asyncio.create_task(writer.stop())
    await asyncio.sleep(0)  # stop() has begun and waits for the writer task
    assert not stopping.done()

    late = asyncio.create_task(writer.submit(put("racing")))
    done, _ = await asyncio.wait({late}, timeout=2.0)
    await asyncio.wait_for(stopping, WAIT)
    if not done:
        late.cancel()
        pytest.fail("submit() during stop() never returned: its job was queued behind the stop")
    if late.exception() is None:
        assert await stored(backend, "racing") == {"racing": "v"}
    else:
        assert isinstance(late.exception(), StorageUnavailable)


def disk_full(conn: Connection) -> None:
    """The database's own "no space left" error: SQLITE_FULL (the file may not grow), or
    PostgreSQL's SQLSTATE 53100 disk_full (as it raises when a file cannot be extended)."""
    if conn.dialect.name == "postgresql":
        conn.exec_driver_sql(
            "DO $$ BEGIN RAISE EXCEPTION 'could not extend file' USING ERRCODE = 'disk_full';"
            " END $$"
        )
        return
    pages = conn.exec_driver_sql("PRAGMA page_count").scalar()
    conn.exec_driver_sql(f"PRAGMA max_page_count={pages}")
    try:
        conn.execute(INSERT, {"key": "big", "value": "x" * 200_000})
    finally:
        conn.exec_driver_sql("PRAGMA max_page_count=4294967294")


async def test_a_full_database_is_storage_full_until_a_commit_succeeds(backend: Database) -> None:
    failures: list[StorageUnavailable] = []
    writer = Writer(backend, on_failure=failures.append)
    writer.start()
    try:
        with pytest.raises(StorageFull):
            await asyncio.wait_for(writer.submit(disk_full), WAIT)
        assert isinstance(writer.failure, StorageFull) and writer.known_full()
        assert [failure.kind for failure in failures] == ["full"]
        assert isinstance(await writer.readiness(), StorageFull)  # within the hold: no probe

        await asyncio.wait_for(writer.submit(put("after")), WAIT)
        assert writer.failure is None and not writer.known_full()
        assert await writer.readiness() is None
    finally:
        await asyncio.wait_for(writer.stop(), WAIT)
    assert isinstance(await writer.readiness(), WriterStopped)


async def test_readiness_probes_a_failure_once_it_is_hold_old(backend: Database) -> None:
    writer = Writer(backend)
    writer.hold = 0.2
    writer.start()
    try:
        with pytest.raises(StorageFull):
            await asyncio.wait_for(writer.submit(disk_full), WAIT)
        commits = writer.commits
        await asyncio.sleep(writer.hold)
        assert not writer.known_full()  # the next message finds out for itself
        assert await writer.readiness() is None  # the probe write committed
        assert writer.commits == commits + 1
    finally:
        await asyncio.wait_for(writer.stop(), WAIT)


async def test_a_refused_statement_is_no_storage_failure(backend: Database) -> None:
    failures: list[StorageUnavailable] = []
    writer = Writer(backend, on_failure=failures.append)
    writer.start()
    try:
        await asyncio.wait_for(writer.submit(put("same")), WAIT)
        with pytest.raises(StorageUnavailable) as refused:
            await asyncio.wait_for(writer.submit(put("same")), WAIT)  # unique key clash
        assert not isinstance(refused.value, StorageFull)
        assert writer.failure is None and failures == []
        assert await writer.readiness() is None
    finally:
        await asyncio.wait_for(writer.stop(), WAIT)


async def test_a_failed_read_is_storage_unavailable_as_a_write_is(backend: Database) -> None:
    def database_down(conn: Connection) -> Any:
        conn.execute(text("SELECT 1"))
        cause = Exception("server closed the connection unexpectedly\nSELECT secret_value")
        raise OperationalError("SELECT secret_value FROM t", {}, cause)

    with pytest.raises(StorageUnavailable) as failed:
        await backend.read(database_down)
    assert type(failed.value) is StorageUnavailable
    assert "\n" not in str(failed.value)  # the driver's first line: no SQL statement
    assert "secret_value" not in str(failed.value)


async def test_a_read_with_a_bug_in_its_query_keeps_its_own_error(backend: Database) -> None:
    """Only the database failing is an outage; a wrong query must show as the bug it is."""
    if backend.is_sqlite:
        pytest.skip("SQLite reports a wrong query as an OperationalError, as it does an outage")

    def wrong(conn: Connection) -> Any:
        return conn.execute(text("SELECT nonsense FROM meta WHERE")).all()

    with pytest.raises(DBAPIError):
        await backend.read(wrong)


async def test_a_patient_job_shares_the_next_jobs_commit(backend: Database, writer: Writer) -> None:
    """An attempt's record (patient) waits briefly for company: the intake that follows it
    commits with it, one commit (one fsync) for both, and each is answered after it."""
    writer.linger = 5.0  # long enough to prove it waits, bounded by the second job below
    before = writer.commits
    patient = asyncio.create_task(writer.submit(put("patient"), patient=True))
    await asyncio.sleep(0.05)
    assert not patient.done()  # alone: lingering, not committed
    async with asyncio.timeout(WAIT):
        await writer.submit(put("eager"))
        await patient
    assert writer.commits - before == 1
    assert await stored(backend, "patient") == {"patient": "v"}


async def test_a_patient_job_alone_commits_after_linger(backend: Database, writer: Writer) -> None:
    writer.linger = 0.01
    async with asyncio.timeout(WAIT):
        await writer.submit(put("lonely"), patient=True)
    assert await stored(backend, "lonely") == {"lonely": "v"}


async def test_a_patient_job_lingering_at_stop_is_committed(
    backend: Database, writer: Writer
) -> None:
    writer.linger = 5.0
    patient = asyncio.create_task(writer.submit(put("atstop"), patient=True))
    await asyncio.sleep(0.05)
    async with asyncio.timeout(WAIT):
        await writer.stop()
        await patient
    assert await stored(backend, "atstop") == {"atstop": "v"}


@pytest.fixture
async def sqlite_pair(tmp_path: Path) -> AsyncIterator[tuple[Database, Database]]:
    """Two Databases on one SQLite file, as two worker processes hold them."""
    first = open_database(database_url("", tmp_path))
    await create_schema(first)
    second = open_database(first.url)
    try:
        yield first, second
    finally:
        await first.dispose()
        await second.dispose()


async def test_writers_of_one_sqlite_file_take_turns(
    sqlite_pair: tuple[Database, Database], tmp_path: Path
) -> None:
    """Each write transaction holds the lock file beside the database (0600): two writers
    (two workers) interleave without either one meeting SQLite's `database is locked`."""
    writers = [Writer(db) for db in sqlite_pair]
    for writer in writers:
        writer.start()
    try:
        jobs = [writers[i % 2].submit(put(f"turn{i:03d}")) for i in range(200)]
        async with asyncio.timeout(WAIT):
            await asyncio.gather(*jobs)
    finally:
        for writer in writers:
            await writer.stop()
    assert len(await stored(sqlite_pair[0], "turn")) == 200
    lock, database = tmp_path / "postern.db-writer", tmp_path / "postern.db"
    assert lock.stat().st_mode & 0o777 == database.stat().st_mode & 0o666  # as -wal, -shm
    assert lock.stat().st_uid == database.stat().st_uid


async def test_a_contended_write_lock_is_waited_for_by_a_thread_kept_for_the_next_wait(
    sqlite_pair: tuple[Database, Database], tmp_path: Path
) -> None:
    """Each write that finds the lock taken (another worker committing) waits for it in a
    thread; that thread is kept and waits again for the next one, rather than a thread
    being started for each wait (at 10 clients, 0.4 a message)."""
    first, _ = sqlite_pair
    holder = os.open(tmp_path / "postern.db-writer", os.O_RDWR)
    writer = Writer(first)
    writer.start()
    before = waiting_threads()  # kept from earlier tests in this process, idle
    seen: set[threading.Thread] = set()
    try:
        for i in range(5):
            fcntl.flock(holder, fcntl.LOCK_EX)
            job = asyncio.ensure_future(writer.submit(put(f"contended{i}")))
            await asyncio.sleep(0.05)
            assert not job.done()  # waiting for the lock, in a thread
            seen |= waiting_threads()
            fcntl.flock(holder, fcntl.LOCK_UN)
            await asyncio.wait_for(job, WAIT)
    finally:
        os.close(holder)
        await writer.stop()
    assert len(seen - before) <= 1  # one started, or an idle one reused: not one a wait
    assert len(await stored(first, "contended")) == 5


async def test_each_commit_is_told_with_its_time_and_jobs(backend: Database) -> None:
    """`on_commit` (serve: postern_storage_commit_seconds and _jobs_total) hears of every
    commit once, after it: how long it took and how many jobs shared it. A group that
    failed and was retried one by one is told as the commits that succeeded."""
    told: list[tuple[float, int]] = []
    writer = Writer(backend, on_commit=lambda seconds, jobs: told.append((seconds, jobs)))
    writer.start()
    try:
        async with asyncio.timeout(WAIT):
            await asyncio.gather(*(writer.submit(put(f"told{i:02d}")) for i in range(20)))
            await writer.submit(put("alone"))
            clashing = [writer.submit(put(f"retried{i}")) for i in range(4)]
            clashing.append(writer.submit(put("schema_version")))  # the stored row's key
            results = await asyncio.gather(*clashing, return_exceptions=True)
    finally:
        await writer.stop()
    assert results[:4] == [None] * 4 and isinstance(results[4], StorageUnavailable)
    assert len(told) == writer.commits
    assert sum(jobs for _, jobs in told) == 20 + 1 + 4  # the failed job in none
    assert all(0 < seconds < WAIT and jobs >= 1 for seconds, jobs in told)


async def test_a_failing_commit_hook_costs_no_caller_its_answer(backend: Database) -> None:
    """...and is called no more (it would fail, and be logged, at every commit)."""
    calls: list[int] = []

    def broken(seconds: float, jobs: int) -> None:
        calls.append(jobs)
        raise RuntimeError("a broken hook")

    writer = Writer(backend, on_commit=broken)
    writer.start()
    try:
        async with asyncio.timeout(WAIT):
            await writer.submit(put("hooked1"))
            await writer.submit(put("hooked2"))
    finally:
        await writer.stop()
    assert set(await stored(backend, "hooked")) == {"hooked1", "hooked2"}
    assert calls == [1]


async def test_a_wait_for_the_write_lock_is_told_with_its_length(
    sqlite_pair: tuple[Database, Database], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another process holding the write lock: the wait is told when it ends (serve:
    postern_storage_lock_wait_seconds_total), as long as it lasted; a lock found free is
    no wait. Each transaction's hold of the lock is told too (..._lock_held_seconds_total),
    waited for or not."""
    first, _ = sqlite_pair
    waits: list[float] = []
    holds: list[float] = []
    first.watch_write_lock(waited=waits.append, held=holds.append)
    waiting = threading.Event()
    flock = write_lock.LOCK_WAITERS.flock

    def noted(fd: int) -> Any:
        waiting.set()
        return flock(fd)

    monkeypatch.setattr(write_lock.LOCK_WAITERS, "flock", noted)
    writer = Writer(first)
    writer.start()
    holder = os.open(tmp_path / "postern.db-writer", os.O_RDWR)
    try:
        await asyncio.wait_for(writer.submit(put("free")), WAIT)
        assert waits == [] and not waiting.is_set()
        assert len(holds) == 1 and 0 < holds[0] < WAIT
        fcntl.flock(holder, fcntl.LOCK_EX)
        job = asyncio.ensure_future(writer.submit(put("held")))
        assert await asyncio.to_thread(waiting.wait, WAIT)
        held_from = time.monotonic()
        await asyncio.sleep(0.2)
        assert waits == []  # told when the wait ends, not before
        held_for = time.monotonic() - held_from  # (before the wait can end)
        fcntl.flock(holder, fcntl.LOCK_UN)
        await asyncio.wait_for(job, WAIT)
    finally:
        os.close(holder)
        await writer.stop()
    assert len(waits) == 1
    assert held_for <= waits[0] < WAIT
    assert len(holds) == 2 and 0 < holds[1] < waits[0]  # the hold starts once the wait ends


async def test_a_failing_write_lock_hook_costs_no_write_its_unlock(
    sqlite_pair: tuple[Database, Database], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A hook that raises (a broken metric) is logged once and dropped: the write commits,
    the lock is let go for the next process, and the next writes commit too."""
    first, _ = sqlite_pair
    told: list[float] = []

    def broken(seconds: float) -> None:
        told.append(seconds)
        raise RuntimeError("a broken hook")

    first.watch_write_lock(waited=broken, held=broken)
    writer = Writer(first)
    writer.start()
    try:
        await asyncio.wait_for(writer.submit(put("one")), WAIT)
        other = os.open(tmp_path / "postern.db-writer", os.O_RDWR)
        try:
            fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)  # free: it was let go
            fcntl.flock(other, fcntl.LOCK_UN)
        finally:
            os.close(other)
        await asyncio.wait_for(writer.submit(put("two")), WAIT)
    finally:
        await writer.stop()
    assert await stored(first, "one") == {"one": "v"}
    assert await stored(first, "two") == {"two": "v"}
    assert len(told) == 1  # not called again: it would fail at every transaction
    failed = [r for r in caplog.records if "write-lock hook" in r.getMessage()]
    assert len(failed) == 1 and "on_held" in failed[0].getMessage()


def waiting_threads() -> set[threading.Thread]:
    return {t for t in threading.enumerate() if t.name == "db-write-lock"}


@pytest.mark.parametrize(
    ("database", "file"),
    [
        ("/var/lib/postern/postern.db", "/var/lib/postern/postern.db"),
        ("file:/srv/p.db?uri=true", "/srv/p.db"),
        ("file:/srv/p.db", "/srv/p.db"),
        ("file:mem?mode=memory&cache=shared", None),
        (":memory:", None),
        ("", None),
        (None, None),
    ],
)
def test_the_write_lock_sits_beside_the_database_file(
    database: str | None, file: str | None
) -> None:
    assert paths.database_file(database) == file


async def test_a_failing_database_fails_the_large_jobs_waiting_without_trying_each(
    sqlite_pair: tuple[Database, Database], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The database down (here: its write lock held past the busy timeout) fails the
    commit of the small jobs (and the first large one, which shares it); the large ones
    waiting then fail with it, rather than each waiting out the busy timeout again in turn."""
    monkeypatch.setattr(write_lock, "BUSY_TIMEOUT", 0.2)
    first, _ = sqlite_pair
    holder = os.open(tmp_path / "postern.db-writer", os.O_RDWR)
    fcntl.flock(holder, fcntl.LOCK_EX)
    writer = Writer(first)
    tried: list[int] = []
    transaction = writer._transaction

    async def counted(jobs: Any) -> Any:
        tried.append(len(jobs))
        return await transaction(jobs)

    monkeypatch.setattr(writer, "_transaction", counted)
    writer.start()
    try:
        parts = [writer.submit(put(f"large{i}"), size=PIECE, piece=True) for i in range(3)]
        jobs = [*parts, writer.submit(put("large-whole"), size=writer.large)]
        jobs.append(writer.submit(put("small")))
        async with asyncio.timeout(WAIT):
            results = await asyncio.gather(*jobs, return_exceptions=True)
    finally:
        fcntl.flock(holder, fcntl.LOCK_UN)
        os.close(holder)
        await writer.stop()
    assert all(isinstance(r, StorageUnavailable) for r in results), results
    assert tried == [2]  # the small job's commit with one piece, and none after it


async def test_a_write_lock_held_too_long_is_storage_unavailable(
    sqlite_pair: tuple[Database, Database], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another process holding the lock past the busy timeout: the write fails as a locked
    database does (451/503 at the doors), and succeeds once the lock is let go. The
    failure hook (serve: postern_storage_write_failures_total) hears of it, and its own
    error, if it raises, strands no caller."""
    monkeypatch.setattr(write_lock, "BUSY_TIMEOUT", 0.2)
    first, _ = sqlite_pair
    waits: list[float] = []
    first.watch_write_lock(waited=waits.append)  # a wait that timed out is told too
    failures: list[StorageUnavailable] = []

    def broken(failure: StorageUnavailable) -> None:
        failures.append(failure)
        raise RuntimeError("a broken hook")

    holder = os.open(tmp_path / "postern.db-writer", os.O_RDWR)
    fcntl.flock(holder, fcntl.LOCK_EX)
    writer = Writer(first, on_failure=broken)
    writer.start()
    try:
        with pytest.raises(StorageUnavailable, match="locked"):
            await asyncio.wait_for(writer.submit(put("blocked")), WAIT)
        fcntl.flock(holder, fcntl.LOCK_UN)
        await asyncio.wait_for(writer.submit(put("freed")), WAIT)
    finally:
        os.close(holder)
        await writer.stop()
    assert await stored(first, "freed") == {"freed": "v"}
    assert await stored(first, "blocked") == {}
    assert waits and 0.2 <= waits[0] < WAIT  # (a short one may follow: the old wait's lock)
    assert len(failures) == 1


async def test_large_jobs_go_one_per_commit_with_the_small_ones_waiting(
    backend: Database, writer: Writer
) -> None:
    """Ten large messages at once (in pieces: storage.pieces) must not hold the small ones
    behind them: a piece goes one per commit, in the commit of the small jobs waiting then
    (one fsync for both), the last short one too; a job writing `large` bytes or more (a
    whole body) commits alone, after them. A body just under `large` rides with the small."""
    order: list[str] = []

    def work(name: str) -> Any:
        def run(conn: Connection) -> str:
            conn.execute(INSERT, {"key": f"order-{name}", "value": name})
            order.append(name)
            return name

        return run

    before = writer.commits
    jobs = [
        writer.submit(work("piece1"), size=PIECE, piece=True),
        writer.submit(work("piece2"), size=100, piece=True),  # another body's last piece
        writer.submit(work("whole"), size=writer.large * 20),
        writer.submit(work("small1"), size=writer.large - 1),
        writer.submit(work("small2")),
    ]
    names = ["piece1", "piece2", "whole", "small1", "small2"]
    async with asyncio.timeout(WAIT):
        assert await asyncio.gather(*jobs) == names
    assert order == ["small1", "small2", "piece1", "piece2", "whole"]
    # the small ones with piece1, then piece2 alone, then the whole body alone
    assert writer.commits - before == 3
    assert len(await stored(backend, "order-")) == 5


async def test_transactions_failures_and_exclusive_work_share_the_held_write_connection(
    backend: Database,
) -> None:
    """SQLite's write thread keeps its connection from one transaction to the next: a
    transaction that fails leaves nothing open for the next, a non-durable one leaves the
    next durable, and exclusive() (which needs the pool's one connection) still gets it."""

    def add(key: str) -> Any:
        return lambda conn: conn.execute(INSERT.values(key=key, value="v"))

    def fail(conn: Connection) -> None:
        conn.execute(INSERT.values(key="held-failed", value="v"))
        raise RuntimeError("the work failed")

    await backend.transaction(add("held-1"))
    with pytest.raises(RuntimeError):
        await backend.transaction(fail)
    await backend.transaction(add("held-2"), durable=False)
    await backend.exclusive(add("held-3"))
    await backend.transaction(add("held-4"))
    assert set(await stored(backend, "held-")) == {"held-1", "held-2", "held-3", "held-4"}
    if backend.is_sqlite:

        def level(conn: Connection) -> int:
            return int(conn.exec_driver_sql("PRAGMA synchronous").scalar_one())

        assert await backend.transaction(level) == 2  # FULL again after durable=False
