"""The queue's state machine against real databases (every test runs on SQLite and PostgreSQL)."""

from __future__ import annotations

import asyncio
import dataclasses
import re
import sqlite3
import time
from collections.abc import Iterator
from typing import Any

import asyncpg
import pytest
from sqlalchemy import Connection, Engine, event, insert, inspect, text

import gateway.queue.ids as ids_module
from gateway.message import DeliveryResult, Outcome, QueuedMessage, Route, Sender
from gateway.queue.operations import MessageBusy, MessageFinal, cancel_one
from gateway.queue.store import AttemptRecord, Queue
from storage.db import Database, SchemaError, create_schema
from storage.messages import message_state
from storage.models import SCHEMA_VERSION, Message, MessageBody
from storage.queue_sql import LARGE_BODY
from storage.writer import StorageUnavailable
from tests.support.databases import MakeQueue
from tests.support.stored import CONTENT, fetch, message_row, submission

ROUTE = Route(ip_pool="transactional")


DELIVERED = DeliveryResult(Outcome.DELIVERED, 250, "2.0.0", "OK queued as 1234")
DEFERRED = DeliveryResult(Outcome.DEFERRED, 451, "4.3.0", "try again later")
USER_UNKNOWN = DeliveryResult(Outcome.BOUNCED, 550, "5.1.1", "no such user")
POLICY = DeliveryResult(Outcome.BOUNCED, 550, "5.7.1", "relaying denied")


async def recipient_rows(db: Database, message_id: str) -> dict[str, Any]:
    found = await fetch(
        db, "SELECT * FROM recipient WHERE message_id = :id ORDER BY id", id=message_id
    )
    return {row.email: row for row in found}


async def body(db: Database, message_id: str) -> bytes | None:
    found = await fetch(db, "SELECT data FROM message_body WHERE message_id = :id", id=message_id)
    return bytes(found[0].data) if found else None


async def set_due_now(db: Database, message_id: str) -> None:
    def work(conn: Connection) -> None:
        conn.execute(
            text("UPDATE message SET due_at = :due WHERE id = :id"),
            {"due": time.time() - 1, "id": message_id},
        )

    await db.transaction(work)


async def claim_until(queue: Queue, timeout: float = 5.0) -> list[QueuedMessage]:
    """Poll claim_due until it returns something (bounded)."""
    async with asyncio.timeout(timeout):
        while True:
            got = await queue.claim_due(10)
            if got:
                return got
            await asyncio.sleep(0.05)


# --- intake -------------------------------------------------------------------------------


async def test_enqueue_stores_message_body_and_recipients(backend: Database, queue: Queue) -> None:
    before = time.time()
    queued = await queue.enqueue(submission(), ROUTE, claim=False)

    row = await message_row(backend, queued.id)
    assert row.status == "queued"
    assert row.source == "http"
    assert row.mail_from == "app@example.com"
    assert row.ip_pool == "transactional"
    assert row.pool_id is None
    assert row.attempts == 0
    assert row.size == len(CONTENT)
    assert row.claimed_by is None
    assert before <= row.due_at <= time.time()
    assert await body(backend, queued.id) == CONTENT
    recipients = await recipient_rows(backend, queued.id)
    assert list(recipients) == ["alice@example.com", "bob@example.com"]
    assert {r.status for r in recipients.values()} == {"pending"}

    assert queued.recipients == ["alice@example.com", "bob@example.com"]
    assert queued.content == CONTENT
    assert queued.attempts == 0
    assert queued.route == ROUTE


async def test_enqueue_records_the_sending_key_on_the_message(
    backend: Database, queue: Queue
) -> None:
    """The key that sent a message is on its row (for ix_message_sent_by_key); SMTP without
    AUTH has none."""
    sender = Sender(api_key_id="key_abc", may_send=True, may_sandbox=False)
    keyed = await queue.enqueue(dataclasses.replace(submission(), sender=sender), ROUTE, False)
    anonymous = await queue.enqueue(submission(), ROUTE, claim=False)
    assert (await message_row(backend, keyed.id)).api_key_id == "key_abc"
    assert (await message_row(backend, anonymous.id)).api_key_id is None


async def test_enqueue_is_atomic(
    backend: Database, queue: Queue, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A failure storing the body leaves neither the message nor its recipients behind."""
    clash = "msg_clash_0001"

    def orphan_body(conn: Connection) -> None:
        conn.execute(
            text("INSERT INTO message_body (message_id, data) VALUES (:id, :data)"),
            {"id": clash, "data": b"already here"},
        )

    await backend.transaction(orphan_body)
    monkeypatch.setattr(ids_module, "new_message_id", lambda: clash)

    with pytest.raises(StorageUnavailable):
        await queue.enqueue(submission(), ROUTE, claim=False)

    assert await fetch(backend, "SELECT id FROM message WHERE id = :id", id=clash) == []
    assert await recipient_rows(backend, clash) == {}
    assert await body(backend, clash) == b"already here"


async def test_claimed_enqueue_waits_for_its_lease(
    make_queue: MakeQueue, backend: Database
) -> None:
    node_a = await make_queue("node-a", lease=1.5)
    node_b = await make_queue("node-b")
    queued = await node_a.enqueue(submission(), ROUTE, claim=True)

    row = await message_row(backend, queued.id)
    assert row.claimed_by == "node-a"
    assert row.due_at > time.time()
    assert await node_b.claim_due(10) == []
    assert await node_a.claim_due(10) == []

    claimed = await claim_until(node_b)  # once node-a's lease lapses
    assert [m.id for m in claimed] == [queued.id]
    assert claimed[0].recipients == ["alice@example.com", "bob@example.com"]
    assert claimed[0].content == CONTENT
    assert (await message_row(backend, queued.id)).claimed_by == "node-b"


async def test_unclaimed_enqueue_is_claimed_by_claim_due(backend: Database, queue: Queue) -> None:
    route = Route(pool_id="smtp_pool_1")
    queued = await queue.enqueue(submission(), route, claim=False)

    claimed = await queue.claim_due(10)
    assert len(claimed) == 1
    message = claimed[0]
    assert message.id == queued.id
    assert message.mail_from == "app@example.com"
    assert message.recipients == ["alice@example.com", "bob@example.com"]
    assert message.content == CONTENT
    assert message.attempts == 0
    assert message.route == route
    assert message.any_bounced is False
    assert message.created_at == pytest.approx(queued.created_at)

    row = await message_row(backend, queued.id)
    assert row.claimed_by == "node-a"
    assert row.due_at > time.time() + 500  # the 600 s lease
    assert await queue.claim_due(10) == []


async def test_claim_due_gives_every_body_whole(backend: Database, queue: Queue) -> None:
    """Bodies are read after the claim (on SQLite a large one through blob I/O, which lets
    the GIL go): each claimed message carries its own body, byte for byte."""
    head = b"Subject: large\r\n\r\n"
    large = head + bytes(range(256)) * (LARGE_BODY // 256) + b"\r\n"  # over LARGE_BODY
    made = {
        (await queue.enqueue(submission(content=content), ROUTE, claim=False)).id: content
        for content in (large, CONTENT, large[: LARGE_BODY - 1])
    }
    claimed = await queue.claim_due(10)
    assert {message.id: message.content for message in claimed} == made


async def test_claimed_messages_whose_bodies_cannot_be_read_are_due_again_at_once(
    backend: Database, queue: Queue, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The bodies are read after the claim commits: when that read fails, the claim is
    given back, not left to lapse with its lease (10 minutes)."""
    queued = await queue.enqueue(submission(), ROUTE, claim=False)

    async def failing(query: Any) -> Any:
        raise StorageUnavailable("database is locked")

    with monkeypatch.context() as patched:
        patched.setattr(queue.db, "read", failing)
        with pytest.raises(StorageUnavailable):
            await queue.claim_due(10)
    row = await message_row(backend, queued.id)
    assert row.claimed_by is None and row.due_at <= time.time()
    assert [message.content for message in await queue.claim_due(10)] == [CONTENT]


def break_the_blob(path: str, marker: bytes) -> None:
    """A real fault in a stored body: the overflow page holding `marker` (mid-body) names a
    next page past the end of the file, so SQLite's blob read fails (SQLITE_CORRUPT) while
    the row, its size (read from the record's header) and every other table stay sound."""
    with sqlite3.connect(path) as direct:
        direct.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # the body into the file itself
        page = direct.execute("PRAGMA page_size").fetchone()[0]
    with open(path, "r+b") as file:
        data = file.read()
        at = data.index(marker)
        assert at % page >= 4  # in the page's content, not its next-page pointer
        file.seek(at - at % page)
        file.write(b"\xff\xff\xff\x00")


async def test_a_large_body_that_cannot_be_read_is_never_sent_empty(
    backend: Database, queue: Queue
) -> None:
    """On SQLite a body of LARGE_BODY or more is read through blob I/O: when that read
    fails, claim_due raises StorageUnavailable and gives the claim back (due again at once),
    never handing delivery the message with an empty body."""
    if not backend.is_sqlite:
        pytest.skip("blob I/O is SQLite's")
    lines = b"".join(b"%08d\r\n" % i for i in range(LARGE_BODY // 10 + 1))
    queued = await queue.enqueue(submission(content=b"Subject: x\r\n\r\n" + lines), ROUTE, False)
    break_the_blob(backend.url.removeprefix("sqlite:///"), b"%08d\r\n" % (LARGE_BODY // 20))
    backend._sync.dispose()  # type: ignore[union-attr]  # (no page of it cached by a reader)

    with pytest.raises(StorageUnavailable) as caught:
        await queue.claim_due(10)
    # (not another fault; a body this large is stored in pieces: storage.pieces)
    assert "blob read of message_piece" in str(caught.value.__cause__)
    row = await message_row(backend, queued.id)
    assert row.claimed_by is None and row.due_at <= time.time()


async def test_concurrent_claims_never_overlap(
    backend: Database, other_db: Database, make_queue: MakeQueue
) -> None:
    """Two nodes claiming in a loop share 200 due messages without a single double claim."""
    intake = await make_queue("intake")
    queued = await asyncio.gather(
        *(intake.enqueue(submission(f"r{i}@example.com"), ROUTE, claim=False) for i in range(200))
    )
    all_ids = {m.id for m in queued}
    assert len(all_ids) == 200

    node_a = await make_queue("node-a")
    # On PostgreSQL the second node has its own engine, like a second process would.
    node_b = await make_queue("node-b", db=backend if backend.is_sqlite else other_db)
    claims: dict[str, list[str]] = {"node-a": [], "node-b": []}

    async def worker(node: Queue) -> None:
        while True:
            got = await node.claim_due(7)
            if not got:
                return
            claims[node.node_id].extend(m.id for m in got)
            await asyncio.sleep(0)

    async with asyncio.timeout(30):
        await asyncio.gather(worker(node_a), worker(node_b), worker(node_a), worker(node_b))

    everything = claims["node-a"] + claims["node-b"]
    assert len(everything) == len(set(everything)), "a message was claimed twice"
    assert set(everything) == all_ids
    owners = await fetch(backend, "SELECT id, claimed_by FROM message")
    for row in owners:
        assert row.id in claims[row.claimed_by]


# --- recording attempts -------------------------------------------------------------------


async def test_record_is_patient_unless_told(queue: Queue, monkeypatch: pytest.MonkeyPatch) -> None:
    """A record may linger for company, except one an HTTP send waits on (the worker says)."""
    submitted: list[bool] = []
    submit = queue._writer.submit

    async def spy(work: Any, *, patient: bool = False, size: int = 0) -> Any:
        submitted.append(patient)
        return await submit(work, patient=patient, size=size)

    monkeypatch.setattr(queue._writer, "submit", spy)
    for patient in (True, False):
        message = await queue.enqueue(submission(), ROUTE, claim=True)
        submitted.clear()
        results = dict.fromkeys(message.recipients, DELIVERED)
        assert await queue.record(AttemptRecord(message, results, "p"), patient=patient)
        assert submitted == [patient]


async def test_record_all_delivered(backend: Database, queue: Queue) -> None:
    message = await queue.enqueue(submission(), ROUTE, claim=True)
    status = await queue.record(
        AttemptRecord(message, dict.fromkeys(message.recipients, DELIVERED), "pool-1")
    )

    assert status == "delivered"
    row = await message_row(backend, message.id)
    assert row.status == "delivered"
    assert row.due_at is None
    assert row.claimed_by is None
    assert row.attempts == 1
    assert row.last_pool == "pool-1"
    assert await body(backend, message.id) == CONTENT  # kept for body_retention
    for rcpt in (await recipient_rows(backend, message.id)).values():
        assert rcpt.status == "delivered"
        assert rcpt.code == 250
        assert rcpt.attempts == 1
        assert "2.0.0" in rcpt.response
    assert await queue.claim_due(10) == []


async def test_record_4xx_defers_and_retries_only_pending(backend: Database, queue: Queue) -> None:
    message = await queue.enqueue(submission(), ROUTE, claim=True)
    before = time.time()
    status = await queue.record(
        AttemptRecord(
            message,
            {"alice@example.com": DELIVERED, "bob@example.com": DEFERRED},
            "pool-1",
        )
    )
    after = time.time()

    assert status == "deferred"
    row = await message_row(backend, message.id)
    assert row.status == "deferred"
    assert row.attempts == 1
    assert row.claimed_by is None
    # First step of the schedule (60 s) plus at most 10 % jitter.
    assert before + 60 <= row.due_at <= after + 66
    assert await body(backend, message.id) == CONTENT
    recipients = await recipient_rows(backend, message.id)
    assert recipients["alice@example.com"].status == "delivered"
    assert recipients["bob@example.com"].status == "pending"
    assert recipients["bob@example.com"].code == 451
    assert await queue.claim_due(10) == []  # not due yet

    await set_due_now(backend, message.id)
    again = await queue.claim_due(10)
    assert [m.id for m in again] == [message.id]
    assert again[0].recipients == ["bob@example.com"]
    assert again[0].attempts == 1
    assert again[0].content == CONTENT

    before = time.time()
    status = await queue.record(AttemptRecord(again[0], {"bob@example.com": DEFERRED}, "pool-1"))
    after = time.time()
    assert status == "deferred"
    row = await message_row(backend, message.id)
    assert row.attempts == 2
    assert before + 300 <= row.due_at <= after + 330  # second step: 300 s


async def test_hard_bounce_suppresses_recipient(backend: Database, queue: Queue) -> None:
    message = await queue.enqueue(
        submission("Carol.Smith@Example.COM", "dave@example.com", "erin@example.com"),
        ROUTE,
        claim=True,
    )
    status = await queue.record(
        AttemptRecord(
            message,
            {
                "Carol.Smith@Example.COM": USER_UNKNOWN,
                "dave@example.com": DELIVERED,
                "erin@example.com": POLICY,
            },
            "pool-1",
        )
    )

    assert status == "bounced"
    row = await message_row(backend, message.id)
    assert row.due_at is None
    assert await body(backend, message.id) == CONTENT  # kept for body_retention
    recipients = await recipient_rows(backend, message.id)
    assert recipients["Carol.Smith@Example.COM"].status == "bounced"
    assert recipients["Carol.Smith@Example.COM"].code == 550
    assert "5.1.1" in recipients["Carol.Smith@Example.COM"].response
    assert recipients["erin@example.com"].status == "bounced"

    suppressed = await fetch(backend, "SELECT email, reason FROM suppression")
    # Only the 5.1.x bounce, under its mailbox key: every spelling of it is refused.
    assert [(s.email, s.reason) for s in suppressed] == [("carol.smith@example.com", "bounced")]
    found = queue.is_suppressed(
        ["Carol.Smith@EXAMPLE.com", '"carol.smith"@example.com', "erin@example.com"]
    )
    assert found == {"Carol.Smith@EXAMPLE.com", '"carol.smith"@example.com'}


async def test_is_suppressed_reports_every_spelling(backend: Database, queue: Queue) -> None:
    """Two spellings of one suppressed address (domain case differs) are both suppressed."""
    message = await queue.enqueue(submission("frank@example.com"), ROUTE, claim=True)
    await queue.record(AttemptRecord(message, {"frank@example.com": USER_UNKNOWN}, "pool-1"))

    asked = ["frank@example.com", "frank@EXAMPLE.COM", "grace@example.com"]
    assert queue.is_suppressed(asked) == {"frank@example.com", "frank@EXAMPLE.COM"}


async def test_past_max_age_bounces_with_5_4_7(make_queue: MakeQueue, backend: Database) -> None:
    queue = await make_queue("node-a", max_age=0.0)
    message = await queue.enqueue(submission("henry@example.com"), ROUTE, claim=True)
    status = await queue.record(AttemptRecord(message, {"henry@example.com": DEFERRED}, "pool-1"))

    assert status == "bounced"
    row = await message_row(backend, message.id)
    assert row.status == "bounced"
    assert row.due_at is None
    assert "5.4.7" in row.last_response
    assert await body(backend, message.id) == CONTENT  # kept for body_retention
    rcpt = (await recipient_rows(backend, message.id))["henry@example.com"]
    assert rcpt.status == "bounced"
    assert "5.4.7" in rcpt.response
    assert "try again later" in rcpt.response  # the last upstream answer is kept
    assert queue.is_suppressed(["henry@example.com"]) == set()  # not a hard bounce


async def test_release_claims_makes_own_claims_due(
    backend: Database, make_queue: MakeQueue
) -> None:
    node_a = await make_queue("node-a")
    node_b = await make_queue("node-b")
    held_by_a = await node_a.enqueue(submission(), ROUTE, claim=True)
    held_by_b = await node_b.enqueue(submission(), ROUTE, claim=True)
    final = await node_a.enqueue(submission(), ROUTE, claim=True)
    await node_a.record(AttemptRecord(final, dict.fromkeys(final.recipients, DELIVERED), "p"))

    await node_a.release_claims()

    row = await message_row(backend, held_by_a.id)
    assert row.claimed_by is None
    assert row.due_at <= time.time()
    assert (await message_row(backend, held_by_b.id)).claimed_by == "node-b"
    assert (await message_row(backend, final.id)).due_at is None
    claimed = await node_b.claim_due(10)
    assert [m.id for m in claimed] == [held_by_a.id]


async def test_counts_active_messages(backend: Database, queue: Queue) -> None:
    assert await queue.counts() == {"queued": 0, "deferred": 0, "held": 0}
    await queue.enqueue(submission(), ROUTE, claim=False)
    await queue.enqueue(submission(), ROUTE, claim=False)
    await queue.enqueue(submission(), ROUTE, claim=True)  # in flight: still queued
    deferred = await queue.enqueue(submission("ivan@example.com"), ROUTE, claim=True)
    await queue.record(AttemptRecord(deferred, {"ivan@example.com": DEFERRED}, "p"))
    delivered = await queue.enqueue(submission("judy@example.com"), ROUTE, claim=True)
    await queue.record(AttemptRecord(delivered, {"judy@example.com": DELIVERED}, "p"))

    assert await queue.counts() == {"queued": 3, "deferred": 1, "held": 0}


# --- schema -------------------------------------------------------------------------------


async def test_schema_version_recorded_and_newer_refused(backend: Database) -> None:
    found = await fetch(backend, "SELECT value FROM postern_meta WHERE key = 'schema_version'")
    assert [row.value for row in found] == [str(SCHEMA_VERSION)]

    await create_schema(backend)  # idempotent on a database of the same version
    found = await fetch(backend, "SELECT value FROM postern_meta WHERE key = 'schema_version'")
    assert [row.value for row in found] == [str(SCHEMA_VERSION)]

    def bump(conn: Connection) -> None:
        conn.execute(
            text("UPDATE postern_meta SET value = :v WHERE key = 'schema_version'"),
            {"v": str(SCHEMA_VERSION + 1)},
        )

    await backend.transaction(bump)
    with pytest.raises(SchemaError, match="newer"):
        await create_schema(backend)


async def test_upgrade_adds_and_backfills_message_api_key_once(
    backend: Database, queue: Queue
) -> None:
    """A database from before message.api_key_id gets the column, filled in from
    message_meta, and its index; the backfill runs only when the column was just added."""
    sender = Sender(api_key_id="key_old", may_send=True, may_sandbox=False)
    keyed = await queue.enqueue(dataclasses.replace(submission(), sender=sender), ROUTE, False)
    anonymous = await queue.enqueue(submission(), ROUTE, claim=False)

    def downgrade(conn: Connection) -> None:
        conn.execute(text("DROP INDEX ix_message_sent_by_key"))
        conn.execute(text("ALTER TABLE message DROP COLUMN api_key_id"))
        conn.execute(text("UPDATE postern_meta SET value = '2' WHERE key = 'schema_version'"))

    await backend.transaction(downgrade)
    await create_schema(backend)
    assert (await message_row(backend, keyed.id)).api_key_id == "key_old"
    assert (await message_row(backend, anonymous.id)).api_key_id is None
    version = await fetch(backend, "SELECT value FROM postern_meta WHERE key = 'schema_version'")
    assert [row.value for row in version] == [str(SCHEMA_VERSION)]

    def indexes(conn: Connection) -> set[str]:
        return {i["name"] for i in inspect(conn).get_indexes("message")}

    assert "ix_message_sent_by_key" in await backend.read(indexes)

    def older_again(conn: Connection) -> None:
        conn.execute(
            text("UPDATE message SET api_key_id = 'kept' WHERE id = :id"), {"id": keyed.id}
        )
        conn.execute(text("UPDATE postern_meta SET value = '2' WHERE key = 'schema_version'"))

    await backend.transaction(older_again)
    await create_schema(backend)  # the column is there: no second backfill
    assert (await message_row(backend, keyed.id)).api_key_id == "kept"


async def test_upgrade_from_schema_4_adds_the_retry_columns(
    backend: Database, queue: Queue
) -> None:
    """Schema 5: message.retried_at and forced_attempts (0 for mail already queued), and on
    PostgreSQL event types longer than 16 characters."""
    old = await queue.enqueue(submission("alice@example.com"), ROUTE, claim=True)

    def downgrade(conn: Connection) -> None:
        conn.execute(text("ALTER TABLE message DROP COLUMN retried_at"))
        conn.execute(text("ALTER TABLE message DROP COLUMN forced_attempts"))
        if not backend.is_sqlite:
            conn.execute(text("ALTER TABLE event ALTER COLUMN type TYPE VARCHAR(16)"))
        conn.execute(text("UPDATE postern_meta SET value = '4' WHERE key = 'schema_version'"))

    await backend.transaction(downgrade)
    await create_schema(backend)
    row = await message_row(backend, old.id)
    assert (row.retried_at, row.forced_attempts) == (None, 0)
    lost = DeliveryResult(Outcome.DEFERRED, None, "4.4.1", "no reply", possible_duplicate=True)
    assert await queue.record(AttemptRecord(old, {"alice@example.com": lost}, "p")) == "deferred"
    assert ("possible_duplicate", "alice@example.com", 1) in await deferred_events(backend, old.id)


async def test_upgrade_reads_old_routes_as_default_only_where_nothing_else_chose_them(
    backend: Database, queue: Queue
) -> None:
    """Schema 5's message.route_default on rows written before it: a pool id without an
    alias_id, or no route (direct), was the default; a group, or an alias_id, is explicit."""
    by_alias = dataclasses.replace(submission(), alias_id="smtp_x")
    rows = {
        "default_pool": await queue.enqueue(submission(), Route(pool_id="smtp_d"), False),
        "direct": await queue.enqueue(submission(), Route(), claim=False),
        "group": await queue.enqueue(submission(), ROUTE, claim=False),
        "alias_pool": await queue.enqueue(by_alias, Route(pool_id="smtp_x"), False),
    }

    def downgrade(conn: Connection) -> None:
        conn.execute(text("ALTER TABLE message DROP COLUMN route_default"))
        conn.execute(text("UPDATE postern_meta SET value = '4' WHERE key = 'schema_version'"))

    await backend.transaction(downgrade)
    await create_schema(backend)
    read = {name: (await message_row(backend, m.id)).route_default for name, m in rows.items()}
    assert read == {"default_pool": True, "direct": True, "group": False, "alias_pool": False}
    claimed = {m.id: m.route for m in await queue.claim_due(10)}
    assert claimed[rows["default_pool"].id] == Route(pool_id="smtp_d", default=True)


# --- operator actions ---------------------------------------------------------------------


async def test_cancel_skips_a_message_another_transaction_locked(
    backend: Database, queue: Queue
) -> None:
    """PostgreSQL: a row another node holds locked is skipped, not waited for (no deadlock
    with a node recording its delivery), and reported busy; the API's single cancel then
    answers message_busy, and message_final once nothing is left to cancel."""
    if backend.is_sqlite:
        pytest.skip("SQLite has one writer: no row locks to skip")
    held = await queue.enqueue(submission(), ROUTE, claim=False)
    free = await queue.enqueue(submission(), ROUTE, claim=False)
    held_state = await message_state(backend, held.id)
    assert held_state is not None

    other = await asyncpg.connect("postgresql://" + backend.url.split("://", 1)[1])
    try:
        locking = other.transaction()
        await locking.start()
        await other.execute("SELECT id FROM message WHERE id = $1 FOR UPDATE", held.id)
        result = await asyncio.wait_for(queue.cancel([held.id, free.id, "msg_nosuch"]), 10)
        assert result.cancelled == [free.id] and result.busy == [held.id]
        with pytest.raises(MessageBusy):
            await asyncio.wait_for(cancel_one(queue, held_state), 10)
        await locking.rollback()
    finally:
        await other.close()

    assert (await queue.cancel([held.id])).cancelled == [held.id]
    again = await queue.cancel([held.id, free.id])
    assert again.cancelled == [] and again.busy == []
    with pytest.raises(MessageFinal):
        await cancel_one(queue, held_state)  # read as queued, found final by the cancel


async def deferred_events(db: Database, message_id: str) -> list[tuple[str, str | None, int]]:
    found = await fetch(
        db, "SELECT type, recipient, attempt FROM event WHERE message_id = :id ORDER BY id",
        id=message_id,
    )  # fmt: skip
    return [(row.type, row.recipient, row.attempt) for row in found if row.type != "queued"]


async def test_a_retried_attempt_takes_no_step_of_the_schedule(
    backend: Database, queue: Queue
) -> None:
    """`postern queue retry` (like `postqueue -f`): the attempt it asks for counts as an
    attempt, but a failure of it waits the interval the message was on (60 s here), not
    the next one (300 s); the next scheduled failure then takes that next step."""
    message = await queue.enqueue(submission("alice@example.com"), ROUTE, claim=True)
    await queue.record(AttemptRecord(message, {"alice@example.com": DEFERRED}, "pool-1"))
    assert (await message_row(backend, message.id)).forced_attempts == 0

    before = time.time()
    assert await queue.retry([message.id]) == [message.id]
    row = await message_row(backend, message.id)
    assert before <= row.retried_at <= row.due_at <= time.time()
    (forced,) = await queue.claim_due(10)
    assert forced.retried_at == pytest.approx(row.retried_at)
    assert (forced.attempts, forced.forced_attempts) == (1, 0)

    before = time.time()
    await queue.record(AttemptRecord(forced, {"alice@example.com": DEFERRED}, "pool-1"))
    after = time.time()
    row = await message_row(backend, message.id)
    assert (row.attempts, row.forced_attempts, row.retried_at) == (2, 1, None)
    assert before + 60 <= row.due_at <= after + 66  # still the first step, not 300 s

    await set_due_now(backend, message.id)
    (scheduled,) = await queue.claim_due(10)
    assert scheduled.retried_at is None and scheduled.schedule_steps == 1
    before = time.time()
    await queue.record(AttemptRecord(scheduled, {"alice@example.com": DEFERRED}, "pool-1"))
    after = time.time()
    row = await message_row(backend, message.id)
    assert (row.attempts, row.forced_attempts) == (3, 1)
    assert before + 300 <= row.due_at <= after + 330  # the second step
    assert await deferred_events(backend, message.id) == [
        ("deferred", "alice@example.com", n) for n in (1, 2, 3)
    ]


async def test_a_retried_message_that_waits_stays_retried(backend: Database, queue: Queue) -> None:
    """Postponed (a pool over its limit, or cooling down again): no attempt counted, and the
    attempt it finally gets is still the retry's."""
    message = await queue.enqueue(submission("alice@example.com"), ROUTE, claim=False)
    assert await queue.retry([message.id]) == [message.id]
    (claimed,) = await queue.claim_due(10)
    await queue.postpone(claimed, time.time() - 1, "pool-1", "waiting: pool pool-1 cooling down")
    row = await message_row(backend, message.id)
    assert (row.status, row.attempts) == ("deferred", 0)
    assert row.retried_at == pytest.approx(claimed.retried_at)
    (again,) = await queue.claim_due(10)
    assert again.retried_at == pytest.approx(claimed.retried_at)


async def test_no_reply_after_the_final_dot_is_recorded_as_a_possible_duplicate(
    backend: Database, queue: Queue
) -> None:
    """The attempt counts (the upstream may have the message), and each recipient gets a
    `possible_duplicate` event just before its `deferred` one (the last says its state)."""
    message = await queue.enqueue(submission(), ROUTE, claim=True)
    lost = dataclasses.replace(
        DeliveryResult(Outcome.DEFERRED, None, "4.4.1", "pool-1: cut off after the end of data"),
        possible_duplicate=True,
    )
    status = await queue.record(
        AttemptRecord(message, dict.fromkeys(message.recipients, lost), "pool-1")
    )
    assert status == "deferred"
    assert (await message_row(backend, message.id)).attempts == 1
    assert await deferred_events(backend, message.id) == [
        ("possible_duplicate", "alice@example.com", 1),
        ("possible_duplicate", "bob@example.com", 1),
        ("deferred", "alice@example.com", 1),
        ("deferred", "bob@example.com", 1),
    ]


async def test_cancel_leaves_a_message_a_worker_holds(backend: Database, queue: Queue) -> None:
    held = await queue.enqueue(submission(), ROUTE, claim=True)
    free = await queue.enqueue(submission(), ROUTE, claim=False)
    result = await queue.cancel([held.id, free.id, "msg_nosuch"])
    assert result.cancelled == [free.id] and result.busy == [held.id]
    assert (await message_row(backend, held.id)).status == "queued"
    assert (await message_row(backend, free.id)).status == "cancelled"


# --- scale --------------------------------------------------------------------------------


@pytest.fixture
def captured_sql() -> Iterator[list[tuple[str, Any]]]:
    """Every statement sent to any database while the test runs: (SQL, parameters)."""
    seen: list[tuple[str, Any]] = []

    def record(_conn: Any, _cursor: Any, statement: str, params: Any, *_: Any) -> None:
        seen.append((statement, params))

    # SQLAlchemy leaves Engine._has_events set once a class-level listener has come and
    # gone: every later engine in this process would then skip storage.dml's fast path.
    had_events = Engine._has_events
    event.listen(Engine, "before_cursor_execute", record)
    try:
        yield seen
    finally:
        event.remove(Engine, "before_cursor_execute", record)
        Engine._has_events = had_events


async def test_claim_query_uses_due_index(
    backend: Database, queue: Queue, captured_sql: list[tuple[str, Any]]
) -> None:
    """With thousands of final messages, the claim reads ix_message_due, never scans message."""
    now = time.time()
    base = {
        "source": "http",
        "mail_from": "app@example.com",
        "attempts": 1,
        "size": 10,
        "created_at": now,
        "updated_at": now,
    }
    final = [{"id": f"final_{i:05d}", "status": "delivered", "due_at": None} for i in range(5000)]
    due = [{"id": f"due_{i:05d}", "status": "queued", "due_at": now - i} for i in range(20)]

    def fill(conn: Connection) -> None:
        conn.execute(insert(Message), [{**base, **row} for row in final + due])
        # a due message has its body (one without is set aside: Queue._set_aside)
        conn.execute(insert(MessageBody), [{"message_id": r["id"], "data": b"x" * 10} for r in due])

    await backend.transaction(fill)
    await backend.transaction(lambda conn: conn.exec_driver_sql("ANALYZE"))

    captured_sql.clear()
    claimed = await queue.claim_due(5)
    assert len(claimed) == 5
    claims = [(sql, p) for sql, p in captured_sql if sql.lstrip().upper().startswith("UPDATE")]
    assert len(claims) == 1, claims
    sql, params = claims[0]

    def explain(conn: Connection) -> list[str]:
        if backend.is_sqlite:
            result = conn.exec_driver_sql("EXPLAIN QUERY PLAN " + sql, params)
            return [row[-1] for row in result]
        # PostgreSQL picks a sequential scan for small tables whatever the indexes; with
        # it switched off, a plan without ix_message_due means the index cannot serve.
        conn.exec_driver_sql("SET LOCAL enable_seqscan = off")
        return [row[0] for row in conn.exec_driver_sql("EXPLAIN " + sql, params)]

    plan = await backend.transaction(explain)
    text_plan = "\n".join(plan)
    assert "ix_message_due" in text_plan, text_plan
    if backend.is_sqlite:
        assert re.search(r"USING (COVERING )?INDEX ix_message_due", text_plan), text_plan
        full_scans = [d for d in plan if re.match(r"SCAN (TABLE )?message\b", d)]
        assert not any("INDEX" not in d for d in full_scans), text_plan
    else:
        assert "Seq Scan on message" not in text_plan, text_plan


async def test_an_attempt_recorded_in_the_same_group_commit_as_a_cancel_stays_whole(
    backend: Database, queue: Queue
) -> None:
    """The jobs of one group commit run one after another; nothing may run between an
    attempt's message update and its recipients and events (a cancel there once saw the
    message free and cancelled a recipient the upstream had just accepted)."""
    message = await queue.enqueue(submission("alice@x.test", "bob@x.test"), ROUTE, claim=True)
    delivered = DeliveryResult(Outcome.DELIVERED, 250, "2.0.0", "OK")
    later = DeliveryResult(Outcome.DEFERRED, 451, "4.3.0", "later")
    attempt = AttemptRecord(message, {"alice@x.test": delivered, "bob@x.test": later}, "p")
    status, cancelled = await asyncio.gather(queue.record(attempt), queue.cancel([message.id]))
    assert status == "deferred"
    assert cancelled.cancelled == [] and cancelled.busy == [message.id]
    rows = await fetch(
        backend, "SELECT email, status FROM recipient WHERE message_id = :id ORDER BY id",
        id=message.id,
    )  # fmt: skip
    assert [(r.email, r.status) for r in rows] == [
        ("alice@x.test", "delivered"),
        ("bob@x.test", "pending"),
    ]
    events = await fetch(
        backend, "SELECT type FROM event WHERE message_id = :id ORDER BY id", id=message.id
    )
    assert [e.type for e in events] == ["queued", "queued", "delivered", "deferred"]
