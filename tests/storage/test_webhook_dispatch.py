"""The webhook outbox SQL on SQLite and PostgreSQL: fan-out, filters, leases, replay."""

from __future__ import annotations

import time
from typing import Any

from sqlalchemy import Connection, select, text

from gateway import events
from storage import webhook_outbox as outbox
from storage.db import Database
from storage.webhooks import create_webhook, replay, update_webhook
from storage.writer import Writer


async def add_events(db: Database, types: list[str], message_id: str = "msg_1") -> None:
    now = time.time()
    rows = [events.row(t, message_id, "queued", now, f"r{i}@x.test") for i, t in enumerate(types)]
    await db.transaction(lambda conn: conn.execute(events.INSERT_EVENT, rows))


async def hook(db: Database, **values: Any) -> str:
    record = await create_webhook(db, {"url": "http://127.0.0.1/", **values}, lambda _: "sealed")
    return record.id


async def dispatch(writer: Writer, limit: int = 1000) -> outbox.Dispatched:
    result: outbox.Dispatched = await writer.submit(
        lambda conn: outbox.dispatch(conn, events.FINAL, time.time(), limit)
    )
    return result


async def rows(db: Database, sql: str) -> list[Any]:
    return await db.read(lambda conn: conn.execute(text(sql)).all())


async def owed(db: Database, webhook_id: str) -> list[str]:
    """The types of the events owed to a webhook, in delivery order."""
    found = await rows(
        db,
        "SELECT e.type FROM webhook_delivery d JOIN event e ON e.id = d.event_id "
        f"WHERE d.webhook_id = '{webhook_id}' ORDER BY d.id",
    )
    return [r.type for r in found]


async def test_without_webhooks_the_flag_is_just_cleared(backend: Database, writer: Writer) -> None:
    await add_events(backend, ["queued", "delivered"])
    done = await dispatch(writer)
    assert (done.events, done.deliveries) == (2, 0)
    assert await rows(backend, "SELECT id FROM event WHERE pending") == []
    assert (await dispatch(writer)).events == 0


async def test_fan_out_follows_each_webhooks_filter(backend: Database, writer: Writer) -> None:
    everything = await hook(backend)
    final = await hook(backend, final_only=True)
    bounces = await hook(backend, event_types=["bounced", "queued"], final_only=True)
    quiet = await hook(backend)
    await update_webhook(backend, quiet, {"is_active": False})
    await add_events(backend, ["queued", "deferred", "delivered", "bounced", "complaint"])
    done = await dispatch(writer)
    assert done.events == 5 and done.webhooks == {everything, final, bounces}
    assert await owed(backend, everything) == [
        "queued", "deferred", "delivered", "bounced", "complaint"
    ]  # fmt: skip
    assert await owed(backend, final) == ["delivered", "bounced"]
    assert await owed(backend, bounces) == ["bounced"]
    assert await owed(backend, quiet) == []
    assert await rows(backend, "SELECT id FROM event WHERE pending") == []


async def test_batches_keep_event_order(backend: Database, writer: Writer) -> None:
    target = await hook(backend)
    await add_events(backend, ["queued"] * 25)
    while (await dispatch(writer, limit=10)).events:
        pass
    found = await rows(
        backend,
        f"SELECT event_id FROM webhook_delivery WHERE webhook_id = '{target}' ORDER BY id",
    )
    ids = [r.event_id for r in found]
    assert len(ids) == 25 and ids == sorted(ids)


async def test_one_node_leases_a_webhook(
    backend: Database, other_db: Database, writer: Writer
) -> None:
    target = await hook(backend)
    await add_events(backend, ["queued"])
    await dispatch(writer)
    now = time.time()

    def claim(node: str, at: float) -> Any:
        return lambda conn: outbox.claim(conn, node, at, at + 60, ())

    first = await backend.transaction(claim("node-a", now))
    second = await other_db.transaction(claim("node-b", now))
    assert [c.id for c in first] == [target] and second == []
    later = await other_db.transaction(claim("node-b", now + 61))  # node-a's lease lapsed
    assert [c.id for c in later] == [target]
    assert not await backend.transaction(lambda c: outbox.renew(c, target, "node-a", now + 99))


async def test_failure_backs_off_and_success_deletes(backend: Database, writer: Writer) -> None:
    target = await hook(backend)
    await add_events(backend, ["queued", "delivered"])
    await dispatch(writer)
    now = time.time()
    await backend.transaction(lambda c: outbox.claim(c, "n", now, now + 60, ()))
    attempt = outbox.attempt_row(target, now, 2, "failed", 500, "HTTP 500")
    await backend.transaction(lambda c: outbox.failed(c, target, "n", attempt, now + 30))
    assert await backend.transaction(lambda c: outbox.claim(c, "n", now + 1, now + 60, ())) == []
    claimed = await backend.transaction(lambda c: outbox.claim(c, "n", now + 31, now + 90, ()))
    assert claimed[0].failures == 1
    batch = await backend.read(lambda c: outbox.oldest(c, target, 100))
    ok = outbox.attempt_row(target, now, 2, "delivered", 200)
    ids = [o.delivery_id for o in batch]

    def delivered(conn: Connection) -> bool:
        return outbox.delivered(conn, target, "n", ids, ok, now + 120)

    assert await backend.transaction(delivered)
    assert await owed(backend, target) == []
    state = await rows(backend, f"SELECT failures FROM webhook WHERE id = '{target}'")
    assert state[0].failures == 0


async def test_replay_and_drop_and_prune(backend: Database, writer: Writer) -> None:
    target = await hook(backend, event_types=["delivered"])
    await add_events(backend, ["queued", "delivered", "delivered"])
    await dispatch(writer)
    before = await owed(backend, target)
    assert before == ["delivered", "delivered"]
    queued = await replay(backend, target, 0.0, {"delivered"}, limit=1)
    assert queued == 1
    assert await replay(backend, "wh_none", 0.0, None) is None
    assert await owed(backend, target) == ["delivered"] * 3
    now = time.time()
    dropped = await backend.transaction(lambda c: outbox.drop_older(c, target, now + 1, now))
    assert dropped == 3 and await owed(backend, target) == []
    for n in range(5):
        row = outbox.attempt_row(target, now, n, "failed")
        await backend.transaction(lambda c, row=row: c.execute(outbox._INSERT_ATTEMPT, row))
    assert await backend.transaction(lambda c: outbox.prune_attempts(c, 2)) == 4  # +1 dropped
    left = await backend.read(
        lambda c: c.execute(select(outbox.A.c.events).order_by(outbox.A.c.id)).all()
    )
    assert [r.events for r in left] == [3, 4]
