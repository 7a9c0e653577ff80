"""Hold and release (postsuper -h/-H) against real databases (SQLite and PostgreSQL): a held
message is never claimed, never expires while held, and its time held is left out of
max_age; each hold and release is one transaction with its events."""

from __future__ import annotations

import logging
import time

import pytest
from sqlalchemy import Connection, inspect, text

from gateway.message import DeliveryResult, Outcome, Route
from gateway.queue.operations import (
    MessageBusy,
    MessageHeld,
    MessageNotHeld,
    bulk,
    hold_one,
    release_one,
    retry_one,
)
from gateway.queue.store import AttemptRecord, Queue
from storage.db import Database, create_schema
from storage.message_search import MessageFilter, search
from storage.messages import message_state
from storage.models import HELD_DUE, SCHEMA_VERSION
from tests.support.databases import MakeQueue
from tests.support.stored import fetch, message_row, submission

ROUTE = Route(ip_pool="transactional")
DEFERRED = DeliveryResult(Outcome.DEFERRED, 451, "4.3.0", "try again later")


async def events_of(db: Database, message_id: str) -> list[tuple[str, str | None, str]]:
    rows = await fetch(
        db,
        "SELECT type, recipient, message_status FROM event WHERE message_id = :id ORDER BY id",
        id=message_id,
    )
    return [(row.type, row.recipient, row.message_status) for row in rows]


async def backdate(db: Database, message_id: str, **columns: float) -> None:
    sets = ", ".join(f"{name} = :{name}" for name in columns)

    def work(conn: Connection) -> None:
        conn.execute(
            text(f"UPDATE message SET {sets} WHERE id = :id"), {**columns, "id": message_id}
        )

    await db.transaction(work)


async def test_a_held_message_is_never_claimed_until_released(
    backend: Database, queue: Queue, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="postern.mail")
    queued = await queue.enqueue(submission(), ROUTE, claim=False)
    held = await queue.hold([queued.id])
    assert f"id={queued.id} status=placed on hold" in caplog.messages
    assert held.done == [queued.id] and held.busy == []

    row = await message_row(backend, queued.id)
    assert row.status == "held" and row.due_at == HELD_DUE and row.held_at is not None
    assert await queue.claim_due(10) == []
    state = await message_state(backend, queued.id)
    assert state is not None and state.next_attempt_at is None
    assert [(kind, status) for kind, _, status in await events_of(backend, queued.id)][-2:] == [
        ("held", "held"),
        ("held", "held"),
    ]
    # A retry leaves it held (postqueue -f does not deliver held mail).
    assert await queue.retry([queued.id]) == []
    assert (await message_row(backend, queued.id)).status == "held"

    released = await queue.release_held([queued.id])
    assert released.done == [queued.id]
    assert f"id={queued.id} status=released from hold" in caplog.messages
    row = await message_row(backend, queued.id)
    assert row.status == "queued" and row.held_at is None and row.held_for >= 0
    assert row.due_at <= time.time()
    claimed = await queue.claim_due(10)
    assert [m.id for m in claimed] == [queued.id]
    kinds = [kind for kind, _, _ in await events_of(backend, queued.id)]
    assert kinds == ["queued", "queued", "held", "held", "released", "released"]


async def test_the_time_held_does_not_count_towards_max_age(
    backend: Database, make_queue: MakeQueue
) -> None:
    """Two messages accepted 100 s ago with a max_age of 60 s: the one never held expires at
    its next deferral; the one held for 90 of those seconds still has time left."""
    queue = await make_queue(max_age=60.0, schedule=(5.0,))
    now = time.time()
    plain = await queue.enqueue(submission("a@example.com"), ROUTE, claim=False)
    kept = await queue.enqueue(submission("b@example.com"), ROUTE, claim=False)
    await queue.hold([kept.id])
    await backdate(backend, plain.id, created_at=now - 100)
    await backdate(backend, kept.id, created_at=now - 100, held_at=now - 90)
    await queue.release_held([kept.id])
    assert 89 < (await message_row(backend, kept.id)).held_for < 100

    claimed = {m.id: m for m in await queue.claim_due(10)}
    assert set(claimed) == {plain.id, kept.id}
    for message in claimed.values():
        rcpt = message.recipients[0]
        await queue.record(AttemptRecord(message, {rcpt: DEFERRED}, "sink"))
    assert (await message_row(backend, plain.id)).status == "bounced"
    assert (await message_row(backend, kept.id)).status == "deferred"


async def test_a_message_being_delivered_is_busy_not_held(backend: Database, queue: Queue) -> None:
    queued = await queue.enqueue(submission(), ROUTE, claim=True)
    state = await message_state(backend, queued.id)
    assert state is not None
    try:
        await hold_one(queue, state)
    except MessageBusy:
        pass
    else:
        raise AssertionError("a claimed message was held")
    assert (await message_row(backend, queued.id)).status == "queued"


async def test_one_at_a_time_refusals_and_a_deferred_message_released_deferred(
    backend: Database, queue: Queue
) -> None:
    queued = await queue.enqueue(submission(), ROUTE, claim=False)
    await backdate(backend, queued.id, attempts=1)
    state = await message_state(backend, queued.id)
    assert state is not None
    try:
        await release_one(queue, state)
    except MessageNotHeld:
        pass
    else:
        raise AssertionError("released a message that was not held")
    await hold_one(queue, state)
    held = await message_state(backend, queued.id)
    assert held is not None and held.status == "held"
    for refused in (hold_one(queue, held), retry_one(queue, backend, held)):
        try:
            await refused
        except MessageHeld:
            pass
        else:
            raise AssertionError("a held message was held or retried")
    await release_one(queue, held)
    assert (await message_row(backend, queued.id)).status == "deferred"


async def test_bulk_hold_and_release_match_only_what_they_apply_to(
    backend: Database, queue: Queue
) -> None:
    first = await queue.enqueue(submission(), ROUTE, claim=False)
    second = await queue.enqueue(submission(), ROUTE, claim=False)
    everything = MessageFilter()
    dry = await bulk(queue, backend, everything, "hold", dry_run=True)
    assert (dry.matched, dry.done) == (2, 0)
    done = await bulk(queue, backend, everything, "hold", dry_run=False)
    assert (done.matched, done.done) == (2, 2)
    assert done.as_json()["held"] == 2
    page, _ = await search(backend, MessageFilter(statuses=("held",)))
    assert {m.id for m in page} == {first.id, second.id}
    again = await bulk(queue, backend, everything, "hold", dry_run=False)
    assert again.matched == 0  # held already: nothing a hold applies to
    released = await bulk(queue, backend, everything, "release", dry_run=False)
    assert released.as_json()["released"] == 2
    assert (await queue.counts())["held"] == 0
    assert (await queue.counts())["queued"] == 2


async def test_a_held_message_can_be_cancelled(backend: Database, queue: Queue) -> None:
    queued = await queue.enqueue(submission(), ROUTE, claim=False)
    await queue.hold([queued.id])
    assert (await queue.counts())["held"] == 1
    assert (await queue.cancel([queued.id])).cancelled == [queued.id]
    assert (await message_row(backend, queued.id)).status == "cancelled"


async def test_a_schema_9_database_gains_the_hold_columns_and_the_routes_table(
    backend: Database, queue: Queue
) -> None:
    """Schema 10: held_at and held_for are added to `message` (a row already there reads
    held_for 0), recipient_route is created."""
    before = await queue.enqueue(submission(), ROUTE, claim=False)

    def to_schema_9(conn: Connection) -> None:
        conn.execute(text("DROP TABLE recipient_route"))
        conn.execute(text("ALTER TABLE message DROP COLUMN held_at"))
        conn.execute(text("ALTER TABLE message DROP COLUMN held_for"))
        conn.execute(text("UPDATE postern_meta SET value = '9' WHERE key = 'schema_version'"))

    await backend.transaction(to_schema_9)
    await create_schema(backend)

    def found(conn: Connection) -> tuple[set[str], set[str], str]:
        seen = inspect(conn)
        columns = {c["name"] for c in seen.get_columns("message")}
        query = text("SELECT value FROM postern_meta WHERE key = 'schema_version'")
        return columns, set(seen.get_table_names()), str(conn.execute(query).scalar())

    columns, tables, version = await backend.read(found)
    assert {"held_at", "held_for"} <= columns and "recipient_route" in tables
    assert version == str(SCHEMA_VERSION)  # the current one (11: storage.pieces)
    row = await message_row(backend, before.id)
    assert row.held_for == 0 and row.held_at is None
    assert (await queue.hold([before.id])).done == [before.id]


async def test_a_held_scheduled_send_released_waits_for_its_time(
    backend: Database, queue: Queue
) -> None:
    """Released before its scheduled time, a scheduled send keeps it (not sent at once), and
    the time held before that time is not added to held_for (max_age counts from it)."""
    import dataclasses

    later = time.time() + 3600
    scheduled = dataclasses.replace(submission(), scheduled_at=later)
    queued = await queue.enqueue(scheduled, ROUTE, claim=False)
    await queue.hold([queued.id])
    await queue.release_held([queued.id])
    row = await message_row(backend, queued.id)
    assert row.status == "queued" and abs(row.due_at - later) < 1 and row.held_for == 0
    assert await queue.claim_due(10) == []

    past = await queue.enqueue(submission("c@example.com"), ROUTE, claim=False)
    await queue.hold([past.id])
    now = time.time()
    await backdate(backend, past.id, scheduled_at=now - 50, held_at=now - 80)
    await queue.release_held([past.id])
    row = await message_row(backend, past.id)
    assert row.due_at <= time.time() and 49 < row.held_for < 60  # held only 50 s past its time
