"""The roller: every few seconds, one node of many counts the events committed since its
position into the per-minute rollup the Live page and the pools page read
(storage.event_minutes), a bounded batch per transaction, off the delivery path.

Each batch is one transaction: the counts and the moved position commit together, so a
node killed anywhere counts no event twice and loses none (the next roll reads the same
events again). The lease (renewed by each roll) keeps the other nodes' rolls idle while
this one lives; it lapses LEASE seconds after a node dies."""

from __future__ import annotations

import asyncio
import logging
import time

from storage import event_minutes
from storage.db import Database

log = logging.getLogger("postern.rollup")

INTERVAL = 2.0  # seconds between rolls
BATCH = 5000  # events read per transaction: a short hold of the write lock
LEASE = 30.0  # seconds the roll stays this node's after its last roll
MOST_BATCHES = 200  # per round: a backlog is caught up over a few rounds


class Rollup:
    def __init__(self, db: Database, node: str, batch: int = BATCH, lease: float = LEASE) -> None:
        self._db = db
        self._node = node
        self._batch = batch
        self._lease = lease

    async def roll_once(self) -> int | None:
        """One batch, in one transaction: how many events were read (None: another node
        holds the roll)."""
        node, batch, now = self._node, self._batch, time.time()
        until = now + self._lease
        return await self._db.transaction(
            lambda conn: event_minutes.roll(conn, node, now, until, batch)
        )

    async def run_once(self) -> None:
        """Roll until caught up (a batch short of BATCH), MOST_BATCHES at most."""
        for _ in range(MOST_BATCHES):
            read = await self.roll_once()
            if read is None or read < self._batch:
                return
            await asyncio.sleep(0.01)  # let the other writes through between batches

    async def release(self) -> None:
        """Give the roll's lease back (start-up, stop): another node may roll at once."""
        node = self._node
        await self._db.transaction(lambda conn: event_minutes.release(conn, node))
