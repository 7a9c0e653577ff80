"""Background tasks' lifecycle, shared by the loops a node runs (watchers, sweeps)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

log = logging.getLogger("postern")

LAG_INTERVAL = 0.05  # seconds between two looks of the event-loop lag probe


async def cancel_and_wait(task: asyncio.Task[Any] | None) -> None:
    """Cancel `task` (if any) and wait until it has finished unwinding."""
    if task is None:
        return
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def repeat(
    interval: float,
    work: Callable[[], Awaitable[None]],
    what: str,
    at_once: bool = False,
    logger: logging.Logger = log,
) -> None:
    """Run `work` every `interval` seconds (the first time after one interval, or at once)
    until cancelled. A failure is logged (on the owner's `logger`) as "<what> failed" and
    the next round comes all the same: housekeeping must never die."""
    if not at_once:
        await asyncio.sleep(interval)
    while True:
        try:
            await work()
        except Exception as error:
            logger.warning("%s failed: %s", what, error)
        await asyncio.sleep(interval)


async def watch_lag(interval: float = LAG_INTERVAL) -> None:
    """The event-loop lag probe: sleep `interval`, and count how late the wake-up came (a
    callback that held the loop, a collection pause) in `postern_event_loop_lag_seconds`,
    the worst so far in `postern_event_loop_lag_max_seconds` (bench/loop_lag.py reads both)."""
    from gateway import metrics

    loop = asyncio.get_running_loop()
    worst = 0.0
    while True:
        before = loop.time()
        await asyncio.sleep(interval)
        lag = max(0.0, loop.time() - before - interval)
        metrics.EVENT_LOOP_LAG.observe(lag)
        if lag > worst:
            worst = lag
            metrics.EVENT_LOOP_LAG_MAX.set(lag)


class Loops:
    """Background loops started one by one and stopped together."""

    def __init__(self) -> None:
        self._tasks: list[asyncio.Task[None]] = []

    def every(
        self,
        interval: float,
        work: Callable[[], Awaitable[None]],
        what: str,
        at_once: bool = False,
    ) -> None:
        """Start `repeat(interval, work, what, at_once)` as a task named `what`."""
        loop = asyncio.get_running_loop()
        task = loop.create_task(repeat(interval, work, what, at_once), name=what)
        self._tasks.append(task)

    def run(self, work: Callable[[], Coroutine[Any, Any, None]], what: str) -> None:
        """Start `work()` (a loop of its own, never returning) as a task named `what`."""
        self._tasks.append(asyncio.get_running_loop().create_task(work(), name=what))

    async def stop(self) -> None:
        for task in self._tasks:
            await cancel_and_wait(task)
        self._tasks = []
