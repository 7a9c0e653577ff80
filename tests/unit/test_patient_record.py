"""An attempt's record lingers for company (storage.writer's patient jobs) only when no HTTP
send waits on it: a waited-on one commits at once, as the client is answered after it."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

from gateway.delivery.upstream import SessionSettings
from gateway.delivery.workers import Delivery, PoolRegistry
from gateway.queue.store import AttemptRecord


class SpyQueue:
    def __init__(self) -> None:
        self.patient: list[bool] = []

    async def record(self, attempt: AttemptRecord, patient: bool = True) -> str:
        self.patient.append(patient)
        return "sent"


def attempt(message_id: str) -> AttemptRecord:
    message: Any = SimpleNamespace(id=message_id)
    return AttemptRecord(message, {}, "sink")


async def test_a_waited_on_attempt_is_recorded_not_patient() -> None:
    queue = SpyQueue()
    registry = PoolRegistry(SessionSettings("postern.test"))
    delivery = Delivery(queue, registry, workers=1)  # type: ignore[arg-type]
    waiter = delivery.wait_for("waited")
    await delivery._record(attempt("waited"))
    await delivery._record(attempt("alone"))
    assert queue.patient == [False, True]
    waiter.cancel()
    await asyncio.sleep(0)
