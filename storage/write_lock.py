"""SQLite's write lock file and connection settings, shared by every writer of a database:
the workers' write threads (storage.db), the node's writer process (storage.writer_process)
and CLI commands. No SQLAlchemy here: the writer process imports only this (a lighter,
faster start, and less memory, for a process started again while requests wait for it).
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from queue import SimpleQueue
from typing import Any

from storage.paths import database_file

log = logging.getLogger("postern.storage")

LockHook = Callable[[float], None]  # told seconds: a wait for the write lock, or a hold of it
BUSY_TIMEOUT = 10.0  # seconds a write waits for another process's write to finish


def sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=FULL")
    cursor.execute(f"PRAGMA busy_timeout={int(BUSY_TIMEOUT * 1000)}")
    cursor.execute("PRAGMA temp_store=MEMORY")
    cursor.close()


class WriteLock:
    """An advisory lock file beside the SQLite database, held around each write transaction.

    Several processes (`[server] workers`, CLI commands) write one database. Left to SQLite, a
    writer that finds the database locked sleeps 1 ms, then 2, 5, 10 ... up to 100 ms between
    tries (its busy handler), while its group commit and every caller in it wait: measured,
    two workers then deliver less than one. flock instead wakes the next writer the moment the
    lock is free. SQLite's own lock stays, for writers that do not take this one (and for a
    process that may not open the file: it warns once and goes without).

    The file belongs to the database's owner, with its mode, as SQLite's -wal and -shm do (a
    command run as root must not leave a lock the service cannot open). The wait is bounded
    like the busy timeout: a contended lock is waited for in a daemon thread, and past
    `timeout` the write fails with TimeoutError (an OSError: storage unavailable, 451/503)
    while the descriptor it waits on is closed once the wait ends."""

    def __init__(self, database: str | None) -> None:
        self._database = database_file(database)
        self._fd: int | None = None
        self._usable = self._database is not None
        # Told how long each contended take waited, timed out or not, and how long each
        # take held the lock (on the write thread).
        self.on_wait: LockHook | None = None
        self.on_held: LockHook | None = None

    @contextlib.contextmanager
    def held(self, timeout: float | None = None) -> Iterator[None]:
        fd = self._open()
        if fd is None:
            yield
            return
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._wait(fd, BUSY_TIMEOUT if timeout is None else timeout)
        taken = time.perf_counter()
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            self.tell("on_held", time.perf_counter() - taken)

    def _open(self) -> int | None:
        if self._fd is not None or not self._usable:
            return self._fd
        database = self._database
        assert database is not None
        path = f"{database}-writer"
        try:  # read-only is enough for flock
            fd = os.open(path, os.O_RDONLY | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as error:
            log.warning("no write lock %s (%s): writers wait on SQLite's lock", path, error)
            self._usable = False
            return None
        with contextlib.suppress(OSError):  # the database may not exist yet: keep 0600
            owner = os.stat(database)
            if os.geteuid() == 0:
                os.fchown(fd, owner.st_uid, owner.st_gid)
            if os.fstat(fd).st_uid == owner.st_uid:
                os.fchmod(fd, owner.st_mode & 0o666)
        self._fd = fd
        return fd

    def _wait(self, fd: int, timeout: float) -> None:
        began = time.perf_counter()
        try:
            self._wait_for(fd, timeout)
        finally:  # a wait that timed out was waited too
            self.tell("on_wait", time.perf_counter() - began)

    def tell(self, name: str, seconds: float) -> None:
        """Tell the hook `name` (on_wait, on_held); never raises: its caller must reach its
        unlock, or keep its own error. One that fails is logged once and dropped: it would
        fail again at every write transaction."""
        hook: LockHook | None = getattr(self, name)
        if hook is not None:
            try:
                hook(seconds)
            except Exception:
                if getattr(self, name) is hook:  # (not one set since)
                    setattr(self, name, None)
                log.exception("the write-lock hook %s failed; it is not called again", name)

    def _wait_for(self, fd: int, timeout: float) -> None:
        taken = LOCK_WAITERS.flock(fd)
        try:
            taken.result(timeout)
        except FutureTimeout:
            # The wait goes on in its thread: its descriptor is given up (closed, so let go,
            # once the wait ends) and the next write opens another, whose lock is its own.
            self._fd = None
            taken.add_done_callback(lambda _: os.close(fd))
            raise TimeoutError("database is locked by another writer") from None

    def close(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = None


class _LockWaiters:
    """Daemon threads that wait for a contended write lock, kept for the next wait.

    With two workers at 10 clients every other write transaction finds the lock taken; a
    thread started for each wait cost a clone3, a stack mapped and unmapped and its start's
    handshake, 0.39 threads a message (strace -c). Daemon threads, as before: one waiting
    past its caller's timeout must not hold up the process's exit. A thread waits for one
    lock at a time; another is started only while every one is waiting (after a timeout,
    its thread may wait on for a while)."""

    def __init__(self) -> None:
        self._idle: list[SimpleQueue[tuple[int, Future[None]]]] = []
        self._guard = threading.Lock()

    def flock(self, fd: int) -> Future[None]:
        """Take `fd`'s exclusive flock in a waiting thread: the future is done once it is."""
        taken: Future[None] = Future()
        with self._guard:
            inbox = self._idle.pop() if self._idle else None
        if inbox is None:
            inbox = SimpleQueue()
            threading.Thread(
                target=self._serve, args=(inbox,), name="db-write-lock", daemon=True
            ).start()
        inbox.put((fd, taken))
        return taken

    def _serve(self, inbox: SimpleQueue[tuple[int, Future[None]]]) -> None:
        while True:
            fd, taken = inbox.get()
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
            except Exception as error:  # (a closed descriptor's OSError, a bad one's
                self._done(inbox)  # ValueError): the caller hears of it, never waits it out
                taken.set_exception(error)
            else:
                self._done(inbox)
                taken.set_result(None)

    def _done(self, inbox: SimpleQueue[tuple[int, Future[None]]]) -> None:
        # Idle before the caller hears: its next wait, coming at once, finds this thread.
        with self._guard:
            self._idle.append(inbox)


LOCK_WAITERS = _LockWaiters()
