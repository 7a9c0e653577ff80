#!/usr/bin/env python3
"""What the event stream's filters on the message (subject words, client address) cost.

    python bench/stream_filters.py                                  # SQLite, 200k messages
    python bench/stream_filters.py --pg postgresql+asyncpg://postgres@127.0.0.1:5432/NAME
    python bench/stream_filters.py --messages 50000 --reps 50

Fills a fresh database through the real schema (storage.db.create_schema) with --messages
messages, each with two events (queued, delivered) and its Subject's words indexed
("Invoice {i} for order {i % 1000}": `invoice` in every message, `order 17` in one of a
thousand, the number alone in one) and a client address in 10.0.0.0/20 (4,096 addresses:
one address is one message in 4,096, a /24 one in 16). Then, per filter, it times
storage.event_stream.read as GET /v1/events/stream and `postern tail` call it:

  live      the next poll of a busy stream: the last --window events before the horizon
            (median of --reps reads)
  catch-up  a reconnect from the first event (Last-Event-ID far behind): one read of at
            most 200 matching events, or every event up to the horizon when fewer match

and prints the live read's query plan (SQLite: EXPLAIN QUERY PLAN; PostgreSQL: EXPLAIN
ANALYZE), to show it is driven by the events' order with key lookups on the message and
its subject words, never a scan of `message` or `message_subject_word`. The PostgreSQL
database is emptied of Postern's tables first: give it one of its own.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO_ROOT)]

from sqlalchemy import Connection, event, insert, text  # noqa: E402

from gateway.queue import events  # noqa: E402
from gateway.queue.operations import make_filter  # noqa: E402
from storage import event_stream  # noqa: E402
from storage.db import Database, create_schema, database_url, open_database  # noqa: E402
from storage.event_stream import START, EventFilter, Position  # noqa: E402
from storage.models import Event, Message, MessageMeta, MessageSubjectWord, metadata  # noqa: E402
from storage.search_keys import address_key, subject_words  # noqa: E402

CHUNK = 10_000
BATCH = 200  # rows a read, as the stream and tail
FILTERS: list[tuple[str, dict[str, str]]] = [
    ("none", {}),
    ("recipient (before: a rare one)", {"recipient": "nobody@x.test"}),
    ("subject common (invoice)", {"subject": "invoice"}),
    ("subject two (order 17)", {"subject": "order 17"}),
    ("subject rare (one number)", {"subject": "123457"}),
    ("client one address", {"client": "10.0.3.7"}),
    ("client /24", {"client": "10.0.3.0/24"}),
    ("client /8 (all)", {"client": "10.0.0.0/8"}),
    ("subject + client", {"subject": "order 17", "client": "10.0.0.0/20"}),
]
PLANNED = ("subject two (order 17)", "client /24", "subject + client")


Chunk = tuple[list[Any], list[Any], list[Any], list[Any]]


def rows(first: int, count: int, now: float) -> Chunk:
    messages, meta, words, made = [], [], [], []
    for i in range(first, first + count):
        message_id = f"msg_bench{i:08d}"
        created = now - 86_400 + i * 0.01
        messages.append(
            {"id": message_id, "status": "delivered", "source": "http",
             "mail_from": "app@bench.test", "attempts": 1, "size": 10, "created_at": created,
             "updated_at": created,
             "client_address": address_key(f"10.0.{(i % 4096) // 256}.{i % 256}")}
        )  # fmt: skip
        meta.append(
            {"message_id": message_id, "provider": "smtp", "tags": "[]", "metadata_json": "{}"}
        )
        subject = f"Invoice {i} for order {i % 1000}"
        words += [
            {"message_id": message_id, "word": w, "message_created_at": created}
            for w in subject_words(subject)
        ]
        made.append(events.row(events.QUEUED, message_id, "queued", created))
        made.append(events.row(events.DELIVERED, message_id, "delivered", created, "r@x.test"))
    return messages, meta, words, made


def write(chunk: Chunk, conn: Connection) -> None:
    messages, meta, words, made = chunk
    conn.execute(insert(Message), messages)
    conn.execute(insert(MessageMeta), meta)
    conn.execute(insert(MessageSubjectWord), words)
    conn.execute(insert(Event), made)


async def fill(db: Database, total: int) -> None:
    now = time.time()
    started = time.monotonic()
    for first in range(0, total, CHUNK):
        await db.transaction(partial(write, rows(first, min(CHUNK, total - first), now)))
    print(f"filled {total} messages, {2 * total} events in {time.monotonic() - started:.0f} s")


def event_filter(values: dict[str, str]) -> EventFilter:
    """As api.event_ops and `postern tail` make it: the search's parser."""
    checked = make_filter(values)
    return EventFilter(recipient=checked.recipient, subject=checked.subject, client=checked.client)


def before(conn: Connection, upto: Position, count: int) -> Position:
    """The position `count` events before `upto` (by id: events here are one per row)."""
    if conn.dialect.name == "postgresql":
        row = conn.execute(
            text("SELECT txid, id FROM event WHERE (txid, id) <= (:t, :i) "
                 "ORDER BY txid DESC, id DESC OFFSET :n LIMIT 1"),
            {"t": upto.txid, "i": upto.id, "n": count},
        ).first()  # fmt: skip
        return Position(int(row[0]), int(row[1])) if row else START
    return Position(0, max(0, upto.id - count))


def plan(conn: Connection, after: Position, upto: Position, flt: EventFilter) -> list[str]:
    """The plan of the read's own statement (captured as it is sent)."""
    sent: list[tuple[str, Any]] = []

    def capture(_c: Any, _cursor: Any, statement: str, parameters: Any, *_: Any) -> None:
        sent.append((statement, parameters))

    event.listen(conn, "before_cursor_execute", capture)
    try:
        event_stream.read(conn, after, upto, flt, BATCH)
    finally:
        event.remove(conn, "before_cursor_execute", capture)
    statement, parameters = sent[-1]
    if conn.dialect.name == "postgresql":
        found = conn.exec_driver_sql(f"EXPLAIN (ANALYZE, COSTS OFF) {statement}", parameters)
        return [str(r[0]) for r in found]
    found = conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {statement}", parameters)
    return [str(r[-1]) for r in found]


async def timed_read(
    db: Database, after: Position, upto: Position, flt: EventFilter
) -> tuple[list[event_stream.Streamed], float]:
    """One read as the stream makes it, and its time in ms."""
    began = time.perf_counter()
    found, _ = await db.read(
        partial(event_stream.read, after=after, upto=upto, flt=flt, limit=BATCH)
    )
    return found, (time.perf_counter() - began) * 1000


async def measure(db: Database, reps: int, window: int) -> None:
    upto = await db.read(event_stream.horizon)
    live_from = await db.read(lambda conn: before(conn, upto, window))
    print(f"{'filter':<31} {'live p50':>9} {'live max':>9} {'sent':>5}   "
          f"{'catch-up':>9} {'sent':>5}")  # fmt: skip
    for name, values in FILTERS:
        flt = event_filter(values)
        samples = []
        for _ in range(reps):
            live, took = await timed_read(db, live_from, upto, flt)
            samples.append(took)
        caught, catch_up = await timed_read(db, START, upto, flt)
        print(
            f"{name:<31} {statistics.median(samples):>7.2f}ms {max(samples):>7.2f}ms "
            f"{len(live):>5}   {catch_up:>7.1f}ms {len(caught):>5}"
        )
    for name, values in FILTERS:
        if name in PLANNED:
            flt = event_filter(values)
            lines = await db.read(partial(plan, after=live_from, upto=upto, flt=flt))
            print(f"\nplan, live read, {name}:\n  " + "\n  ".join(lines))


async def amain(args: argparse.Namespace) -> None:
    folder = Path(tempfile.mkdtemp(prefix="stream-filters-"))
    db = open_database(args.pg or database_url("", folder))
    if args.pg:
        await db.transaction(metadata.drop_all)
    try:
        await create_schema(db)
        await fill(db, args.messages)
        if args.pg:  # what autovacuum's analyze would have done by then
            await db.transaction(lambda conn: conn.execute(text("ANALYZE")))
        await measure(db, args.reps, args.window)
    finally:
        if args.pg:
            await db.transaction(metadata.drop_all)
        await db.dispose()
        shutil.rmtree(folder, ignore_errors=True)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--messages", type=int, default=200_000)
    parser.add_argument("--reps", type=int, default=20)
    parser.add_argument("--window", type=int, default=400, help="events in a live poll")
    parser.add_argument("--pg", metavar="URL", help="PostgreSQL (its tables are dropped)")
    asyncio.run(amain(parser.parse_args(argv)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
