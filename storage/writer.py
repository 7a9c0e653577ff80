"""Group commit: the writes of concurrent callers share one transaction and one fsync.

Callers hand the writer a `Batch` (statements with their parameters) or a function of a
(synchronous) connection, and await the result; the writer's single task gathers whatever
is waiting,
runs it all in one transaction, commits, then wakes every caller. Nobody is answered before
the commit that holds their write. Statements of the same shape from different callers are
sent as one executemany.

If a shared transaction fails, each job is run again in a transaction of its own, so one bad
write (say, a unique-key clash) fails alone and never takes its neighbours with it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection
from sqlalchemy.exc import OperationalError, SQLAlchemyError
from sqlalchemy.sql import Executable

from storage.db import Database

log = logging.getLogger("postern.storage")

Work = Callable[[Connection], Any]


@dataclass
class Batch:
    """Statements to run in order; each with one parameter dict, or a list for executemany.

    `first`, when given, runs before any statement of the shared transaction and its return
    value is the job's result (a check the statements then depend on, in SQL).
    """

    steps: list[tuple[Executable, dict[str, Any] | list[dict[str, Any]]]] = field(
        default_factory=list
    )
    first: Work | None = None

    def add(self, statement: Executable, params: dict[str, Any] | list[dict[str, Any]]) -> None:
        if params:
            self.steps.append((statement, params))


@dataclass
class _Job:
    work: Batch | Work
    done: asyncio.Future[Any]


class StorageUnavailable(Exception):
    """The database refused or failed a write; nothing of it was committed."""


class Writer:
    def __init__(self, db: Database, max_batch: int = 512) -> None:
        self._db = db
        self._max_batch = max_batch
        self._queue: asyncio.Queue[_Job | None] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self.commits = 0

    def start(self) -> None:
        self._stopping = False
        self._task = asyncio.create_task(self._run(), name="storage-writer")

    async def stop(self) -> None:
        """Finish what is queued, then stop."""
        if self._task is not None:
            self._stopping = True
            await self._queue.put(None)
            await self._task
            self._task = None
        while not self._queue.empty():  # raced in behind the stop: answer, never strand
            job = self._queue.get_nowait()
            if job is not None:
                self._fail(job, StorageUnavailable("the storage writer has stopped"))

    async def submit(self, work: Batch | Work) -> Any:
        """Run `work` in a shared transaction; return once it is committed."""
        if self._task is None or self._task.done() or self._stopping:
            raise StorageUnavailable("the storage writer is not running")
        done: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        await self._queue.put(_Job(work, done))
        return await done

    async def _run(self) -> None:
        stopping = False
        while not stopping:
            first = await self._queue.get()
            if first is None:
                break
            jobs = [first]
            while len(jobs) < self._max_batch and not self._queue.empty():
                job = self._queue.get_nowait()
                if job is None:
                    stopping = True
                    break
                jobs.append(job)
            await self._commit(jobs)

    async def _commit(self, jobs: list[_Job]) -> None:
        try:
            results = await self._transaction(jobs)
        except Exception as error:
            if len(jobs) == 1 or isinstance(error, OperationalError | OSError):
                # The database itself failed (locked past busy_timeout, disk full, I/O):
                # one by one would only wait that long again per job. Every job fails now,
                # nothing of them committed, and its caller answers 451 / 503.
                for job in jobs:
                    self._fail(job, error)
                return
            log.warning(
                "group commit of %d jobs failed (%s); retrying one by one", len(jobs), error
            )
            for job in jobs:
                await self._commit([job])
            return
        self.commits += 1
        for job, result in zip(jobs, results, strict=True):
            if not job.done.done():
                job.done.set_result(result)

    async def _transaction(self, jobs: list[_Job]) -> list[Any]:
        works = [job.work for job in jobs]
        return await self._db.transaction(lambda conn: _run_batch(conn, works))

    @staticmethod
    def _fail(job: _Job, error: Exception) -> None:
        if job.done.done():
            return
        if isinstance(error, SQLAlchemyError | OSError):
            log.error("storage write failed: %s", error)
            job.done.set_exception(StorageUnavailable(str(error)))
        else:
            job.done.set_exception(error)


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
            for statement, params in work.steps:
                rows = params if isinstance(params, list) else [params]
                merged.setdefault(statement, []).extend(rows)
    for statement, rows in merged.items():
        conn.execute(statement, rows)
    return results
