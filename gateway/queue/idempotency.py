"""Idempotency keys for both doors: reserve, replay, wait and purge, in one place.

One message per (API key, idempotency key) within `TTL`. The key is reserved in the very
transaction that stores the message (`reserve_then_store`, run by the queue), so of two
racing requests exactly one stores anything; the other gets `Duplicate` naming the first
message, or `KeyReused` when its request differs from the first. A request that policy
would refuse is looked up first (`raise_if_seen`): the first answer stands even when, say,
its recipient has been suppressed since. The HTTP door saves its first answer
(`save_answer`) and replays it to later requests, waiting for it while the first request is
still in flight (`wait_for_answer`). The process purges expired reservations
(`purge_expired`). SMTP clients without AUTH share the `ANONYMOUS` scope.

The rows and their SQL are storage.idempotency's.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from sqlalchemy import Connection

from gateway.message import Submission
from storage import dml
from storage import idempotency as rows
from storage.db import Database
from storage.idempotency import ANONYMOUS, TTL, Duplicate, Hit, KeyReused
from storage.writer import Batch, Writer

__all__ = [
    "ANONYMOUS",
    "TTL",
    "Duplicate",
    "Hit",
    "KeyReused",
    "purge_expired",
    "raise_if_seen",
    "reserve",
    "reserve_then_store",
    "save_answer",
    "scope_of",
    "wait_for_answer",
]

_POLL = 0.02  # seconds between looks for a first answer still being written


def scope_of(submission: Submission) -> str:
    """Whose keys the submission's key is one of: its API key's, else the anonymous ones."""
    return submission.sender.api_key_id if submission.sender else ANONYMOUS


def reserve_then_store(
    conn: Connection, submission: Submission, message_id: str, now: float, batch: Batch
) -> Hit | None:
    """Inside the storing transaction: reserve the submission's key for `message_id` and
    store the message (`batch`) only if that won. Returns the reservation that holds the key
    when another message has it (nothing stored then)."""
    holder = reserve(conn, submission, message_id, now)
    if holder is None:
        for statement, params in batch.steps:
            dml.run(conn, statement, params)  # (storage.dml: cheaper, same rows)
    return holder


def reserve(conn: Connection, submission: Submission, message_id: str, now: float) -> Hit | None:
    """Inside a storing transaction: reserve the submission's key for `message_id`; the
    reservation that holds it when another message has it (then store nothing of it)."""
    assert submission.idempotency_key is not None
    return rows.reserve(
        conn,
        scope_of(submission),
        submission.idempotency_key,
        message_id,
        now,
        submission.request_hash,
    )


async def raise_if_seen(db: Database, submission: Submission) -> None:
    """Duplicate (or KeyReused) when the submission's key already names a live message."""
    key = submission.idempotency_key
    if key is None:
        return
    seen = await rows.find(db, scope_of(submission), key)
    if seen is not None:
        raise seen.refusal(submission.request_hash)


async def save_answer(
    writer: Writer, scope: str, key: str, message_id: str, status: int, body: dict[str, Any]
) -> None:
    """Keep the first request's answer on its reservation, for replays."""
    await rows.save_response(writer, scope, key, message_id, status, body)


async def wait_for_answer(
    db: Database, scope: str, key: str, message_id: str, deadline: float
) -> dict[str, Any] | None:
    """The first request's saved answer ({"status": int, "body": {...}}), polled for until
    `deadline` (time.monotonic()) while the key still names `message_id`. None when it did
    not come in time, or the key went (expired, purged, taken over)."""
    while True:
        hit = await rows.find(db, scope, key)
        if hit is None or hit.message_id != message_id:
            return None
        if hit.response is not None:
            return hit.response
        if time.monotonic() >= deadline:
            return None
        await asyncio.sleep(_POLL)


async def purge_expired(db: Database) -> int:
    """Delete the reservations older than TTL; returns how many went. The process calls it
    every few minutes (a reservation past TTL is also taken over in place when reused)."""
    return await rows.purge_expired(db)
