"""Webhooks on a node: the dispatcher that fans the events outbox out to deliveries, the
sender (gateway.webhook_sender) that POSTs them, and their housekeeping.

The dispatcher wakes every `interval` seconds, looks (a read of the partial index) for
events still `pending`, and in one transaction queues a delivery of each to every active
webhook that wants it and clears their flag (storage.webhook_outbox.dispatch). A full batch
runs again at once, so a burst drains at the speed of the database. Every node may run it;
on PostgreSQL one at a time takes a turn.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass

from sqlalchemy import Connection, select

from gateway import events, metrics
from gateway.config import WebhooksConfig
from gateway.hostguard import HostGuard
from gateway.tasks import cancel_and_wait
from gateway.webhook_sender import WebhookSender
from storage import webhook_outbox as outbox
from storage.db import Database
from storage.dkim_keys import Cipher
from storage.webhooks import backlog
from storage.writer import Writer

log = logging.getLogger("postern.webhooks")

KEEP_ATTEMPTS = 1000  # attempt rows kept per webhook (GET .../deliveries)


@dataclass(frozen=True)
class WebhookSettings:
    batch_size: int = 100  # events per POST
    timeout: float = 10.0  # per POST, everything included
    max_age: float = 3 * 86400.0  # deliveries older than this are dropped
    interval: float = 0.2  # dispatcher poll
    dispatch_limit: int = 1000  # events fanned out per transaction
    gauge_every: float = 5.0  # seconds between refreshes of postern_events_pending
    prune_every: float = 60.0  # seconds between prunes of old attempt rows


class Dispatcher:
    def __init__(self, db: Database, writer: Writer, limit: int = 1000) -> None:
        self._db = db
        self._writer = writer
        self.limit = limit

    async def run_once(self) -> outbox.Dispatched:
        """Fan out one batch of pending events (nothing written when there are none)."""
        if not await self._db.read(_any_pending):
            return outbox.Dispatched(0, 0, frozenset())
        result: outbox.Dispatched = await self._writer.submit(
            lambda conn: outbox.dispatch(conn, events.FINAL, time.time(), self.limit)
        )
        return result


class Webhooks:
    """The node's webhook machinery: start() after the writer, stop() before it."""

    def __init__(
        self,
        db: Database,
        writer: Writer,
        box: Cipher,
        guard: HostGuard,
        node: str,
        settings: WebhookSettings | None = None,
        send: bool = True,
    ) -> None:
        self.settings = settings or WebhookSettings()
        self._send = send  # False: dispatch only ([webhooks] enabled = false on this node)
        s = self.settings
        self._db = db
        self._writer = writer
        self.dispatcher = Dispatcher(db, writer, s.dispatch_limit)
        self.sender = WebhookSender(
            db,
            writer,
            box,
            guard,
            node,
            batch_size=s.batch_size,
            timeout=s.timeout,
            max_age=s.max_age,
        )
        self._task: asyncio.Task[None] | None = None
        self._wakeup = asyncio.Event()

    async def start(self) -> None:
        if self._send:
            await self.sender.release_all()  # what this node held when it last stopped
            self.sender.start()
        self._task = asyncio.get_running_loop().create_task(self._run(), name="webhook-dispatch")

    async def stop(self) -> None:
        await cancel_and_wait(self._task)
        self._task = None
        if self._send:
            await self.sender.stop()

    async def _housekeeping(self) -> None:
        """Old attempt rows go; deliveries past max_age are dropped (and counted)."""
        await self._writer.submit(lambda conn: outbox.prune_attempts(conn, KEEP_ATTEMPTS))
        now = time.time()
        before = now - self.settings.max_age
        dropped: int = await self._writer.submit(lambda conn: _drop_expired(conn, before, now))
        if dropped:
            metrics.WEBHOOK_DELIVERIES.labels(status="dropped").inc(dropped)
            log.warning("dropped %d webhook events older than max_age, never delivered", dropped)

    def wake(self) -> None:
        """Events were written: dispatch now rather than at the next tick."""
        self._wakeup.set()

    async def _run(self) -> None:
        s = self.settings
        loop = asyncio.get_running_loop()
        gauge_at = prune_at = 0.0
        while True:
            full = False
            try:
                done = await self.dispatcher.run_once()
                full = done.events >= self.dispatcher.limit
                if done.webhooks and self._send:
                    self.sender.wake()
                if loop.time() >= gauge_at:
                    gauge_at = loop.time() + s.gauge_every
                    metrics.EVENTS_PENDING.set(await backlog(self._db))
                if loop.time() >= prune_at:
                    prune_at = loop.time() + s.prune_every
                    await self._housekeeping()
            except Exception as error:  # storage trouble: the events wait, try again
                log.warning("dispatching webhook events failed: %s", error)
            if full:
                await asyncio.sleep(0)
                continue
            self._wakeup.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wakeup.wait(), s.interval)


def _drop_expired(conn: Connection, before: float, now: float) -> int:
    """Drop every webhook's deliveries older than max_age, sent or not by this node (with
    every node's sending off, nothing else would)."""
    hooks = conn.execute(select(outbox.W.c.id)).scalars().all()
    return sum(outbox.drop_older(conn, hook, before, now) for hook in hooks)


def _any_pending(conn: Connection) -> bool:
    E = outbox.E
    return conn.execute(select(E.c.id).where(outbox.PENDING).limit(1)).first() is not None


async def start_webhooks(
    config: WebhooksConfig,
    db: Database,
    writer: Writer,
    box: Cipher,
    guard: HostGuard,
    node: str,
) -> Webhooks:
    """The started machinery per `[webhooks]`. A node with `enabled = false` sends nothing
    but still dispatches, so that the outbox never piles up behind it."""
    settings = WebhookSettings(
        batch_size=config.batch_size, timeout=config.timeout, max_age=config.max_age
    )
    webhooks = Webhooks(db, writer, box, guard, node, settings, send=config.enabled)
    await webhooks.start()
    return webhooks
