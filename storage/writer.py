"""Group commit: the writes of concurrent callers share one transaction and one fsync.

Callers hand the writer a `Batch` (statements with their parameters) or a function of a
(synchronous) connection, and await the result; the writer's single task gathers whatever
is waiting,
runs it all in one transaction, commits, then wakes every caller. Nobody is answered before
the commit that holds their write. Statements of the same shape from different callers are
sent as one executemany (storage.dml: on SQLite straight to the driver).

If a shared transaction fails, each job is run again in a transaction of its own, so one bad
write (say, a unique-key clash) fails alone and never takes its neighbours with it.

A *patient* job (an attempt's record no HTTP send waits on) may wait up to `linger`
for company when it is alone: the next message's intake, arriving a moment later, then shares
its fsync. With one client that halves the fsyncs per message; under load the queue is never
empty and nobody lingers. Durability is unchanged: every job is still committed with fsync
before its caller is answered.

A *piece* of a large body (`piece=True`: storage.pieces, SQLite, up to 512 KiB) goes one per
commit, riding in the commit of the small jobs waiting then (one fsync for both), so that
ten large messages at once, each writing its pieces one after another, never hold a small
one behind more than one piece: a 512 KiB piece commits in ~1.5 ms on SQLite, a 20 MB body
took 100-300 ms. (Committed alone, after the small ones, each piece cost a commit of its
own: bench/loop_lag.py's ten 20 MB transfers took 6.8-9.3 s against 3.4-7.2 s this way, and
the small clients' p99 was 444-453 ms against 253-808 ms, three runs each, interleaved.) A
*large* job (`large` bytes of content or more: a whole large body, which PostgreSQL stores
in one transaction) commits alone, after the small jobs waiting, which go first.

Each commit is told to `on_commit` with its seconds (started to committed) and its jobs:
`serve` exports them (postern_storage_commit_seconds, _jobs_total), bench/commits.py reads
them under load. What a hook (`on_commit`, `on_failure`) raises is logged, never passed on:
a broken hook never strands a caller (`on_commit` runs once they are answered, and one that
fails is dropped: it would fill the log at every commit).

With several workers on SQLite, each worker's writer sends the small batches (statements
and data: a message's intake, an attempt's record) to the node's writer process through a
`link` (storage.writer_link, storage.writer_process), which commits every worker's in one
transaction; the rest (functions of a connection, pieces, large bodies) it commits here.
Either way a caller is answered after the commit that holds its write, and a failure is
told as here (the failure state, the hooks).

When the database itself fails a commit (full, locked, down), the writer remembers it until
a commit succeeds: `readiness()` reports it (and probes whether writes commit again), and
`known_full()` lets a door refuse a message before it is sent rather than after. A failed
write raises StorageUnavailable (StorageFull for want of space, WriterStopped when the
writer is not running): storage.errors.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection, update
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.sql import Executable

from storage import dml
from storage.db import Database
from storage.errors import (
    StorageFull,
    StorageUnavailable,
    WriterStopped,
    database_failed,
    unavailable,
)
from storage.models import Meta
from storage.writer_link import NotSent, WriterLink
from storage.writer_process import FAILED, FULL, OK, Outcome, Report

log = logging.getLogger("postern.storage")

Work = Callable[[Connection], Any]


@dataclass
class Batch:
    """Statements to run in order; each with one parameter dict, or a list for executemany.

    `first`, when given, runs before any statement of the shared transaction and its return
    value is the job's result (a check the statements then depend on, in SQL). `check` is
    the same as data, in its place (not with `first`): an UPDATE and its parameters, the
    result whether it changed a row (a batch of statements and data alone can be sent to
    the node's writer process).
    """

    steps: list[tuple[Executable, dict[str, Any] | list[dict[str, Any]]]] = field(
        default_factory=list
    )
    first: Work | None = None
    check: tuple[Executable, dict[str, Any]] | None = None

    def add(self, statement: Executable, params: dict[str, Any] | list[dict[str, Any]]) -> None:
        if params:
            self.steps.append((statement, params))


@dataclass
class _Job:
    work: Batch | Work
    done: asyncio.Future[Any]
    patient: bool = False
    size: int = 0  # bytes of message content it writes
    piece: bool = False  # a piece of a large body (storage.pieces)


# What readiness() writes to find out whether writes commit: a row rewritten as it is.
_PROBE = update(Meta).where(Meta.c.key == "schema_version").values(value=Meta.c.value)

FailureHook = Callable[[StorageUnavailable], None]
# Told of each commit: its seconds from the writer starting it to its return on the event
# loop (the wait for SQLite's write lock, the SQL, the fsync, the hops between threads; not
# the time its jobs queued behind the commit before it) and how many jobs it held.
CommitHook = Callable[[float, int], None]


class Writer:
    # How long a failed commit stands unchallenged: readiness() probes only once it is this
    # old, and known_full() stops refusing ahead (the next write finds out for itself).
    hold = 5.0
    # How long a patient job alone waits for another to share its commit: about one
    # client's turn-around, so that a lone client's next message comes within it.
    linger = 0.004
    # A job writing this much content or more commits alone, after the small jobs waiting
    # (a whole large body); a piece (`piece=True`) rides with them, one per commit.
    large = 1 << 20

    def __init__(
        self,
        db: Database,
        max_batch: int = 512,
        on_failure: FailureHook | None = None,
        on_commit: CommitHook | None = None,
        link: WriterLink | None = None,
    ) -> None:
        """`link`: the node's writer process (storage.writer_link), which then commits
        the batches it can take, with the other workers' (storage.writer_process)."""
        self._db = db
        self._link = link
        if link is not None:
            link.on_report = self._reported
        self._max_batch = max_batch
        self._on_commit = on_commit
        self._queue: asyncio.Queue[_Job | None] = asyncio.Queue()
        # While a patient job lingers: resolved by the next job put (or the linger's end).
        self._company: asyncio.Future[None] | None = None
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._on_failure = on_failure
        self.commits = 0  # committed here, or by the writer process and told to this one
        self.failure: StorageUnavailable | None = None  # the last commit's, until one succeeds
        self._failed_at = 0.0
        self._probed_at = 0.0

    def start(self) -> None:
        self._stopping = False
        self._task = asyncio.create_task(self._run(), name="storage-writer")

    async def stop(self) -> None:
        """Finish what is queued, then stop."""
        if self._task is not None:
            self._stopping = True
            self._put(None)
            await self._task
            self._task = None
        while not self._queue.empty():  # raced in behind the stop: answer, never strand
            job = self._queue.get_nowait()
            if job is not None:
                self._fail(job, WriterStopped("the storage writer has stopped"))
        if self._link is not None:
            await self._link.close()  # once what it was sent is answered

    @property
    def db(self) -> Database:
        return self._db

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done() and not self._stopping

    def known_full(self) -> bool:
        """A commit failed for want of space within `hold` seconds and none succeeded since:
        a new message would fail too."""
        if not isinstance(self.failure, StorageFull):  # asked at every MAIL: the usual answer
            return False
        return asyncio.get_running_loop().time() - self._failed_at < self.hold

    async def readiness(self) -> StorageUnavailable | None:
        """Why writes do not commit now, or None when they do. A failure older than `hold`
        is put to the test by a probe write (one at a time): a success clears it."""
        if not self.running:
            return WriterStopped("the storage writer is not running")
        now = asyncio.get_running_loop().time()
        if self.failure is not None and now - max(self._failed_at, self._probed_at) >= self.hold:
            self._probed_at = now
            with contextlib.suppress(StorageUnavailable):  # (as data: the way writes go)
                await self.submit(Batch(check=(_PROBE, {})))
        return self.failure

    async def submit(
        self, work: Batch | Work, *, patient: bool = False, size: int = 0, piece: bool = False
    ) -> Any:
        """Run `work` in a shared transaction; return once it is committed. A `patient`
        job alone may wait up to `linger` for another to share its fsync; `size` is the
        message content it writes (`large` ones commit alone); a `piece` of a large body
        goes one per commit, with the small jobs."""
        if not self.running:
            raise WriterStopped("the storage writer is not running")
        link = self._link
        if link is not None and link.connected and size < self.large and not piece:
            sent = self._send(link, work, patient)
            if sent is not None:
                with contextlib.suppress(NotSent):  # (then written here, below)
                    return await self._answered(sent)
        done: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._put(_Job(work, done, patient, size, piece))
        return await done

    @staticmethod
    def _send(
        link: WriterLink, work: Batch | Work, patient: bool
    ) -> asyncio.Future[Outcome] | None:
        """`work` sent to the writer process, or None: it is written here."""
        if not isinstance(work, Batch) or work.first is not None:
            return None
        request = link.request(patient, work.check, work.steps)
        if request is None:
            return None
        try:
            return link.call(request)
        except ValueError:  # a value marshal does not take, a request too large to send
            return None

    async def _answered(self, sent: asyncio.Future[Outcome]) -> Any:
        """The writer process's answer, as a commit here would have given it."""
        _, code, value = await sent
        if code == OK:
            self.failure = None
            return value
        if code == FAILED:  # this batch's data: a unique-key clash, say
            log.error("storage write failed: %s", value)
            raise StorageUnavailable(value)
        kind = StorageFull if code == FULL else StorageUnavailable
        # The database failed the commit: remembered here (readiness, known_full), told
        # (log, metric) once, by the worker its report went to (`_reported`).
        self.failure, self._failed_at = kind(value), asyncio.get_running_loop().time()
        raise kind(value)

    def _reported(self, report: Report) -> None:
        """A commit of the writer process's, told by this worker: its figures, or its
        failure, as this writer tells its own."""
        seconds, jobs, held, waited, failure = report
        self._db.tell_write_lock(held=held, waited=waited)
        if failure is None:
            self.commits += 1
            self._tell_commit(seconds, jobs)
            return
        code, text = failure
        self._remember(StorageFull(text) if code == FULL else StorageUnavailable(text))

    def _put(self, job: _Job | None) -> None:
        self._queue.put_nowait(job)  # unbounded: never waits
        company = self._company
        if company is not None and not company.done():
            company.set_result(None)  # a lingering job has company: commit now

    async def _run(self) -> None:
        stopping = False
        large: deque[_Job] = deque()
        while not stopping or large:
            jobs: list[_Job] = []
            if not stopping:
                stopping = await self._next(jobs, wait=not large)
            small = [job for job in jobs if job.size < self.large and not job.piece]
            large.extend(job for job in jobs if job.size >= self.large or job.piece)
            alone = None
            if large and large[0].piece:  # with the small jobs waiting
                small.append(large.popleft())
            elif large:  # a whole large body: alone, the small ones first
                alone = large.popleft()
            failed = bool(small) and not await self._commit(small)
            if alone is not None and failed:
                large.appendleft(alone)  # (failed below with the others)
            elif alone is not None:
                failed = not await self._commit([alone])
            if failed and large and self.failure is not None:
                # The database itself failed: the large jobs waiting would each wait out
                # the busy timeout again. They fail as the failed commit's jobs did.
                self._fail_database(list(large), self.failure)
                large.clear()

    async def _next(self, jobs: list[_Job], wait: bool) -> bool:
        """Take the jobs to commit next into `jobs` (waiting for one when `wait`); True
        when the stop sentinel came with them."""
        if wait:
            first = await self._queue.get()
            if first is None:
                return True
            jobs.append(first)
        if self._gather(jobs):
            return True
        # Patient jobs alone linger for company (a large one waits: no lingering; a full
        # batch with more queued behind it has company enough).
        if wait and self._queue.empty() and all(job.patient for job in jobs):
            return await self._wait_for_company(jobs)
        return False

    def _gather(self, jobs: list[_Job]) -> bool:
        """Add what is queued to `jobs`; True when the stop sentinel came with it."""
        while len(jobs) < self._max_batch and not self._queue.empty():
            job = self._queue.get_nowait()
            if job is None:
                return True
            jobs.append(job)
        return False

    async def _wait_for_company(self, jobs: list[_Job]) -> bool:
        """Patient jobs alone: wait up to `linger` for any other job, then take what came.
        (A future that `_put` resolves and one timer: asyncio.wait_for made a task, a
        future and a timer, and on a timeout a turn of the loop more to cancel the task,
        for about every message that a worker records.)"""
        loop = asyncio.get_running_loop()
        company = self._company = loop.create_future()
        expiry = loop.call_later(self.linger, _alone, company)
        try:
            await company
        finally:
            expiry.cancel()
            self._company = None
        return self._gather(jobs)

    async def _commit(self, jobs: list[_Job]) -> bool:
        """Commit `jobs` together; False when the database itself failed (not one job)."""
        began = time.perf_counter()
        try:
            results = await self._transaction(jobs)
        except Exception as error:
            if database_failed(error):
                # Locked past busy_timeout, disk full, I/O, down: one by one would only
                # wait that long again per job. Every job fails now, nothing of them
                # committed, and its caller answers 451 / 452 / 503 / 507.
                self._fail_database(jobs, self._failed(error))
                return False
            if len(jobs) == 1:
                self._fail(jobs[0], error)
                return True
            log.warning(
                "group commit of %d jobs failed (%s); retrying one by one", len(jobs), error
            )
            for job in jobs:
                await self._commit([job])
            return True
        self.commits += 1
        self.failure = None
        for job, result in zip(jobs, results, strict=True):
            if not job.done.done():
                job.done.set_result(result)
        self._tell_commit(time.perf_counter() - began, len(jobs))
        return True

    def _tell_commit(self, seconds: float, jobs: int) -> None:
        if self._on_commit is not None:
            # After the callers are answered; a failing hook costs a log line, never them,
            # and only once: it would fail again at every commit.
            try:
                self._on_commit(seconds, jobs)
            except Exception:
                self._on_commit = None
                log.exception("the commit hook failed; it is not called again")

    @staticmethod
    def _fail_database(jobs: list[_Job], failure: StorageUnavailable) -> None:
        for job in jobs:
            if not job.done.done():  # an exception each: one raised twice grows
                job.done.set_exception(type(failure)(str(failure)))

    async def _transaction(self, jobs: list[_Job]) -> list[Any]:
        works = [job.work for job in jobs]
        return await self._db.transaction(lambda conn: _run_batch(conn, works))

    def _failed(self, error: Exception) -> StorageUnavailable:
        """Remember and count a failure of the database itself; it, for the callers."""
        return self._remember(unavailable(error))

    def _remember(self, failure: StorageUnavailable) -> StorageUnavailable:
        self.failure, self._failed_at = failure, asyncio.get_running_loop().time()
        log.error("storage write failed: %s", failure)
        if self._on_failure is not None:
            try:  # as on_commit: a failing hook must not strand the jobs it reports
                self._on_failure(failure)
            except Exception:
                log.exception("the failure hook failed")
        return failure

    @staticmethod
    def _fail(job: _Job, error: Exception) -> None:
        if job.done.done():
            return
        if isinstance(error, SQLAlchemyError | OSError):
            log.error("storage write failed: %s", error)
            job.done.set_exception(StorageUnavailable(str(error)))
        else:
            job.done.set_exception(error)


def _alone(company: asyncio.Future[None]) -> None:
    """The linger is over and no job came."""
    if not company.done():
        company.set_result(None)


def _run_batch(conn: Connection, works: list[Batch | Work]) -> list[Any]:
    """Functions first, in order; then each batch's `first`; then the batches' statements,
    same shapes merged into executemany.

    The jobs of one group commit are concurrent, so any serial order is valid; this one
    keeps each batch whole: nothing runs between a batch's `first` and its statements (a
    function there could see an attempt's message updated but its recipients not yet).
    """
    results: list[Any] = [None] * len(works)
    merged: dict[Executable, list[dict[str, Any]]] = {}
    for index, work in enumerate(works):
        if not isinstance(work, Batch):
            results[index] = work(conn)
    for index, work in enumerate(works):
        if isinstance(work, Batch):
            if work.first is not None:
                results[index] = work.first(conn)
            elif work.check is not None:
                results[index] = dml.run(conn, *work.check) > 0
            for statement, params in work.steps:
                rows = params if isinstance(params, list) else [params]
                merged.setdefault(statement, []).extend(rows)
    for statement, rows in merged.items():
        dml.run(conn, statement, rows)  # cheaper than conn.execute, same effect
    return results
