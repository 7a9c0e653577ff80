"""The retention sweep deletes what came back once it is old, on both backends: bounce
reports and skipped-inbox records received before [storage] retention, soft-bounce counts
whose [bounces] soft_window ended; nothing younger, in chunks; the effects of a deleted
report (its suppression) stay; a soft bounce right after its count was swept counts 1."""

from __future__ import annotations

import time

import pytest

from gateway.bounces.ingest import BounceIngest, Settings, Source
from gateway.bounces.returnpath import ReturnPath
from gateway.message import DeliveryResult, Outcome, Route
from gateway.queue import retention
from gateway.queue.retention import BouncesSwept, Retention
from gateway.queue.store import AttemptRecord, Queue
from storage import bounce_reports
from storage.db import Database
from storage.inbox import Skipped, skip
from storage.retention import purge_reports, purge_soft
from storage.writer import Writer
from tests.support.reports import dsn
from tests.support.stored import fetch, submission

DAY = 86400.0
KEEP = 30 * DAY
WINDOW = 7 * DAY
RP = ReturnPath("bounce.test", b"v" * 32)
DELIVERED = DeliveryResult(Outcome.DELIVERED, 250, "2.0.0", "ok")


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


async def delivered(queue: Queue, recipient: str) -> str:
    message = await queue.enqueue(submission(recipient), Route(), claim=True)
    await queue.record(AttemptRecord(message, dict.fromkeys(message.recipients, DELIVERED), "p"))
    return message.id


async def reports_at(backend: Database, queue: Queue, when: float, *emails: str) -> list[int]:
    """For each address, a message delivered to it and its hard bounce, received at
    `when`."""
    settings = Settings(soft_limit=3, soft_window=WINDOW)
    processing = BounceIngest(
        backend, RP, settings=settings, suppressions=queue.suppressions, clock=Clock(when)
    )
    found = []
    for email in emails:
        raw = dsn(email, to=RP.address(await delivered(queue, email), ""))
        result = await processing.ingest(raw, Source("listener"))
        assert result.outcome == "processed" and result.report_id is not None
        found.append(result.report_id)
    return found


async def ids(db: Database, table: str, column: str) -> set[object]:
    return {row[0] for row in await fetch(db, f"SELECT {column} FROM {table}")}


async def test_old_reports_skips_and_dead_soft_counts_go(
    backend: Database, queue: Queue, writer: Writer
) -> None:
    now = time.time()
    old = await reports_at(backend, queue, now - KEEP - DAY, "a@x.test", "b@x.test")
    young = await reports_at(backend, queue, now - KEEP + DAY, "c@x.test")

    def skips(conn: object) -> None:
        for uid, age in ((1, KEEP + DAY), (2, KEEP - DAY)):
            record = Skipped("acct", "INBOX", 7, uid, 20_000_000, "too big", now - age)
            skip(conn, record)  # type: ignore[arg-type]

    await backend.transaction(skips)

    def soft(conn: object) -> None:
        for email, started in (
            ("dead@x.test", now - WINDOW - 60),  # its window ended a minute ago
            ("live@x.test", now - WINDOW + 60),
        ):
            bounce_reports.count_soft(conn, email, started, WINDOW)  # type: ignore[arg-type]

    await backend.transaction(soft)

    sweeping = Retention(writer, KEEP, soft_window=WINDOW)
    assert await sweeping.sweep_bounces() == BouncesSwept(reports=2, skips=1, soft=1)
    assert await ids(backend, "bounce_report", "id") == set(young)
    assert await ids(backend, "inbox_skip", "uid") == {2}
    assert await ids(backend, "soft_bounce", "email") == {"live@x.test"}
    # The deleted reports' effects stay: the hard bounces' suppressions.
    suppressed = await ids(backend, "suppression", "email")
    assert {"a@x.test", "b@x.test", "c@x.test"} <= suppressed
    assert not await sweeping.sweep_bounces()  # nothing more is old
    assert set(old).isdisjoint(await ids(backend, "bounce_report", "id"))

    # Without a soft window (a Retention made by an older caller), counts are kept.
    await backend.transaction(soft)
    assert (await Retention(writer, KEEP).sweep_bounces()).soft == 0


async def test_reports_go_in_chunks_oldest_first(
    backend: Database, queue: Queue, writer: Writer, monkeypatch: pytest.MonkeyPatch
) -> None:
    now = time.time()
    emails = [f"r{n}@x.test" for n in range(7)]
    old = await reports_at(backend, queue, now - KEEP - DAY, *emails)
    young = await reports_at(backend, queue, now - 60, "fresh@x.test")
    # a chunk stops at the first report not yet old, whatever follows it
    first = await backend.transaction(lambda conn: purge_reports(conn, now - KEEP, 3))
    assert first == 3
    assert await ids(backend, "bounce_report", "id") == set(old[3:] + young)
    monkeypatch.setattr(retention, "CHUNK", 2)
    swept = await Retention(writer, KEEP, interval=60).sweep_bounces()
    assert swept.reports == 4
    assert await ids(backend, "bounce_report", "id") == set(young)


async def test_a_soft_bounce_after_its_count_was_swept_counts_one(backend: Database) -> None:
    now = time.time()
    email = "again@x.test"
    await backend.transaction(lambda c: bounce_reports.count_soft(c, email, now - 9 * DAY, WINDOW))
    assert await backend.transaction(lambda c: purge_soft(c, now - WINDOW)) == 1
    assert (
        await backend.transaction(lambda c: bounce_reports.count_soft(c, email, now, WINDOW)) == 1
    )
    # a count restarted since the sweep read it is kept: the delete checks its window again
    assert await backend.transaction(lambda c: purge_soft(c, now - WINDOW)) == 0
    assert await ids(backend, "soft_bounce", "email") == {email}
