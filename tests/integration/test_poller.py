"""Delivery's poller over the real service: a claim that fails with an error that is not
storage's (a bug, a body too big for memory) is logged, and the poller goes on claiming."""

from __future__ import annotations

import pytest

from gateway.message import QueuedMessage, Route
from gateway.queue.store import Queue
from tests.support.service import ServiceFactory
from tests.support.sink import Sink
from tests.support.stored import CONTENT, submission

pytestmark = pytest.mark.timeout(30)


async def test_the_poller_survives_a_claim_that_raises(
    service: ServiceFactory, sink: Sink, monkeypatch: pytest.MonkeyPatch
) -> None:
    claim_due = Queue.claim_due
    calls: list[int] = []

    async def failing_twice(self: Queue, limit: int) -> list[QueuedMessage]:
        calls.append(limit)
        if len(calls) <= 2:
            raise RuntimeError("not storage's")
        return await claim_due(self, limit)

    monkeypatch.setattr(Queue, "claim_due", failing_twice)
    svc = await service()
    assert svc.queue is not None
    # Not claimed at intake: only the poller can take it.
    await svc.queue.enqueue(submission("x@example.test"), Route(default=True), claim=False)

    assert await sink.wait_for_async(1, timeout=20), "the poller stopped claiming"
    assert len(calls) > 2
    assert sink.messages[0].data.endswith(CONTENT)
