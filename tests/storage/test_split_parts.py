"""A message split by its recipients' routes (Queue.enqueue_parts) on SQLite and PostgreSQL:
every part stored in one transaction or none, one idempotency key for the whole request."""

from __future__ import annotations

import asyncio
import dataclasses

import pytest

from gateway.message import Route, Sender
from gateway.queue.idempotency import Duplicate
from gateway.queue.store import Queue
from storage.db import Database
from tests.support.stored import fetch, submission

SENDER = Sender(api_key_id="key_split", may_send=True, may_sandbox=False)


def _parts(key: str) -> list[tuple[object, Route]]:
    base = dataclasses.replace(submission(), sender=SENDER, idempotency_key=key, request_hash="h")
    return [
        (dataclasses.replace(base, recipients=("a@gmail.test",)), Route(pool_id="pool_gmail")),
        (dataclasses.replace(base, recipients=("b@other.test",)), Route(ip_pool="bulk")),
    ]


async def test_every_part_is_a_message_of_its_own_stored_together(
    backend: Database, queue: Queue
) -> None:
    stored = await queue.enqueue_parts(_parts("k-1"), claim=False)  # type: ignore[arg-type]
    assert len({m.id for m in stored}) == 2
    rows = await fetch(backend, "SELECT id, pool_id, ip_pool FROM message")
    assert {(r.pool_id, r.ip_pool) for r in rows} == {("pool_gmail", None), (None, "bulk")}
    recipients = await fetch(backend, "SELECT message_id, email FROM recipient")
    assert {(r.message_id, r.email) for r in recipients} == {
        (stored[0].id, "a@gmail.test"),
        (stored[1].id, "b@other.test"),
    }


async def test_one_key_for_the_request_a_second_one_stores_nothing(
    backend: Database, queue: Queue
) -> None:
    first = await queue.enqueue_parts(_parts("k-2"), claim=False)  # type: ignore[arg-type]
    with pytest.raises(Duplicate) as seen:
        await queue.enqueue_parts(_parts("k-2"), claim=False)  # type: ignore[arg-type]
    assert seen.value.message_id == first[0].id
    racing = await asyncio.gather(
        queue.enqueue_parts(_parts("k-3"), claim=False),  # type: ignore[arg-type]
        queue.enqueue_parts(_parts("k-3"), claim=False),  # type: ignore[arg-type]
        return_exceptions=True,
    )
    assert sorted(type(r).__name__ for r in racing) == ["Duplicate", "list"]
    count = await fetch(backend, "SELECT COUNT(*) AS n FROM message")
    assert count[0].n == 4  # two requests, two parts each
