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
from gateway.accounts.idle import RENEW, RETRY, IdleWatch
from gateway.accounts.inbox import Inbox, LeaseLost
from gateway.accounts.verify import IMAP, Endpoint, VerifyFailed, imap_session, inbox_state
from gateway.errors import PosternError, StorageUnavailable
from gateway.security.hostguard import HostGuard
from storage import mail_accounts
from storage.db import Database
from storage.dkim_keys import Cipher
from storage.mail_accounts import ERROR, SYNCED, SyncJob, SyncOutcome, get_account

log = logging.getLogger("postern.accounts")
LEASES = 4  # a lease lasts this many sync timeouts
BATCH = 20  # accounts one round takes at most
WAKE_TRIES = 5  # an IDLE wake tries this many times per sync timeout to take its account


@dataclass(frozen=True)
class SyncSettings:
    node: str
    interval: float = 60.0  # an account is due again this long after its sync
    timeout: float = 15.0  # one sync, end to end
    idle: bool = False  # watch synced inboxes that offer IDLE (with an Inbox only)
    idle_renew: float = RENEW  # seconds between re-IDLEs (and NOOPs)
    idle_retry: float = RETRY  # seconds before an ended IDLE connection logs in again


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
        self.idle: IdleWatch | None = None
        if inbox is not None and settings.idle:
            self.idle = IdleWatch(
                guard, self.wake, settings.timeout, settings.idle_renew, settings.idle_retry
            )
        self._news: set[str] = set()  # accounts whose IDLE announced mail not yet synced

    async def run_once(self) -> None:
        """One round of the background loop: the IDLE watches of accounts disconnected since
        (on any node) end and log out, then the due accounts are synced."""
        await self.forget_disconnected()
        await self.sync_due()

    async def forget_disconnected(self) -> list[str]:
        """End the IDLE watches of accounts that are gone; which they were."""
        watched = self.idle.watched() if self.idle is not None else []
        if self.idle is None or not watched:
            return []
        found = await self._db.read(lambda conn: mail_accounts.existing_ids(conn, watched))
        gone = [account_id for account_id in watched if account_id not in found]
        for account_id in gone:
            self.idle.forget(account_id)
        return gone

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
        self._news.discard(job.id)  # what IDLE announces from here on needs another sync
        outcome = await self.sync_one(job)
        node, now = self.settings.node, time.time()
        next_at = now if job.id in self._news else now + self.settings.interval
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
            return SyncOutcome(ERROR, mail_accounts.NO_PASSWORD)
        endpoint = Endpoint(
            job.imap_host, job.imap_port, job.imap_security, job.username, password,
            job.tls_verify,
        )  # fmt: skip
        timeout = self.settings.timeout
        limit = timeout if self._inbox is None else (LEASES - 1) * timeout
        try:
            async with asyncio.timeout(limit):
                async with imap_session(endpoint, self._guard, timeout) as client:
                    return await self._read(client, job, endpoint)
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

    async def _read(
        self, client: aioimaplib.IMAP4, job: SyncJob, endpoint: Endpoint
    ) -> SyncOutcome:
        if self.idle is not None and client.has_capability("IDLE"):
            self.idle.watch(job.id, endpoint)
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

    async def wake(self, account_id: str, news: bool) -> bool:
        """IDLE's call: with news, the account is due now and synced at once (after a sync
        of it under way here, which then leaves it due); whether it is still connected."""
        now = time.time()
        if not news:
            return await get_account(self._db, account_id) is not None
        wanted = await self._db.transaction(
            lambda conn: mail_accounts.due_now(conn, account_id, now)
        )
        if wanted:
            self._news.add(account_id)
            for _ in range(LEASES * WAKE_TRIES):  # bounded: a sync lasts < LEASES timeouts
                await self.sync_due()
                if account_id not in self._news:
                    break
                await asyncio.sleep(self.settings.timeout / WAKE_TRIES)
        return wanted

    async def stop(self) -> None:
        """End the IDLE connections, then give the leases back."""
        if self.idle is not None:
            await self.idle.stop()
        await self.release()

    async def release(self) -> None:
        """Give back every lease this node holds (start-up, shutdown)."""
        node = self.settings.node
        await self._db.transaction(lambda conn: mail_accounts.release(conn, node))
