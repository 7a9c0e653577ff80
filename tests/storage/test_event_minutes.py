"""The per-minute rollup (storage.event_minutes, gateway.queue.rollup) on SQLite and
PostgreSQL: rollup + tail answers exactly what the raw aggregation of the event table
answers, whatever part is rolled; a roll that does not commit leaves the counts and the
position as they were; two nodes rolling the same database count each event once; a member
sees only their own mail's counts; retention drops old minutes."""

from __future__ import annotations

import asyncio
import random
import time
from typing import Any

import pytest
from sqlalchemy import Connection, func, insert, select

from gateway.queue import events
from gateway.queue.retention import Retention
from gateway.queue.rollup import Rollup
from storage import event_minutes, event_stream
from storage.db import Database
from storage.event_stream import EventFilter
from storage.models import Event, EventMinute, Message
from storage.retention import purge_minutes
from storage.webhook_outbox import count_after
from storage.writer import Writer

M = Message
E = Event
EM = EventMinute
USERS = ("usr_a", "usr_b", None)
POOLS = ("one", "two", None)
KINDS = ("delivered", "delivered", "deferred", "bounced", "queued", "opened")
LATENCIES = (None, 0.25, 0.5, 1.5, 3.0)  # exact in binary: sums and means compare equal


async def messages(db: Database, at: float) -> None:
    rows = [
        {"id": f"msg_{n}", "status": "queued", "source": "http", "mail_from": "a@x.test",
         "attempts": 0, "size": 1, "created_at": at, "updated_at": at, "user_id": user}
        for n, user in enumerate(USERS)
    ]  # fmt: skip
    await db.transaction(lambda conn: conn.execute(insert(M), rows))


def some_events(since: float, count: int, seed: int) -> list[dict[str, Any]]:
    """`count` events spread over the window (and a few before it), of every kind, pool,
    owner and latency."""
    rng = random.Random(seed)
    rows = []
    for _ in range(count):
        kind = rng.choice(KINDS)
        row = events.row(
            kind, f"msg_{rng.randrange(len(USERS))}", "queued",
            since + rng.uniform(-90, 3590), "r@x.test", pool=rng.choice(POOLS),
        )  # fmt: skip
        row["upstream_seconds"] = rng.choice(LATENCIES)
        rows.append(row)
    return sorted(rows, key=lambda row: row["created_at"])  # written in about time order


async def write(db: Database, rows: list[dict[str, Any]]) -> None:
    await db.transaction(lambda conn: conn.execute(events.INSERT_EVENT, rows))


FILTERS = (
    EventFilter(),
    EventFilter(user_id="usr_a"),
    EventFilter(user_id="usr_b", pool="two"),
    EventFilter(types=("deferred",)),
    EventFilter(types=("bounced", "delivered"), pool="one"),
)


async def assert_same(db: Database, since: float) -> None:
    """Both paths, every filter and the pools: the same MinuteStats."""

    def both(conn: Connection) -> list[tuple[Any, Any]]:
        pairs = [
            (event_minutes.per_minute(conn, since, flt), event_stream.per_minute(conn, since, flt))
            for flt in FILTERS
        ]
        pools = ["one", "two", "absent"]
        pairs.append(
            (
                event_minutes.per_pool_minute(conn, since, pools),
                event_stream.per_pool_minute(conn, since, pools),
            )
        )
        return pairs

    for rolled, raw in await db.read(both):
        assert rolled == raw
    assert any(await db.read(lambda conn: event_stream.per_minute(conn, since, EventFilter())))


async def some(rollup: Rollup) -> int:
    """A roll that reads events: on PostgreSQL the horizon waits for every transaction open
    on the server (other tests' too), so a roll may read none for a moment."""
    for _ in range(200):
        read = await rollup.roll_once()
        assert read is not None
        if read:
            return read
        await asyncio.sleep(0.05)
    raise AssertionError("the horizon never moved")


async def caught_up(db: Database, rollup: Rollup) -> None:
    """Roll until no event is left after the position (up to a minute: on PostgreSQL the
    roll stops short of the oldest transaction still open anywhere on the server, and a
    test of another worker's may hold one for seconds; once, in CI, past ten)."""

    def behind(conn: Connection) -> int:
        at = event_minutes.position(conn)
        assert at is not None
        return count_after(conn, at, 1_000_000)

    for _ in range(1200):
        await rollup.run_once()
        if not await db.read(behind):
            return
        await asyncio.sleep(0.05)
    raise AssertionError("the roll never caught up")


async def rolled_position(db: Database) -> Any:
    return await db.read(event_minutes.position)


async def counts(db: Database) -> list[Any]:
    rows = await db.read(lambda conn: list(conn.execute(select(EM).order_by(*EM.primary_key))))
    return [tuple(row) for row in rows]


def window() -> float:
    return (time.time() // 60 - 59) * 60


async def test_rollup_and_tail_answer_what_the_raw_aggregation_does(backend: Database) -> None:
    since = window()
    await messages(backend, since)
    await write(backend, some_events(since, 400, seed=1))
    await assert_same(backend, since)  # no roll yet: raw
    rollup = Rollup(backend, "node-a", batch=150)
    assert await some(rollup) <= 150  # some rolled, the rest in the tail
    await assert_same(backend, since)
    await write(backend, some_events(since, 100, seed=2))
    assert await some(rollup) <= 150
    await assert_same(backend, since)
    await caught_up(backend, rollup)  # all from the rollup
    await assert_same(backend, since)
    assert await rollup.roll_once() == 0
    total = await backend.read(lambda conn: conn.execute(select(func.sum(EM.c.count))).scalar())
    charted = select(func.count()).where(E.c.type.in_(event_stream.CHARTED))
    assert total == await backend.read(lambda conn: conn.execute(charted).scalar())


async def test_a_roll_that_does_not_commit_changes_nothing(backend: Database) -> None:
    since = window()
    await messages(backend, since)
    await write(backend, some_events(since, 120, seed=3))
    rollup = Rollup(backend, "node-a", batch=50)
    await some(rollup)
    before, stored = await rolled_position(backend), await counts(backend)

    class Killed(Exception):
        pass

    def killed(conn: Connection) -> None:
        event_minutes.roll(conn, "node-a", time.time(), time.time() + 30, 50)
        raise Killed  # the node dies before the commit

    for _ in range(3):
        with pytest.raises(Killed):
            await backend.transaction(killed)
        assert await rolled_position(backend) == before
        assert await counts(backend) == stored
    await caught_up(backend, rollup)
    await assert_same(backend, since)


async def test_a_member_sees_only_their_own_counts(backend: Database) -> None:
    since = window()
    await messages(backend, since)
    await write(backend, some_events(since, 200, seed=4))
    await caught_up(backend, Rollup(backend, "node-a"))
    mine = EventFilter(user_id="usr_a")

    def read(conn: Connection) -> Any:
        return event_minutes.per_minute(conn, since, mine), event_minutes.per_minute(
            conn, since, EventFilter()
        )

    own, everyone = await backend.read(read)
    owned = select(func.count()).select_from(E.join(M, M.c.id == E.c.message_id))
    owned = owned.where(E.c.type.in_(event_stream.CHARTED), M.c.user_id == "usr_a")
    owned = owned.where(E.c.created_at >= since)
    expected = await backend.read(lambda conn: conn.execute(owned).scalar())
    assert sum(s.delivered + s.deferred + s.bounced for s in own) == expected
    assert sum(s.delivered + s.deferred + s.bounced for s in everyone) > expected
    # a key's restriction (no owner) is answered raw, and still right
    by_key = EventFilter(api_key_id="key_none")
    assert await backend.read(lambda conn: event_minutes.per_minute(conn, since, by_key)) == []


async def test_the_lease_keeps_the_roll_on_one_node(backend: Database, other_db: Database) -> None:
    since = window()
    await messages(backend, since)
    await write(backend, some_events(since, 50, seed=5))
    node_a, node_b = Rollup(backend, "node-a"), Rollup(other_db, "node-b")
    assert await some(node_a) == 50
    assert await node_b.roll_once() is None  # node-a's lease holds
    await node_a.release()
    assert await node_b.roll_once() == 0
    assert await node_a.roll_once() is None  # node-b's now


async def test_two_nodes_rolling_at_once_count_each_event_once(
    backend: Database, other_db: Database
) -> None:
    """Leases that lapse at once (lease 0): both nodes roll every time, while events are
    written; each event is counted once all the same."""
    since = window()
    await messages(backend, since)
    nodes = [Rollup(backend, "node-a", batch=40, lease=0), Rollup(other_db, "node-b", 40, 0)]
    done = asyncio.Event()

    async def writing() -> None:
        for seed in range(20):
            await write(backend, some_events(since, 30, seed=100 + seed))
            await asyncio.sleep(0.01)
        done.set()

    async def rolling(node: Rollup) -> None:
        while not done.is_set():
            await node.roll_once()
            await asyncio.sleep(0)

    await asyncio.gather(writing(), *(rolling(node) for node in nodes))
    await caught_up(backend, nodes[0])
    assert await nodes[1].roll_once() == 0
    await assert_same(backend, since)
    total = await backend.read(lambda conn: conn.execute(select(func.sum(EM.c.count))).scalar())
    charted = select(func.count()).where(E.c.type.in_(event_stream.CHARTED))
    assert total == await backend.read(lambda conn: conn.execute(charted).scalar())


async def test_retention_drops_minutes_past_keep(backend: Database, writer: Writer) -> None:
    now = time.time()
    await messages(backend, now)
    old = now - event_minutes.KEEP - 600
    await write(backend, [events.row("delivered", "msg_0", "queued", old, "r@x.test")])
    await write(backend, [events.row("delivered", "msg_0", "queued", now, "r@x.test")])

    def roll_from_start(conn: Connection) -> Any:  # a roll that began before the old event
        conn.execute(
            insert(event_minutes.R).values(name=event_minutes.ROLL, position_txid=0, position_id=0)
        )
        return event_minutes.roll(conn, "node-a", now, now + 30, 100)

    assert await backend.transaction(roll_from_start) in (0, 2)
    await caught_up(backend, Rollup(backend, "node-a"))
    assert len(await counts(backend)) == 2
    keep = now - event_minutes.KEEP
    assert await backend.transaction(lambda conn: purge_minutes(conn, keep - 3600)) == 0
    assert await Retention(writer, 30 * 86400.0).sweep_minutes() == 1  # the sweep's own
    assert [row[0] for row in await counts(backend)] == [int(now // 60)]
