"""The node's writer process (storage.writer_process) and a worker's line to it
(storage.writer_link), on real SQLite files: the process is a real one, started as the
supervisor starts it (gateway.process.node_writer) on a listening socket the test holds,
as the supervisor holds it. Two `Writer`s on two `Database`s stand for two workers."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Connection, insert, select, update

from storage import writer_link
from storage.db import Database, create_schema, database_url, open_database
from storage.models import Meta
from storage.writer import Batch, StorageFull, StorageUnavailable, Writer
from storage.writer_link import WriterLink
from storage.writer_process import FAILED, HUNG, UNAVAILABLE, WriterProcess, _failure

WAIT = 10.0
INSERT = insert(Meta)


def put(key: str, value: str = "v") -> Batch:
    batch = Batch()
    batch.add(INSERT, {"key": key, "value": value})
    return batch


def set_if_there(key: str, value: str) -> Batch:
    """A check (the UPDATE: did it change a row?) and a step that depends on nothing."""
    batch = Batch()
    batch.check = (update(Meta).where(Meta.c.key == key).values(value=value), {})
    batch.add(INSERT, {"key": f"after-{key}", "value": value})
    return batch


@dataclass
class Node:
    """A database file, the listening socket (held here, as the supervisor holds it) and
    the writer process serving it."""

    database: Path
    socket_path: str
    listener: socket.socket
    proc: subprocess.Popen[bytes] | None = None
    workers: list[tuple[Database, Writer, WriterLink]] = field(default_factory=list)

    def start(self, hang_limit: float | None = None) -> None:
        fd = self.listener.fileno()
        program = ["-m", "gateway.process.node_writer"]
        if hang_limit is not None:  # the same, with a shorter watchdog
            script = f"import storage.writer_process as w; w.HANG_LIMIT = {hang_limit}; "
            program = ["-c", script + "import gateway.process.node_writer as n; n.main()"]
        self.proc = subprocess.Popen(
            [sys.executable, *program, "--parent", str(os.getpid()),
             "--fd", str(fd), "--database", str(self.database)],
            pass_fds=[fd], stdin=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )  # fmt: skip

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(WAIT)

    def stop(self) -> str:
        """SIGUSR1, as the supervisor stops it; its stderr."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGUSR1)
        _, err = self.proc.communicate(timeout=WAIT)
        return err.decode()

    async def worker(self, lost: list[int] | None = None, **hooks: Any) -> Writer:
        db = open_database(database_url("", self.database.parent))
        dialect = db.write_dialect
        assert dialect is not None
        on_lost = (lambda n: lost.append(n)) if lost is not None else _no_crash
        link = WriterLink(self.socket_path, dialect, on_lost=on_lost)
        assert await link.connect()
        writer = Writer(db, link=link, **hooks)
        writer.start()
        self.workers.append((db, writer, link))
        return writer


def _no_crash(unanswered: int) -> None:
    raise AssertionError(f"the line was lost with {unanswered} unanswered")


@pytest.fixture
async def node(tmp_path: Path) -> AsyncIterator[Node]:
    db = open_database(database_url("", tmp_path))
    await create_schema(db)
    await db.dispose()
    path = str(tmp_path / "writer.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(16)
    node = Node(tmp_path / "postern.db", path, listener)
    node.start()
    try:
        yield node
    finally:
        for db, writer, _ in node.workers:
            await asyncio.wait_for(writer.stop(), WAIT)
            await db.dispose()
        if node.proc is not None and node.proc.poll() is None:
            node.stop()
        listener.close()


def rows(database: Path, prefix: str) -> dict[str, str]:
    with sqlite3.connect(database) as conn:
        found = conn.execute(
            "SELECT key, value FROM postern_meta WHERE key LIKE ?", (prefix + "%",)
        )
        return dict(found.fetchall())


async def test_two_workers_writes_share_one_commit(node: Node) -> None:
    told: list[tuple[float, int]] = []
    first = await node.worker(on_commit=lambda s, n: told.append((s, n)))
    second = await node.worker(on_commit=lambda s, n: told.append((s, n)))
    await asyncio.gather(first.submit(put("warm1")), second.submit(put("warm2")))
    assert node.proc is not None
    os.kill(node.proc.pid, signal.SIGSTOP)  # both workers' requests wait in its sockets
    try:
        sent = [
            *(asyncio.ensure_future(first.submit(put(f"one{i:03d}"))) for i in range(200)),
            *(asyncio.ensure_future(second.submit(put(f"two{i:03d}"))) for i in range(200)),
        ]
        await asyncio.sleep(0.2)
    finally:
        os.kill(node.proc.pid, signal.SIGCONT)
    async with asyncio.timeout(WAIT):
        await asyncio.gather(*sent)
    assert len(rows(node.database, "one")) == 200
    assert len(rows(node.database, "two")) == 200
    assert [link.sent for _, _, link in node.workers] == [201, 201]  # none written here
    # One commit held both workers' requests, told once (by one of them); every commit
    # was told, and no request twice.
    assert max(jobs for _, jobs in told) > 200
    assert sum(jobs for _, jobs in told) == 402


async def test_a_check_is_the_result_and_its_steps_run(node: Node) -> None:
    writer = await node.worker()
    await writer.submit(put("there", "old"))
    assert await writer.submit(set_if_there("there", "new")) is True
    assert await writer.submit(set_if_there("missing", "new")) is False
    assert rows(node.database, "there") == {"there": "new"}
    assert rows(node.database, "after-") == {"after-there": "new", "after-missing": "new"}


async def one_bad_among_twenty(writer: Writer, bad: Batch) -> BaseException:
    """Submit `bad` with twenty good batches at once (one commit, or few): they commit, it
    fails alone with StorageUnavailable, which is returned."""
    async with asyncio.timeout(WAIT):
        results = await asyncio.gather(
            *(writer.submit(put(f"fine{i}")) for i in range(20)),
            writer.submit(bad),
            return_exceptions=True,
        )
    assert results[:20] == [None] * 20
    assert isinstance(results[20], StorageUnavailable)
    return results[20]


async def test_a_clash_fails_alone_in_a_shared_commit(node: Node) -> None:
    writer = await node.worker()
    await writer.submit(put("taken"))
    failed = await one_bad_among_twenty(writer, put("taken", "again"))
    assert "UNIQUE" in str(failed)
    assert node.workers[0][2].sent == 22  # (through the process, the clash too)
    assert len(rows(node.database, "fine")) == 20
    assert rows(node.database, "taken") == {"taken": "v"}
    assert writer.failure is None  # one batch's data, not the database


async def test_what_cannot_be_sent_is_written_here(node: Node) -> None:
    writer = await node.worker()
    link = node.workers[0][2]

    def function(conn: Connection) -> int:
        conn.execute(INSERT, {"key": "fn", "value": "v"})
        return 7

    first = Batch(first=lambda conn: conn.execute(select(Meta.c.key)).first() is not None)
    first.add(INSERT, {"key": "first", "value": "v"})
    async with asyncio.timeout(WAIT):
        assert await writer.submit(function) == 7
        assert await writer.submit(first) is True
        assert await writer.submit(put("big"), size=writer.large) is None
        assert await writer.submit(put("piece"), piece=True) is None
        assert await writer.submit(put("sent")) is None
    assert link.sent == 1
    assert set(rows(node.database, "")) >= {"fn", "first", "big", "piece", "sent"}


async def test_lost_with_writes_unanswered_the_worker_is_told(node: Node) -> None:
    lost: list[int] = []
    writer = await node.worker(lost)
    await writer.submit(put("accepted"))  # (a line still queued on the socket would wait
    assert node.proc is not None  # for the next process: see the test after next)
    os.kill(node.proc.pid, signal.SIGSTOP)  # reads nothing more: the request waits
    try:
        task = asyncio.ensure_future(writer.submit(put("limbo")))
        await asyncio.sleep(0.2)
        assert not task.done()
    finally:
        os.kill(node.proc.pid, signal.SIGKILL)
        os.kill(node.proc.pid, signal.SIGCONT)
        node.proc.wait(WAIT)
    async with asyncio.timeout(WAIT):
        with pytest.raises(ConnectionError):  # (in serve, on_lost ended the worker first)
            await task
    assert lost == [1]


async def test_a_line_queued_on_the_socket_waits_for_the_next_process(node: Node) -> None:
    """Connected while no process serves the socket (one being started again), a worker's
    requests wait in the socket's queue and the next process answers them."""
    node.kill()
    writer = await node.worker()
    task = asyncio.ensure_future(writer.submit(put("queued")))
    await asyncio.sleep(0.2)
    assert not task.done()
    node.start()
    async with asyncio.timeout(WAIT):
        assert await task is None
    assert rows(node.database, "queued") == {"queued": "v"}


async def test_lost_with_nothing_unanswered_writes_here_until_it_is_back(
    node: Node, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(writer_link, "RECONNECT_EVERY", 3.0)  # (the write here comes first)
    writer = await node.worker(lost=[])
    link = node.workers[0][2]
    await writer.submit(put("before"))
    node.kill()
    async with asyncio.timeout(WAIT):
        while link.connected:
            await asyncio.sleep(0.01)
        await writer.submit(put("meanwhile"))  # here, under the lock
        assert link.sent == 1
        node.start()  # as the supervisor does, on the socket it kept
        while not link.connected:
            await asyncio.sleep(0.05)
        await writer.submit(put("after"))
    assert link.sent == 2
    assert set(rows(node.database, "")) >= {"before", "meanwhile", "after"}


async def test_sigterm_is_ignored_sigusr1_stops_it(node: Node) -> None:
    """systemd's SIGTERM reaches every process of the service at once: the writer process
    goes on serving the workers as they drain; the supervisor stops it once they are gone,
    with SIGUSR1."""
    writer = await node.worker()
    await writer.submit(put("before"))  # its line accepted, its handlers set
    assert node.proc is not None
    node.proc.terminate()
    await asyncio.sleep(0.3)
    async with asyncio.timeout(WAIT):
        assert await writer.submit(put("draining")) is None
    assert node.proc.poll() is None
    db, _, _ = node.workers.pop()
    await writer.stop()
    await db.dispose()
    node.proc.send_signal(signal.SIGUSR1)
    await asyncio.to_thread(node.proc.wait, WAIT)
    assert node.proc.returncode == 0


async def test_a_value_the_driver_refuses_fails_alone(node: Node) -> None:
    """A lone surrogate (what a peer's undecodable reply byte becomes) cannot be bound:
    that batch fails, its neighbours commit, the process lives on."""
    writer = await node.worker()
    await one_bad_among_twenty(writer, put("bad", "reply \udcff"))
    assert node.workers[0][2].sent == 21  # (through the process, the refused one too)
    assert len(rows(node.database, "fine")) == 20
    assert node.proc is not None and node.proc.poll() is None
    assert await writer.submit(put("after")) is None


async def test_a_request_too_large_to_send_is_written_here(node: Node) -> None:
    writer = await node.worker()
    link = node.workers[0][2]
    batch = Batch()
    batch.add(INSERT, [{"key": f"big{i:05d}", "value": f"{i:05d}" * 205} for i in range(34_000)])
    async with asyncio.timeout(WAIT * 3):
        assert await writer.submit(batch) is None
    assert link.sent == 0
    assert len(rows(node.database, "big")) == 34_000


async def test_a_process_that_does_not_answer_counts_as_lost(
    node: Node, monkeypatch: pytest.MonkeyPatch
) -> None:
    warm = await node.worker()
    await warm.submit(put("accepted"))  # the process started and committing
    monkeypatch.setattr(writer_link, "ANSWER_TIMEOUT", 1.0)  # for lines made from now on
    lost: list[int] = []
    writer = await node.worker(lost)
    assert node.proc is not None
    os.kill(node.proc.pid, signal.SIGSTOP)
    try:
        task = asyncio.ensure_future(writer.submit(put("hung")))
        async with asyncio.timeout(WAIT):
            while not lost:
                await asyncio.sleep(0.05)
        assert lost == [1]
        with pytest.raises(ConnectionError):
            await task
    finally:
        os.kill(node.proc.pid, signal.SIGCONT)


async def test_a_commit_that_hangs_ends_the_process_with_its_traceback(node: Node) -> None:
    """A commit stuck past HANG_LIMIT (here SQLite's lock, held by another connection for
    longer than the busy timeout) ends the process (exit HUNG), every thread's traceback on
    its stderr; the worker with a request in it counts it as lost (its outcome unknown).
    Commits that end in time leave the watch disarmed, however long the process then idles."""
    node.kill()
    node.start(hang_limit=0.5)
    lost: list[int] = []
    writer = await node.worker(lost)
    assert await writer.submit(put("in time")) is None
    await asyncio.sleep(1.5)  # three limits, idle
    assert node.proc is not None and node.proc.poll() is None
    holder = sqlite3.connect(node.database, isolation_level=None)
    try:
        holder.execute("BEGIN IMMEDIATE")
        with pytest.raises(ConnectionError):
            async with asyncio.timeout(WAIT):
                await writer.submit(put("stuck"))
        assert node.proc is not None
        await asyncio.to_thread(node.proc.wait, WAIT)
    finally:
        holder.close()
    assert node.proc.returncode == HUNG
    assert lost == [1]
    assert node.proc.stderr is not None
    said = node.proc.stderr.read().decode()
    assert "a commit has run for 0.5s: ending" in said and "in _commit" in said, said
    assert set(rows(node.database, "")) >= {"in time"} and "stuck" not in rows(node.database, "")


class FullProcess(WriterProcess):
    """The process on a database that cannot grow (SQLite's max_page_count, per
    connection): a real SQLITE_FULL at the next page it needs."""

    def _connection(self) -> sqlite3.Connection:
        conn = super()._connection()
        pages = conn.execute("PRAGMA page_count").fetchone()[0]
        conn.execute(f"PRAGMA max_page_count={pages}")
        return conn


async def test_a_database_failure_is_the_writers_own(tmp_path: Path) -> None:
    db = open_database(database_url("", tmp_path))
    await create_schema(db)
    path = str(tmp_path / "writer.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(4)
    process = FullProcess(listener, str(tmp_path / "postern.db"))
    thread = threading.Thread(target=process.run, daemon=True)
    thread.start()
    dialect = db.write_dialect
    assert dialect is not None
    link = WriterLink(path, dialect, on_lost=_no_crash)
    assert await link.connect()
    failures: list[StorageUnavailable] = []
    writer = Writer(db, link=link, on_failure=failures.append)
    writer.start()
    try:
        batches = []
        for n in range(10):
            batch = Batch()
            batch.add(INSERT, [{"key": f"k{n}-{i}", "value": "x" * 2000} for i in range(200)])
            batches.append(batch)
        async with asyncio.timeout(WAIT):
            results = await asyncio.gather(
                *(writer.submit(batch) for batch in batches), return_exceptions=True
            )
        assert [type(result) for result in results] == [StorageFull] * 10
        assert link.sent == 10
        assert isinstance(writer.failure, StorageFull)
        assert writer.known_full()
        # Told once a failed commit (the metric, the log line), not once a request.
        assert 1 <= len(failures) < 10
        assert {type(failure) for failure in failures} == {StorageFull}
    finally:
        await writer.stop()
        process.stopping = True
        await asyncio.to_thread(thread.join, WAIT)  # (the loop closes the line)
        listener.close()
        await db.dispose()
    assert not thread.is_alive()


def test_node_writer_ends_with_its_supervisor(tmp_path: Path) -> None:
    """PR_SET_PDEATHSIG, as a worker: a parent that is already gone ends it at once."""
    result = subprocess.run(
        [sys.executable, "-m", "gateway.process.node_writer", "--parent", "1",
         "--fd", "0", "--database", str(tmp_path / "x.db")],
        capture_output=True, timeout=WAIT,
    )  # fmt: skip
    assert result.returncode == 1


def test_a_corrupt_file_is_the_databases_failure_not_a_requests(tmp_path: Path) -> None:
    """SQLITE_NOTADB (and CORRUPT, NOMEM) fail every request of the commit and the
    writer's readiness, as a locked or full database does; a clash is one request's."""
    bogus = tmp_path / "bogus.db"
    bogus.write_bytes(b"not a database at all, " * 100)
    conn = sqlite3.connect(bogus)
    with pytest.raises(sqlite3.DatabaseError) as corrupt:
        conn.execute("SELECT * FROM sqlite_master").fetchall()
    conn.close()
    assert _failure(1, corrupt.value)[1] == UNAVAILABLE
    clash = sqlite3.connect(":memory:")
    clash.execute("CREATE TABLE t (k PRIMARY KEY)")
    clash.execute("INSERT INTO t VALUES (1)")
    with pytest.raises(sqlite3.IntegrityError) as unique:
        clash.execute("INSERT INTO t VALUES (1)")
    assert _failure(2, unique.value)[1] == FAILED
    assert _failure(3, MemoryError())[1] == UNAVAILABLE
    assert _failure(4, UnicodeEncodeError("utf-8", "\udcff", 0, 1, "surrogate"))[1] == FAILED
