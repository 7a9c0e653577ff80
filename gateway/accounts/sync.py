"""The inbox sync of connected accounts, on every node, each account by one node at a time.

    pending/synced/error --(due: next_sync_at passed, lease free)--> claim (a conditional
    UPDATE in storage: one node wins) = syncing --> IMAP login, SELECT INBOX, UIDVALIDITY and
    UIDNEXT read --> synced (both stored), or error with last_error --> due again after
    `interval`

A sync is bounded by `timeout` end to end, and its lease lasts `LEASES` times that, so a lease
never lapses under a live node: another node takes an account only from a node that died
(its lease passed), or after this node gives its leases back (start, stop). Every connection
goes through the SSRF guard (gateway.accounts.verify). With an `Inbox`, a sync also reads the
new mail by UID and hands each report over (gateway.accounts.inbox): the sync is then bounded
by LEASES - 1 timeouts, and starts no message after one.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

from aioimaplib import aioimaplib

from gateway.accounts.accounts import unseal
from gateway.accounts.inbox import Inbox, LeaseLost
from gateway.accounts.verify import IMAP, Endpoint, VerifyFailed, imap_session, inbox_state
from gateway.errors import PosternError, StorageUnavailable
from gateway.security.hostguard import HostGuard
from storage import mail_accounts
from storage.db import Database
from storage.dkim_keys import Cipher
from storage.mail_accounts import ERROR, SYNCED, SyncJob, SyncOutcome

log = logging.getLogger("postern.accounts")
LEASES = 4  # a lease lasts this many sync timeouts
BATCH = 20  # accounts one round takes at most


@dataclass(frozen=True)
class SyncSettings:
    node: str
    interval: float = 60.0  # an account is due again this long after its sync
    timeout: float = 15.0  # one sync, end to end


class AccountSync:
    def __init__(
        self,
        db: Database,
        box: Cipher,
        guard: HostGuard,
        settings: SyncSettings,
        inbox: Inbox | None = None,
    ) -> None:
        self._db = db
        self._box = box
        self._guard = guard
        self.settings = settings
        self._inbox = inbox  # None: the sync only reads INBOX's state

    async def run_once(self) -> None:
        """One round of the background loop."""
        await self.sync_due()

    async def sync_due(self) -> int:
        """Sync the accounts due now that this node leases; how many it synced."""
        now = time.time()
        due = await self._db.read(lambda conn: mail_accounts.due(conn, now, BATCH))
        done = 0
        for account_id in due:
            job = await self._claim(account_id)
            if job is not None:
                await self._sync(job)
                done += 1
        return done

    async def _claim(self, account_id: str) -> SyncJob | None:
        node, now = self.settings.node, time.time()
        until = now + LEASES * self.settings.timeout
        return await self._db.transaction(
            lambda conn: mail_accounts.claim(conn, account_id, node, now, until)
        )

    async def _sync(self, job: SyncJob) -> None:
        outcome = await self.sync_one(job)
        node, now = self.settings.node, time.time()
        next_at = now + self.settings.interval
        kept = await self._db.transaction(
            lambda conn: mail_accounts.finish(conn, job.id, node, outcome, now, next_at)
        )
        if not kept:
            log.info("account %s: sync outcome dropped (disconnected, or lease lost)", job.id)
        elif outcome.status == ERROR:
            log.warning("account %s (%s): sync failed: %s", job.id, job.email, outcome.error)

    async def sync_one(self, job: SyncJob) -> SyncOutcome:
        """Log in, SELECT INBOX, read UIDVALIDITY and UIDNEXT (and, with an Inbox, hand its
        new mail over); never raises for the mailbox's sake (its failure is the outcome)."""
        password = unseal(self._box, job)
        if not password:
            return SyncOutcome(ERROR, "no password stored: connect the account again")
        endpoint = Endpoint(
            job.imap_host, job.imap_port, job.imap_security, job.username, password,
            job.tls_verify,
        )  # fmt: skip
        timeout = self.settings.timeout
        limit = timeout if self._inbox is None else (LEASES - 1) * timeout
        try:
            async with asyncio.timeout(limit):
                async with imap_session(endpoint, self._guard, timeout) as client:
                    return await self._read(client, job)
        except VerifyFailed as failed:
            return SyncOutcome(ERROR, str(failed))
        except LeaseLost:
            return SyncOutcome(ERROR, "the account's lease was lost mid-sync")
        except StorageUnavailable as error:
            return SyncOutcome(ERROR, f"storage unavailable: {error}")
        except PosternError as refused:  # the SSRF guard: a host now in a denied network
            return SyncOutcome(ERROR, f"IMAP connect refused: {refused}")
        except TimeoutError:
            return SyncOutcome(ERROR, f"{IMAP.upper()} sync took longer than {limit:g}s")
        except Exception as error:  # the server said something unexpected mid-sync
            return SyncOutcome(ERROR, f"IMAP sync failed: {error.__class__.__name__}")

    async def _read(self, client: aioimaplib.IMAP4, job: SyncJob) -> SyncOutcome:
        if self._inbox is None:
            uidvalidity, uidnext = await inbox_state(client)
            return SyncOutcome(SYNCED, uidvalidity=uidvalidity, uidnext=uidnext)
        drained = await self._inbox.drain(client, job.id)
        if drained.handed or drained.skipped:
            log.info(
                "account %s: %d reports handed over, %d messages skipped",
                job.id, drained.handed, drained.skipped,
            )  # fmt: skip
        return SyncOutcome(SYNCED, uidvalidity=drained.uidvalidity, uidnext=drained.uidnext)

    async def release(self) -> None:
        """Give back every lease this node holds (start-up, shutdown)."""
        node = self.settings.node
        await self._db.transaction(lambda conn: mail_accounts.release(conn, node))
