#!/usr/bin/env python3
"""The storage write thread's CPU per message (issue 22; never collected by pytest).

    python bench/write_path.py                      # N=2000, C=1 and C=50, 3 runs each
    python bench/write_path.py --messages 5000 --clients 1,50 --runs 5 [--json]

No network, no server: the real queue (gateway.queue.store.Queue over a started
storage.writer.Writer and storage.db.Database) on a fresh SQLite file in a temp dir, with
the schema of storage.db.create_schema. Each message is stored the way SMTP intake stores
it (`Queue.enqueue`, claimed here: the fast path) and its attempt recorded the way delivery
records it (`Queue.record`, patient: one recipient, delivered). C clients share N messages;
each client stores a message, then starts its attempt's record and goes on with the next
message while the record waits for its commit, as a real client's next message overlaps
the previous one's delivery. With C=1 an attempt's record therefore shares the next
message's commit, as in the server (1-2 transactions per message); with C=50 the group
commits carry dozens of jobs.

Prints per message: the write thread's CPU (its own thread clock: the SQL of every
transaction, the commits, the driver; split into user and system time from /proc, in clock
ticks), the whole process's CPU, the wall time, and the commits. A warm-up of 200 messages
(not counted) fills SQLAlchemy's compiled cache and SQLite's page cache first. Medians of
--runs, each on a fresh database.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gateway.message import DeliveryResult, Outcome, QueuedMessage, Route, Submission
from gateway.queue.store import AttemptRecord, Queue
from storage.db import Database, create_schema, database_url, open_database
from storage.models import metadata
from storage.writer import Writer

MAIL_FROM = "bench@client.bench.test"
RCPT = "rcpt@sink.bench.test"
WARMUP = 200
SCHEDULE = (60.0, 300.0, 900.0, 3600.0, 14400.0)
DELIVERED = DeliveryResult(Outcome.DELIVERED, 250, "2.0.0", "Ok: queued")
ROUTE = Route(pool_id="sink", default=True)


@dataclass(frozen=True)
class Figures:
    clients: int
    messages: int
    write_cpu_ms: float  # the write thread's CPU per message
    write_user_ms: float  # ... of which in user space (Python, SQLAlchemy, SQLite)
    write_sys_ms: float  # ... of which in the kernel (writes, fsync)
    process_cpu_ms: float  # the whole process's CPU per message
    wall_ms: float  # wall time per message
    commits_per_msg: float


def content(seq: int, size: int) -> bytes:
    head = (
        f"From: Bench <{MAIL_FROM}>\r\nTo: <{RCPT}>\r\nSubject: write path {seq}\r\n"
        f"Message-ID: <{seq}.write-path@client.bench.test>\r\n\r\n"
    ).encode()
    line = b"x" * 74 + b"\r\n"
    return head + (line * (size // len(line) + 1))[: max(size - len(head), 0)]


def write_thread(db: Database) -> tuple[int, int]:
    """The CPU clock and the kernel's id of the database's write thread (storage.db runs
    every write transaction in that one thread)."""
    ident, native = db._write_thread.submit(
        lambda: (threading.get_ident(), threading.get_native_id())
    ).result()
    return time.pthread_getcpuclockid(ident), native


def write_thread_cpu(db: Database) -> Callable[[], tuple[float, float, float]]:
    """A reader of the write thread's CPU seconds: (all, user, system); zeros on
    PostgreSQL, which has no write thread (asyncpg runs on the loop)."""
    if not db.is_sqlite:
        return lambda: (0.0, 0.0, 0.0)
    clock, native = write_thread(db)
    return lambda: (time.clock_gettime(clock), *user_sys(native))


def user_sys(native: int) -> tuple[float, float]:
    """A thread's user and system CPU seconds (/proc, in clock ticks)."""
    fields = Path(f"/proc/self/task/{native}/stat").read_text().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tick, int(fields[12]) / tick


async def client(queue: Queue, seqs: list[int], size: int) -> None:
    record: asyncio.Task[str | None] | None = None
    for seq in seqs:
        submission = Submission(MAIL_FROM, (RCPT,), content(seq, size), "smtp")
        message: QueuedMessage = await queue.enqueue(submission, ROUTE, claim=True)
        if record is not None:
            await record
        attempt = AttemptRecord(message, {RCPT: DELIVERED}, "sink")
        record = asyncio.create_task(queue.record(attempt, patient=True))
        await asyncio.sleep(0)  # the record is submitted first: the next intake joins it
    if record is not None:
        await record


async def drive(queue: Queue, first: int, count: int, clients: int, size: int) -> None:
    seqs = list(range(first, first + count))
    await asyncio.gather(*(client(queue, seqs[c::clients], size) for c in range(clients)))


async def one_run(
    directory: Path, messages: int, clients: int, size: int, url: str = ""
) -> Figures:
    """One measurement on a fresh SQLite file in `directory`, or on the PostgreSQL
    database at `url`, emptied of Postern's tables first (no write thread there: asyncpg
    runs on the loop, so only the process's CPU is told)."""
    db = open_database(database_url(url, directory))
    if url:
        await db.transaction(lambda conn: metadata.drop_all(conn))
    await create_schema(db)
    writer = Writer(db)
    writer.start()
    queue = Queue(db, writer, "node_bench", SCHEDULE, 5 * 86400.0, 120.0)
    try:
        await drive(queue, 0, WARMUP, clients, size)
        thread_cpu = write_thread_cpu(db)
        before, proc0, wall0 = thread_cpu(), time.process_time(), time.perf_counter()
        commits0 = writer.commits
        await drive(queue, WARMUP, messages, clients, size)
        cpu, user, system = (now - then for now, then in zip(thread_cpu(), before, strict=True))
        proc, wall = time.process_time() - proc0, time.perf_counter() - wall0
        commits = writer.commits - commits0
    finally:
        await writer.stop()
        await db.dispose()
    per = 1000.0 / messages
    return Figures(
        clients,
        messages,
        cpu * per,
        user * per,
        system * per,
        proc * per,
        wall * per,
        commits / messages,
    )


def measure(messages: int, clients: int, size: int, runs: int, url: str = "") -> Figures:
    results = []
    for _ in range(runs):
        with tempfile.TemporaryDirectory(prefix="write-path-") as tmp:
            results.append(asyncio.run(one_run(Path(tmp), messages, clients, size, url)))

    def median(name: str) -> float:
        return statistics.median(getattr(r, name) for r in results)

    return Figures(
        clients,
        messages,
        median("write_cpu_ms"),
        median("write_user_ms"),
        median("write_sys_ms"),
        median("process_cpu_ms"),
        median("wall_ms"),
        median("commits_per_msg"),
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", "-n", type=int, default=2000)
    parser.add_argument("--clients", "-c", default="1,50", help="comma-separated C values")
    parser.add_argument("--size", type=int, default=1024, help="message bytes")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument(
        "--storage-url",
        default="",
        help="a PostgreSQL database to measure on (postgresql://... or"
        " postgresql+asyncpg://...; its Postern tables are dropped first): the process's"
        " CPU only",
    )
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if args.storage_url and not args.storage_url.startswith(("postgresql", "postgres://")):
        parser.error("--storage-url: a PostgreSQL URL (SQLite is measured on a temp file)")
    rows = [
        measure(args.messages, int(c), args.size, args.runs, args.storage_url)
        for c in args.clients.split(",")
    ]
    if args.json:
        print(json.dumps([asdict(r) for r in rows]))
        return 0
    for r in rows:
        thread = (
            "write-thread cpu=n/a (PostgreSQL)"
            if args.storage_url
            else f"write-thread cpu={r.write_cpu_ms:.3f}ms/msg (user {r.write_user_ms:.3f}"
            f" sys {r.write_sys_ms:.3f})"
        )
        print(
            f"write_path  N={r.messages} C={r.clients} size={args.size} runs={args.runs}"
            f"  {thread}  process cpu={r.process_cpu_ms:.3f}"
            f"ms/msg  wall={r.wall_ms:.3f}ms/msg  commits={r.commits_per_msg:.2f}/msg"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
