"""One writer process per node on SQLite: every worker's small writes in one group commit.

With `[server] workers` > 1 each worker's group commit (storage.writer) took the database's
write lock in turn: one fsync for one worker's callers, the other's waiting. The lock was
busy 0.79-0.86 of the time from 10 clients on (bench/commits.py), so a node's throughput
queued on it. Here the workers send their writes, as data, to one process, which commits
whatever both sent while its last commit ran in one transaction: one fsync for both.

What a worker sends (storage.writer_link makes it) is a `Batch` compiled to SQL text and
parameter tuples (storage.dml's plans, so the very statements the worker would run):

    request = (id, patient, check, steps)
    patient = bool                     it may wait LINGER for company (storage.writer)
    check   = (sql, params) or None    an UPDATE run first; its result is "it changed a row"
    steps   = [(sql, [params, ...])]   run after every check of the commit, same SQL merged

framed as a 4-byte length and its `marshal` (values are None, int, float, str, bytes).
What it answers, once per commit, to each worker that had a request in it:

    reply   = (outcomes, report)
    outcome = (id, OK, result) | (id, FAILED, text) | (id, UNAVAILABLE | FULL, text)
    report  = (seconds, jobs, held, failure) or None   for one worker of each commit
    failure = (UNAVAILABLE | FULL, text) or None         the database failed it

A commit that fails for one request's data (a unique-key clash, a value the driver
refuses) is run again one request at a time, as the in-process writer does, so that it
fails alone; one that fails for the database itself (locked, full, I/O) fails every
request in it, and its report says so (told once: the failure's log line and metric).
The process takes the node's write lock (the `-writer` file beside the database,
storage.write_lock) around each transaction, as every writer does: a CLI command, or a worker
writing what cannot be sent (a function of a connection, a piece of a large body), takes
turns with it.

The supervisor binds the listening socket and keeps it (connections queue on it while the
process is started again), starts this process with it inherited, and stops it last, with
SIGUSR1 once every worker is gone: SIGTERM, which systemd sends every process of the
service at once, is ignored, since the workers still draining write through it.
"""

from __future__ import annotations

import contextlib
import faulthandler
import logging
import marshal
import os
import selectors
import signal
import socket
import sqlite3
import struct
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

from storage.errors import is_database_broken, is_disk_full
from storage.write_lock import WriteLock, sqlite_pragmas

log = logging.getLogger("postern.storage.writer")

HEADER = struct.Struct("!I")
MAX_FRAME = 1 << 25  # 32 MiB: far above any small job (a body under 1 MiB and its rows)
MAX_OUTBOX = 1 << 26  # answers a worker has not read: past this it is let go
OK, FAILED, UNAVAILABLE, FULL = 0, 1, 2, 3
READ_SIZE = 1 << 18
IDLE_TICK = 0.5  # seconds between looks at the stop flag while nothing comes
ACCEPT_PAUSE = 1.0  # after an accept failed (out of descriptors), as asyncio's servers do
MAX_BATCH = 512  # requests a commit, as the worker's writer; the rest go in the next
# A commit (the lock's wait, SQLite's busy timeout, the fsync) this long means the process
# hangs: HangWatch ends it with every thread's traceback and the supervisor starts another,
# before the workers' watchdogs (storage.writer_link, 30-60 s) would end them instead.
HANG_LIMIT = 25.0
HUNG = 71  # its exit status then (sysexits' EX_OSERR)
HANG_BACKSTOP = 5  # seconds: SIGALRM (unhandled: the end) if saying so blocks
# How long patient requests alone wait for company (storage.writer's `linger`): with one
# client, an attempt's record then shares the next message's fsync.
LINGER = 0.004

Request = tuple[int, bool, Any, list[tuple[str, list[tuple[Any, ...]]]]]
Outcome = tuple[int, int, Any]
Failure = tuple[int, str]  # UNAVAILABLE or FULL, the text
# seconds, requests, lock held, lock waited, failure
Report = tuple[float, int, float, float, Failure | None]


def frame(payload: Any) -> bytes:
    data = marshal.dumps(payload)
    return HEADER.pack(len(data)) + data


def unframe(inbox: bytearray) -> Iterator[Any]:
    """The whole frames received so far, each taken out of `inbox` as it is read (both
    ends: requests here, answers in storage.writer_link). A frame over MAX_FRAME:
    ValueError."""
    while len(inbox) >= HEADER.size:
        (size,) = HEADER.unpack_from(inbox)
        if size > MAX_FRAME:
            raise ValueError(f"a frame of {size} bytes")
        end = HEADER.size + size
        if len(inbox) < end:
            return
        payload = marshal.loads(inbox[HEADER.size : end])
        del inbox[:end]
        yield payload


@dataclass(eq=False)  # (a key: by identity)
class _Peer:
    sock: socket.socket
    inbox: bytearray = field(default_factory=bytearray)
    outbox: bytearray = field(default_factory=bytearray)  # answers the socket did not take yet


class HangWatch:
    """Around each commit: past `limit`, every thread's traceback on stderr, then the end
    (exit HUNG). One daemon thread for the process's life looks at the deadline once a
    second (a quarter of the limit if shorter): a commit costs no syscall for it, where
    faulthandler.dump_traceback_later started and joined a thread each time (~50 us of CPU),
    and it speaks while the loop's thread waits in the kernel on a disk that stopped
    answering (SQLite's calls let go of the GIL; no signal handler runs there). A hang that
    holds the GIL goes unseen: the workers' own watch (storage.writer_link) covers it."""

    def __init__(self, limit: float) -> None:
        self.limit = limit
        self._deadline: float | None = None
        threading.Thread(target=self._watch, name="hang-watch", daemon=True).start()

    def __enter__(self) -> None:
        self._deadline = time.monotonic() + self.limit

    def __exit__(self, *_: object) -> None:
        self._deadline = None

    def _watch(self) -> None:
        while True:
            time.sleep(min(1.0, self.limit / 4))
            deadline = self._deadline
            if deadline is not None and time.monotonic() > deadline and self._deadline is deadline:
                # SIGALRM's default action ends the process if stderr blocks (a full pipe
                # to a journal on the same dead disk); the writes take no Python lock.
                signal.alarm(HANG_BACKSTOP)
                said = f"writer process: a commit has run for {self.limit:g}s: ending\n"
                os.write(2, said.encode())
                faulthandler.dump_traceback(all_threads=True)
                os._exit(HUNG)


class WriterProcess:
    """The loop: read what the workers sent, commit it together, answer each."""

    def __init__(
        self, listener: socket.socket, database: str, hang_limit: float | None = None
    ) -> None:
        self._listener = listener
        self._database = database
        self._lock = WriteLock(database)
        self._conn: sqlite3.Connection | None = None
        self._selector = selectors.DefaultSelector()
        self._peers: dict[socket.socket, _Peer] = {}
        self._accept_again = 0.0  # while accepting is paused: when it resumes
        self._backlog: list[tuple[_Peer, Request]] = []  # past MAX_BATCH: the next commit's
        # One buffer for every read: recv(READ_SIZE) made a new one of 256 KiB each time,
        # mapped, shrunk and unmapped by malloc (three syscalls and page faults a read).
        self._buffer = bytearray(READ_SIZE)
        self._buffer_view = memoryview(self._buffer)
        self._waited = 0.0  # the lock's wait in the commit under way
        self._lock.on_wait = self._note_wait
        # (None: no watch, for a process embedded in another, a test's)
        self._hang_watch = HangWatch(hang_limit) if hang_limit else contextlib.nullcontext()
        self.stopping = False

    def run(self) -> None:
        """Until `stopping` (SIGUSR1): what was read by then is committed and answered."""
        self._listener.setblocking(False)
        self._selector.register(self._listener, selectors.EVENT_READ)
        try:
            while not self.stopping:
                self._resume_accepting()
                wait = 0.0 if self._backlog else IDLE_TICK
                pending = self._kept(self._backlog) + self._receive(self._selector.select(wait))
                if 0 < len(pending) < MAX_BATCH and all(request[1] for _, request in pending):
                    self._linger(pending)
                pending, self._backlog = pending[:MAX_BATCH], pending[MAX_BATCH:]
                if pending:
                    with self._hang_watch:
                        outcomes, report = self._commit([request for _, request in pending])
                        self._answer(pending, outcomes, report)
        finally:
            for peer in list(self._peers.values()):
                self._drop(peer)
            if self._conn is not None:
                self._conn.close()
            self._lock.close()

    # --- receiving ------------------------------------------------------------------

    def _receive(
        self, events: list[tuple[selectors.SelectorKey, int]]
    ) -> list[tuple[_Peer, Request]]:
        pending: list[tuple[_Peer, Request]] = []
        for key, mask in events:
            if key.fileobj is self._listener:
                self._accept()
                continue
            peer = self._peers.get(key.fileobj)  # type: ignore[call-overload]
            if peer is not None and mask & selectors.EVENT_WRITE:
                self._flush(peer)
            if peer is not None and mask & selectors.EVENT_READ:
                self._read(peer, pending)
        return self._kept(pending)

    def _kept(self, pending: list[tuple[_Peer, Request]]) -> list[tuple[_Peer, Request]]:
        """Those of peers still here (one gone, killed say, is answered nothing)."""
        return [(peer, request) for peer, request in pending if peer.sock in self._peers]

    def _read(self, peer: _Peer, pending: list[tuple[_Peer, Request]]) -> None:
        try:
            size = peer.sock.recv_into(self._buffer)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            size = 0
        if not size:
            self._drop(peer)
            return
        peer.inbox += self._buffer_view[:size]
        try:
            pending.extend((peer, request) for request in unframe(peer.inbox))
        except (ValueError, EOFError, TypeError) as error:
            log.error("writer process: a worker sent what is not a request (%s)", error)
            self._drop(peer)

    def _linger(self, pending: list[tuple[_Peer, Request]]) -> None:
        """Patient requests alone: wait up to LINGER for company (any request), as the
        worker's own writer does."""
        deadline = time.monotonic() + LINGER
        while not self.stopping and (left := deadline - time.monotonic()) > 0:
            more = self._receive(self._selector.select(left))
            if more:
                pending.extend(more)
                return

    def _accept(self) -> None:
        while True:
            try:
                sock, _ = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as error:  # out of descriptors: try again in a while
                log.error("writer process: accept failed (%s); pausing %gs", error, ACCEPT_PAUSE)
                self._selector.unregister(self._listener)
                self._accept_again = time.monotonic() + ACCEPT_PAUSE
                return
            sock.setblocking(False)
            self._peers[sock] = _Peer(sock)
            self._selector.register(sock, selectors.EVENT_READ)

    def _resume_accepting(self) -> None:
        if self._accept_again and time.monotonic() >= self._accept_again:
            self._accept_again = 0.0
            self._selector.register(self._listener, selectors.EVENT_READ)

    def _drop(self, peer: _Peer) -> None:
        if self._peers.pop(peer.sock, None) is not None:
            self._selector.unregister(peer.sock)
            peer.sock.close()

    # --- committing -----------------------------------------------------------------

    def _commit(self, requests: list[Request]) -> tuple[list[Outcome], Report]:
        """Every request's outcome, and the commit's figures."""
        began = time.perf_counter()
        taken = None
        self._waited = 0.0
        failure: Failure | None = None
        try:
            with self._lock.held():
                taken = time.perf_counter()
                outcomes = self._run_together(requests)
                held = time.perf_counter() - taken
        except Exception as error:  # the database (OSError: the lock's wait timed out)
            outcomes = [_failure(request[0], error) for request in requests]
            held = 0.0 if taken is None else time.perf_counter() - taken
        failed = [outcome for outcome in outcomes if outcome[1] in (UNAVAILABLE, FULL)]
        if failed:
            failure = (failed[-1][1], failed[-1][2])
        return outcomes, (time.perf_counter() - began, len(requests), held, self._waited, failure)

    def _note_wait(self, seconds: float) -> None:
        self._waited += seconds

    def _run_together(self, requests: list[Request]) -> list[Outcome]:
        try:
            return self._run(requests)
        except Exception as error:
            if _database_failed(error) or len(requests) == 1:
                raise
        log.warning("writer process: a commit of %d failed; one by one", len(requests))
        outcomes: list[Outcome] = []
        for request in requests:
            outcome = self._alone(request)
            if outcome[1] in (UNAVAILABLE, FULL):  # the database now: the rest fail with it
                outcomes += [
                    (other[0], outcome[1], outcome[2]) for other in requests[len(outcomes) :]
                ]
                break
            outcomes.append(outcome)
        return outcomes

    def _alone(self, request: Request) -> Outcome:
        try:
            return self._run([request])[0]
        except Exception as error:  # (a value the driver refuses: that request's own)
            return _failure(request[0], error)

    def _run(self, requests: list[Request]) -> list[Outcome]:
        """One transaction: every check, then the steps, same SQL in one executemany."""
        conn = self._connection()
        merged: dict[str, list[tuple[Any, ...]]] = {}
        outcomes: list[Outcome] = []
        try:
            conn.execute("BEGIN")
            for ident, _, check, steps in requests:
                result = None if check is None else conn.execute(*check).rowcount > 0
                outcomes.append((ident, OK, result))
                for sql, rows in steps:
                    merged.setdefault(sql, []).extend(rows)
            for sql, rows in merged.items():
                if len(rows) > 1:
                    conn.executemany(sql, rows)
                else:
                    conn.execute(sql, rows[0])
            conn.execute("COMMIT")
        except BaseException as error:
            self._roll_back(error)
            raise
        return outcomes

    def _roll_back(self, error: BaseException) -> None:
        conn = self._conn
        try:
            if conn is not None and conn.in_transaction:
                conn.execute("ROLLBACK")
        except sqlite3.Error:
            pass
        if _database_failed(error) and conn is not None:
            conn.close()  # the next commit starts on a connection of its own
            self._conn = None

    def _connection(self) -> sqlite3.Connection:
        """Opened at the first commit (the first worker has made the schema by then); an
        existing file only: a wrong path must fail, not make an empty database."""
        if self._conn is None:
            uri = f"file://{quote(self._database)}?mode=rw"  # (an absolute path: no authority)
            conn = sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False)
            try:
                sqlite_pragmas(conn, None)
            except BaseException:
                conn.close()
                raise
            self._conn = conn
        return self._conn

    # --- answering ------------------------------------------------------------------

    def _answer(
        self, pending: list[tuple[_Peer, Request]], outcomes: list[Outcome], report: Report
    ) -> None:
        """One reply a peer; the first peer's carries the commit's figures (told once)."""
        replies: dict[_Peer, list[Outcome]] = {}
        for (peer, _), outcome in zip(pending, outcomes, strict=True):
            replies.setdefault(peer, []).append(outcome)
        told: Report | None = report
        for peer, answers in replies.items():
            if peer.sock in self._peers:  # (one gone meanwhile hears nothing)
                self._send(peer, frame((answers, told)))
                if peer.sock in self._peers:  # (told only if it could be sent)
                    told = None

    def _send(self, peer: _Peer, data: bytes) -> None:
        """Without blocking: what the socket does not take waits in the peer's outbox
        (a worker not reading must not stall the others' commits)."""
        if peer.outbox:
            peer.outbox += data
        else:
            try:
                sent = peer.sock.send(data)
            except (BlockingIOError, InterruptedError):
                sent = 0
            except OSError as error:  # the worker is gone (killed, crashed)
                log.info("writer process: a worker's line closed (%s)", error)
                self._drop(peer)
                return
            if sent == len(data):
                return
            peer.outbox += data[sent:]
            self._selector.modify(peer.sock, selectors.EVENT_READ | selectors.EVENT_WRITE)
        if len(peer.outbox) > MAX_OUTBOX:
            log.error("writer process: a worker reads no answers; let go")
            self._drop(peer)

    def _flush(self, peer: _Peer) -> None:
        try:
            sent = peer.sock.send(peer.outbox)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as error:
            log.info("writer process: a worker's line closed (%s)", error)
            self._drop(peer)
            return
        del peer.outbox[:sent]
        if not peer.outbox:
            self._selector.modify(peer.sock, selectors.EVENT_READ)


def _database_failed(error: BaseException) -> bool:
    """As storage.errors.database_failed for the driver's own errors: locked, full, I/O,
    corrupt, out of memory (and the lock's wait timing out); not one request's data (a
    clash, a value the driver refuses)."""
    if isinstance(error, sqlite3.OperationalError | sqlite3.InterfaceError | OSError):
        return True
    if type(error) in (sqlite3.DatabaseError, sqlite3.InternalError):
        return True
    return is_database_broken(error) or is_disk_full(error)


def _failure(ident: int, error: BaseException) -> Outcome:
    text = str(error).strip().splitlines()[0] if str(error).strip() else repr(error)
    if is_disk_full(error):
        return (ident, FULL, text)
    if _database_failed(error):
        return (ident, UNAVAILABLE, text)
    return (ident, FAILED, text)  # that request's data (a clash, a value refused)


def serve(listener_fd: int, database: str) -> None:
    """The process's body: serve the inherited listening socket until SIGUSR1."""
    listener = socket.socket(fileno=listener_fd)
    process = WriterProcess(listener, database, HANG_LIMIT)

    def stop(_signum: int, _frame: Any) -> None:
        process.stopping = True

    signal.signal(signal.SIGUSR1, stop)
    signal.signal(signal.SIGALRM, signal.SIG_DFL)  # the hang watch's backstop (see there)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # systemd's, to every process: see above
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    log.info("writer process: serving %s (pid %d)", database, os.getpid())
    with contextlib.suppress(KeyboardInterrupt):
        process.run()
    log.info("writer process: stopped")
