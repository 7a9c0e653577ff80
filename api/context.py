"""What the routes need from the running service, handed over once at start-up."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from api.errors import Unavailable
from api.management import Management
from gateway.bounces.ingest import BounceIngest
from gateway.intake.attachments import AttachmentRules
from gateway.intake.pipeline import Intake
from gateway.people.login_throttle import LoginThrottle
from gateway.people.sessions import Sessions
from gateway.people.users import Users
from gateway.queue.store import Queue
from gateway.queue.suppressions import SuppressionCache
from gateway.security.ratelimit import RateLimiter
from storage.db import Database
from storage.keys import KeyStore
from storage.writer import Writer

log = logging.getLogger("postern.api")


@dataclass
class People:
    """Users and their sessions (absent in bare-app tests: only keys authenticate)."""

    users: Users
    sessions: Sessions
    throttle: LoginThrottle = field(default_factory=LoginThrottle)


@dataclass
class ApiContext:
    db: Database
    writer: Writer
    intake: Intake
    keys: KeyStore
    limiter: RateLimiter
    suppressions: SuppressionCache  # this node's in-memory copy, updated at once
    hostname: str
    handoff_timeout: float
    max_body_size: int
    body_timeout: float = 60.0  # to receive a whole request body
    max_message_size: int = 26_214_400  # the built message, as [smtp] max_message_size
    max_header_size: int = 102_400  # its header block, as [smtp] max_header_size
    manage: Management | None = None  # pools, aliases, domains (absent in bare-app tests)
    queue: Queue | None = None  # retry/cancel of messages (absent in bare-app tests)
    wake: Callable[[], None] | None = None  # nudges this node's delivery poller after a retry
    people: People | None = None  # users and sessions: without them, only keys authenticate
    public_url: str = ""  # [http] public_url: its origin is this server's own, as the Host's
    bounces: BounceIngest | None = None  # POST /api/v1/bounces (absent in bare-app tests)
    max_report_size: int = 256 * 1024  # [bounces] max_report_size
    attachment_rules: AttachmentRules = field(default_factory=AttachmentRules)  # [http]
    reputation_threshold: int = 70  # [reputation] threshold: below it, at risk
    sending_ips: tuple[str, ...] = ()  # [blocklists] sending_ips: a pool's blocklist subjects
    _pending: set[asyncio.Task[None]] = field(default_factory=set, repr=False)
    # Set when the server stops: long answers (event streams) end at once, so that the
    # drain does not wait for a client that would hold one open for an hour.
    closing: asyncio.Event = field(default_factory=asyncio.Event, repr=False)

    def management(self) -> Management:
        if self.manage is None:
            raise Unavailable("management is not available on this node")
        return self.manage

    def persons(self) -> People:
        if self.people is None:
            raise Unavailable("users are not available on this node")
        return self.people

    def message_queue(self) -> Queue:
        if self.queue is None:
            raise Unavailable("queue operations are not available on this node")
        return self.queue

    def in_background(self, work: Coroutine[Any, Any, None], what: str) -> None:
        """Run `work` after the answer has gone (failures are logged); stop() waits for it."""

        async def run() -> None:
            try:
                await work
            except Exception as error:
                log.warning("%s failed: %s", what, error)

        task = asyncio.get_running_loop().create_task(run())
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def stop(self) -> None:
        """Let background writes finish (bounded). Call before the writer stops."""
        if self._pending:
            await asyncio.wait(set(self._pending), timeout=5.0)


def iso(timestamp: float | None) -> str | None:
    """UNIX seconds -> '2026-02-17T12:00:00.000Z' (the API's documented format)."""
    if timestamp is None:
        return None
    moment = datetime.fromtimestamp(timestamp, UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")
