#!/usr/bin/env python3
"""Does one more message cost the same with 10k, 100k and 1M deferred messages queued?

    python bench/queue_scale.py                     # SQLite: 10k, 100k, 1M
    python bench/queue_scale.py --pg                # also PostgreSQL (its own bench database)
    python bench/queue_scale.py --sizes 10000,100000 --reps 100 --no-serve

For each backend the queue is filled straight through storage (bulk inserts with the real
schema: storage.db.create_schema and the tables of storage/models.py) with deferred
messages: one pending recipient, a body of --body-size bytes, due again 2 h to 26 h from
now (so that none comes due while the bench runs). At each size the queue's real API
(gateway.queue.store.Queue over a started storage.writer.Writer) is timed, median and p90 of
--reps repetitions of:

  enqueue   Queue.enqueue(): one more message stored (not claimed), due now
  claim     Queue.claim_due(1): claims that message (the only one due)
  record    Queue.record(): its delivery recorded (delivered, body deleted)
  poll      Queue.claim_due(500) with nothing due: the poller's idle round, every second
  counts    Queue.counts(): the queue gauge of the housekeeping loop, every 5 s

plus the query plans of the claim and count queries, and the database size on disk.
With SQLite at 100k, it also starts `postern serve` (bench/relay.py's Postern handle) on
that database and reports its peak RSS: idle with the 100k deferred, and while it drains
a copy where all 100k are due at once into bench/relay.py's sink.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
sys.path[:0] = [str(BENCH_DIR), str(REPO_ROOT)]

import asyncpg  # noqa: E402
import relay  # noqa: E402  (bench/relay.py: sink, Postern handle, /proc helpers)
from sqlalchemy import text  # noqa: E402

from gateway.message import DeliveryResult, Outcome, Route, Submission  # noqa: E402
from gateway.queue.store import AttemptRecord, Queue  # noqa: E402
from storage.db import Database, create_schema, database_url, open_database  # noqa: E402
from storage.models import Message, MessageBody, Recipient  # noqa: E402
from storage.writer import Writer  # noqa: E402

DEFAULT_PG_URL = "postgresql+asyncpg://postgres@127.0.0.1:5432/postern_bench"
MAIL_FROM = "bench@client.bench.test"
RCPT = "rcpt@sink.bench.test"
CHUNK = 20_000
SCHEDULE = (60.0, 300.0, 900.0, 3600.0, 14400.0)
MAX_AGE = 5 * 86400.0
LEASE = 120.0

M_COLS = [c.name for c in Message.columns]
B_COLS = [c.name for c in MessageBody.columns]
R_COLS = [c.name for c in Recipient.columns if c.name != "id"]


# --- synthetic deferred messages ---------------------------------------------------------


def body(size: int) -> bytes:
    head = (
        f"From: Bench <{MAIL_FROM}>\r\nTo: <{RCPT}>\r\nSubject: queue scale\r\n"
        "Message-ID: <scale@client.bench.test>\r\n\r\n"
    ).encode()
    return head + relay.filler(size - len(head))


def deferred_rows(
    count: int, rng: random.Random, now: float, data: bytes
) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    """`count` deferred messages: (message, body, recipient) rows in column order."""
    messages, bodies, recipients = [], [], []
    for _ in range(count):
        created = now - rng.uniform(0, 4 * 86400)
        attempts = rng.randint(1, 4)
        # Time-ordered ids like gateway.queue.ids.new_message_id, at the message's creation.
        message_id = f"msg_{int(created * 1000):011x}{rng.getrandbits(64):016x}"
        updated = now - rng.uniform(0, 600)
        row = {
            "id": message_id,
            "status": "deferred",
            "source": "smtp",
            "mail_from": MAIL_FROM,
            "alias_id": None,
            "ip_pool": "transactional",
            "pool_id": None,
            "last_pool": "sink",
            "attempts": attempts,
            "size": len(data),
            "created_at": created,
            "updated_at": updated,
            # Due again in 2 h to 26 h: nothing comes due while the bench runs.
            "due_at": now + rng.uniform(2 * 3600, 26 * 3600),
            "claimed_by": None,
            "last_response": "451 4.3.0 try again later",
        }
        messages.append(tuple(row[c] for c in M_COLS))
        bodies.append((message_id, data))
        rcpt = {
            "message_id": message_id,
            "email": RCPT,
            "status": "pending",
            "message_created_at": created,
            "attempts": attempts,
            "code": 451,
            "response": "451 4.3.0 try again later",
            "updated_at": updated,
        }
        recipients.append(tuple(rcpt[c] for c in R_COLS))
    return messages, bodies, recipients


def chunks(total: int) -> Iterator[int]:
    while total > 0:
        yield min(CHUNK, total)
        total -= CHUNK


# --- backends ----------------------------------------------------------------------------


class Backend:
    """Fill and inspect one database; `db_url` is what Postern's storage.db opens."""

    name = ""
    db_url = ""

    async def prepare(self) -> None:
        """Create the (empty) schema."""

    async def fill(self, count: int, rng: random.Random, data: bytes, deadline: float) -> int:
        """Add `count` deferred messages (fewer at the deadline); return how many."""
        raise NotImplementedError

    async def size_bytes(self) -> int:
        raise NotImplementedError

    async def close(self) -> None:
        """Release what the backend holds."""

    def plans(self, conn: Any) -> dict[str, list[str]]:
        return {}


def _insert_sql(table: str, cols: Sequence[str]) -> str:
    return f"INSERT INTO {table} ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})"


class SqliteBackend(Backend):
    name = "sqlite"

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.path = data_dir / "postern.db"
        self.db_url = database_url("", data_dir)

    async def prepare(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        db = open_database(self.db_url)
        await create_schema(db)
        await db.dispose()

    async def fill(self, count: int, rng: random.Random, data: bytes, deadline: float) -> int:
        return await asyncio.to_thread(self._fill, count, rng, data, deadline)

    def _fill(self, count: int, rng: random.Random, data: bytes, deadline: float) -> int:
        # A bulk load: no fsync per chunk (this is setup, not what is measured).
        conn = sqlite3.connect(self.path, isolation_level=None)
        try:
            conn.execute("PRAGMA synchronous=OFF")
            done = 0
            for size in chunks(count):
                if time.monotonic() >= deadline:
                    break
                messages, bodies, recipients = deferred_rows(size, rng, time.time(), data)
                conn.execute("BEGIN")
                conn.executemany(_insert_sql("message", M_COLS), messages)
                conn.executemany(_insert_sql("message_body", B_COLS), bodies)
                conn.executemany(_insert_sql("recipient", R_COLS), recipients)
                conn.execute("COMMIT")
                done += size
                progress(done, count)
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            conn.execute("ANALYZE")
            return done
        finally:
            conn.close()

    async def size_bytes(self) -> int:
        return sum(
            path.stat().st_size for path in self.data_dir.glob("postern.db*") if path.is_file()
        )

    def plans(self, conn: Any) -> dict[str, list[str]]:
        now = time.time()
        queries = {
            "claim (select due)": (
                "SELECT id FROM message WHERE due_at <= :now ORDER BY due_at LIMIT 1",
                {"now": now},
            ),
            "counts": (
                "SELECT status, count(*) FROM message WHERE due_at IS NOT NULL GROUP BY status",
                {},
            ),
        }
        return {
            name: [row[-1] for row in conn.execute(text("EXPLAIN QUERY PLAN " + sql), params)]
            for name, (sql, params) in queries.items()
        }


class PostgresBackend(Backend):
    """A database of its own (created if missing) beside the tests' `test` database: the
    test fixtures drop every Postern table before each test, so a fill there would vanish."""

    name = "postgresql"

    def __init__(self, url: str) -> None:
        self.db_url = url
        self.dsn = "postgresql://" + url.split("://", 1)[1]
        self.dbname = self.dsn.rsplit("/", 1)[1].split("?")[0]
        self.conn: asyncpg.Connection | None = None

    async def prepare(self) -> None:
        admin = await asyncpg.connect(self.dsn.rsplit("/", 1)[0] + "/postgres", timeout=10)
        try:
            exists = await admin.fetchval(
                "SELECT 1 FROM pg_database WHERE datname = $1", self.dbname
            )
            if exists:
                await admin.execute(f'DROP DATABASE "{self.dbname}" WITH (FORCE)')
            await admin.execute(f'CREATE DATABASE "{self.dbname}"')
        finally:
            await admin.close()
        db = open_database(self.db_url)
        await create_schema(db)
        await db.dispose()
        self.conn = await asyncpg.connect(self.dsn, timeout=10)

    async def fill(self, count: int, rng: random.Random, data: bytes, deadline: float) -> int:
        assert self.conn is not None
        done = 0
        for size in chunks(count):
            if time.monotonic() >= deadline:
                break
            messages, bodies, recipients = deferred_rows(size, rng, time.time(), data)
            async with self.conn.transaction():
                await self.conn.copy_records_to_table("message", records=messages, columns=M_COLS)
                await self.conn.copy_records_to_table(
                    "message_body", records=bodies, columns=B_COLS
                )
                await self.conn.copy_records_to_table(
                    "recipient", records=recipients, columns=R_COLS
                )
            done += size
            progress(done, count)
        await self.conn.execute("ANALYZE message; ANALYZE recipient; ANALYZE message_body")
        return done

    async def size_bytes(self) -> int:
        assert self.conn is not None
        value = await self.conn.fetchval(
            "SELECT sum(pg_total_relation_size(c.oid)) FROM pg_class c"
            " WHERE c.relname IN ('message', 'message_body', 'recipient') AND c.relkind = 'r'"
        )
        return int(value or 0)

    def plans(self, conn: Any) -> dict[str, list[str]]:
        now = time.time()
        queries = {
            "claim (select due)": (
                "SELECT id FROM message WHERE due_at <= :now ORDER BY due_at LIMIT 1"
                " FOR UPDATE SKIP LOCKED",
                {"now": now},
            ),
            "counts": (
                "SELECT status, count(*) FROM message WHERE due_at IS NOT NULL GROUP BY status",
                {},
            ),
        }
        return {
            name: [row[0] for row in conn.execute(text("EXPLAIN " + sql), params)]
            for name, (sql, params) in queries.items()
        }

    async def close(self) -> None:
        if self.conn is not None:
            await self.conn.close()
            self.conn = None

    async def drop(self) -> None:
        """Drop the bench database (gigabytes at 1M) from the shared server."""
        admin = await asyncpg.connect(self.dsn.rsplit("/", 1)[0] + "/postgres", timeout=10)
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{self.dbname}" WITH (FORCE)')
        finally:
            await admin.close()


_last_progress = [0.0]


def progress(done: int, total: int) -> None:
    now = time.monotonic()
    if done == total or now - _last_progress[0] >= 5.0:
        _last_progress[0] = now
        print(f"  filled {done}/{total}", file=sys.stderr, flush=True)


# --- timing the queue's API --------------------------------------------------------------


@dataclass
class Timing:
    median_ms: float
    p90_ms: float


@dataclass
class Step:
    backend: str
    queued: int
    fill_seconds: float
    timings: dict[str, Timing]
    size_mb: float
    plans: dict[str, list[str]] = field(default_factory=dict)


def timing(samples: list[float]) -> Timing:
    ordered = sorted(samples)
    p90 = ordered[min(len(ordered) - 1, int(0.9 * len(ordered)))]
    return Timing(statistics.median(ordered) * 1000, p90 * 1000)


async def timed(samples: list[float], call: Callable[[], Awaitable[Any]]) -> Any:
    start = time.perf_counter()
    result = await call()
    samples.append(time.perf_counter() - start)
    return result


async def measure_queue(db: Database, reps: int, data: bytes) -> dict[str, Timing]:
    writer = Writer(db)
    writer.start()
    queue = Queue(db, writer, "node_bench", SCHEDULE, MAX_AGE, LEASE)
    submission = Submission(mail_from=MAIL_FROM, recipients=(RCPT,), content=data, source="smtp")
    route = Route(pool_id=None, ip_pool="transactional")
    delivered = DeliveryResult(Outcome.DELIVERED, 250, "2.0.0", "Ok: queued")
    samples: dict[str, list[float]] = {k: [] for k in ("enqueue", "claim", "record", "poll")}
    counts: list[float] = []
    try:
        for rep in range(reps + 5):  # the first 5 warm caches and are not kept
            keep = rep >= 5
            out = samples if keep else {k: [] for k in samples}
            queued = await timed(out["enqueue"], lambda: queue.enqueue(submission, route, False))
            claimed = await timed(out["claim"], lambda: queue.claim_due(1))
            if len(claimed) != 1 or claimed[0].id != queued.id:
                raise RuntimeError(
                    f"claim_due(1) returned {[m.id for m in claimed]}, not {queued.id}"
                )
            attempt = AttemptRecord(claimed[0], {RCPT: delivered}, "sink")
            await timed(out["record"], lambda: queue.record(attempt))  # noqa: B023
            idle = await timed(out["poll"], lambda: queue.claim_due(500))
            if idle:
                raise RuntimeError(f"an idle poll claimed {len(idle)} messages")
            if keep and rep % max(reps // 20, 1) == 0:
                await timed(counts, queue.counts)
    finally:
        await writer.stop()
    result = {name: timing(values) for name, values in samples.items()}
    result["counts"] = timing(counts)
    return result


async def run_backend(
    backend: Backend, sizes: Sequence[int], args: argparse.Namespace, rss: RssHook | None
) -> list[Step]:
    rng = random.Random(6)
    data = body(args.body_size)
    await backend.prepare()
    steps: list[Step] = []
    have = 0
    try:
        for target in sizes:
            print(f"{backend.name}: filling to {target}", file=sys.stderr, flush=True)
            started = time.monotonic()
            deadline = started + args.fill_timeout
            have += await backend.fill(target - have, rng, data, deadline)
            fill_seconds = time.monotonic() - started
            if have < target:
                print(
                    f"{backend.name}: fill stopped at {have} after {args.fill_timeout:g}s",
                    file=sys.stderr,
                )
            db = open_database(backend.db_url)
            try:
                plans = await db.read(backend.plans)
                timings = await measure_queue(db, args.reps, data)
            finally:
                await db.dispose()
            size = await backend.size_bytes()
            step = Step(backend.name, have, fill_seconds, timings, size / 2**20, plans)
            steps.append(step)
            print(line(step), file=sys.stderr, flush=True)
            if rss is not None and have == args.rss_at:
                await rss(backend)
            if have < target:
                break
    finally:
        await backend.close()
    return steps


# --- peak RSS of `postern serve` on the filled database --------------------------------

RssHook = Callable[[Backend], Awaitable[None]]


@dataclass
class RssResult:
    queued: int
    mode: str  # idle | drain
    ready_seconds: float
    peak_rss_mb: float
    delivered: int = 0
    drain_seconds: float | None = None
    error: str | None = None


def serve_rss(
    command: Sequence[str], data_dir: Path, idle_seconds: float, queued: int
) -> RssResult:
    """`postern serve` on data_dir (deferred mail, nothing due): peak RSS after a while."""
    tmp = data_dir.parent
    sink = relay.Sink()
    try:
        started = time.monotonic()
        postern = relay.Postern(command, tmp, sink.port, 20)
        try:
            postern.wait_ready(time.monotonic() + 120)
            ready = time.monotonic() - started
            time.sleep(idle_seconds)  # housekeeping runs every 5 s (queue gauge, renewals)
            peak = relay.tree_peak_rss_mb(postern.proc.pid)
        finally:
            postern.stop()
    finally:
        sink.close()
    return RssResult(queued, "idle", ready, peak)


def drain_rss(command: Sequence[str], data_dir: Path, queued: int, timeout: float) -> RssResult:
    """A copy of the database with every message due now, drained into the sink."""
    tmp = Path(tempfile.mkdtemp(prefix="postern-scale-drain-"))
    try:
        shutil.copytree(data_dir, tmp / "var", ignore=shutil.ignore_patterns("node_id"))
        conn = sqlite3.connect(tmp / "var" / "postern.db", isolation_level=None)
        try:
            conn.execute(
                "UPDATE message SET due_at = ?, claimed_by = NULL WHERE due_at IS NOT NULL",
                (time.time() - 1,),
            )
            due = conn.execute("SELECT count(*) FROM message WHERE due_at IS NOT NULL").fetchone()[
                0
            ]
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        finally:
            conn.close()
        sink = relay.Sink()
        try:
            started = begin = time.monotonic()
            postern = relay.Postern(command, tmp, sink.port, 20)
            peak, ready, delivered = 0.0, 0.0, 0
            error: str | None = None
            drained_at: float | None = None
            try:
                postern.wait_ready(time.monotonic() + 120)
                ready = time.monotonic() - started
                begin = time.monotonic()
                deadline = begin + timeout
                while time.monotonic() < deadline:
                    peak = max(peak, relay.tree_peak_rss_mb(postern.proc.pid))
                    count = sink.ask("count")
                    assert isinstance(count, int)
                    delivered = count
                    if delivered >= due:
                        drained_at = time.monotonic()
                        break
                    time.sleep(0.5)
                if drained_at is None:
                    error = f"timeout: drained {delivered}/{due} in {timeout:g}s"
                peak = max(peak, relay.tree_peak_rss_mb(postern.proc.pid))
            finally:
                postern.stop()
        finally:
            sink.close()
        seconds = (drained_at or time.monotonic()) - begin
        return RssResult(due, "drain", ready, peak, delivered, seconds, error)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# --- output ------------------------------------------------------------------------------

OPS = ("enqueue", "claim", "record", "poll", "counts")


def line(step: Step) -> str:
    parts = "  ".join(
        f"{op}={step.timings[op].median_ms:.2f}/{step.timings[op].p90_ms:.2f}ms" for op in OPS
    )
    return (
        f"{step.backend} queued={step.queued}  {parts}"
        f"  db={step.size_mb:.0f}MB  fill={step.fill_seconds:.0f}s"
    )


def table(steps: Sequence[Step], reps: int) -> str:
    out = [
        f"queue_scale  median / p90 of {reps} repetitions, milliseconds",
        "",
        "| backend | queued | enqueue | claim | record | idle poll (500) | counts"
        " | db size MB | fill s |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for step in steps:
        cells = " | ".join(
            f"{step.timings[op].median_ms:.2f} / {step.timings[op].p90_ms:.2f}" for op in OPS
        )
        out.append(
            f"| {step.backend} | {step.queued:,} | {cells}"
            f" | {step.size_mb:.0f} | {step.fill_seconds:.0f} |"
        )
    largest = {step.backend: step for step in steps}  # plans at each backend's largest size
    for step in largest.values():
        if not step.plans:
            continue
        out.append("")
        out.append(f"{step.backend} plans at {step.queued:,} queued:")
        for name, plan in step.plans.items():
            out.append(f"  {name}: " + " | ".join(plan))
    return "\n".join(out)


def rss_table(results: Sequence[RssResult]) -> str:
    out = [
        "",
        "| postern serve on SQLite | queued | ready after s | peak RSS MB | delivered"
        " | drain msgs/s |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        rate = f"{r.delivered / r.drain_seconds:.0f}" if r.drain_seconds else "-"
        note = f" ({r.error})" if r.error else ""
        out.append(
            f"| {r.mode}{note} | {r.queued:,} | {r.ready_seconds:.1f} | {r.peak_rss_mb:.0f}"
            f" | {r.delivered:,} | {rate} |"
        )
    return "\n".join(out)


# --- command line ------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Postern queue cost at 10k/100k/1M queued")
    parser.add_argument("--sizes", default="10000,100000,1000000", help="queue sizes, ascending")
    parser.add_argument("--reps", type=int, default=200, help="repetitions per measurement")
    parser.add_argument("--body-size", type=int, default=1024, help="bytes per queued body")
    parser.add_argument("--fill-timeout", type=float, default=900.0, help="seconds per fill step")
    parser.add_argument("--pg", action="store_true", help="also PostgreSQL")
    parser.add_argument("--pg-only", action="store_true", help="only PostgreSQL")
    parser.add_argument("--pg-url", default=DEFAULT_PG_URL, help="dropped and re-created!")
    parser.add_argument("--rss-at", type=int, default=100_000, help="queue size for the RSS run")
    parser.add_argument("--no-serve", action="store_true", help="skip the postern serve RSS runs")
    parser.add_argument("--idle-seconds", type=float, default=12.0)
    parser.add_argument("--drain-timeout", type=float, default=300.0)
    relay.add_postern_cmd(parser)
    parser.add_argument(
        "--keep", action="store_true", help="keep the SQLite temp dir and the PostgreSQL database"
    )
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    args.size_list = sorted(int(s) for s in args.sizes.split(","))
    if min(args.size_list) < 1 or args.reps < 1:
        parser.error("sizes and --reps must be >= 1")
    return args


async def amain(args: argparse.Namespace) -> tuple[list[Step], list[RssResult]]:
    command = args.postern_cmd
    steps: list[Step] = []
    rss_results: list[RssResult] = []
    if not args.pg_only:
        tmp = Path(tempfile.mkdtemp(prefix="postern-scale-"))
        data_dir = tmp / "var"  # where relay.Postern's config points data_dir
        try:

            async def rss(backend: Backend) -> None:
                print("postern serve: idle on the filled database", file=sys.stderr)
                result = await asyncio.to_thread(
                    serve_rss, command, data_dir, args.idle_seconds, args.rss_at
                )
                rss_results.append(result)
                print(f"  peak RSS {result.peak_rss_mb:.0f} MB", file=sys.stderr, flush=True)
                print("postern serve: draining a copy with everything due", file=sys.stderr)
                result = await asyncio.to_thread(
                    drain_rss, command, data_dir, args.rss_at, args.drain_timeout
                )
                rss_results.append(result)
                print(
                    f"  peak RSS {result.peak_rss_mb:.0f} MB, delivered {result.delivered}"
                    f"{' ' + result.error if result.error else ''}",
                    file=sys.stderr,
                    flush=True,
                )

            hook = None if args.no_serve else rss
            steps += await run_backend(SqliteBackend(data_dir), args.size_list, args, hook)
        finally:
            if args.keep:
                print(f"kept {tmp}", file=sys.stderr)
            else:
                shutil.rmtree(tmp, ignore_errors=True)
    if args.pg or args.pg_only:
        backend = PostgresBackend(args.pg_url)
        try:
            steps += await run_backend(backend, args.size_list, args, None)
        finally:
            if args.keep:
                print(f"kept PostgreSQL database {backend.dbname}", file=sys.stderr)
            else:
                await backend.drop()
    return steps, rss_results


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    steps, rss_results = asyncio.run(amain(args))
    if args.json:
        print(
            json.dumps(
                {"steps": [asdict(s) for s in steps], "rss": [asdict(r) for r in rss_results]}
            )
        )
    else:
        print(table(steps, args.reps))
        if rss_results:
            print(rss_table(rss_results))
    failed = any(r.error for r in rss_results) or any(r.peak_rss_mb >= 200 for r in rss_results)
    return 1 if failed else 0


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
