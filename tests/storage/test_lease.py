"""Claims are leases: renewed while the holder lives, taken over once they lapse, and a
holder whose lease was taken over can no longer record over the new holder."""

from __future__ import annotations

import asyncio

from gateway.message import DeliveryResult, Outcome, Route
from gateway.queue import AttemptRecord
from storage.db import Database
from tests.storage.conftest import MakeQueue
from tests.storage.test_queue import message_row, submission

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
