"""The suppression list, held in memory: checked at every RCPT, so it must cost nothing.

Storage is the truth; this is a copy. This node's own changes apply at once. Other nodes'
additions arrive with the next incremental refresh (every few seconds, by `created_at`),
and their removals with the next full reload (every minute). Stored addresses are keyed
again as they are loaded: during a rolling upgrade on PostgreSQL, nodes not yet upgraded
still store them as given (mixed case, quoted).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence

from sqlalchemy import Connection, select

from gateway.addresses import mailbox_key
from gateway.message import DeliveryResult
from storage.db import Database
from storage.models import Suppression

S = Suppression

# A row committed a little after another node's refresh may carry an older created_at.
_SLACK = 30.0
FOLLOW_INTERVAL = 5.0  # seconds between looks at other nodes' changes (`follow`)
RELOAD_EVERY = 12  # looks: removals made elsewhere show within a minute


def from_results(results: Mapping[str, DeliveryResult]) -> list[tuple[str, str]]:
    """The entries (mailbox key, reason) an attempt's results add to the list: a hard
    bounce's address ("bounced") and a complaint's ("complaint")."""
    return [
        (mailbox_key(rcpt), "complaint" if result.complaint else "bounced")
        for rcpt, result in results.items()
        if result.hard_bounce or result.complaint
    ]


class SuppressionCache:
    def __init__(self, db: Database) -> None:
        self._db = db
        self._keys: set[str] = set()
        self._watermark = 0.0
        self._looks = 0

    def __len__(self) -> int:
        return len(self._keys)

    def suppressed(self, addresses: Sequence[str]) -> set[str]:
        """The addresses (as given) whose mailbox is suppressed."""
        return {address for address in addresses if mailbox_key(address) in self._keys}

    def add(self, addresses: Iterable[str]) -> None:
        self._keys.update(mailbox_key(address) for address in addresses)

    def discard(self, address: str) -> None:
        self._keys.discard(mailbox_key(address))

    async def reload(self) -> None:
        """Replace the copy with storage's list."""
        started = time.time()
        self._keys = await self._db.read(
            lambda conn: {_stored_key(row[0]) for row in conn.execute(select(S.c.email))}
        )  # keyed in the read thread: a million rows must not hold the event loop
        self._watermark = started - _SLACK

    async def refresh(self) -> None:
        """Add what other nodes suppressed since the last look."""
        since = self._watermark
        started = time.time()

        def query(conn: Connection) -> list[str]:
            rows = conn.execute(select(S.c.email).where(S.c.created_at >= since))
            return [_stored_key(row[0]) for row in rows]

        self._keys.update(await self._db.read(query))
        self._watermark = started - _SLACK

    async def follow(self) -> None:
        """One look at other nodes' changes, run every FOLLOW_INTERVAL: additions each
        time, a full reload every RELOAD_EVERY looks (for removals)."""
        self._looks += 1
        await (self.reload() if self._looks % RELOAD_EVERY == 0 else self.refresh())


def _stored_key(email: str) -> str:
    """A stored address's key: rows this version wrote are keys already (the common case,
    checked cheaply); rows an older node wrote (mixed case, quotes) are keyed here."""
    if email.isascii() and email == email.lower() and '"' not in email and not email.endswith("."):
        return email
    return mailbox_key(email)
