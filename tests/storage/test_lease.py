"""Claims are leases: renewed while the holder lives, taken over once they lapse, and a
holder whose lease was taken over can no longer record over the new holder (its send is
counted as a possible duplicate)."""

from __future__ import annotations

import asyncio

from gateway.delivery.upstream import PoolSettings, SessionSettings
from gateway.delivery.workers import Delivery, PoolRegistry
from gateway.message import DeliveryResult, Outcome, Route
from gateway.queue.store import AttemptRecord
from storage.db import Database
from tests.support.databases import MakeQueue
from tests.support.service import metric
from tests.support.sink import Sink
from tests.support.stored import message_row, submission

DELIVERED = DeliveryResult(Outcome.DELIVERED, 250, "2.0.0", "ok")


async def test_a_renewed_claim_is_not_taken_over(make_queue: MakeQueue) -> None:
    node_a = await make_queue("node-a", lease=1)
    node_b = await make_queue("node-b", lease=1)
    await node_a.enqueue(submission("r@example.com"), Route(ip_pool="transactional"), claim=True)
    for _ in range(3):
        await asyncio.sleep(0.5)
        await node_a.renew_claims()
        assert await node_b.claim_due(10) == []


async def test_a_lapsed_claim_is_taken_over_and_the_old_holder_cannot_record(
    make_queue: MakeQueue, backend: Database
) -> None:
    node_a = await make_queue("node-a", lease=0.3)
    node_b = await make_queue("node-b", lease=60)
    held = await node_a.enqueue(submission("r@example.com"), Route(), claim=True)
    await asyncio.sleep(0.5)
    (taken,) = await node_b.claim_due(10)
    assert taken.id == held.id
    await node_a.record(AttemptRecord(held, {"r@example.com": DELIVERED}, "late"))
    row = await message_row(backend, held.id)
    assert row.claimed_by == "node-b" and row.status == "queued"


async def test_a_released_message_is_claimable_again_after_its_delay(make_queue: MakeQueue) -> None:
    node_a = await make_queue("node-a", lease=60)
    node_b = await make_queue("node-b", lease=60)
    held = await node_a.enqueue(submission("r@example.com"), Route(), claim=True)
    await node_a.release(held.id, 0.2)
    assert await node_b.claim_due(10) == []
    await asyncio.sleep(0.3)
    assert [m.id for m in await node_b.claim_due(10)] == [held.id]


async def test_a_send_whose_claim_lapsed_is_counted_as_a_possible_duplicate(
    make_queue: MakeQueue, backend: Database, sink: Sink
) -> None:
    """Node A's upstream answers only after A's lease lapsed and node B took the message:
    A's answer cannot be recorded, the attempt counts in postern_possible_duplicates_total
    under its pool, and the worker carries on (no exception, no traceback)."""
    node_a = await make_queue("node-a", lease=0.3)
    node_b = await make_queue("node-b", lease=60)
    registry = PoolRegistry(SessionSettings(local_hostname="node-a.test", command_timeout=10))
    registry.load([PoolSettings(id="pool_sink", name="lapse-sink", host=sink.host,
                                port=sink.port, encryption="none", is_default=True)])  # fmt: skip
    delivery = Delivery(node_a, registry, workers=1)
    sink.hang("eom", seconds=1.0, times=1)  # the upstream takes it, but slowly
    held = await node_a.enqueue(submission("r@example.com"), Route(default=True), claim=True)
    before = metric("postern_possible_duplicates_total", pool="lapse-sink")
    try:
        attempt = asyncio.create_task(delivery.deliver(held))
        await asyncio.sleep(0.5)  # A's lease (0.3 s) lapsed mid-transaction
        (taken,) = await node_b.claim_due(10)
        assert taken.id == held.id
        assert await asyncio.wait_for(attempt, 10) == "deferred"
    finally:
        await registry.close()
    assert sink.recipients() == ["r@example.com"]  # A's copy did reach the upstream
    assert metric("postern_possible_duplicates_total", pool="lapse-sink") == before + 1
    row = await message_row(backend, held.id)
    assert row.claimed_by == "node-b" and row.status == "queued"  # B will send it again
