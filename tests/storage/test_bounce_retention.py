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


async def test_soft_bounces_count_in_a_sliding_window(backend: Database) -> None:
    """Each soft bounce counts for the window after it, no longer: at days 0, 5 and 10 of a
    7-day window the third sees two (days 5 and 10), where a window fixed at the first
    bounce would have restarted at 1 on day 10; the count keeps only what the limit needs;
    the sweep deletes a count once its newest bounce is out of the window."""
    start = time.time() - 30 * DAY
    email = "sliding@x.test"

    async def bounce(day: float, keep: int = 3) -> int:
        at = start + day * DAY
        return int(
            await backend.transaction(
                lambda c: bounce_reports.count_soft(c, email, at, WINDOW, keep=keep)
            )
        )

    assert [await bounce(0), await bounce(5), await bounce(10)] == [1, 2, 2]
    assert await bounce(11) == 3  # days 5, 10 and 11 within the last 7 days
    assert await bounce(11.5) == 3  # the limit: only its latest are kept
    [row] = await fetch(backend, "SELECT * FROM soft_bounce")
    assert row.bounces == 3 and row.first_at == start + 10 * DAY
    # On day 17.2 the oldest bounce (day 10) is out of the window, the newest is not: kept.
    assert await backend.transaction(lambda c: purge_soft(c, start + 10.2 * DAY)) == 0
    assert await bounce(18.2) == 2  # days 10 and 11 are out, 11.5 is not (6.7 days)
    # On day 30 every one is out: the count goes.
    assert await backend.transaction(lambda c: purge_soft(c, start + 23 * DAY)) == 1

    # A count stored before the times were kept (no `recent`) reads as it was.
    await backend.transaction(lambda c: bounce_reports.count_soft(c, email, start, WINDOW))
    await backend.transaction(
        lambda c: c.execute(bounce_reports.SB.update().values(recent=None, bounces=2))
    )
    assert await bounce(1) == 3
