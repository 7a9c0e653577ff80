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
    report  = (seconds, jobs, held) or None    for one of the workers: the commit's figures

A commit that fails for one request's data (a unique-key clash) is run again one request
at a time, as the in-process writer does; one that fails for the database itself (locked,
full, I/O) fails every request in it. The process takes the node's write lock (the
`-writer` file beside the database, storage.db) around each transaction, as every writer
does: a CLI command, or a worker writing what cannot be sent (a function of a connection,
a piece of a large body), takes turns with it.

The supervisor binds the listening socket and keeps it (connections queue on it while the
process is started again), starts this process with it inherited, and stops it last.
"""

from __future__ import annotations

import contextlib
import logging
import marshal
import os
import selectors
import signal
import socket
import sqlite3
import struct
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from storage.db import _sqlite_pragmas, _WriteLock
from storage.errors import is_disk_full

log = logging.getLogger("postern.storage.writer")

HEADER = struct.Struct("!I")
MAX_FRAME = 1 << 25  # 32 MiB: far above any small job (a body under 1 MiB and its rows)
OK, FAILED, UNAVAILABLE, FULL = 0, 1, 2, 3
READ_SIZE = 1 << 18
SEND_TIMEOUT = 30.0  # a worker that reads nothing for this long is let go
IDLE_TICK = 0.5  # seconds between looks at the stop flag while nothing comes
# How long patient requests alone wait for company (storage.writer's `linger`): with one
# client, an attempt's record then shares the next message's fsync.
LINGER = 0.004

Request = tuple[int, bool, Any, list[tuple[str, list[tuple[Any, ...]]]]]
Outcome = tuple[int, int, Any]
Report = tuple[float, int, float]  # seconds, requests, seconds the write lock was held


def frame(payload: Any) -> bytes:
    data = marshal.dumps(payload)
    return HEADER.pack(len(data)) + data


@dataclass(eq=False)  # (a key: by identity)
class _Peer:
    sock: socket.socket
    inbox: bytearray = field(default_factory=bytearray)

    def requests(self) -> Iterator[Request]:
        """The whole frames received so far (a frame over MAX_FRAME: ValueError)."""
        inbox = self.inbox
        start = 0
        while len(inbox) - start >= HEADER.size:
            (size,) = HEADER.unpack_from(inbox, start)
            if size > MAX_FRAME:
                raise ValueError(f"a frame of {size} bytes")
            end = start + HEADER.size + size
            if len(inbox) < end:
                break
            yield marshal.loads(inbox[start + HEADER.size : end])
            start = end
        del inbox[:start]


class WriterProcess:
    """The loop: read what the workers sent, commit it together, answer each."""

    def __init__(self, listener: socket.socket, database: str) -> None:
        self._listener = listener
        self._database = database
        self._lock = _WriteLock(database)
        self._conn: sqlite3.Connection | None = None
        self._selector = selectors.DefaultSelector()
        self._peers: dict[socket.socket, _Peer] = {}
        self.stopping = False

    def run(self) -> None:
        """Until SIGTERM (`stopping`) and no worker left: a worker still draining (systemd
        sends SIGTERM to every process of the service at once) is served to its end."""
        self._listener.setblocking(False)
        self._selector.register(self._listener, selectors.EVENT_READ)
        try:
            while not (self.stopping and not self._peers):
                pending = self._receive(self._selector.select(IDLE_TICK))
                if pending and all(request[1] for _, request in pending):
                    self._linger(pending)
                if pending:
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
        for key, _ in events:
            if key.fileobj is self._listener:
                self._accept()
                continue
            peer = self._peers.get(key.fileobj)  # type: ignore[call-overload]
            if peer is None:
                continue
            try:
                data = peer.sock.recv(READ_SIZE)
            except (BlockingIOError, InterruptedError):
                continue
            except OSError:
                data = b""
            if not data:
                self._drop(peer)
                continue
            peer.inbox += data
            try:
                pending.extend((peer, request) for request in peer.requests())
            except (ValueError, EOFError, TypeError) as error:
                log.error("writer process: a worker sent what is not a request (%s)", error)
                self._drop(peer)
        return [(peer, request) for peer, request in pending if peer.sock in self._peers]

    def _linger(self, pending: list[tuple[_Peer, Request]]) -> None:
        """Patient requests alone: take what comes within LINGER (until one impatient)."""
        deadline = time.monotonic() + LINGER
        while (left := deadline - time.monotonic()) > 0:
            more = self._receive(self._selector.select(left))
            pending.extend(more)
            if any(not request[1] for _, request in more):
                return

    def _accept(self) -> None:
        while True:
            try:
                sock, _ = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as error:
                log.error("writer process: accept failed: %s", error)
                return
            sock.setblocking(False)
            self._peers[sock] = _Peer(sock)
            self._selector.register(sock, selectors.EVENT_READ)

    def _drop(self, peer: _Peer) -> None:
        if self._peers.pop(peer.sock, None) is not None:
            self._selector.unregister(peer.sock)
            peer.sock.close()

    # --- committing -----------------------------------------------------------------

    def _commit(self, requests: list[Request]) -> tuple[list[Outcome], Report | None]:
        """Every request's outcome, and the commit's figures (None: nothing committed)."""
        began = time.perf_counter()
        try:
            with self._lock.held():
                taken = time.perf_counter()
                outcomes = self._run_together(requests)
                held = time.perf_counter() - taken
        except (sqlite3.Error, OSError) as error:  # (OSError: the lock's wait timed out)
            return [_failure(request[0], error) for request in requests], None
        return outcomes, (time.perf_counter() - began, len(requests), held)

    def _run_together(self, requests: list[Request]) -> list[Outcome]:
        try:
            return self._run(requests)
        except sqlite3.Error as error:
            if _database_failed(error) or len(requests) == 1:
                raise
        log.warning("writer process: a commit of %d failed; one by one", len(requests))
        return [self._alone(request) for request in requests]

    def _alone(self, request: Request) -> Outcome:
        try:
            return self._run([request])[0]
        except sqlite3.Error as error:
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
        if isinstance(error, sqlite3.Error) and _database_failed(error) and conn is not None:
            conn.close()  # the next commit starts on a connection of its own
            self._conn = None

    def _connection(self) -> sqlite3.Connection:
        """Opened at the first commit (the first worker has made the schema by then)."""
        if self._conn is None:
            conn = sqlite3.connect(self._database, isolation_level=None, check_same_thread=False)
            try:
                _sqlite_pragmas(conn, None)
            except BaseException:
                conn.close()
                raise
            self._conn = conn
        return self._conn

    # --- answering ------------------------------------------------------------------

    def _answer(
        self, pending: list[tuple[_Peer, Request]], outcomes: list[Outcome], report: Report | None
    ) -> None:
        """One reply a peer; the first peer's carries the commit's figures (told once)."""
        replies: dict[_Peer, list[Outcome]] = {}
        for (peer, _), outcome in zip(pending, outcomes, strict=True):
            replies.setdefault(peer, []).append(outcome)
        for peer, told in replies.items():
            self._send(peer, frame((told, report)))
            report = None

    def _send(self, peer: _Peer, data: bytes) -> None:
        try:
            peer.sock.settimeout(SEND_TIMEOUT)
            peer.sock.sendall(data)
            peer.sock.setblocking(False)
        except OSError as error:
            log.error("writer process: a worker stopped reading (%s); let go", error)
            self._drop(peer)


def _database_failed(error: BaseException) -> bool:
    """As storage.errors.database_failed for the driver's own errors: locked, full, I/O."""
    return isinstance(error, sqlite3.OperationalError | sqlite3.InterfaceError | OSError) or (
        is_disk_full(error)
    )


def _failure(ident: int, error: BaseException) -> Outcome:
    text = str(error).strip().splitlines()[0] if str(error).strip() else repr(error)
    if is_disk_full(error):
        return (ident, FULL, text)
    if isinstance(error, sqlite3.Error) and not _database_failed(error):
        return (ident, FAILED, text)
    return (ident, UNAVAILABLE, text)


def serve(listener_fd: int, database: str) -> None:
    """The process's body: serve the inherited listening socket until SIGTERM."""
    listener = socket.socket(fileno=listener_fd)
    process = WriterProcess(listener, database)

    def stop(_signum: int, _frame: Any) -> None:
        process.stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the supervisor says when, by SIGTERM
    log.info("writer process: serving %s (pid %d)", database, os.getpid())
    with contextlib.suppress(KeyboardInterrupt):
        process.run()
    log.info("writer process: stopped")
