"""A report that bounces a recipient the upstream had taken tells the envelope sender of SMTP
mail (gateway.bounces.effects.tell_sender), on both backends: one notification stored in the
report's transaction, on the recipient's move from delivered to bounced, so never twice (the
same report, another report, a reclassification); never for a null sender, a notification,
HTTP mail, a suppressed sender, with notify_sender off. A recipient still pending (deferred,
held, or being sent by a worker right now) that a report bounces is told by the report,
once: delivery's record takes no result for it and tells nothing of it."""

from __future__ import annotations

import asyncio
import email
from dataclasses import replace
from email.message import Message
from email.policy import default
from typing import Any

import pytest
from sqlalchemy.ext.asyncio import create_async_engine

from gateway.bounces.ingest import BounceIngest, Settings, Source
from gateway.bounces.returnpath import ReturnPath
from gateway.message import DeliveryResult, Outcome, QueuedMessage, Route
from gateway.queue.notify import Notifier
from gateway.queue.store import AttemptRecord, Queue
from storage import bounce_reports as stored
from storage import queue_sql
from storage.db import Database
from storage.suppressions import add_suppression
from storage.writer import Writer
from tests.support.reports import dsn
from tests.support.stored import CONTENT, fetch, message_row, submission

RP = ReturnPath("bounce.test", b"v" * 32)
DELIVERED = DeliveryResult(Outcome.DELIVERED, 250, "2.0.0", "ok")
LISTENER = Source("listener")
SENDER = "app@example.com"


def ingest(backend: Database, queue: Queue, notify: bool = True) -> BounceIngest:
    return BounceIngest(
        backend, RP, settings=Settings(), suppressions=queue.suppressions,
        clock=lambda: 1_800_000_000.0, notifier=Notifier("postern.test") if notify else None,
    )  # fmt: skip


async def delivered(
    queue: Queue,
    *recipients: str,
    sender: str = SENDER,
    source: str = "smtp",
    content: bytes = CONTENT,
) -> str:
    mail = replace(submission(*recipients, content=content), mail_from=sender, source=source)
    message = await queue.enqueue(mail, Route(), claim=True)
    await queue.record(AttemptRecord(message, dict.fromkeys(message.recipients, DELIVERED), "p"))
    return message.id


async def notices(db: Database) -> list[tuple[Any, Message]]:
    """Each stored notification: its row (id, mail_from, recipient) and its report parsed."""
    rows = await fetch(
        db,
        "SELECT m.id, m.mail_from, r.email, b.data FROM message m"
        " JOIN recipient r ON r.message_id = m.id JOIN message_body b ON b.message_id = m.id"
        " WHERE m.source = 'dsn' AND m.mail_from = '' ORDER BY m.created_at",
    )
    return [(row, email.message_from_bytes(bytes(row.data), policy=default)) for row in rows]


def blocks(report: Message) -> list[Message]:
    """The per-recipient blocks of the report's message/delivery-status part."""
    assert report.get_content_type() == "multipart/report"
    _, status, _ = report.get_payload()  # type: ignore[misc]
    return status.get_payload()[1:]  # type: ignore[no-any-return]


def two_recipients(first: str, second: str, to: str) -> bytes:
    """One DSN naming two recipients."""
    raw = dsn(first, to=to)
    block = (
        f"Final-Recipient: rfc822; {second}\r\nAction: failed\r\nStatus: 5.1.2\r\n"
        "Diagnostic-Code: smtp; 550 5.1.2 no such domain\r\n\r\n"
    ).encode()
    headers = b"--B\r\nContent-Type: text/rfc822-headers"
    return raw.replace(headers, block + headers)


async def test_a_later_bounce_stores_one_notification_to_the_sender(
    backend: Database, queue: Queue
) -> None:
    message_id = await delivered(queue, "gone@example.test", "kept@example.test")
    taker = ingest(backend, queue)
    raw = dsn("gone@example.test", to=RP.address(message_id, ""))
    assert (await taker.ingest(raw, LISTENER)).outcome == "processed"
    [(row, report)] = await notices(backend)
    assert (row.mail_from, row.email) == ("", SENDER)  # from <>, to the envelope sender
    [entry] = blocks(report)
    assert entry["Final-Recipient"] == "rfc822; gone@example.test"
    assert (entry["Action"], entry["Status"]) == ("failed", "5.1.1")
    assert entry["Diagnostic-Code"] == "smtp; 550 5.1.1 user unknown"
    assert (await message_row(backend, row.id)).status == "queued"  # delivery's poller takes it

    assert (await taker.ingest(raw, LISTENER)).outcome == "duplicate"
    other = dsn("gone@example.test", to=RP.address(message_id, ""), nonce="2")
    second = await taker.ingest(other, LISTENER)
    assert second.outcome == "processed" and second.report_id is not None
    for cls in ("soft", "hard", "complaint", "hard"):
        assert await taker.reclassify(second.report_id, cls) == "changed"
    assert len(await notices(backend)) == 1


async def test_a_large_body_is_told_by_its_header_read_alone(
    backend: Database, queue: Queue
) -> None:
    """The notification copies the original's header from a prefix of the stored body
    (storage.queue_sql.body_prefix: BLOB and BYTEA), not the whole 3 MB."""
    header = b"From: app@example.com\r\nSubject: big one\r\nX-Mark: 1234\r\n\r\n"
    content = header + b"x" * 998 + b"\r\n" + b"y" * 3_000_000 + b"\r\nTAIL\r\n"
    message_id = await delivered(queue, "gone@example.test", content=content)
    raw = dsn("gone@example.test", to=RP.address(message_id, ""))
    assert (await ingest(backend, queue).ingest(raw, LISTENER)).outcome == "processed"
    [(_, report)] = await notices(backend)
    _, _, headers = report.get_payload()  # type: ignore[misc]
    assert headers.get_content_type() == "text/rfc822-headers"
    copied = headers.get_payload(decode=True)
    assert b"X-Mark: 1234" in copied and b"Subject: big one" in copied
    assert b"yyyy" not in copied and b"TAIL" not in copied
    prefix = await backend.read(lambda conn: queue_sql.body_prefix(conn, message_id, 10))
    assert prefix == content[:10]
    assert await backend.read(lambda conn: queue_sql.body_prefix(conn, "nope", 10)) is None


async def test_one_report_naming_two_recipients_is_one_notification(
    backend: Database, queue: Queue
) -> None:
    message_id = await delivered(queue, "a@example.test", "b@example.test")
    raw = two_recipients("a@example.test", "b@example.test", RP.address(message_id, ""))
    assert (await ingest(backend, queue).ingest(raw, LISTENER)).outcome == "processed"
    [(_, report)] = await notices(backend)
    found = [(b["Final-Recipient"], b["Status"]) for b in blocks(report)]
    assert found == [("rfc822; a@example.test", "5.1.1"), ("rfc822; b@example.test", "5.1.2")]


async def test_reclassified_to_hard_tells_the_sender_once(backend: Database, queue: Queue) -> None:
    message_id = await delivered(queue, "r@example.test")
    raw = dsn("r@example.test", "5.7.1", "550 5.7.1 blocked", to=RP.address(message_id, ""))
    taker = ingest(backend, queue)
    report_id = (await taker.ingest(raw, LISTENER)).report_id
    assert report_id is not None and await notices(backend) == []  # a policy block
    assert await taker.reclassify(report_id, "hard") == "changed"
    [(_, report)] = await notices(backend)
    [entry] = blocks(report)
    assert (entry["Status"], entry["Diagnostic-Code"]) == ("5.7.1", "smtp; 550 5.7.1 blocked")
    assert await taker.reclassify(report_id, "soft") == "changed"  # does not unsend it...
    assert await taker.reclassify(report_id, "hard") == "changed"  # ...nor send it again
    assert len(await notices(backend)) == 1


@pytest.mark.parametrize(
    ("sender", "source", "notify"),
    [
        ("", "smtp", True),  # a null sender (a report, say) is never told
        (SENDER, "dsn", True),  # a notification of ours: no loop
        (SENDER, "http", True),  # HTTP senders have the answer and webhooks
        (SENDER, "smtp", False),  # [delivery] notify_sender = false
    ],
)
async def test_nobody_is_told_when_nobody_should_be(
    backend: Database, queue: Queue, sender: str, source: str, notify: bool
) -> None:
    message_id = await delivered(queue, "gone@example.test", sender=sender, source=source)
    raw = dsn("gone@example.test", to=RP.address(message_id, ""))
    assert (await ingest(backend, queue, notify).ingest(raw, LISTENER)).outcome == "processed"
    assert (await message_row(backend, message_id)).status == "bounced"  # applied all the same
    assert await notices(backend) == []


async def test_a_suppressed_sender_is_not_told(backend: Database, queue: Queue) -> None:
    message_id = await delivered(queue, "gone@example.test")
    await add_suppression(backend, SENDER.upper(), "manual")
    raw = dsn("gone@example.test", to=RP.address(message_id, ""))
    assert (await ingest(backend, queue).ingest(raw, LISTENER)).outcome == "processed"
    assert await notices(backend) == []


DEFERRED = DeliveryResult(Outcome.DEFERRED, 451, "4.3.0", "try later")
REFUSED = DeliveryResult(Outcome.BOUNCED, 550, "5.1.1", "no such user here")


@pytest.fixture
def telling(backend: Database, writer: Writer) -> Queue:
    """node-a's Queue that tells senders of what its attempts bounce (notify_sender on)."""
    return Queue(backend, writer, "node-a", (60.0,), 3600.0, 600.0, Notifier("postern.test"))


async def pending(queue: Queue, *recipients: str) -> QueuedMessage:
    """SMTP mail accepted and claimed by node-a, not yet attempted."""
    mail = replace(submission(*recipients), mail_from=SENDER, source="smtp")
    return await queue.enqueue(mail, Route(), claim=True)


async def statuses(db: Database, message_id: str) -> tuple[str, Any, list[tuple[str, str]]]:
    """(the message's status, its due_at, [(recipient, status)])."""
    row = await message_row(db, message_id)
    rcpts = await fetch(
        db, "SELECT email, status FROM recipient WHERE message_id = :m ORDER BY id", m=message_id
    )
    return row.status, row.due_at, [(r.email, r.status) for r in rcpts]


def told_of(found: list[tuple[Any, Message]]) -> list[tuple[str, str]]:
    """(Final-Recipient, Status) of each recipient each notification names."""
    return [(b["Final-Recipient"], b["Status"]) for _, report in found for b in blocks(report)]


async def test_a_deferred_recipient_bounced_by_a_report_is_told_once_and_settled(
    backend: Database, telling: Queue
) -> None:
    """The report makes the final move (delivery will not try the recipient again), so it
    tells; the message, with nothing pending left and no worker holding it, is bounced."""
    message = await pending(telling, "gone@example.test")
    assert await telling.record(AttemptRecord(message, {"gone@example.test": DEFERRED}, "p"))
    assert (await statuses(backend, message.id))[0] == "deferred"
    taker = ingest(backend, telling)
    raw = dsn("gone@example.test", to=RP.address(message.id, ""))
    assert (await taker.ingest(raw, LISTENER)).outcome == "processed"
    assert told_of(await notices(backend)) == [("rfc822; gone@example.test", "5.1.1")]
    assert await statuses(backend, message.id) == (
        "bounced", None, [("gone@example.test", "bounced")]
    )  # fmt: skip
    other = dsn("gone@example.test", to=RP.address(message.id, ""), nonce="2")
    second = await taker.ingest(other, LISTENER)
    assert second.outcome == "processed" and second.report_id is not None
    assert await taker.reclassify(second.report_id, "hard") == "unchanged"
    for cls in ("soft", "hard"):
        assert await taker.reclassify(second.report_id, cls) == "changed"
    assert len(await notices(backend)) == 1


async def test_with_another_recipient_pending_the_attempts_go_on_and_settle_it_bounced(
    backend: Database, telling: Queue
) -> None:
    message = await pending(telling, "gone@example.test", "kept@example.test")
    both = dict.fromkeys(message.recipients, DEFERRED)
    assert await telling.record(AttemptRecord(message, both, "p"))
    raw = dsn("gone@example.test", to=RP.address(message.id, ""))
    assert (await ingest(backend, telling).ingest(raw, LISTENER)).outcome == "processed"
    assert told_of(await notices(backend)) == [("rfc822; gone@example.test", "5.1.1")]
    status, due, _ = await statuses(backend, message.id)
    assert status == "deferred" and due is not None  # kept@ still to be tried
    retried = await backend.transaction(
        lambda conn: conn.execute(
            queue_sql.M.update().where(queue_sql.M.c.id == message.id).values(due_at=0)
        )
    )
    assert retried.rowcount == 1
    [again] = [m for m in await telling.claim_due(10) if m.id == message.id]
    assert again.recipients == ["kept@example.test"] and again.any_bounced
    assert await telling.record(AttemptRecord(again, {"kept@example.test": DELIVERED}, "p"))
    assert await statuses(backend, message.id) == (
        "bounced", None, [("gone@example.test", "bounced"), ("kept@example.test", "delivered")]
    )  # fmt: skip
    assert len(await notices(backend)) == 1


@pytest.mark.parametrize("result", [DELIVERED, REFUSED, DEFERRED], ids=lambda r: r.outcome.value)
async def test_a_report_while_a_worker_sends_it_is_told_once_and_the_message_bounced(
    backend: Database, telling: Queue, result: DeliveryResult
) -> None:
    """The report comes between the claim and the attempt's record: the report tells; the
    record takes no result for the recipient it bounced, names it in no notification of
    its own, and settles the message bounced whatever the upstream said."""
    message = await pending(telling, "gone@example.test")
    raw = dsn("gone@example.test", to=RP.address(message.id, ""))
    assert (await ingest(backend, telling).ingest(raw, LISTENER)).outcome == "processed"
    assert (await statuses(backend, message.id))[0] == "queued"  # the worker holds it
    assert await telling.record(AttemptRecord(message, {"gone@example.test": result}, "p"))
    assert await statuses(backend, message.id) == (
        "bounced", None, [("gone@example.test", "bounced")]
    )  # fmt: skip
    assert told_of(await notices(backend)) == [("rfc822; gone@example.test", "5.1.1")]


async def test_a_bounce_by_delivery_first_leaves_the_report_nothing_to_tell(
    backend: Database, telling: Queue
) -> None:
    message = await pending(telling, "gone@example.test")
    assert await telling.record(AttemptRecord(message, {"gone@example.test": REFUSED}, "p"))
    raw = dsn("gone@example.test", to=RP.address(message.id, ""))
    assert (await ingest(backend, telling).ingest(raw, LISTENER)).outcome == "processed"
    assert told_of(await notices(backend)) == [("rfc822; gone@example.test", "5.1.1")]
    [(_, report)] = await notices(backend)
    [entry] = blocks(report)
    assert entry["Diagnostic-Code"] == "smtp; 550 5.1.1 no such user here"  # delivery's


async def test_a_held_message_whose_last_pending_recipient_bounced_is_settled(
    backend: Database, telling: Queue
) -> None:
    message = await pending(telling, "gone@example.test")
    assert await telling.record(AttemptRecord(message, {"gone@example.test": DEFERRED}, "p"))
    assert (await telling.hold([message.id])).done == [message.id]
    raw = dsn("gone@example.test", to=RP.address(message.id, ""))
    assert (await ingest(backend, telling).ingest(raw, LISTENER)).outcome == "processed"
    assert (await statuses(backend, message.id))[:2] == ("bounced", None)
    assert (await message_row(backend, message.id)).held_at is None
    assert len(await notices(backend)) == 1


@pytest.mark.parametrize("result", [DELIVERED, REFUSED], ids=lambda r: r.outcome.value)
async def test_on_postgresql_a_record_waits_for_a_report_in_flight_and_sees_its_bounce(
    backend: Database, telling: Queue, result: DeliveryResult
) -> None:
    """A report's transaction holds the message's row (as ingest's does, `lock_message`
    first) and has bounced the recipient when the worker's record comes: the record waits
    for its commit, then takes no result for that recipient and settles the message
    bounced (whatever the upstream said), telling nobody (the report does)."""
    if backend.is_sqlite:
        pytest.skip("SQLite has one writer: a report and a record never overlap")
    message = await pending(telling, "gone@example.test")
    engine = create_async_engine(backend.url)
    try:
        async with engine.begin() as conn:

            def report(sync: Any) -> str | None:
                assert stored.lock_message(sync, message.id) == "queued"
                return stored.bounce_recipient(sync, message.id, "gone@example.test", "5.1.1", 1.0)

            assert await conn.run_sync(report) == "pending"
            results = dict.fromkeys(message.recipients, result)
            recording = asyncio.create_task(telling.record(AttemptRecord(message, results, "p")))
            await asyncio.sleep(0.5)
            assert not recording.done()  # waiting for the report's row lock
        assert await asyncio.wait_for(recording, 10) is not None  # the claim held
    finally:
        await engine.dispose()
    assert await statuses(backend, message.id) == (
        "bounced", None, [("gone@example.test", "bounced")]
    )  # fmt: skip
    assert await notices(backend) == []  # not the attempt's 550 either: the report tells
    # Nor an event of the attempt for it: the report's (written outside here) stays its last.
    assert await events_of(backend, message.id) == [("gone@example.test", "queued", "queued")]


@pytest.mark.parametrize(
    ("sender", "source", "notify", "suppressed"),
    [
        ("", "smtp", True, False),  # a null sender
        (SENDER, "dsn", True, False),  # a notification of ours
        (SENDER, "http", True, False),  # HTTP mail: webhooks
        (SENDER, "smtp", False, False),  # notify_sender off
        (SENDER, "smtp", True, True),  # a suppressed sender
    ],
)
async def test_a_pending_recipient_tells_nobody_when_nobody_should_be_told(
    backend: Database, queue: Queue, sender: str, source: str, notify: bool, suppressed: bool
) -> None:
    """The same rules as for a recipient the upstream had taken; the report is applied all
    the same (the message settled bounced)."""
    mail = replace(submission("gone@example.test"), mail_from=sender, source=source)
    message = await queue.enqueue(mail, Route(), claim=True)
    assert await queue.record(AttemptRecord(message, {"gone@example.test": DEFERRED}, "p"))
    if suppressed:
        await add_suppression(backend, SENDER, "manual")
    raw = dsn("gone@example.test", to=RP.address(message.id, ""))
    assert (await ingest(backend, queue, notify).ingest(raw, LISTENER)).outcome == "processed"
    assert (await statuses(backend, message.id))[:2] == ("bounced", None)
    assert await notices(backend) == []


async def events_of(db: Database, message_id: str) -> list[tuple[str, str, str]]:
    """(recipient, type, message_status) of the message's events, in order."""
    rows = await fetch(
        db,
        "SELECT recipient, type, message_status FROM event WHERE message_id = :m ORDER BY id",
        m=message_id,
    )
    return [(r.recipient, r.type, r.message_status) for r in rows]


@pytest.mark.parametrize("patient", [True, False], ids=["batched", "waited"])
async def test_a_recipient_bounced_during_the_attempt_gets_no_event_of_the_attempt(
    backend: Database, telling: Queue, patient: bool
) -> None:
    """Its last event stays the report's, counted once (webhooks, event_minute); the other
    recipient's event carries the status the record left (bounced); the message's
    last_response says why it bounced; a waiter is answered with the stored status."""
    message = await pending(telling, "gone@example.test", "kept@example.test")
    raw = dsn("gone@example.test", to=RP.address(message.id, ""))
    assert (await ingest(backend, telling).ingest(raw, LISTENER)).outcome == "processed"
    results = dict.fromkeys(message.recipients, DELIVERED)
    answer = await telling.record(AttemptRecord(message, results, "p"), patient=patient)
    assert answer == ("delivered" if patient else "bounced")  # batched: nobody waits
    assert await statuses(backend, message.id) == (
        "bounced", None, [("gone@example.test", "bounced"), ("kept@example.test", "delivered")]
    )  # fmt: skip
    found = await events_of(backend, message.id)
    assert [e for e in found if e[0] == "gone@example.test"] == [
        ("gone@example.test", "queued", "queued"),
        ("gone@example.test", "bounced", "queued"),  # the report's, while the worker held it
    ]
    assert found[-1] == ("kept@example.test", "delivered", "bounced")
    row = await message_row(backend, message.id)
    assert row.last_response == "5.1.1 550 5.1.1 user unknown"  # the report's, not the 250
    assert (row.attempts, row.last_pool) == (1, "p")


async def test_a_claim_with_nothing_pending_is_settled_with_no_attempt_counted(
    backend: Database, telling: Queue
) -> None:
    """A report bounced the last pending recipient while a claim named the message (a node
    that died): the next claim finds nothing pending and settles it bounced without an
    upstream. No attempt is counted; last_pool stays; last_response says why it bounced."""
    message = await pending(telling, "gone@example.test")
    assert await telling.record(AttemptRecord(message, {"gone@example.test": DEFERRED}, "p"))
    due_now = queue_sql.M.update().where(queue_sql.M.c.id == message.id).values(due_at=0)
    await backend.transaction(lambda conn: conn.execute(due_now))
    [claimed] = [m for m in await telling.claim_due(10) if m.id == message.id]
    raw = dsn("gone@example.test", to=RP.address(message.id, ""))
    assert (await ingest(backend, telling).ingest(raw, LISTENER)).outcome == "processed"
    assert (await statuses(backend, message.id))[0] == "deferred"  # left to the claim
    await backend.transaction(lambda conn: conn.execute(due_now))  # the claim lapses
    [again] = [m for m in await telling.claim_due(10) if m.id == message.id]
    assert claimed.recipients == ["gone@example.test"] and again.recipients == []
    assert await telling.record(AttemptRecord(again, {}, None), patient=False) == "bounced"
    row = await message_row(backend, message.id)
    assert (row.status, row.due_at, row.claimed_by) == ("bounced", None, None)
    assert (row.attempts, row.forced_attempts, row.last_pool) == (1, 0, "p")
    assert row.last_response == "5.1.1 550 5.1.1 user unknown"
    assert len(await notices(backend)) == 1
