"""The queue's periodic upkeep, off the message path: the gauge of messages by state, and
the purge of expired idempotency keys (both doors reserve them). The process runs each as
a loop of its own (gateway.tasks.Loops)."""

from __future__ import annotations

import logging

from gateway import metrics
from gateway.queue.idempotency import purge_expired
from gateway.queue.store import Queue
from storage.db import Database

log = logging.getLogger("postern.queue")

GAUGE_INTERVAL = 30.0  # seconds between counts: counting a large queue is not free
PURGE_INTERVAL = 600.0  # seconds between purges of expired idempotency keys


async def count_messages(queue: Queue) -> None:
    """Set postern_queue_messages from storage."""
    for state, count in (await queue.counts()).items():
        metrics.QUEUE_MESSAGES.labels(state=state).set(count)


async def purge_idempotency_keys(db: Database) -> None:
    """Delete the idempotency keys past their lifetime."""
    removed = await purge_expired(db)
    if removed:
        log.info("purged %d expired idempotency keys", removed)
