"""IMAP IDLE (RFC 2177) on the inboxes this node synced, so that new mail is read at once
rather than at the next poll. It only wakes the sync: the mail itself is read by the sync,
under the account's lease, as a poll would read it.

    per account: login -> SELECT INBOX -> IDLE ... a push (EXISTS) or `renew` seconds
                 -> DONE -> NOOP (the watchdog: a dead connection fails here, not silently)
                 -> news? wake(account, True) -> IDLE again
                 a failure: wait `retry`, log in again; `wake` says False: stop watching
                 `forget` (the account was disconnected): DONE, LOGOUT, stop watching

`renew` stays under 25 minutes: servers may end an IDLE after 30 (RFC 2177 asks clients to
re-issue it within 29) and NAT boxes forget quiet connections. Each account is one task and
one connection, at most `max_watched` of them on a node; `stop` ends them all. An account
disconnected (its row gone) is noticed by the sync loop's next round (gateway.accounts.sync
calls `forget`), not only at the next renewal: its IDLE ends and the session logs out.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from aioimaplib import aioimaplib

from gateway.accounts.verify import Endpoint, imap_session, inbox_state
from gateway.security.hostguard import HostGuard
from gateway.tasks import cancel_and_wait

log = logging.getLogger("postern.accounts")
RENEW = 24 * 60.0  # seconds an IDLE lasts before DONE, NOOP and a new IDLE
RETRY = 60.0  # seconds before logging in again after a failure
MAX_WATCHED = 200  # accounts one node holds an IDLE connection to
MAX_FAILURES = 3  # IDLE sessions failed in a row before a watch gives up
Wake = Callable[[str, bool], Awaitable[bool]]  # (account, new mail?) -> still wanted?


class IdleWatch:
    def __init__(
        self,
        guard: HostGuard,
        wake: Wake,
        timeout: float,
        renew: float = RENEW,
        retry: float = RETRY,
    ) -> None:
        self._guard = guard
        self._wake = wake
        self._timeout = timeout  # each command's answer
        self.renew = renew
        self.retry = retry
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._forgotten: dict[str, asyncio.Event] = {}  # set: log out and stop

    def watching(self, account_id: str) -> bool:
        return account_id in self._tasks

    def watched(self) -> list[str]:
        """The accounts watched now."""
        return list(self._tasks)

    def forget(self, account_id: str) -> None:
        """Stop watching the account: its IDLE ends at once (DONE), the session logs out and
        the task ends; nothing if it is not watched."""
        event = self._forgotten.get(account_id)
        if event is not None:
            event.set()

    def watch(self, account_id: str, endpoint: Endpoint) -> None:
        """Start watching the account's inbox (nothing if watched already or at the cap)."""
        if account_id in self._tasks or len(self._tasks) >= MAX_WATCHED:
            return
        forgotten = asyncio.Event()
        task = asyncio.get_running_loop().create_task(
            self._run(account_id, endpoint, forgotten), name=f"IMAP IDLE {account_id}"
        )
        self._tasks[account_id] = task
        self._forgotten[account_id] = forgotten

        def done(_: object) -> None:
            self._tasks.pop(account_id, None)
            self._forgotten.pop(account_id, None)

        task.add_done_callback(done)

    async def stop(self) -> None:
        for task in list(self._tasks.values()):
            await cancel_and_wait(task)
        self._tasks.clear()
        self._forgotten.clear()

    async def _run(self, account_id: str, endpoint: Endpoint, forgotten: asyncio.Event) -> None:
        """IDLE sessions one after another; after MAX_FAILURES failed ones in a row (a changed
        password, say: no lock-out by our retries) it stops, and the next good sync of the
        account starts it again."""
        failures, loop = 0, asyncio.get_running_loop()
        while True:
            began = loop.time()
            try:
                if not await self._session(account_id, endpoint, forgotten):
                    return
            except asyncio.CancelledError:
                raise
            except Exception as error:  # the server, the network: try again later
                # a session that went through a renewal worked: only its end failed
                failures = 1 if loop.time() - began > self.renew else failures + 1
                log.info("account %s: IDLE ended (%s)", account_id, error)
                if failures >= MAX_FAILURES:
                    return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(forgotten.wait(), self.retry)
            if forgotten.is_set() or not await self._wake(account_id, False):
                return

    async def _session(self, account_id: str, endpoint: Endpoint, forgotten: asyncio.Event) -> bool:
        """One connection's IDLE rounds; False when the account is no longer wanted (the
        session then logs out, leaving imap_session)."""
        async with imap_session(endpoint, self._guard, self._timeout) as client:
            await inbox_state(client)  # SELECT INBOX
            if not client.has_capability("IDLE"):
                return False
            while not forgotten.is_set():
                news = await self._idle_once(client, forgotten)
                if forgotten.is_set():
                    break
                if not await self._wake(account_id, news):
                    return False
            log.info("account %s: disconnected; IDLE ended, logged out", account_id)
            return False

    async def _idle_once(self, client: aioimaplib.IMAP4, forgotten: asyncio.Event) -> bool:
        """One IDLE and the NOOP after it: whether the server announced new mail (pushed
        during the IDLE, or said in the answers to DONE and NOOP). `forgotten` set ends the
        IDLE at once (DONE, no NOOP)."""
        idle = await client.idle_start(timeout=self.renew)
        push = asyncio.ensure_future(client.wait_server_push(self.renew + self._timeout))
        stop = asyncio.ensure_future(forgotten.wait())
        try:
            await asyncio.wait({push, stop}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stop.cancel()
            push.cancel()  # nothing if it is done
            client.idle_done()
        pushed = push.result() if push.done() and not push.cancelled() else None
        done = await asyncio.wait_for(idle, self._timeout)
        if forgotten.is_set():
            return False
        noop = await client.noop()  # the watchdog: a dead connection raises here
        if noop.result != "OK":
            raise aioimaplib.Error("NOOP refused")
        lines = [*(pushed if isinstance(pushed, list) else []), *done.lines, *noop.lines]
        return any(bytes(line).endswith(b" EXISTS") for line in lines)
