"""The event stream's SQL on SQLite and PostgreSQL: reads in commit order up to a horizon,
filters and the owner's restriction, resuming at an event, the recent events, and the
per-minute counts and upstream latency of the Live page's charts."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
from sqlalchemy import Connection, insert

from gateway.message import DeliveryResult, Hop, Outcome
from gateway.queue import events
from storage import event_stream
from storage.db import Database
from storage.event_stream import EventFilter, Position
from storage.models import Message
from tests.support.databases import events_settled

M = Message


async def message(db: Database, message_id: str, user_id: str | None, at: float) -> None:
    row: dict[str, Any] = {
        "id": message_id, "status": "queued", "source": "http", "mail_from": "a@x.test",
        "attempts": 0, "size": 1, "created_at": at, "updated_at": at, "user_id": user_id,
    }  # fmt: skip
    await db.transaction(lambda conn: conn.execute(insert(M), [row]))


async def event(
    db: Database, kind: str, message_id: str, at: float, to: str = "r@x.test",
    upstream: float | None = None,
) -> None:  # fmt: skip
    result = None
    if upstream is not None:  # the upstream's transaction took this long
        result = DeliveryResult(Outcome.DELIVERED, 250, hop=Hop("relay", 0.0, upstream))
    row = events.row(kind, message_id, "queued", at, to, result=result)
    await db.transaction(lambda conn: conn.execute(events.INSERT_EVENT, [row]))
    await events_settled(db)  # readable up to the horizon


async def read_all(db: Database, after: Position, flt: EventFilter, limit: int = 100) -> Any:
    def query(conn: Connection) -> Any:
        return event_stream.read(conn, after, event_stream.horizon(conn), flt, limit)

    return await db.read(query)


async def test_reads_in_order_with_filters_and_the_owners_restriction(backend: Database) -> None:
    now = time.time()
    start = await backend.read(event_stream.horizon)
    await message(backend, "msg_a", "usr_a", now)
    await message(backend, "msg_b", "usr_b", now)
    for kind, mid in [("queued", "msg_a"), ("queued", "msg_b"), ("delivered", "msg_a")]:
        await event(backend, kind, mid, now + 1)
    await event(backend, "bounced", "msg_b", now + 2, "other@x.test")

    rows, end = await read_all(backend, start, EventFilter())
    docs = [json.loads(r.json) for r in rows]
    assert [(d["type"], d["message_id"]) for d in docs] == [
        ("queued", "msg_a"), ("queued", "msg_b"), ("delivered", "msg_a"), ("bounced", "msg_b"),
    ]  # fmt: skip
    assert end == rows[-1].position and (await read_all(backend, end, EventFilter()))[0] == []
    mine, _ = await read_all(backend, start, EventFilter(user_id="usr_a"))
    assert [json.loads(r.json)["message_id"] for r in mine] == ["msg_a", "msg_a"]
    bounced, _ = await read_all(backend, start, EventFilter(types=("bounced",)))
    assert [json.loads(r.json)["recipient"] for r in bounced] == ["other@x.test"]
    by_rcpt, moved = await read_all(backend, start, EventFilter(recipient="nobody@x.test"))
    assert by_rcpt == [] and moved == end  # nothing matched: the position still moves on

    two, upto = await read_all(backend, start, EventFilter(), limit=2)
    assert len(two) == 2 and upto == two[1].position  # a full batch stops at its last row
    resumed = await backend.read(lambda conn: event_stream.resume_at(conn, two[0].id))
    assert resumed == two[0].position
    assert await backend.read(lambda conn: event_stream.resume_at(conn, 10**12)) == end


async def test_recent_and_per_minute(backend: Database) -> None:
    since = (time.time() // 60 - 59) * 60
    await message(backend, "msg_a", "usr_a", since + 60)
    await message(backend, "msg_b", None, since + 120)
    await event(backend, "delivered", "msg_a", since + 62, upstream=2.0)
    await event(backend, "deferred", "msg_b", since + 125)
    await event(backend, "delivered", "msg_b", since + 130, upstream=10.0)  # in minute 2
    await event(backend, "bounced", "msg_b", since + 170)

    newest = await backend.read(lambda conn: event_stream.recent(conn, EventFilter(), 2))
    assert [json.loads(d)["type"] for d in newest] == ["bounced", "delivered"]
    stats = await backend.read(lambda conn: event_stream.per_minute(conn, since, EventFilter()))
    assert [(s.minute, s.delivered, s.deferred, s.bounced) for s in stats] == [
        (1, 1, 0, 0), (2, 1, 1, 1),
    ]  # fmt: skip
    assert stats[0].latency_mean is not None and abs(stats[0].latency_mean - 2) < 0.01
    assert stats[1].latency_max is not None and abs(stats[1].latency_max - 10) < 0.01
    only_a = EventFilter(user_id="usr_a")
    assert len(await backend.read(lambda conn: event_stream.per_minute(conn, since, only_a))) == 1


async def test_per_pool_minute_counts_each_pool_apart(backend: Database) -> None:
    since = (time.time() // 60 - 59) * 60
    await message(backend, "msg_p", None, since)
    rows = [
        events.row("delivered", "msg_p", "queued", since + 5, "a@x.test", pool="one"),
        events.row("delivered", "msg_p", "queued", since + 65, "b@x.test", pool="one"),
        events.row("deferred", "msg_p", "queued", since + 66, "c@x.test", pool="two"),
        events.row("delivered", "msg_p", "queued", since + 67, "d@x.test", pool="three"),
        events.row("delivered", "msg_p", "queued", since - 60, "e@x.test", pool="one"),  # older
    ]
    await backend.transaction(lambda conn: conn.execute(events.INSERT_EVENT, rows))

    def read(conn: Connection) -> Any:
        return event_stream.per_pool_minute(conn, since, ["one", "two"])

    found = await backend.read(read)
    assert {
        pool: [(s.minute, s.delivered, s.deferred) for s in stats] for pool, stats in found.items()
    } == {
        "one": [(0, 1, 0), (1, 1, 0)],
        "two": [(1, 0, 1)],
    }
    assert await backend.read(lambda conn: event_stream.per_pool_minute(conn, since, [])) == {}


async def test_an_owners_recent_events_among_the_newest_or_by_their_messages(
    backend: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A busy owner's last events are found among the newest (RECENT_SCAN), a quiet one's by
    their messages: the same answer as reading them all."""
    monkeypatch.setattr(event_stream, "RECENT_SCAN", 10)
    now = time.time()
    await message(backend, "msg_busy", "usr_busy", now)
    await message(backend, "msg_quiet", "usr_quiet", now)
    rows = [events.row("queued", "msg_quiet", "queued", now, "q@x.test")]
    rows += [events.row("deferred", "msg_busy", "queued", now, f"{n}@x.test") for n in range(30)]
    await backend.transaction(lambda conn: conn.execute(events.INSERT_EVENT, rows))

    def read(user: str, limit: int) -> Any:
        return backend.read(
            lambda conn: event_stream.recent(conn, EventFilter(user_id=user), limit)
        )

    busy = [json.loads(d)["recipient"] for d in await read("usr_busy", 5)]
    assert busy == [f"{n}@x.test" for n in (29, 28, 27, 26, 25)]
    assert len(await read("usr_busy", 25)) == 25  # more than the newest 10 hold
    assert [json.loads(d)["recipient"] for d in await read("usr_quiet", 5)] == ["q@x.test"]
