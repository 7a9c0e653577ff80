"""The node's live pools: storage's pools (the config file's synced into it first) loaded
into delivery's registry, and loaded again after every change, whether made through the
API, by SIGHUP, or by another node or the CLI (seen by `look`, every few seconds).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from typing import Any

from gateway.config import PoolConfig
from gateway.delivery.upstream import PoolHealth, PoolSettings
from gateway.delivery.workers import PoolRegistry
from gateway.queue.store import Queue
from gateway.security.pool_secrets import unseal
from storage.db import Database
from storage.dkim_keys import Cipher
from storage.pools import list_pools, same_endpoint, sync_config_pools
from storage.writer import StorageUnavailable

log = logging.getLogger("postern")

WATCH_INTERVAL = 5.0  # seconds between looks for pool changes made elsewhere


class PoolSync:
    def __init__(
        self,
        db: Database,
        box: Cipher,
        registry: PoolRegistry,
        queue: Queue,
        wake: Callable[[], None],
        declared: Sequence[PoolConfig],
    ) -> None:
        self.declared = declared  # the config file's [[pools]]; SIGHUP replaces them
        self._db = db
        self._box = box  # API pools' passwords at rest
        self._registry = registry
        self._queue = queue
        self._wake = wake  # delivery's poller: mail waiting for a pool may go now
        self._lock = asyncio.Lock()
        self._loaded: int | None = None  # the stored pools last loaded

    async def changed(self) -> None:
        """Make the live pools match storage. Serialised: two changes at once must not load
        an older list last."""
        async with self._lock:
            await self._load()

    async def look(self) -> None:
        """Load the pools again if storage's differ from those loaded."""
        if _fingerprint(await list_pools(self._db)) != self._loaded:
            await self.changed()

    def live(self, pool_id: str) -> PoolSettings | None:
        """The pool as delivery uses it (password included), or None when not loaded."""
        for settings in self._registry.settings():
            if settings.id == pool_id:
                return settings
        return None

    def health(self, pool_id: str) -> PoolHealth | None:
        """The pool's failures and cool-down on this node (None when not loaded)."""
        return self._registry.health(pool_id)

    async def _load(self) -> None:
        await sync_config_pools(self._db, self.declared)
        rows = await list_pools(self._db)
        declared = {pool.name: pool for pool in self.declared}
        self._registry.load(
            [_settings(row, self._password(row, declared.get(row.name))) for row in rows]
        )
        self._loaded = _fingerprint(rows)  # a change made since shows at the next look
        # Mail waiting for an active pool is looked at again now, not at its next poll.
        try:
            woken = await self._queue.wake_pool_waiters()
        except StorageUnavailable as error:  # they wait for their next look instead
            log.warning("waking the mail waiting for a pool failed: %s", error)
            return
        if woken:
            self._wake()

    def _password(self, row: Any, declared: PoolConfig | None) -> str:
        if row.source == "config":
            return config_password(row, declared)
        return unseal(self._box, row)  # API pools: AES-GCM, bound to the pool id


def _settings(row: Any, password: str) -> PoolSettings:
    return PoolSettings(
        id=row.id,
        name=row.name,
        host=row.host,
        port=row.port,
        username=row.username,
        password=password,
        encryption=row.encryption,
        ip_pool=row.ip_pool,
        priority=row.priority,
        max_connections=row.max_connections,
        is_default=row.is_default,
        is_active=row.is_active,
        tls_verify=row.tls_verify,
        rate=row.rate,
        daily_limit=row.daily_limit,
    )


def config_password(row: Any, declared: PoolConfig | None) -> str:
    """A config pool's password (from this node's environment) goes only to the endpoint
    this node's file declares with it: nodes sharing a database may disagree for a while,
    and the row holds whichever file was synced last."""
    if declared is None or not same_endpoint(row, declared):
        if declared is not None and declared.password():
            log.warning(
                "pool %r: the stored host, port, encryption or username differ from this "
                "node's config file; its password is not used until they agree",
                row.name,
            )
        return ""
    return declared.password()


def _fingerprint(rows: Sequence[Any]) -> int:
    return hash(tuple(tuple(row) for row in rows))
