"""Bounce processing on both backends: each tier of matching, each class's effect, every
report processed once, nothing half-written when a failure strikes before the commit."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
from sqlalchemy import Connection, inspect, text

from gateway.bounces import effects
from gateway.bounces.ingest import BounceIngest, Settings, Source
from gateway.bounces.returnpath import ReturnPath
from gateway.message import DIRECT_POOL, DeliveryResult, Outcome, Route
from gateway.queue.store import AttemptRecord, Queue
from storage import bounce_reports as stored
from storage import event_json
from storage.db import Database, create_schema
from storage.suppressions import add_suppression
from tests.support.reports import auto_reply, complaint, dsn
from tests.support.stored import fetch, message_row, submission

RP = ReturnPath("bounce.test", b"v" * 32)
DELIVERED = DeliveryResult(Outcome.DELIVERED, 250, "2.0.0", "ok")
LISTENER = Source("listener")


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


async def delivered(queue: Queue, *recipients: str, pool: str = "p") -> str:
    message = await queue.enqueue(submission(*recipients), Route(), claim=True)
    await queue.record(AttemptRecord(message, dict.fromkeys(message.recipients, DELIVERED), pool))
    return message.id


def verp(message_id: str) -> str:
    return RP.address(message_id, "")


def ingest(backend: Database, queue: Queue, clock: Clock | None = None) -> BounceIngest:
    settings = Settings(soft_limit=3, soft_window=7 * 86400)
    return BounceIngest(backend, RP, settings=settings, suppressions=queue.suppressions,
                        clock=clock or Clock())  # fmt: skip


async def suppression(db: Database, email: str) -> Any:
    rows = await fetch(db, "SELECT * FROM suppression WHERE email = :e", e=email)
    return rows[0] if rows else None


async def events_of(db: Database, message_id: str) -> list[dict[str, Any]]:
    return await db.read(lambda conn: event_json.for_message(conn, message_id))


async def report(db: Database, report_id: int | None) -> Any:
    return (await fetch(db, "SELECT * FROM bounce_report WHERE id = :i", i=report_id))[0]


async def test_a_hard_bounce_by_verp_suppresses_and_bounces_the_message(
    backend: Database, queue: Queue
) -> None:
    message_id = await delivered(queue, "gone@example.test")
    raw = dsn("gone@example.test", to=verp(message_id))
    result = await ingest(backend, queue).ingest(raw, LISTENER)
    assert result.outcome == "processed"
    row = await report(backend, result.report_id)
    assert (row.message_id, row.matched_by, row.cls, row.rule) == (
        message_id,
        "verp",
        "hard",
        "bad-mailbox",
    )
    entry = await suppression(backend, "gone@example.test")
    note = f"bad-mailbox [bounce report {result.report_id}]"  # the report that caused it
    assert (entry.reason, entry.note) == ("hard_bounce", note)
    assert queue.suppressions.suppressed(["gone@example.test"])  # this node knows at once
    assert (await message_row(backend, message_id)).status == "bounced"
    rcpt = await fetch(backend, "SELECT status FROM recipient WHERE message_id = :m", m=message_id)
    assert [r.status for r in rcpt] == ["bounced"]
    last = (await events_of(backend, message_id))[-1]
    assert last["type"] == "bounced" and last["async"] is True
    assert last["bounce"]["classification"] == "hard" and last["bounce"]["rule"] == "bad-mailbox"
    assert last["message_status"] == "bounced" and last["recipient"] == "gone@example.test"
    assert "user unknown" in last["bounce"]["diagnostic"]


async def test_the_envelope_recipient_alone_matches(backend: Database, queue: Queue) -> None:
    message_id = await delivered(queue, "gone@example.test")
    source = Source("listener", envelope_recipient=verp(message_id).upper())  # case folded
    result = await ingest(backend, queue).ingest(dsn("gone@example.test"), source)
    assert result.outcome == "processed"
    assert (await report(backend, result.report_id)).matched_by == "verp"


async def test_the_reference_header_matches_when_the_return_path_was_rewritten(
    backend: Database, queue: Queue
) -> None:
    message_id = await delivered(queue, "gone@example.test")
    token = RP.token(message_id)
    assert token is not None
    raw = dsn("gone@example.test", to="bounces@provider.test", ref=token)
    result = await ingest(backend, queue).ingest(raw, LISTENER)
    assert result.outcome == "processed"
    assert (await report(backend, result.report_id)).matched_by == "ref"


async def test_postern_message_id_matches_last(backend: Database, queue: Queue) -> None:
    message_id = await delivered(queue, "gone@example.test")
    raw = dsn("gone@example.test", to="x@provider.test", message_id=f"<{message_id}@postern.test>")
    result = await ingest(backend, queue).ingest(raw, LISTENER)
    assert result.outcome == "processed"
    assert (await report(backend, result.report_id)).matched_by == "message_id"


async def delivered_as(queue: Queue, header: str, recipient: str) -> str:
    """A message delivered with the client's own Message-ID field."""
    content = f"From: app@example.com\r\nMessage-ID: {header}\r\n\r\nbody\r\n".encode()
    message = await queue.enqueue(submission(recipient, content=content), Route(), claim=True)
    await queue.record(AttemptRecord(message, dict.fromkeys(message.recipients, DELIVERED), "p"))
    return message.id


async def test_a_client_chosen_message_id_matches(backend: Database, queue: Queue) -> None:
    message_id = await delivered_as(queue, "<Order-42@shop.example>", "gone@example.test")
    raw = dsn("gone@example.test", to="x@provider.test", message_id="<Order-42@shop.example>")
    result = await ingest(backend, queue).ingest(raw, LISTENER)
    assert result.outcome == "processed"
    row = await report(backend, result.report_id)
    assert (row.message_id, row.matched_by, row.cls) == (message_id, "message_id", "hard")
    assert await suppression(backend, "gone@example.test") is not None
    unknown = dsn("gone@example.test", to="x@provider.test", message_id="<nope@shop.example>")
    missed = await ingest(backend, queue).ingest(unknown, LISTENER)
    assert missed.outcome == "unmatched"
    assert (
        "no message with Message-ID <nope@shop.example>"
        in (await report(backend, missed.report_id)).error
    )


async def test_an_upload_matches_only_its_senders_messages(backend: Database, queue: Queue) -> None:
    """A report from a caller who may act only on their own mail (Source.sender): a
    returned Message-ID is looked up among their messages only, and a token naming
    another's message leaves the report unmatched, unlinked, with no effect."""
    older = await delivered_as(queue, "<dup@app.test>", "gone@example.test")
    newer = await delivered_as(queue, "<dup@app.test>", "gone@example.test")
    for message_id, user in ((older, "u1"), (newer, "u2")):
        await backend.transaction(
            lambda c, m=message_id, u=user: c.execute(
                text("UPDATE message SET user_id = :u WHERE id = :m"), {"u": u, "m": m}
            )
        )
    taker = ingest(backend, queue)
    raw = dsn("gone@example.test", to="x@provider.test", message_id="<dup@app.test>")
    mine = await taker.ingest(raw, Source("api", sender=stored.Sender(user_id="u1")))
    row = await report(backend, mine.report_id)
    assert (mine.outcome, row.message_id) == ("processed", older)
    assert "several" not in (row.reason or "")  # u2's message is not u1's to consider

    stranger = stored.Sender(user_id="u3")
    by_id = await taker.ingest(raw + b"\r\n", Source("api", sender=stranger))
    assert by_id.outcome == "unmatched"
    assert "no message with Message-ID" in (await report(backend, by_id.report_id)).error
    by_token = dsn("other@example.test", to=verp(newer), nonce="t")
    result = await taker.ingest(by_token, Source("api", sender=stored.Sender(api_key_id="k")))
    row = await report(backend, result.report_id)
    assert (result.outcome, row.message_id) == ("unmatched", None)
    assert "did not send" in row.error
    assert (await message_row(backend, newer)).status == "delivered"
    assert [e["type"] for e in await events_of(backend, newer)].count("bounced") == 0


async def test_an_ambiguous_message_id_takes_the_most_recent_and_says_so(
    backend: Database, queue: Queue
) -> None:
    await delivered_as(queue, "<same@app.test>", "gone@example.test")
    latest = await delivered_as(queue, "<same@app.test>", "gone@example.test")
    clock = Clock()
    clock.now = time.time()
    raw = dsn("gone@example.test", to="x@provider.test", message_id="<same@app.test>")
    result = await ingest(backend, queue, clock).ingest(raw, LISTENER)
    assert result.outcome == "processed"
    row = await report(backend, result.report_id)
    assert row.message_id == latest
    assert f"names several messages: the most recent, {latest}, taken" in row.reason
    clock.now += 31 * 86400  # both past retention: neither is taken
    stale = dsn("gone@example.test", to="x@provider.test", message_id="<same@app.test>", nonce="2")
    result = await ingest(backend, queue, clock).ingest(stale, LISTENER)
    assert result.outcome == "unmatched"
    assert "none recent" in (await report(backend, result.report_id)).error


async def test_a_forged_token_is_unmatched_and_changes_nothing(
    backend: Database, queue: Queue
) -> None:
    message_id = await delivered(queue, "gone@example.test")
    forged = f"bounces+{message_id}-aaaaaaaaaaaaaaaa@bounce.test"
    # Even with the message's own Message-ID beside it: a forged token stops the matching.
    raw = dsn("gone@example.test", to=forged, message_id=f"<{message_id}@postern.test>")
    result = await ingest(backend, queue).ingest(raw, LISTENER)
    assert result.outcome == "unmatched"
    row = await report(backend, result.report_id)
    assert row.message_id is None and "does not verify" in row.error
    assert await suppression(backend, "gone@example.test") is None
    assert (await message_row(backend, message_id)).status == "delivered"


async def test_unknown_messages_are_kept_as_unmatched(backend: Database, queue: Queue) -> None:
    result = await ingest(backend, queue).ingest(dsn("who@example.test", to="x@y.test"), LISTENER)
    assert result.outcome == "unmatched"
    gone = RP.address("msg_0000000000000000000000000000"[:31], "")
    result = await ingest(backend, queue).ingest(dsn("who@example.test", to=gone), LISTENER)
    assert result.outcome == "unmatched"
    assert "no message" in (await report(backend, result.report_id)).error
    rows = await fetch(backend, "SELECT status FROM bounce_report")
    assert [r.status for r in rows] == ["unmatched", "unmatched"]


async def test_processed_once_by_imap_position_and_by_content(
    backend: Database, queue: Queue
) -> None:
    message_id = await delivered(queue, "full@example.test")
    taker = ingest(backend, queue)
    raw = dsn("full@example.test", "4.2.2", "452 4.2.2 mailbox full", to=verp(message_id))
    imap = Source("imap", "acct-1", "INBOX", 7, 42)
    first = await taker.ingest(raw, imap)
    again = await taker.ingest(raw + b"\r\n", imap)  # the same UID, fetched again
    assert first.outcome == "processed"
    assert (again.outcome, again.report_id) == ("duplicate", first.report_id)
    other = dsn("full@example.test", "4.2.2", "452 mailbox full", to=verp(message_id), nonce="2")
    assert (await taker.ingest(other, LISTENER)).outcome == "processed"
    assert (await taker.ingest(other, LISTENER)).outcome == "duplicate"  # same bytes
    counted = await fetch(backend, "SELECT bounces FROM soft_bounce")
    assert [r.bounces for r in counted] == [2]
    soft = [e for e in await events_of(backend, message_id) if e["type"] == "soft_bounce"]
    assert len(soft) == 2


async def test_soft_bounces_suppress_at_the_limit_within_the_window_and_reset_on_delivery(
    backend: Database, queue: Queue
) -> None:
    clock = Clock()
    taker = ingest(backend, queue, clock)
    message_id = await delivered(queue, "full@example.test")

    async def soft(nonce: str) -> None:
        raw = dsn("full@example.test", "4.2.2", "mailbox full", to=verp(message_id), nonce=nonce)
        assert (await taker.ingest(raw, LISTENER)).outcome == "processed"

    await soft("1")
    clock.now += 8 * 86400  # the window of the first one has passed: it starts over
    await soft("2")
    await soft("3")
    assert await suppression(backend, "full@example.test") is None
    await delivered(queue, "full@example.test", pool=DIRECT_POOL)  # the MX took it: forgotten
    assert await fetch(backend, "SELECT * FROM soft_bounce") == []
    for nonce in ("4", "5"):
        await soft(nonce)
        await delivered(queue, "full@example.test")  # a relay's 250 forgets nothing
    await soft("6")
    entry = await suppression(backend, "full@example.test")
    assert entry.reason == "soft_bounce" and "3 soft bounces" in entry.note
    assert (await message_row(backend, message_id)).status == "delivered"  # soft: stays


async def test_a_policy_block_is_an_event_never_a_suppression(
    backend: Database, queue: Queue
) -> None:
    message_id = await delivered(queue, "r@example.test")
    raw = dsn("r@example.test", "5.7.1", "550 5.7.1 blocked by spamhaus", to=verp(message_id))
    assert (await ingest(backend, queue).ingest(raw, LISTENER)).outcome == "processed"
    assert await suppression(backend, "r@example.test") is None
    last = (await events_of(backend, message_id))[-1]
    assert last["type"] == "policy_block" and last["bounce"]["classification"] == "policy"
    assert (await message_row(backend, message_id)).status == "delivered"


async def test_a_complaint_suppresses_at_once(backend: Database, queue: Queue) -> None:
    message_id = await delivered(queue, "angry@example.test")
    raw = complaint("angry@example.test", to=verp(message_id))
    assert (await ingest(backend, queue).ingest(raw, LISTENER)).outcome == "processed"
    assert (await suppression(backend, "angry@example.test")).reason == "complaint"
    last = (await events_of(backend, message_id))[-1]
    assert last["type"] == "complaint" and last["async"] is True


async def test_an_auto_reply_changes_nothing(backend: Database, queue: Queue) -> None:
    message_id = await delivered(queue, "away@example.test")
    before = await events_of(backend, message_id)
    result = await ingest(backend, queue).ingest(auto_reply(verp(message_id)), LISTENER)
    assert result.outcome == "ignored"
    assert await suppression(backend, "away@example.test") is None
    assert await events_of(backend, message_id) == before


async def test_an_unparsable_report_is_kept_with_its_error(backend: Database, queue: Queue) -> None:
    result = await ingest(backend, queue).ingest(b"\x00\x01 not mail", LISTENER)
    assert result.outcome == "unparsed"
    row = await report(backend, result.report_id)
    assert row.error and bytes(row.raw) == b"\x00\x01 not mail"


async def test_a_failure_before_the_commit_leaves_nothing_written(
    backend: Database, queue: Queue, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The report's row and its effects are one transaction: an error after the row and
    the suppression were written (as a kill -9 there would) leaves neither."""
    message_id = await delivered(queue, "gone@example.test")
    raw = dsn("gone@example.test", to=verp(message_id))
    real = effects.apply

    def failing(*args: Any) -> list[str]:
        real(*args)  # the suppression, recipient, message and event rows: written...
        raise RuntimeError("injected")  # ...then the process "dies" before the commit

    monkeypatch.setattr("gateway.bounces.ingest.apply", failing)
    with pytest.raises(RuntimeError):
        await ingest(backend, queue).ingest(raw, LISTENER)
    assert await fetch(backend, "SELECT id FROM bounce_report") == []
    assert await suppression(backend, "gone@example.test") is None
    assert (await message_row(backend, message_id)).status == "delivered"
    assert [e["type"] for e in await events_of(backend, message_id)] == ["queued", "delivered"]
    monkeypatch.setattr("gateway.bounces.ingest.apply", real)
    assert (await ingest(backend, queue).ingest(raw, LISTENER)).outcome == "processed"


async def test_reclassify_applies_the_new_class_once(backend: Database, queue: Queue) -> None:
    message_id = await delivered(queue, "r@example.test")
    raw = dsn("r@example.test", "5.7.1", "550 5.7.1 blocked", to=verp(message_id))
    taker = ingest(backend, queue)
    report_id = (await taker.ingest(raw, LISTENER)).report_id
    assert report_id is not None
    assert await taker.reclassify(report_id, "hard") == "changed"
    assert await taker.reclassify(report_id, "hard") == "unchanged"
    assert await taker.reclassify(999_999, "hard") == "unknown"
    entry = await suppression(backend, "r@example.test")
    assert (entry.reason, entry.note) == ("hard_bounce", f"operator [bounce report {report_id}]")
    bounced = [e for e in await events_of(backend, message_id) if e["type"] == "bounced"]
    assert len(bounced) == 1 and bounced[0]["bounce"]["rule"] == "operator"
    row = await report(backend, report_id)
    assert row.cls == "hard" and json.loads(row.entries)[0]["cls"] == "hard"


async def test_reclassifying_lifts_only_the_suppressions_the_report_itself_added(
    backend: Database, queue: Queue
) -> None:
    """hard -> soft: the suppression that report added goes (here and in this node's copy);
    a manual entry and one another report added stay; soft -> hard adds it again."""
    message_id = await delivered(queue, "a@example.test", "b@example.test", "c@example.test")
    taker = ingest(backend, queue)
    await add_suppression(backend, "b@example.test", "manual")
    earlier = dsn("c@example.test", to=verp(message_id), nonce="c")
    assert (await taker.ingest(earlier, LISTENER)).outcome == "processed"
    raw = dsn("a@example.test", to=verp(message_id), nonce="abc").replace(
        b"Final-Recipient: rfc822; a@example.test\r\n",
        b"Final-Recipient: rfc822; a@example.test\r\nAction: failed\r\nStatus: 5.1.1\r\n"
        b"Diagnostic-Code: smtp; 550 5.1.1 user unknown\r\n\r\n"
        b"Final-Recipient: rfc822; b@example.test\r\nAction: failed\r\nStatus: 5.1.1\r\n"
        b"Diagnostic-Code: smtp; 550 5.1.1 user unknown\r\n\r\n"
        b"Final-Recipient: rfc822; c@example.test\r\n",
    )
    result = await taker.ingest(raw, LISTENER)
    assert result.outcome == "processed" and result.report_id is not None
    matched = [e["matched"] for e in json.loads((await report(backend, result.report_id)).entries)]
    assert matched == ["a@example.test", "b@example.test", "c@example.test"]
    assert queue.suppressions.suppressed(["a@example.test"])

    assert await taker.reclassify(result.report_id, "soft") == "changed"
    assert await suppression(backend, "a@example.test") is None  # this report's: lifted
    assert not queue.suppressions.suppressed(["a@example.test"])
    assert (await suppression(backend, "b@example.test")).reason == "manual"  # an operator's
    kept = await suppression(backend, "c@example.test")  # the earlier report's
    assert kept.note.endswith(f"[bounce report {result.report_id - 1}]")

    assert await taker.reclassify(result.report_id, "complaint") == "changed"
    assert (await suppression(backend, "a@example.test")).reason == "complaint"
    assert await taker.reclassify(result.report_id, "ignore") == "changed"
    assert await suppression(backend, "a@example.test") is None
    assert (await suppression(backend, "b@example.test")).reason == "manual"


async def test_a_schema_7_database_gains_the_bounce_columns_and_tables(backend: Database) -> None:
    def to_schema_7(conn: Connection) -> None:
        conn.execute(text("DROP TABLE bounce_report"))
        conn.execute(text("DROP TABLE soft_bounce"))
        conn.execute(text("ALTER TABLE event DROP COLUMN detail"))
        conn.execute(text("ALTER TABLE suppression DROP COLUMN note"))
        conn.execute(text("UPDATE postern_meta SET value = '7' WHERE key = 'schema_version'"))

    await backend.transaction(to_schema_7)
    await create_schema(backend)

    def shape(conn: Connection) -> tuple[set[str], set[str], set[str]]:
        found = inspect(conn)
        columns = {c["name"] for c in found.get_columns("event")}
        columns |= {c["name"] for c in found.get_columns("suppression")}
        indexes = {i["name"] for i in found.get_indexes("bounce_report")}
        return columns, set(found.get_table_names()), indexes

    columns, tables, indexes = await backend.read(shape)
    assert {"detail", "note"} <= columns and {"bounce_report", "soft_bounce"} <= tables
    assert "ix_bounce_report_status" in indexes


async def test_a_bare_message_id_claim_must_name_its_recipient(
    backend: Database, queue: Queue
) -> None:
    """Anyone may guess a Message-ID: a report matched by it alone, naming someone else,
    does not fall back to the message's only recipient (a VERP token or the reference header
    would: only the message's recipients have seen those)."""
    await delivered_as(queue, "<Order-43@shop.example>", "kept@example.test")
    raw = dsn("stranger@example.test", to="x@provider.test", message_id="<Order-43@shop.example>")
    await ingest(backend, queue).ingest(raw, LISTENER)
    assert await suppression(backend, "kept@example.test") is None
