#!/usr/bin/env python3
"""What the reputation evaluation costs as the event table grows (never collected by pytest).

    python bench/reputation_rollup.py [--events 500000] [--pools 20] [--url URL]

Writes `--events` delivered/bounced/deferred/complaint events over 30 days (one message per
20 events, `--pools` pools, 50 sender domains) into a fresh SQLite file (or the PostgreSQL
database of --url, whose Postern tables it drops first), then times: the first roll-up (30
days back, one span per day), an incremental roll-up after one more minute of mail, and the
reports of every pool and domain (what GET /api/v1/reputation reads), and prints the
query plan of the roll-up's read.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import tempfile
import time
from pathlib import Path

from sqlalchemy import insert, text

from gateway.reputation.report import domain_subject, pool_subject, reports
from gateway.reputation.score import shipped_thresholds
from storage import pools, reputation
from storage.db import Database, create_schema, database_url, open_database
from storage.models import Event, Message, metadata

E = Event
M = Message
TYPES = ["delivered"] * 90 + ["deferred"] * 6 + ["bounced"] * 3 + ["complaint"]


async def fill(
    db: Database,
    events: int,
    pool_names: list[str],
    now: float,
    prefix: str = "m",
    span: float = 30 * 86400,
) -> None:
    rng = random.Random(21)
    per_message = 20
    batch: list[tuple[dict[str, object], list[dict[str, object]]]] = []

    def write(conn: object) -> None:
        conn.execute(insert(M), [m for m, _ in batch])  # type: ignore[attr-defined]
        conn.execute(insert(E), [e for _, rows in batch for e in rows])  # type: ignore[attr-defined]

    for number in range(events // per_message):
        at = now - rng.random() * span
        pool = rng.choice(pool_names)
        message = {
            "id": f"{prefix}{number:09d}", "status": "delivered", "source": "http",
            "mail_from": f"app@d{rng.randrange(50)}.test", "last_pool": pool,
            "created_at": at, "updated_at": at, "route_default": False, "forced_attempts": 0,
        }  # fmt: skip
        rows = [
            {"type": kind, "message_id": message["id"], "recipient": f"r{i}@x.test",
             "pool": None if kind == "complaint" else pool, "message_status": "delivered",
             "created_at": at, "attempt": 1, "txid": 0,
             "code": 451 if kind == "deferred" else 250 if kind == "delivered" else None}
            for i, kind in enumerate(rng.choice(TYPES) for _ in range(per_message))
        ]  # fmt: skip
        batch.append((message, rows))
        if len(batch) == 500:
            await db.transaction(write)
            batch.clear()
    if batch:
        await db.transaction(write)


async def main(events: int, pool_count: int, url: str) -> None:
    db = open_database(url)
    if not db.is_sqlite:
        await db.exclusive(metadata.drop_all)
    await create_schema(db)
    now = time.time()
    made = [
        await pools.create_pool(db, {"name": f"p{i}", "host": "127.0.0.1", "port": 25}, str)
        for i in range(pool_count)
    ]
    started = time.perf_counter()
    await fill(db, events, [p.name for p in made], now - 120)
    print(f"filled {events} events in {time.perf_counter() - started:.1f} s")

    async def roll(at: float) -> float:
        started = time.perf_counter()
        await db.transaction(lambda c: reputation.take_lease(c, "bench", at, at + 600))
        while await db.transaction(lambda c: reputation.roll_up_step(c, "bench", at)):
            pass
        return time.perf_counter() - started

    print(f"first roll-up (30 days): {await roll(now):.2f} s")
    await fill(db, 2000, [p.name for p in made], now, "n", 50.0)  # a minute's more mail
    print(f"incremental roll-up (2000 new events): {await roll(now + 120) * 1000:.1f} ms")
    subjects = [pool_subject(p) for p in made] + [domain_subject(f"d{i}.test") for i in range(50)]
    started = time.perf_counter()
    found = await reports(db, subjects, shipped_thresholds(), 70, now + 120)
    elapsed = (time.perf_counter() - started) * 1000
    print(f"reports of {len(found)} subjects: {elapsed:.1f} ms")
    explain = "EXPLAIN QUERY PLAN " if db.is_sqlite else "EXPLAIN "
    sql = (
        "SELECT coalesce(event.pool, message.last_pool, ''), message.mail_from, event.type,"
        " count(*) FROM event LEFT OUTER JOIN message ON message.id = event.message_id"
        " WHERE event.created_at >= :a AND event.created_at < :b"
        " AND event.type IN ('delivered','bounced','complaint','deferred','throttled')"
        " AND (event.type != 'deferred' OR event.code IS NOT NULL)"
        " GROUP BY 1, 2, 3"
    )
    plan = await db.read(lambda c: list(c.execute(text(explain + sql), {"a": now, "b": now + 60})))
    print("plan of the roll-up's read:")
    for row in plan:
        print("   ", row[-1])
    await db.dispose()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=500_000)
    parser.add_argument("--pools", type=int, default=20)
    parser.add_argument("--url", default="")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as directory:
        target = args.url or database_url("", Path(directory))
        asyncio.run(main(args.events, args.pools, target))
