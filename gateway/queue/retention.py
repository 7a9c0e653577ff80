"""The retention sweep: every few minutes, delete final messages older than
`[storage] retention`, and the stored bodies of those final for longer than
`[storage] body_retention` (storage.retention), a bounded chunk per transaction."""

from __future__ import annotations

import asyncio
import logging
import time

from gateway.tasks import cancel_and_wait, repeat
from storage.retention import purge_bodies_chunk, purge_chunk
from storage.writer import Writer

log = logging.getLogger("postern.retention")

INTERVAL = 600.0  # seconds between sweeps
CHUNK = 500  # messages per transaction: short enough not to hold up intake's commits


class Retention:
    def __init__(
        self,
        writer: Writer,
        keep: float,
        interval: float = INTERVAL,
        body_keep: float | None = None,
    ) -> None:
        self._writer = writer
        self._keep = keep
        self._body_keep = keep if body_keep is None else min(body_keep, keep)
        self._interval = interval
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        sweeps = repeat(self._interval, self._sweep_and_report, "retention sweep", logger=log)
        self._task = asyncio.get_running_loop().create_task(sweeps, name="retention")

    async def stop(self) -> None:
        await cancel_and_wait(self._task)
        self._task = None

    async def sweep(self) -> int:
        """Delete every final message past retention, chunk by chunk; how many went."""
        before = time.time() - self._keep
        total = 0
        while True:
            removed: int = await self._writer.submit(lambda conn: purge_chunk(conn, before, CHUNK))
            total += removed
            if removed < CHUNK:
                return total
            await asyncio.sleep(0.05)  # let intake's commits through between chunks

    async def sweep_bodies(self) -> int:
        """Delete the stored body of every message final for longer than body_retention,
        chunk by chunk; how many went."""
        before = time.time() - self._body_keep
        total = 0
        while True:
            removed: int = await self._writer.submit(
                lambda conn: purge_bodies_chunk(conn, before, CHUNK)
            )
            total += removed
            if removed < CHUNK:
                return total
            await asyncio.sleep(0.05)

    async def _sweep_and_report(self) -> None:
        removed = await self.sweep()  # storage trouble: logged by repeat, tried next time
        if removed:
            log.info("retention: deleted %d final messages older than the limit", removed)
        bodies = await self.sweep_bodies()
        if bodies:
            log.info("retention: deleted the bodies of %d final messages", bodies)
