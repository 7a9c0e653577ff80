"""The node's live account upstreams: each connected account's own SMTP server, loaded into
delivery's registry beside the pools (source "account"), and loaded again after every
connect or disconnect, whether made on this node (the API says so: `changed`) or on another
(seen by `look`, every WATCH_INTERVAL seconds).

The password is unsealed here, in the process that delivers, and lives only in the
registry's settings (as a pool's does); storage and the API hold it sealed.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence

from gateway.accounts.accounts import unseal_password
from gateway.accounts.verify import NONE, SSL, STARTTLS
from gateway.delivery.upstream import PoolSettings
from gateway.delivery.workers import PoolRegistry
from gateway.queue.store import Queue
from storage.db import Database
from storage.dkim_keys import Cipher
from storage.mail_accounts import SendingAccount, sending_accounts
from storage.writer import StorageUnavailable

log = logging.getLogger("postern")

WATCH_INTERVAL = 2.0  # seconds between looks for accounts connected elsewhere
# A person's mailbox provider allows few sessions at once (and counts them against the
# account): a handful, reused, is what a mail client opens too.
MAX_CONNECTIONS = 2
_ENCRYPTION = {SSL: "ssl", STARTTLS: "tls", NONE: "none"}  # the pools' words


class AccountRoutes:
    def __init__(
        self, db: Database, box: Cipher, registry: PoolRegistry, queue: Queue,
        wake: Callable[[], None],
    ) -> None:  # fmt: skip
        self._db = db
        self._box = box  # accounts' passwords at rest, sealed to each id
        self._registry = registry
        self._queue = queue
        self._wake = wake  # delivery's poller: mail waiting for its account may go now
        self._lock = asyncio.Lock()
        self._loaded: int | None = None  # the stored accounts last loaded

    async def changed(self) -> None:
        """Make the live account upstreams match storage (serialised, as PoolSync's)."""
        async with self._lock:
            await self._load(await sending_accounts(self._db))

    async def look(self) -> None:
        """Load the accounts again if storage's differ from those loaded."""
        if hash(tuple(await sending_accounts(self._db))) != self._loaded:
            await self.changed()

    async def _load(self, accounts: Sequence[SendingAccount]) -> None:
        self._registry.load_accounts([self._settings(account) for account in accounts])
        self._loaded = hash(tuple(accounts))
        try:
            woken = await self._queue.wake_pool_waiters()
        except StorageUnavailable as error:  # they wait for their next look instead
            log.warning("waking the mail waiting for an account failed: %s", error)
            return
        if woken:
            self._wake()

    def _settings(self, account: SendingAccount) -> PoolSettings:
        return PoolSettings(
            id=account.id,
            name=account.email,  # the metrics' pool label, the mail log's relay name
            host=account.smtp_host,
            port=account.smtp_port,
            username=account.username,
            password=unseal_password(self._box, account.id, account.password_enc),
            encryption=_ENCRYPTION.get(account.smtp_security, "tls"),
            ip_pool="",  # in no group
            max_connections=MAX_CONNECTIONS,
            tls_verify=account.tls_verify,
            source="account",
        )
