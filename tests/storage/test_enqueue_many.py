"""Queue.enqueue_many (the batch send's storage): every message of the batch (each as its
parts, one per recipients' route) in one transaction, an idempotency key repeated in it
answered as a Duplicate of the first, a key held already answered so, and nothing of a
refused one stored. SQLite and PostgreSQL."""

from __future__ import annotations

import dataclasses

from gateway.message import QueuedMessage, Route
from gateway.queue.idempotency import Duplicate, KeyReused
from gateway.queue.store import Queue
from storage.db import Database
from tests.support.stored import fetch, submission

ROUTE = Route(ip_pool="transactional")


async def test_a_batch_is_one_commit(backend: Database, queue: Queue) -> None:
    writer = queue._writer  # the test looks at its commit count
    before = writer.commits
    items = [[(submission(f"r{n}@example.com"), ROUTE)] for n in range(24)]
    two_routes = [(submission("a@one.example"), ROUTE), (submission("b@two.example"), ROUTE)]
    stored = await queue.enqueue_many([*items, two_routes])
    assert writer.commits - before == 1
    assert all(isinstance(s, list) for s in stored)
    made = [m.id for s in stored if isinstance(s, list) for m in s]
    assert len(made) == 26 and isinstance(stored[-1], list) and len(stored[-1]) == 2
    rows = await fetch(backend, "SELECT id FROM message")
    assert {r.id for r in rows} == set(made)
    recipients = await fetch(backend, "SELECT email FROM recipient")
    assert len(recipients) == 26


async def test_keys_are_reserved_in_the_batch(backend: Database, queue: Queue) -> None:
    first = dataclasses.replace(submission(), idempotency_key="k1", request_hash="a")
    held = await queue.enqueue(first, ROUTE, claim=False)
    again = dataclasses.replace(submission(), idempotency_key="k2", request_hash="b")
    other = dataclasses.replace(submission(), idempotency_key="k1", request_hash="c")
    same = dataclasses.replace(submission(), idempotency_key="k1", request_hash="a")
    outcomes = await queue.enqueue_many(
        [[(again, ROUTE)], [(again, ROUTE)], [(other, ROUTE)], [(same, ROUTE)]]
    )
    new, repeated, reused, replayed = outcomes
    assert isinstance(new, list) and isinstance(new[0], QueuedMessage)
    assert isinstance(repeated, Duplicate) and repeated.message_id == new[0].id
    assert isinstance(reused, KeyReused) and reused.message_id == held.id
    assert isinstance(replayed, Duplicate) and replayed.message_id == held.id
    assert len(await fetch(backend, "SELECT id FROM message")) == 2
