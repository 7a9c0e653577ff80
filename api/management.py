"""What the management routes (pools, aliases, domains) need from the running service.

Handed to ApiContext once at start-up (`ApiContext.manage`); the routes read nothing else
of the service. `reload_pools` makes the live PoolRegistry follow storage after a change
(serialised: two changes at once must not load an older list last). A watcher compares the
stored pools every few seconds and reloads when another node (or the CLI) changed them.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from gateway.config import Config
from gateway.delivery.upstream import PoolSettings
from gateway.delivery.workers import PoolRegistry
from gateway.dns import Resolver
from gateway.intake.identities import Identities
from gateway.security.hostguard import HostGuard
from gateway.tasks import cancel_and_wait
from storage.db import Database
from storage.dkim_keys import Cipher
from storage.pools import list_pools

log = logging.getLogger("postern.api")

WATCH_INTERVAL = 5.0  # seconds between checks for pool changes made elsewhere
TOKEN_TTL = 48 * 3600.0  # seconds an alias verification link stays valid


@dataclass
class Management:
    box: Cipher  # pool passwords (and DKIM keys) at rest
    identities: Identities  # verified domains and aliases, as intake sees them
    registry: PoolRegistry  # the live pools (decrypted passwords: the connection test)
    reload: Callable[[], Awaitable[None]]  # Service.reload_pools
    guard: HostGuard  # SSRF: pool hosts (the one delivery uses)
    webhook_guard: HostGuard  # SSRF: webhook URLs (public only, unless [webhooks] allow_private)
    resolver: Resolver  # domain checks: [dns] nameservers, no cache
    hostname: str  # EHLO name of the connection test; SPF record
    probe_timeout: float  # per step of the connection test
    public_url: str  # base of the links in verification mail
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock, repr=False)
    _watcher: asyncio.Task[None] | None = field(default=None, repr=False)
    _db: Database | None = field(default=None, repr=False)
    _loaded: int | None = field(default=None, repr=False)  # the stored pools last loaded

    @classmethod
    def build(
        cls,
        config: Config,
        box: Cipher,
        identities: Identities,
        registry: PoolRegistry,
        reload: Callable[[], Awaitable[None]],
        guard: HostGuard | None = None,
        webhook_guard: HostGuard | None = None,
    ) -> Management:
        host, port = config.http.listen
        shown = f"[{host}]" if ":" in host else host
        return cls(
            box=box,
            identities=identities,
            registry=registry,
            reload=reload,
            guard=guard or HostGuard(config.security.deny_networks),
            webhook_guard=webhook_guard
            or HostGuard(
                config.security.deny_networks, allow_private=config.webhooks.allow_private
            ),
            resolver=Resolver(config.dns.nameservers, cache_size=0),
            hostname=config.server.hostname,
            probe_timeout=min(config.delivery.connect_timeout, 15.0),
            public_url=config.http.public_url or f"http://{shown}:{port}",
        )

    async def reload_pools(self) -> None:
        async with self._lock:
            if self._db is not None:  # before the reload: a change in between shows next time
                self._loaded = await _fingerprint(self._db)
            await self.reload()

    def start(self, db: Database, interval: float = WATCH_INTERVAL) -> None:
        self._db = db
        loop = asyncio.get_running_loop()
        self._watcher = loop.create_task(self._watch(db, interval), name="pool-watch")

    async def stop(self) -> None:
        await cancel_and_wait(self._watcher)
        self._watcher = None

    async def _watch(self, db: Database, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            try:
                if await _fingerprint(db) != self._loaded:
                    await self.reload_pools()
            except Exception as error:  # keep the pools we have; look again later
                log.warning("checking for pool changes failed: %s", error)

    def live(self, pool_id: str) -> PoolSettings | None:
        """The pool as delivery uses it (password included), or None when not loaded."""
        for settings in self.registry.settings():
            if settings.id == pool_id:
                return settings
        return None


async def _fingerprint(db: Database) -> int:
    return hash(tuple(tuple(row) for row in await list_pools(db)))
