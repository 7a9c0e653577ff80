"""The webhook outbox SQL on SQLite and PostgreSQL: cursors, commit order, filters, leases,
replay, dropping, and the upgrade from the fan-out schema."""

from __future__ import annotations

import json
import time
from typing import Any

import asyncpg
import pytest
from sqlalchemy import Connection, inspect, select, text

from gateway.message import DeliveryResult, Outcome
from gateway.queue import events
from storage import event_json
from storage import webhook_outbox as outbox
from storage.db import Database, create_schema
from storage.webhook_outbox import Position
from storage.webhooks import create_webhook, replay, update_webhook, wanted_types
from tests.support.databases import events_settled


async def add_events(
    db: Database,
    types: list[str],
    message_id: str = "msg_1",
    at: float | None = None,
    settle: bool = True,
) -> None:
    """Write events in one transaction; with `settle`, return once a webhook can read them."""
    now = time.time() if at is None else at
    rows = [events.row(t, message_id, "queued", now, f"r{i}@x.test") for i, t in enumerate(types)]
    await db.transaction(lambda conn: conn.execute(events.INSERT_EVENT, rows))
    if settle:
        await events_settled(db)


async def hook(db: Database, **values: Any) -> str:
    record = await create_webhook(db, {"url": "http://127.0.0.1/", **values}, lambda _: "sealed")
    return record.id


async def target(db: Database, webhook_id: str) -> outbox.WebhookState:
    found = await db.read(lambda conn: outbox.target(conn, webhook_id))
    assert found is not None
    return found


async def next_batch(
    db: Database, webhook_id: str, limit: int = 100
) -> tuple[outbox.WebhookState, list[Any], Position]:
    """What the sender would read now: the webhook, its next events, the horizon."""
    hook_now = await target(db, webhook_id)
    types = wanted_types(hook_now.event_types, hook_now.final_only, events.FINAL)

    def read(conn: Connection) -> tuple[list[Any], Position]:
        upto = outbox.horizon(conn)
        return outbox.batch(conn, hook_now.cursor, upto, types, limit), upto

    rows, upto = await db.read(read)
    return hook_now, rows, upto


def doc(owed: outbox.Owed) -> dict[str, Any]:
    return dict(json.loads(owed.json))


async def lease(db: Database, webhook_id: str, node: str = "n", at: float | None = None) -> None:
    now = time.time() if at is None else at
    claimed = await db.transaction(lambda c: outbox.claim(c, node, now, now + 60, [webhook_id]))
    assert [c.id for c in claimed] == [webhook_id]


async def drain(db: Database, webhook_id: str, limit: int) -> list[str]:
    """Send everything the way the sender does (batch, then move the cursor): the types."""
    sent: list[str] = []
    while True:
        hook_now, rows, upto = await next_batch(db, webhook_id, limit)
        new = outbox.position_of(rows[-1]) if len(rows) >= limit else upto
        moved = await db.transaction(
            lambda c, seen=hook_now, new=new: outbox.advance(c, webhook_id, "n", seen, new)
        )
        assert moved or new == hook_now.cursor
        sent += [doc(r)["type"] for r in rows]
        if not rows:
            return sent


async def test_a_new_webhook_gets_the_events_from_its_creation_on(backend: Database) -> None:
    await add_events(backend, ["queued", "delivered"], "msg_before")
    target_id = await hook(backend)
    await add_events(backend, ["queued", "bounced"], "msg_after")
    _, rows, _ = await next_batch(backend, target_id)
    assert [(doc(r)["message_id"], doc(r)["type"]) for r in rows] == [
        ("msg_after", "queued"), ("msg_after", "bounced")
    ]  # fmt: skip


async def test_each_webhook_reads_its_filter_in_order_in_batches(backend: Database) -> None:
    everything = await hook(backend)
    final = await hook(backend, final_only=True)
    bounces = await hook(backend, event_types=["bounced", "queued"], final_only=True)
    types = ["queued", "deferred", "delivered", "bounced", "complaint"] * 5
    for n in range(5):
        await add_events(backend, types[n * 5 : n * 5 + 5], f"msg_{n}")
    for webhook_id in (everything, final, bounces):
        await lease(backend, webhook_id)
    assert await drain(backend, everything, limit=3) == types
    assert await drain(backend, final, limit=3) == ["delivered", "bounced"] * 5
    assert await drain(backend, bounces, limit=3) == ["bounced"] * 5
    # Nothing wanted is left, and the cursor stands at the horizon: nothing is read twice.
    hook_now, rows, upto = await next_batch(backend, bounces)
    assert rows == [] and hook_now.cursor == upto


async def test_the_database_shapes_each_event_as_the_api_does(backend: Database) -> None:
    """Webhook payloads are JSON made in SQL: the same document as event_json.to_json, with the
    message's tags and metadata, for every kind of row."""
    target_id = await hook(backend)
    at = 1795324441.512771  # milliseconds truncate, never round up
    delivered = DeliveryResult(Outcome.DELIVERED, 250, "2.0.0", 'OK "quoted" \\ é')
    rows = [
        events.row("queued", "msg_meta", "queued", at, "a@x.test"),
        events.row("delivered", "msg_meta", "delivered", at + 0.9999, "a@x.test",
                   pool="sink", result=delivered, attempt=1),
        events.row("throttled", "msg_plain", "deferred", 1e9, response="rate 10/min"),
        events.row("queued", "msg_plain", "queued", 1795324446.2929997, "c@x.test"),
        events.row("bounced", "msg_plain", "bounced", at, "b@x.test",
                   result=DeliveryResult(Outcome.BOUNCED, 550, "", "")),
        events.row("bounced", "msg_meta", "bounced", at, "a@x.test", response="gone",
                   detail='{"async":true,"bounce":{"report_id":7,"rule":"bad-mailbox"}}'),
    ]  # fmt: skip

    def write(conn: Connection) -> None:
        conn.execute(events.INSERT_EVENT, rows)
        conn.execute(
            text(
                "INSERT INTO message_meta (message_id, provider, tags, metadata_json)"
                """ VALUES ('msg_meta', 'api', '["welcome", "ü"]', '{"user": "42"}')"""
            )
        )

    await backend.transaction(write)
    await events_settled(backend)
    _, owed, _ = await next_batch(backend, target_id)
    stored = await backend.read(lambda c: c.execute(select(events.E).order_by(events.E.c.id)).all())
    tags = {"msg_meta": (["welcome", "ü"], {"user": "42"})}
    expected = [event_json.to_json(r, *tags.get(r.message_id, ([], {}))) for r in stored]
    assert [json.loads(o.json) for o in owed] == expected
    assert expected[0]["created_at"] == "2026-11-22T05:14:01.512Z"
    assert expected[2]["response"] == {"code": None, "enhanced_status": None, "text": "rate 10/min"}
    assert expected[0]["response"] is None and expected[4]["response"]["code"] == 550
    assert expected[3]["created_at"].endswith(":06.293Z")  # rounded to µs first, as datetime
    assert expected[5]["async"] is True and expected[5]["bounce"]["report_id"] == 7
    assert "async" not in expected[4]  # only a report's events carry it


async def test_an_open_transaction_holds_back_events_committed_after_it(
    backend: Database,
) -> None:
    """PostgreSQL hands out ids before commit: an event of a transaction still open must
    not be overtaken (and so skipped) by a later one already committed."""
    if backend.is_sqlite:
        pytest.skip("SQLite commits one transaction at a time")
    target_id = await hook(backend)
    await lease(backend, target_id)
    slow = await asyncpg.connect("postgresql://" + backend.url.split("://", 1)[1])
    try:
        open_tx = slow.transaction()
        await open_tx.start()
        await slow.execute("SELECT pg_current_xact_id()")  # it is a writer from here on
        await add_events(backend, ["delivered"], "msg_fast", settle=False)  # commits first
        await slow.execute(
            "INSERT INTO event (type, message_id, attempt, message_status, created_at)"
            " VALUES ('queued', 'msg_slow', 0, 'queued', $1)",
            time.time(),
        )
        _, rows, _ = await next_batch(backend, target_id)
        assert rows == []  # msg_fast waits for the older transaction
        assert await drain(backend, target_id, limit=10) == []
        await open_tx.commit()
    finally:
        await slow.close()
    await events_settled(backend)
    _, rows, _ = await next_batch(backend, target_id)
    assert [doc(r)["message_id"] for r in rows] == ["msg_slow", "msg_fast"]


async def test_one_node_leases_a_webhook(backend: Database, other_db: Database) -> None:
    target_id = await hook(backend)
    await add_events(backend, ["queued"])
    now = time.time()
    assert await backend.read(lambda c: outbox.due(c, now, ())) == [target_id]
    assert await backend.read(lambda c: outbox.due(c, now, {target_id})) == []

    def claim(node: str, at: float) -> Any:
        return lambda conn: outbox.claim(conn, node, at, at + 60, [target_id])

    first = await backend.transaction(claim("node-a", now))
    second = await other_db.transaction(claim("node-b", now))
    assert [c.id for c in first] == [target_id] and second == []
    assert await backend.read(lambda c: outbox.due(c, now, ())) == []  # leased
    later = await other_db.transaction(claim("node-b", now + 61))  # node-a's lease lapsed
    assert [c.id for c in later] == [target_id]
    assert not await backend.transaction(lambda c: outbox.renew(c, target_id, "node-a", now + 99))


async def test_a_webhook_with_nothing_after_its_cursor_is_not_due(backend: Database) -> None:
    await add_events(backend, ["queued"])
    await hook(backend)
    assert await backend.read(lambda c: outbox.due(c, time.time(), ())) == []


async def test_failure_backs_off_and_success_moves_the_cursor(backend: Database) -> None:
    target_id = await hook(backend)
    await add_events(backend, ["queued", "delivered"])
    now = time.time()
    await lease(backend, target_id, at=now)
    attempt = outbox.attempt_row(target_id, now, 2, "failed", 500, "HTTP 500")
    await backend.transaction(lambda c: outbox.failed(c, target_id, "n", attempt, now + 30))
    assert await backend.read(lambda c: outbox.due(c, now + 1, ())) == []
    claimed = await backend.transaction(
        lambda c: outbox.claim(c, "n", now + 31, now + 90, [target_id])
    )
    assert claimed[0].failures == 1
    hook_now, rows, upto = await next_batch(backend, target_id)
    assert [doc(r)["type"] for r in rows] == ["queued", "delivered"]
    ok = outbox.attempt_row(target_id, now, 2, "delivered", 200)
    moved = (hook_now, upto)
    assert await backend.transaction(
        lambda c: outbox.delivered(c, target_id, "n", moved, ok, now + 120)
    )
    hook_now, rows, _ = await next_batch(backend, target_id)
    assert rows == [] and hook_now.cursor == upto
    state = await backend.read(
        lambda c: c.execute(text(f"SELECT failures FROM webhook WHERE id = '{target_id}'")).one()
    )
    assert state.failures == 0


async def test_replay_moves_the_cursor_back_and_wins_over_a_send_in_flight(
    backend: Database,
) -> None:
    target_id = await hook(backend, event_types=["delivered"])
    await add_events(backend, ["queued", "delivered"], at=time.time() - 100)
    await add_events(backend, ["delivered"])
    await lease(backend, target_id)
    assert await drain(backend, target_id, limit=10) == ["delivered", "delivered"]
    assert await replay(backend, "wh_none", 0.0, None) is None
    assert await replay(backend, target_id, time.time() + 60, {"delivered"}) == 0

    in_flight, _, upto = await next_batch(backend, target_id)  # a sender reads: nothing
    assert await replay(backend, target_id, time.time() - 50, {"delivered"}) == 1
    # The sender, done with what it read before the replay, must not undo it.
    assert not await backend.transaction(
        lambda c: outbox.advance(c, target_id, "n", in_flight, upto)
    )
    assert await drain(backend, target_id, limit=10) == ["delivered"]
    # A replay that finds the cursor already further back moves nothing but still wins:
    # a skip past max_age read before it must not move the cursor over what it replayed.
    back = text("UPDATE webhook SET cursor_txid = 0, cursor_id = 0 WHERE id = :w")
    await backend.transaction(lambda c: c.execute(back, {"w": target_id}))
    behind, _, upto = await next_batch(backend, target_id)
    assert await replay(backend, target_id, time.time() - 50, {"delivered"}) == 1
    assert not await backend.transaction(lambda c: outbox.advance(c, target_id, "n", behind, upto))
    assert await drain(backend, target_id, limit=10) == ["delivered", "delivered"]
    assert await replay(backend, target_id, 0.0, {"delivered"}) == 2
    assert await drain(backend, target_id, limit=10) == ["delivered", "delivered"]


async def test_reactivating_skips_what_happened_while_off(backend: Database) -> None:
    target_id = await hook(backend)
    await add_events(backend, ["queued"], "msg_on")
    await update_webhook(backend, target_id, {"is_active": False})
    await add_events(backend, ["queued"], "msg_off")
    await update_webhook(backend, target_id, {"is_active": True})
    await update_webhook(backend, target_id, {"is_active": True})  # already on: no skip
    await add_events(backend, ["queued"], "msg_on_again")
    _, rows, _ = await next_batch(backend, target_id)
    assert [doc(r)["message_id"] for r in rows] == ["msg_on_again"]


async def test_prune_keeps_the_latest_attempts(backend: Database) -> None:
    target_id = await hook(backend)
    now = time.time()
    for n in range(5):
        row = outbox.attempt_row(target_id, now, n, "failed")
        await backend.transaction(lambda c, row=row: outbox.log_attempt(c, row))
    assert await backend.transaction(lambda c: outbox.prune_attempts(c, 2)) == 3
    left = await backend.read(
        lambda c: c.execute(select(outbox.A.c.events).order_by(outbox.A.c.id)).all()
    )
    assert [r.events for r in left] == [3, 4]


async def test_backlog_counts_events_after_each_active_cursor(backend: Database) -> None:
    from storage.webhooks import backlog

    await hook(backend)
    await hook(backend)
    await add_events(backend, ["queued", "delivered"])
    assert await backlog(backend) == 4


async def test_upgrade_from_fan_out_starts_each_cursor_at_what_it_was_owed(
    backend: Database,
) -> None:
    """Schema 3 queued webhook_delivery rows and flagged events not yet fanned out as
    `pending`: after the upgrade each webhook is sent what it was still owed, nothing older.
    On PostgreSQL a later event could be fanned out while an earlier one was still pending:
    the earlier one counts."""
    owed_hook = await hook(backend)
    pending_hook = await hook(backend)
    await add_events(backend, ["queued", "delivered", "queued", "bounced"])
    ids = [
        r.id
        for r in await backend.read(
            lambda c: c.execute(text("SELECT id FROM event ORDER BY id")).all()
        )
    ]
    await add_events(backend, ["queued"], "msg_sent")  # sent to both before the upgrade

    def downgrade(conn: Connection) -> None:
        for column in ("cursor_txid", "cursor_id", "replayed_txid", "replayed_id", "replayed_at"):
            conn.execute(text(f"ALTER TABLE webhook DROP COLUMN {column}"))
        conn.execute(text("DROP INDEX IF EXISTS ix_event_order"))
        conn.execute(text("ALTER TABLE event DROP COLUMN txid"))
        conn.execute(text("ALTER TABLE event ADD COLUMN pending BOOLEAN NOT NULL DEFAULT FALSE"))
        conn.execute(
            text("ALTER TABLE event ALTER COLUMN pending DROP DEFAULT")
            if not backend.is_sqlite
            else text("SELECT 1")
        )
        conn.execute(text("CREATE INDEX ix_event_pending ON event (id) WHERE pending"))
        conn.execute(text("DROP TABLE IF EXISTS webhook_delivery"))  # no longer a model's
        conn.execute(
            text(
                "CREATE TABLE webhook_delivery (id INTEGER PRIMARY KEY, webhook_id VARCHAR(64)"
                " NOT NULL, event_id BIGINT NOT NULL, created_at FLOAT NOT NULL)"
            )
        )
        conn.execute(
            text(
                "INSERT INTO webhook_delivery (id, webhook_id, event_id, created_at)"
                " VALUES (1, :w, :e, 0)"
            ),
            {"w": owed_hook, "e": ids[2]},
        )
        conn.execute(text("UPDATE event SET pending = TRUE WHERE id = :e"), {"e": ids[1]})
        conn.execute(text("UPDATE postern_meta SET value = '3' WHERE key = 'schema_version'"))

    await backend.transaction(downgrade)
    await create_schema(backend)
    owed = ["delivered", "queued", "bounced", "queued"]
    for webhook_id in (owed_hook, pending_hook):
        _, rows, _ = await next_batch(backend, webhook_id)
        assert [doc(r)["type"] for r in rows] == owed
    await add_events(backend, ["delivered"], "msg_new")  # written the new way
    _, rows, _ = await next_batch(backend, pending_hook)
    assert [(doc(r)["type"], doc(r)["message_id"]) for r in rows][-2:] == [
        ("queued", "msg_sent"),
        ("delivered", "msg_new"),
    ]

    def leftovers(conn: Connection) -> list[str]:
        found = inspect(conn)
        return [
            *(t for t in found.get_table_names() if t == "webhook_delivery"),
            *(c["name"] for c in found.get_columns("event") if c["name"] == "pending"),
        ]

    # PostgreSQL keeps them for nodes not yet upgraded (the column gets a default).
    expected = [] if backend.is_sqlite else ["webhook_delivery", "pending"]
    assert await backend.read(leftovers) == expected
    await backend.transaction(lambda c: c.execute(text("DROP TABLE IF EXISTS webhook_delivery")))


async def test_events_restored_from_another_cluster_are_renumbered(backend: Database) -> None:
    """After pg_dump/restore, stored txids can be ahead of the new cluster's: renumbered at
    start-up, each cursor before the first event it had not been sent, new events after."""
    if backend.is_sqlite:
        pytest.skip("SQLite keeps no transaction ids")
    target_id = await hook(backend)
    await add_events(backend, ["queued", "delivered", "bounced"])
    ids = [
        r.id
        for r in await backend.read(
            lambda c: c.execute(text("SELECT id FROM event ORDER BY id")).all()
        )
    ]

    def from_elsewhere(conn: Connection) -> None:
        conn.execute(text("UPDATE event SET txid = 10000000000 + id"))
        conn.execute(
            text("UPDATE webhook SET cursor_txid = 10000000000 + :i, cursor_id = :i"),
            {"i": ids[0]},
        )

    await backend.transaction(from_elsewhere)
    await create_schema(backend)
    await add_events(backend, ["delivered"], "msg_new")
    hook_now, rows, _ = await next_batch(backend, target_id)
    assert [doc(r)["type"] for r in rows] == ["delivered", "bounced", "delivered"]
    assert hook_now.cursor == Position(0, ids[0])
    await create_schema(backend)  # nothing foreign left: nothing renumbered again
    assert (await target(backend, target_id)).cursor == Position(0, ids[0])
