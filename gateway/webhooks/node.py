"""Webhooks on a node: the sender (gateway.webhooks.sender), which POSTs each webhook the
events after its cursor, and the housekeeping around it (the pending gauge, old attempt rows).

Events need no fan-out: every webhook reads the events table itself (storage.webhook_outbox),
so writing an event costs nothing per webhook, and a node with sending off leaves nothing to
pile up.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from gateway import metrics
from gateway.config import WebhooksConfig
from gateway.security.hostguard import HostGuard
from gateway.tasks import cancel_and_wait, repeat
from gateway.webhooks.sender import WebhookSender
from storage import webhook_outbox as outbox
from storage.db import Database
from storage.dkim_keys import Cipher
from storage.webhooks import backlog
from storage.writer import Writer

log = logging.getLogger("postern.webhooks")

KEEP_ATTEMPTS = 1000  # attempt rows kept per webhook (GET .../deliveries)


@dataclass(frozen=True)
class WebhookSettings:
    batch_size: int = 500  # events per POST (at most)
    timeout: float = 10.0  # per POST, everything included
    max_age: float = 3 * 86400.0  # events older than this are skipped, never sent
    gauge_every: float = 5.0  # seconds between refreshes of postern_events_pending
    prune_every: float = 60.0  # seconds between prunes of old attempt rows


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
        self._send = send  # False: housekeeping only ([webhooks] enabled = false on this node)
        s = self.settings
        self._db = db
        self._writer = writer
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
        self._prune_at = 0.0  # loop time of the next prune of attempt rows

    async def start(self) -> None:
        if self._send:
            await self.sender.release_all()  # what this node held when it last stopped
            self.sender.start()
        upkeep = repeat(
            self.settings.gauge_every, self._housekeeping, "webhook housekeeping",
            at_once=True, logger=log,
        )  # fmt: skip
        self._task = asyncio.get_running_loop().create_task(upkeep, name="webhook-housekeeping")

    async def stop(self) -> None:
        await cancel_and_wait(self._task)
        self._task = None
        if self._send:
            await self.sender.stop()

    async def _housekeeping(self) -> None:
        """Refresh the pending gauge; keep only the latest attempt rows of each webhook
        (every prune_every)."""
        metrics.EVENTS_PENDING.set(await backlog(self._db))
        now = asyncio.get_running_loop().time()
        if now >= self._prune_at:
            self._prune_at = now + self.settings.prune_every
            await self._writer.submit(lambda conn: outbox.prune_attempts(conn, KEEP_ATTEMPTS))


async def start_webhooks(
    config: WebhooksConfig,
    db: Database,
    writer: Writer,
    box: Cipher,
    guard: HostGuard,
    node: str,
) -> Webhooks:
    """The started machinery per `[webhooks]` (a node with `enabled = false` sends nothing)."""
    settings = WebhookSettings(
        batch_size=config.batch_size, timeout=config.timeout, max_age=config.max_age
    )
    webhooks = Webhooks(db, writer, box, guard, node, settings, send=config.enabled)
    await webhooks.start()
    return webhooks
