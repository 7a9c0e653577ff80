"""Delivery: workers take claimed messages, send them through a pool, record the outcome.

Messages reach the workers two ways: straight from intake (claimed in the transaction that
stored them, so no second read) and from a poller that claims what is due in storage
(retries, messages released by a stopped or crashed node). The in-memory buffer is bounded;
when it is full intake stores messages unclaimed and the poller picks them up later.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterable, Sequence
from dataclasses import replace

from prometheus_client import Counter

from gateway import maillog, metrics
from gateway.bounces.returnpath import ReturnPath
from gateway.config import worker_share
from gateway.delivery import simulator
from gateway.delivery.backoff import is_throttling
from gateway.delivery.direct import DIRECT, DirectRoutes
from gateway.delivery.slowdown import Postponed, Wait, no_pool_wait
from gateway.delivery.throttle import Throttle, Ticket, show_limits
from gateway.delivery.upstream import (
    PoolHealth,
    PoolSettings,
    PoolUnavailable,
    SessionSettings,
    UpstreamPool,
    deferred,
)
from gateway.delivery.warmup import WarmupGate
from gateway.message import DeliveryResult, Outcome, QueuedMessage, Route
from gateway.queue import retry
from gateway.queue.store import AttemptRecord, Queue
from gateway.routing import Plan, at_attempt
from storage.warmup import Reserved
from storage.writer import StorageUnavailable

log = logging.getLogger("postern.delivery")

# Routes whose plan PoolRegistry keeps: there are about as many as pools and groups.
_PLANS_KEPT = 1024
# At shutdown, transactions still waiting for an upstream are cut off this long before the
# drain deadline, so that their outcome is recorded by then.
CUT_OFF_GRACE = 1.0


class PoolRegistry:
    """The live UpstreamPool objects: one per configured pool, and one per connected
    account (its own SMTP server, source "account": in no group, never listed as a pool,
    reached only by a route pinned to it)."""

    def __init__(self, session: SessionSettings, processes: int = 1) -> None:
        self._session = session
        # Processes of this node sharing each upstream's `max_connections` (serve's workers):
        # each opens its share, rounded up, so the node stays near the cap it was given.
        self._processes = max(1, processes)
        self._pools: dict[str, UpstreamPool] = {}
        self._accounts: dict[str, UpstreamPool] = {}
        self._plans: dict[Route, Plan] = {}  # at_attempt's answers for the pools loaded now
        self._cut_off = False  # shutdown's deadline: pools (re)made after it start cut off

    def load(self, settings: Iterable[PoolSettings]) -> None:
        """Replace the pool set; pools whose settings did not change keep their sessions."""
        self._pools = self._replaced(self._pools, settings)
        self._plans = {}
        show_limits(pool.settings for pool in self._pools.values())

    def load_accounts(self, settings: Iterable[PoolSettings]) -> None:
        """Replace the connected accounts' upstreams, as `load` does the pools."""
        self._accounts = self._replaced(self._accounts, settings)
        self._plans = {}

    def _replaced(
        self, old: dict[str, UpstreamPool], settings: Iterable[PoolSettings]
    ) -> dict[str, UpstreamPool]:
        fresh: dict[str, UpstreamPool] = {}
        for item in settings:
            if self._processes > 1:
                share = worker_share(item.max_connections, self._processes)
                item = replace(item, max_connections=share)
            current = old.get(item.id)
            fresh[item.id] = (
                current
                if current and current.settings == item
                else UpstreamPool(item, self._session)
            )
        for pool_id, pool in old.items():
            if fresh.get(pool_id) is not pool:
                asyncio.get_running_loop().create_task(pool.close())
        if self._cut_off:  # a reload during shutdown: no full send may start in its last second
            for pool in fresh.values():
                pool.cut_off()
        return fresh

    def settings(self) -> list[PoolSettings]:
        """The pools (never the connected accounts: they are no pool of any group)."""
        return [pool.settings for pool in self._pools.values()]

    def health(self, pool_id: str) -> PoolHealth | None:
        """A pool's health as of now (None when not loaded): read only, for the dashboard."""
        pool = self._pools.get(pool_id)
        return None if pool is None else pool.health(time.time())

    def account_ids(self) -> frozenset[str]:
        """The connected accounts delivery can send through now."""
        return frozenset(self._accounts)

    def is_account(self, pool_id: str | None) -> bool:
        """Whether `pool_id` names a connected account (asked per message: no set made)."""
        return pool_id in self._accounts

    def plan(self, route: Route) -> Plan:
        """Where a message of `route` goes now (gateway.routing.at_attempt): worked out once
        per route until the pools or the accounts change, not for every message."""
        plan = self._plans.get(route)
        if plan is None:
            if len(self._plans) >= _PLANS_KEPT:  # routes of pools long gone, say
                self._plans.clear()
            plan = at_attempt(route, self.settings(), self.account_ids())
            self._plans[route] = plan
        return plan

    def get(self, pool_id: str) -> UpstreamPool:
        return self._pools.get(pool_id) or self._accounts[pool_id]

    def all(self) -> list[UpstreamPool]:
        return [*self._pools.values(), *self._accounts.values()]

    async def close(self) -> None:
        await asyncio.gather(*(pool.close() for pool in self.all()))

    def cut_off(self) -> None:
        self._cut_off = True
        for pool in self.all():
            pool.cut_off()


class Delivery:
    """The workers, their buffer and poller; intake reaches them as a
    gateway.queue.handoff.Handoff."""

    def __init__(
        self,
        queue: Queue,
        registry: PoolRegistry,
        workers: int,
        buffer_size: int = 2000,
        buffer_bytes: int = 64 * 1024 * 1024,
        poll_interval: float = 1.0,
        direct: DirectRoutes | None = None,
        throttle: Throttle | None = None,
        return_path: ReturnPath | None = None,
        warmup: WarmupGate | None = None,
    ) -> None:
        self._queue = queue
        self._warmup = warmup  # accounts' and pools' warmups; None = none enforced
        self._return_path = return_path  # [bounces] domain: the VERP envelope sender
        self._registry = registry
        self._throttle = throttle  # pool rate and daily limits; None = none enforced
        self._direct = direct  # MX delivery for routes that name no pool
        self._workers = workers
        self._buffer: asyncio.Queue[QueuedMessage] = asyncio.Queue()
        self._buffer_size = buffer_size
        self._buffer_bytes = buffer_bytes  # bodies held in memory, waiting or in flight
        self._held_bytes = 0
        self._poll_interval = poll_interval
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._in_flight = 0
        self._waiters: dict[str, asyncio.Future[str]] = {}
        self._accepting = True
        self._cut_off = False  # shutdown's deadline came: upstream sessions were aborted

    # --- feeding ----------------------------------------------------------------------

    def _room(self) -> int:
        if not self._accepting or self._held_bytes >= self._buffer_bytes:
            return 0
        return max(0, self._buffer_size - self._buffer.qsize() - self._in_flight)

    def has_room(self) -> bool:
        return self._room() > 0

    def push(self, message: QueuedMessage) -> None:
        """Hand over a message this node has claimed."""
        self._held_bytes += len(message.content)
        self._buffer.put_nowait(message)

    def wait_for(self, message_id: str) -> asyncio.Future[str]:
        """A future resolved with the message's status after its next attempt is recorded."""
        future = self._waiters.get(message_id)
        if future is None:
            future = asyncio.get_running_loop().create_future()
            self._waiters[message_id] = future
            # A caller that stops waiting (handoff timeout) cancels it: forget it then, as
            # another node may be the one to attempt the message.
            future.add_done_callback(lambda f: f.cancelled() and self._waiters.pop(message_id, 0))
        return future

    def wake(self) -> None:
        self._wake.set()

    # --- lifecycle --------------------------------------------------------------------

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._tasks = [
            loop.create_task(self._worker(), name=f"worker-{i}") for i in range(self._workers)
        ]
        self._tasks.append(loop.create_task(self._poller(), name="poller"))
        self._tasks.append(loop.create_task(self._housekeeping(), name="housekeeping"))

    async def stop(self, drain_timeout: float) -> None:
        """Stop taking work; within `drain_timeout` every attempt in flight has finished or
        been abandoned. Those still waiting for an upstream a second before are cut off (the
        sessions are aborted): one whose final dot went out is recorded as an attempt and a
        possible duplicate, the others are handed back with no attempt counted. What is left
        at the deadline (a connection being opened, say) is cancelled; it sent nothing, and
        the claims are released by the caller."""
        self._accepting = False
        deadline = time.monotonic() + drain_timeout
        await self._drained(deadline - CUT_OFF_GRACE)
        if self._in_flight:
            log.warning(
                "stopping: cutting off the deliveries still in flight (%d)", self._in_flight
            )
            self._cut_off = True
            self._registry.cut_off()
            if self._direct is not None:
                self._direct.cut_off()
            await self._drained(deadline)
        if self._in_flight:
            log.warning("stopping: abandoning %d deliveries under way", self._in_flight)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        await self._registry.close()
        if self._direct is not None:
            await self._direct.close()

    async def _drained(self, deadline: float) -> None:
        while self._in_flight and time.monotonic() < deadline:
            await asyncio.sleep(0.05)

    # --- loops ------------------------------------------------------------------------

    async def _worker(self) -> None:
        while True:
            message = await self._buffer.get()
            try:
                if self._accepting:  # else left claimed: released at shutdown
                    self._in_flight += 1
                    try:
                        await self.deliver(message)
                    except Exception:  # a bug must cost one message a minute, not a worker
                        log.exception("delivering %s failed; it is retried in a minute", message.id)
                        with contextlib.suppress(Exception):
                            await self._queue.release(message.id, 60.0)
                    finally:
                        self._in_flight -= 1
            finally:
                self._held_bytes -= len(message.content)

    async def _poller(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._poll_interval):
                    await self._wake.wait()
            self._wake.clear()
            room = min(self._room(), 500)
            if room <= 0:
                continue
            try:
                claimed = await self._queue.claim_due(room)
            except (StorageUnavailable, OSError) as error:
                log.warning("claiming due messages failed: %s", error)
                continue
            except Exception:  # (a body too big for memory...): the claims were given back
                log.exception("claiming due messages failed")
                continue
            for message in claimed:
                self.push(message)
            if len(claimed) == room:
                self._wake.set()  # more may be due: go again at once

    async def _housekeeping(self) -> None:
        """Every 5 s: renew this node's claims and its sends' rate tickets, and close the
        upstream sessions idle too long."""
        renewed = time.monotonic()
        while True:
            await asyncio.sleep(5.0)
            if time.monotonic() - renewed >= self._queue.lease / 4:
                # Keep this node's claims alive while it holds them, however long a message
                # waits for a connection: a lapsed lease would let the poller (or another
                # node) claim and send it a second time.
                try:
                    await self._queue.renew_claims()
                    renewed = time.monotonic()
                except StorageUnavailable as error:
                    log.warning("renewing claims failed: %s", error)
            if self._throttle is not None:
                # Sends in flight keep counting against their pool's rate (it paces itself).
                await self._throttle.renew()
            if self._warmup is not None:
                await self._warmup.renew()
            for pool in self._registry.all():
                await pool.reap_idle()
            if self._direct is not None:
                await self._direct.reap_idle()

    # --- one attempt ------------------------------------------------------------------

    async def deliver(self, message: QueuedMessage) -> str:
        message = self._with_return_path(message)
        if not message.recipients:
            # Nothing pending: a report bounced the last one while a claim that had lapsed
            # (its node gone) still named the message. Its record settles it; no upstream.
            settled = await self._record(AttemptRecord(message, {}, None))
            return self._answer(message.id, settled or "deferred")
        try:
            results, pool_name = await self._attempt_all(message)
        except Postponed as postponed:
            return await self._postpone(message, postponed.wait)
        except Exception as error:  # nobody classified it: defer, never lose or spin
            log.exception("delivery attempt of %s failed", message.id)
            reason = deferred(f"internal error ({error.__class__.__name__}); will retry", "4.3.0")
            results, pool_name = dict.fromkeys(message.recipients, reason), None
        if self._cut_off and not any(_may_have_reached(r) for r in results.values()):
            # Cut off at shutdown before the upstream could take it: not the message's
            # failure. It stays claimed, and is released due now with no attempt counted.
            maillog.handed_back(message.id)
            return self._answer(message.id, "queued")
        maillog.attempted(message, results, pool_name)
        recorded = await self._record(AttemptRecord(message, results, pool_name))
        if recorded is None:
            log.warning(
                "the claim on %s lapsed during its attempt; another node owns it now and this "
                "attempt's results were not recorded (the message may be sent twice)",
                message.id,
            )
            metrics.POSSIBLE_DUPLICATES.labels(pool=pool_name or "none").inc()
        _count(results, pool_name or "none")
        return self._answer(message.id, recorded or "deferred")

    def _with_return_path(self, message: QueuedMessage) -> QueuedMessage:
        """The message with its VERP envelope sender (one HMAC), when a bounce domain is
        set, unless it leaves through a connected account; the null sender stays null
        (nothing may bounce a bounce)."""
        return_path = self._return_path
        if return_path is None or not return_path.enabled or not message.mail_from:
            return message
        if self._registry.is_account(message.route.pool_id):
            # A person's own server: it refuses or rewrites a sender it does not own, and
            # what bounces comes back to the account's inbox, which Postern reads.
            return message
        verp = return_path.address(message.id, message.mail_from)
        return replace(message, mail_from=verp, client_sender=message.mail_from)

    def _answer(self, message_id: str, status: str) -> str:
        """Tell whoever waits for this message's attempt (an HTTP send) how it went."""
        waiter = self._waiters.pop(message_id, None)
        if waiter is not None and not waiter.done():
            waiter.set_result(status)
        return status

    async def _postpone(self, message: QueuedMessage, wait: Wait) -> str:
        """The message must WAIT (gateway.delivery.slowdown): back to the queue until
        `wait.until`, without an attempt counted (the cause is ours, not the message's)."""
        await self._queue.postpone(message, wait.until, wait.pool, wait.text)
        delay = max(0.0, wait.until - time.time())
        asyncio.get_running_loop().call_later(delay + 0.01, self.wake)  # claim it on time
        maillog.waiting(message.id, wait.pool, delay, wait.text)
        return self._answer(message.id, "deferred")

    async def _record(self, attempt: AttemptRecord) -> str | None:
        """Store the outcome, retrying: the upstream has answered, and forgetting that answer
        would send the message again. The claim stays renewed meanwhile."""
        pause = 0.2
        while True:
            try:
                # A waited-on attempt (an HTTP send) commits without lingering for company.
                waited = attempt.message.id in self._waiters
                return await self._queue.record(attempt, patient=not waited)
            except StorageUnavailable as error:
                if not self._accepting:
                    log.error("giving up recording %s at shutdown: %s", attempt.message.id, error)
                    return "deferred"
                log.warning("recording %s failed (%s); retrying", attempt.message.id, error)
                await asyncio.sleep(pause)
                pause = min(pause * 2, 5.0)

    async def _attempt_all(
        self, message: QueuedMessage
    ) -> tuple[dict[str, DeliveryResult], str | None]:
        """Simulator recipients get their scripted result; the rest go upstream."""
        simulated = [rcpt for rcpt in message.recipients if simulator.handles(rcpt)]
        if not simulated:
            return await self._attempt(message)
        results = {rcpt: simulator.outcome(rcpt, message.attempts) for rcpt in simulated}
        real = [rcpt for rcpt in message.recipients if rcpt not in results]
        if not real:
            return results, simulator.POOL
        upstream, pool_name = await self._attempt(replace(message, recipients=real))
        return {**results, **upstream}, pool_name

    async def _attempt(
        self, message: QueuedMessage
    ) -> tuple[dict[str, DeliveryResult], str | None]:
        registry = self._registry
        plan = registry.plan(message.route)
        pool_ids = plan.pool_ids
        if not pool_ids:
            if plan.direct and self._direct is not None:  # no pool at all: MX
                return await self._direct.deliver(message), DIRECT
            return self._unserved(message, plan), None
        if message.retried_at is not None:  # an operator's retry: the route's pools afresh
            for pool_id in pool_ids:
                self._registry.get(pool_id).forgive(message.retried_at)
        now = time.time()
        ready = [pid for pid in pool_ids if self._registry.get(pid).healthy(now)]
        if not ready:
            if message.retried_at is not None:
                self._wait_for_cooldown(message, pool_ids)
            reason = "every pool of this route is cooling down after repeated failures"
            return dict.fromkeys(message.recipients, deferred(reason)), None
        last: DeliveryResult | None = None
        tried: str | None = None
        waits: list[Wait] = []
        for pool_id in ready:
            pool = self._registry.get(pool_id)
            settings = pool.settings
            # A warming subject over its hour's or day's share, or paused: it waits. (Most
            # pools have no warmup and no limit: asked without a coroutine each.)
            warmup, throttle = self._warmup, self._throttle
            warm = await warmup.reserve(settings) if warmup and warmup.limits(settings) else None
            if isinstance(warm, Wait):
                waits.append(warm)
                continue
            ticket = (
                await throttle.reserve(settings) if throttle and throttle.limits(settings) else None
            )
            if isinstance(ticket, Wait):  # over its limit: the next pool, if any, goes now
                if warm is not None and self._warmup is not None:
                    await self._warmup.release(warm)
                waits.append(ticket)
                continue
            tried = pool.name
            try:
                results = await self._send(message, pool, ticket, warm)
            except PoolUnavailable as unavailable:
                last = unavailable.result
                log.info("pool %s unavailable for %s: %s", pool.name, message.id, last.describe())
                continue
            return results, pool.name
        if waits and tried is None:
            wait = min(waits, key=lambda w: w.until)
            deadline = self._deadline(message)
            if time.time() < deadline:
                raise Postponed(replace(wait, until=min(wait.until, deadline)))
            last = deferred(wait.text)  # recorded past max_age: it expires as usual
        last = last or deferred("no pool could be reached")
        return dict.fromkeys(message.recipients, last), tried

    def _unserved(self, message: QueuedMessage, plan: Plan) -> dict[str, DeliveryResult]:
        """No active pool serves the message's route now. It waits for one (Postponed, no
        attempt counted) and never goes out through another group; past max_age the
        deferral is recorded and it expires as usual."""
        text = plan.unserved()
        deadline = self._deadline(message)
        now = time.time()
        if plan.waits and now < deadline:
            route = plan.route
            label = route.pool_id or route.ip_pool or ""
            wait = no_pool_wait(message.last_response, text, message.updated_at, now)
            until = min(now + wait, deadline)
            raise Postponed(Wait(pool=label, reason="no_pool", until=until, text=text))
        return dict.fromkeys(message.recipients, deferred(text, "4.4.3"))

    def _deadline(self, message: QueuedMessage) -> float:
        """When the message expires: a wait never runs past it."""
        return retry.deadline(message.age_from, self._queue.max_age)

    def _wait_for_cooldown(self, message: QueuedMessage, pool_ids: Sequence[str]) -> None:
        """A retried message whose pools all went back to cooling down since the retry (they
        failed again): it waits for the first to be ready, with no attempt counted, rather
        than spend its forced attempt on no upstream at all."""
        first = min((self._registry.get(pid) for pid in pool_ids), key=lambda p: p.unhealthy_until)
        until = min(first.unhealthy_until, self._deadline(message))
        if until > time.time():
            text = f"waiting: pool {first.name} cooling down after repeated failures"
            raise Postponed(Wait(pool=first.name, reason="cooldown", until=until, text=text))

    async def _send(
        self,
        message: QueuedMessage,
        pool: UpstreamPool,
        ticket: Ticket | None,
        warm: Reserved | None = None,
    ) -> dict[str, DeliveryResult]:
        """One try through one pool; a throttling reply (421, 4.7.x) makes it back off."""
        try:
            results = await pool.send(message)
        except PoolUnavailable as unavailable:
            if is_throttling(unavailable.result):
                await self._throttled(message, pool, unavailable.result)
            raise
        finally:
            if ticket is not None and self._throttle is not None:
                await self._throttle.sent(ticket)
            if warm is not None and self._warmup is not None:
                await self._warmup.sent(warm)
        reply = next((r for r in results.values() if is_throttling(r)), None)
        if reply is not None:
            await self._throttled(message, pool, reply)
        return results

    async def _throttled(
        self, message: QueuedMessage, pool: UpstreamPool, reply: DeliveryResult
    ) -> None:
        """A throttling reply (421, 4.7.x): the pool backs off, and the message's events
        say so."""
        if self._warmup is not None:  # a receiver asking to slow down may pause a warmup
            await self._warmup.throttled(pool.settings, reply)
        halved = pool.backoff.trigger()
        metrics.POOL_THROTTLED.labels(pool=pool.name, reason="backoff").inc()
        log.warning(
            "pool %s asked to slow down (%s); concurrency %s to %d",
            pool.name, reply.describe(), "halved" if halved else "stays", pool.concurrency,
        )  # fmt: skip
        text = f"{reply.describe()}; concurrency {pool.concurrency}"
        status = "deferred" if message.attempts else "queued"
        try:
            await self._queue.note_throttled(message.id, status, pool.name, text)
        except StorageUnavailable as error:  # an event lost is better than a send repeated
            log.warning("recording the throttled event of %s failed: %s", message.id, error)


def _may_have_reached(result: DeliveryResult) -> bool:
    """The upstream answered for good, or may have taken the message without answering."""
    return result.outcome is not Outcome.DEFERRED or result.possible_duplicate


_COUNTERS = {
    Outcome.DELIVERED: metrics.MESSAGES_DELIVERED,
    Outcome.BOUNCED: metrics.MESSAGES_BOUNCED,
    Outcome.DEFERRED: metrics.MESSAGES_DEFERRED,
}
# Each (outcome, pool)'s counter child, looked up once: labels() sorts its arguments and
# takes a lock at every call. Pools are few, and prometheus-client keeps every child anyway.
_counted: dict[tuple[Outcome, str], Counter] = {}


def _count(results: dict[str, DeliveryResult], pool: str) -> None:
    for result in results.values():
        key = (result.outcome, pool)
        counter = _counted.get(key)
        if counter is None:
            counter = _counted[key] = _COUNTERS[result.outcome].labels(pool=pool)
        counter.inc()
