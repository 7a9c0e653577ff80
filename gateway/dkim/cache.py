"""The signer cache intake uses: each domain's active DKIM signer, refreshed from storage."""

from __future__ import annotations

import asyncio
import logging
import time

from gateway.dkim.errors import DkimError
from gateway.dkim.names import from_domain
from gateway.dkim.signer import Signer
from gateway.security.secrets import SecretError
from storage import dkim_keys
from storage.db import Database
from storage.dkim_keys import Cipher

log = logging.getLogger("postern.dkim")


class Signers:
    """The active signer of every domain, in memory, refreshed from storage every `ttl` s.

    Intake signs on the hot path, so the lookup is a dict read; a key activated on another
    node is picked up within `ttl`. Signers whose key did not change are kept (loading an
    RSA key costs about a millisecond). A key that fails to decrypt is logged and its domain
    left unsigned rather than refusing mail.
    """

    def __init__(self, db: Database, box: Cipher, ttl: float = 10.0) -> None:
        self._db = db
        self._box = box
        self._ttl = ttl
        self._by_domain: dict[str, tuple[str, Signer]] = {}
        self._loaded_at = float("-inf")
        self._lock = asyncio.Lock()

    async def reload(self) -> None:
        keys = await dkim_keys.active_keys(self._db, self._box)
        fresh: dict[str, tuple[str, Signer]] = {}
        for key in keys:
            current = self._by_domain.get(key.record.domain)
            if current is not None and current[0] == key.record.id:
                fresh[key.record.domain] = current
                continue
            try:
                signer = Signer(key.record.domain, key.record.selector, key.private_pem())
            except (DkimError, SecretError) as error:
                log.error(
                    "DKIM key %r of %s is unusable, mail from it goes unsigned: %s",
                    key.record.selector,
                    key.record.domain,
                    error,
                )
                continue
            fresh[key.record.domain] = (key.record.id, signer)
        self._by_domain = fresh
        self._loaded_at = time.monotonic()

    def get(self, domain: str) -> Signer | None:
        entry = self._by_domain.get(domain)
        return entry[1] if entry else None

    async def for_message(self, message: bytes) -> Signer | None:
        """The signer for the message's From domain (None: leave it unsigned)."""
        if time.monotonic() - self._loaded_at > self._ttl:
            async with self._lock:
                if time.monotonic() - self._loaded_at > self._ttl:
                    await self.reload()
        if not self._by_domain:  # no key at all: skip parsing From (most relays)
            return None
        domain = from_domain(message)
        return self.get(domain) if domain else None
