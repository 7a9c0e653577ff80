"""The fixes of issue 20's review, on both backends: a suppression another report still
justifies survives a reclassify; a concurrent reclassify applies once; the same bytes met
by the listener and by an upload are one report; concurrent soft bounces of a new address
are all counted."""

from __future__ import annotations

from gateway.queue.store import Queue
from storage.db import Database
from tests.storage.test_bounce_ingest import (
    LISTENER,
    delivered,
    ingest,
    suppression,
    verp,
)
from tests.support.reports import complaint, dsn


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
