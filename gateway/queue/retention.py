"""The retention sweep: every few minutes, delete final messages older than
`[storage] retention` (storage.retention), a bounded chunk per transaction, and the stored
bodies of those final for longer than `[storage] body_retention`; then what came back:
bounce reports and skipped-inbox records older than the retention limit, and soft-bounce
counts whose `[bounces] soft_window` has ended (storage.retention says why each may go); and
the charted events' counts of minutes older than two days (storage.event_minutes.KEEP);
last, the pieces of large bodies (storage.pieces) that no body names any more: those of
the bodies and messages just deleted, and those a storing transaction never came for (a
crash between the pieces and the message row, a refused message), a few per transaction.
It runs in one process of a node (worker 0) and, like every sweep here, is an idempotent
bounded delete, so nodes sharing a database need no lease for it."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

from sqlalchemy import Connection

from gateway.tasks import cancel_and_wait, repeat
from storage import event_minutes, pieces
from storage.retention import (
    purge_bodies_chunk,
    purge_chunk,
    purge_minutes,
    purge_reports,
    purge_skips,
    purge_soft,
)
from storage.writer import Writer

log = logging.getLogger("postern.retention")

INTERVAL = 600.0  # seconds between sweeps
CHUNK = 500  # messages per transaction: short enough not to hold up intake's commits


@dataclass(frozen=True)
class BouncesSwept:
    """How many rows of what came back one sweep deleted."""

    reports: int = 0
    skips: int = 0
    soft: int = 0

    def __bool__(self) -> bool:
        return bool(self.reports or self.skips or self.soft)


class Retention:
    def __init__(
        self,
        writer: Writer,
        keep: float,
        interval: float = INTERVAL,
        soft_window: float | None = None,
        body_keep: float | None = None,
    ) -> None:
        self._writer = writer
        self._keep = keep
        self._body_keep = keep if body_keep is None else min(body_keep, keep)
        self._interval = interval
        self._soft_window = soft_window  # [bounces] soft_window; None: counts are kept
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
        return await self._chunks(lambda conn: purge_chunk(conn, before, CHUNK))

    async def sweep_bounces(self) -> BouncesSwept:
        """Delete the bounce reports and skipped-inbox records past retention and the
        soft-bounce counts past their window, chunk by chunk; how many of each went."""
        now = time.time()
        before = now - self._keep
        reports = await self._chunks(lambda conn: purge_reports(conn, before, CHUNK))
        skips = await self._chunks(lambda conn: purge_skips(conn, before, CHUNK))
        soft = 0
        if self._soft_window is not None:
            started = now - self._soft_window
            soft = await self._chunks(lambda conn: purge_soft(conn, started, CHUNK))
        return BouncesSwept(reports, skips, soft)

    async def sweep_minutes(self) -> int:
        """Delete the per-minute counts older than event_minutes.KEEP; how many rows went."""
        before = time.time() - event_minutes.KEEP
        return await self._chunks(lambda conn: purge_minutes(conn, before, CHUNK))

    async def _chunks(self, purge: Callable[[Connection], int]) -> int:
        total = 0
        while True:
            removed: int = await self._writer.submit(purge)
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

    async def sweep_pieces(self) -> int:
        """Delete every orphan piece of a large body (storage.pieces): found by a read, then
        deleted a few per transaction, each committed by the writer like a whole large body
        (alone, after the small jobs waiting); how many went."""
        before = time.time() - pieces.ORPHAN_AGE
        chunk = pieces.SWEEP_PIECES
        total = 0
        while True:
            found = await self._writer.db.read(lambda conn: pieces.orphans(conn, before))
            removed = 0
            for at in range(0, len(found), chunk):
                keys = found[at : at + chunk]
                purge = partial(pieces.purge_orphans, before=before, keys=keys)
                removed += await self._writer.submit(purge, size=self._writer.large)  # alone
                await asyncio.sleep(0.02)  # (deleting pieces costs what writing them did)
            total += removed
            if len(found) < pieces.SCAN or not removed:
                return total

    async def _sweep_and_report(self) -> None:
        removed = await self.sweep()  # storage trouble: logged by repeat, tried next time
        if removed:
            log.info("retention: deleted %d final messages older than the limit", removed)
        minutes = await self.sweep_minutes()
        if minutes:
            log.info("retention: deleted %d per-minute event counts past two days", minutes)
        swept = await self.sweep_bounces()
        if swept:
            log.info(
                "retention: deleted %d bounce reports, %d skipped-inbox records, "
                "%d soft-bounce counts past their window",
                swept.reports, swept.skips, swept.soft,
            )  # fmt: skip
        bodies = await self.sweep_bodies()
        if bodies:
            log.info("retention: deleted the bodies of %d final messages", bodies)
        swept_pieces = await self.sweep_pieces()
        if swept_pieces:
            log.info("retention: deleted %d pieces of large bodies no message names", swept_pieces)
