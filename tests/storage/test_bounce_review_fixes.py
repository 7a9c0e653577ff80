"""The fixes of issue 20's review, on both backends: a suppression another report still
justifies survives a reclassify; a concurrent reclassify applies once; the same bytes met
by the listener and by an upload are one report; concurrent soft bounces of a new address
are all counted."""

from __future__ import annotations

import asyncio
import json

from sqlalchemy import Connection, inspect, text

from gateway import metrics
from gateway.accounts.inbox import is_report
from gateway.bounces.ingest import BounceIngest, Settings, Source
from gateway.queue.store import Queue
from storage import bounce_reports as stored
from storage.db import Database, create_schema
from tests.storage.test_bounce_ingest import (
    LISTENER,
    RP,
    delivered,
    events_of,
    ingest,
    report,
    suppression,
    verp,
)
from tests.support.reports import complaint, dsn
from tests.support.stored import fetch


async def test_a_suppression_another_report_justifies_survives_a_reclassify(
    backend: Database, queue: Queue
) -> None:
    first = await delivered(queue, "x@example.test")
    second = await delivered(queue, "X@example.test")  # another spelling, the same mailbox
    taker = ingest(backend, queue)
    hard = await taker.ingest(dsn("x@example.test", to=verp(first), nonce="h"), LISTENER)
    comp = await taker.ingest(complaint("X@example.test", to=verp(second)), LISTENER)
    assert (hard.outcome, comp.outcome) == ("processed", "processed")
    # the complaint added nothing of its own: the hard bounce had listed the address
    assert (await suppression(backend, "x@example.test")).reason == "hard_bounce"
    assert await taker.reclassify(hard.report_id, "ignore") == "changed"
    entry = await suppression(backend, "x@example.test")
    assert entry is not None and entry.reason == "complaint"
    assert entry.note.endswith(f"[bounce report {comp.report_id}]")
    assert queue.suppressions.suppressed(["x@example.test"])  # this node's copy too
    # and when the complaint goes too, nothing justifies it any more
    assert await taker.reclassify(comp.report_id, "ignore") == "changed"
    assert await suppression(backend, "x@example.test") is None
    assert not queue.suppressions.suppressed(["x@example.test"])


async def test_a_hard_bounce_is_put_back_when_a_complaint_is_reclassified(
    backend: Database, queue: Queue
) -> None:
    first = await delivered(queue, "y@example.test")
    second = await delivered(queue, "y@example.test")
    taker = ingest(backend, queue)
    comp = await taker.ingest(complaint("y@example.test", to=verp(first)), LISTENER)
    hard = await taker.ingest(dsn("y@example.test", to=verp(second), nonce="h"), LISTENER)
    assert await taker.reclassify(comp.report_id, "auto_reply") == "changed"
    entry = await suppression(backend, "y@example.test")
    assert (entry.reason, entry.note) == (
        "hard_bounce",
        f"bad-mailbox [bounce report {hard.report_id}]",
    )


async def test_concurrent_reclassifies_of_one_report_apply_it_once(
    backend: Database, queue: Queue
) -> None:
    message_id = await delivered(queue, "r@example.test")
    taker = ingest(backend, queue)
    first = await taker.ingest(dsn("r@example.test", to=verp(message_id), nonce="r"), LISTENER)
    before = len(await events_of(backend, message_id))
    outcomes = await asyncio.gather(
        *(taker.reclassify(first.report_id or 0, "complaint") for _ in range(4))
    )
    assert sorted(outcomes) == ["changed", "unchanged", "unchanged", "unchanged"]
    added = [e["type"] for e in await events_of(backend, message_id)][before:]
    assert added == ["complaint"]


def two_entries(first: str, second: str, to: str) -> bytes:
    """A DSN of two entries: `first` failed for good (hard), `second` mailbox full (soft)."""
    raw = dsn(first, to=to, nonce="two").decode()
    other = (
        f"Final-Recipient: rfc822; {second}\r\nAction: failed\r\nStatus: 4.2.2\r\n"
        "Diagnostic-Code: smtp; 452 4.2.2 mailbox full\r\n\r\n"
    )
    head, tail = raw.split("--B\r\nContent-Type: text/rfc822-headers", 1)
    return (head + other + "--B\r\nContent-Type: text/rfc822-headers" + tail).encode()


async def test_unchanged_only_when_every_entry_has_that_class(
    backend: Database, queue: Queue
) -> None:
    message_id = await delivered(queue, "a@example.test", "b@example.test")
    taker = ingest(backend, queue)
    raw = two_entries("a@example.test", "b@example.test", verp(message_id))
    done = await taker.ingest(raw, LISTENER)
    row = await report(backend, done.report_id)
    assert row.cls == "hard"
    assert [e["cls"] for e in json.loads(row.entries)] == ["hard", "soft"]
    assert await suppression(backend, "b@example.test") is None
    # the first entry is hard already, the second is not: the operator's `hard` applies
    assert await taker.reclassify(done.report_id or 0, "hard") == "changed"
    assert (await suppression(backend, "b@example.test")).reason == "hard_bounce"
    assert await taker.reclassify(done.report_id or 0, "hard") == "unchanged"


async def test_the_same_bytes_by_the_listener_and_by_upload_are_one_report(
    backend: Database, queue: Queue
) -> None:
    taker = ingest(backend, queue)
    for order in ("listener first", "upload first"):
        message_id = await delivered(queue, "s@example.test")
        raw = dsn("s@example.test", "4.2.2", "452 4.2.2 mailbox full", to=verp(message_id))
        raw = raw.replace(b"Delivery failed.", order.encode())
        by_listener = Source("listener", envelope_recipient=verp(message_id))
        by_upload = Source("api")
        sources = (
            [by_listener, by_upload] if order == "listener first" else [by_upload, by_listener]
        )
        one = await taker.ingest(raw, sources[0])
        two = await taker.ingest(raw, sources[1])
        assert (one.outcome, two.outcome) == ("processed", "duplicate"), order
        assert two.report_id == one.report_id
        assert (await report(backend, one.report_id)).raw_hash == stored.content_hash(raw)
    soft = await fetch(
        backend, "SELECT bounces FROM soft_bounce WHERE email = :e", e="s@example.test"
    )
    assert [r.bounces for r in soft] == [2]  # one per message, not one per arrival


async def test_concurrent_soft_bounces_of_a_new_address_are_all_counted(
    backend: Database, queue: Queue
) -> None:
    messages = [await delivered(queue, "full@example.test") for _ in range(6)]
    settings = Settings(soft_limit=6, soft_window=7 * 86400)  # each one kept: none may be lost
    taker = BounceIngest(backend, RP, settings=settings, suppressions=queue.suppressions)
    raws = [
        dsn("full@example.test", "4.2.2", "452 4.2.2 mailbox full", to=verp(m), nonce=m)
        for m in messages
    ]
    outcomes = await asyncio.gather(*(taker.ingest(raw, LISTENER) for raw in raws))
    assert [o.outcome for o in outcomes] == ["processed"] * 6
    rows = await fetch(backend, "SELECT * FROM soft_bounce WHERE email = :e", e="full@example.test")
    assert [r.bounces for r in rows] == [6]
    assert len(json.loads(rows[0].recent)) == 6
    assert (await suppression(backend, "full@example.test")).reason == "soft_bounce"


async def test_a_duplicate_says_what_became_of_the_stored_report(
    backend: Database, queue: Queue
) -> None:
    message_id = await delivered(queue, "d@example.test")
    taker = ingest(backend, queue)
    place = Source("imap", account_id="acc_1", mailbox="INBOX", uidvalidity=7, uid=3)
    raw = dsn("d@example.test", to=verp(message_id), nonce="d")
    first = await taker.ingest(raw, place)
    again = await taker.ingest(raw, place)  # after a crash between the commit and the mark
    assert (first.outcome, first.status) == ("processed", "processed")
    assert (again.outcome, again.report_id, again.status) == (
        "duplicate", first.report_id, "processed",
    )  # fmt: skip
    assert is_report(again)
    person = await taker.ingest(b"From: a@b.test\r\nSubject: hi\r\n\r\nhello\r\n", place)
    assert person.outcome == "duplicate"  # the same place: the inbox's own dedupe


def classes_counted(cls: str) -> float:
    return metrics.BOUNCE_CLASSES.labels(**{"class": cls})._value.get()


async def test_each_entry_applied_is_counted_by_class(backend: Database, queue: Queue) -> None:
    before = {cls: classes_counted(cls) for cls in ("hard", "soft", "policy", "complaint")}
    message_id = await delivered(queue, "a@example.test", "b@example.test")
    taker = ingest(backend, queue)
    done = await taker.ingest(
        two_entries("a@example.test", "b@example.test", verp(message_id)), LISTENER
    )
    await taker.ingest(two_entries("a@example.test", "b@example.test", verp(message_id)), LISTENER)
    blocked = await delivered(queue, "p@example.test")
    raw = dsn("p@example.test", "5.7.1", "550 5.7.1 blocked by spamhaus", to=verp(blocked))
    assert (await taker.ingest(raw, LISTENER)).outcome == "processed"
    await taker.reclassify(done.report_id or 0, "policy")  # the new class, per entry
    after = {cls: classes_counted(cls) - before[cls] for cls in before}
    assert after == {"hard": 1, "soft": 1, "policy": 3, "complaint": 0}  # the duplicate: none


async def test_a_schema_9_database_gains_raw_hash_filled_for_reports_of_no_recipient(
    backend: Database, queue: Queue
) -> None:
    message_id = await delivered(queue, "u@example.test")
    taker = ingest(backend, queue)
    raw = dsn("u@example.test", to=verp(message_id), nonce="u")
    uploaded = await taker.ingest(raw, Source("api"))
    listened = dsn("u@example.test", to=verp(message_id), nonce="l")
    by_listener = Source("listener", envelope_recipient=verp(message_id))
    heard = await taker.ingest(listened, by_listener)

    def to_schema_9(conn: Connection) -> None:
        conn.execute(text("DROP INDEX ix_bounce_report_raw_hash"))
        conn.execute(text("ALTER TABLE bounce_report DROP COLUMN raw_hash"))
        conn.execute(text("UPDATE postern_meta SET value = '9' WHERE key = 'schema_version'"))

    await backend.transaction(to_schema_9)
    await create_schema(backend)
    rows = await fetch(backend, "SELECT id, raw_hash FROM bounce_report ORDER BY id")
    assert [(r.id, r.raw_hash) for r in rows] == [
        (uploaded.report_id, stored.content_hash(raw)),
        (heard.report_id, None),  # came for a recipient: not hashed again
    ]
    indexes = await backend.read(
        lambda c: {i["name"] for i in inspect(c).get_indexes("bounce_report")}
    )
    assert "ix_bounce_report_raw_hash" in indexes
    # and the upload met again is still a duplicate
    assert (await taker.ingest(raw, Source("api"))).outcome == "duplicate"
