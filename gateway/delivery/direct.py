"""Direct delivery to the recipients' MX hosts, for mail whose route names no pool.

Each recipient domain is planned by gateway.delivery.mx (MX by preference, A/AAAA fallback, null MX
and NXDOMAIN bounce at once, DNS failures defer). Connections are pooled per destination
address with a small cap, like a configured pool's, and use opportunistic STARTTLS with no
AUTH. A destination that refuses a connection or answers 4xx for the whole transaction is
failed over to the next target of the plan; the last failure is what the recipients get.

MX answers and address literals come from strangers: every target passes the SSRF guard
(gateway.security.hostguard), which by default also denies every address that is not globally
routable (`[delivery] mx_allow_private` lifts that, not the metadata and link-local part).
A domain whose every target is denied bounces (5.4.4) with the reason.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import replace

from gateway.config import worker_share
from gateway.delivery import mx
from gateway.delivery.upstream import (
    PoolSettings,
    PoolUnavailable,
    SessionSettings,
    UpstreamPool,
    deferred,
)
from gateway.dns import Resolver
from gateway.message import DIRECT_POOL, DeliveryResult, Outcome, QueuedMessage
from gateway.security.hostguard import HostGuard

DIRECT = DIRECT_POOL  # the pool name in metrics and the mail log: one label for every MX host
PER_DESTINATION = 4  # connections to one MX address at a time, for the whole node
log = logging.getLogger("postern.direct")


class DirectRoutes:
    def __init__(
        self,
        resolver: Resolver,
        session: SessionSettings,
        port: int,
        per_destination: int = PER_DESTINATION,
        guard: HostGuard | None = None,
        processes: int = 1,
    ) -> None:
        """`guard`: where MX targets may point (default: public addresses only).
        `per_destination` is the node's cap: each of `processes` workers opens its share,
        rounded up (at least 1), as with a pool's max_connections."""
        self._resolver = resolver
        self._guard = guard or HostGuard(allow_private=False)
        self._session = replace(session, guard=self._guard)  # checked again at connect
        self._port = port
        self._per_destination = worker_share(per_destination, processes)
        self._pools: dict[tuple[str, int], UpstreamPool] = {}
        self._cut_off = False  # shutdown's deadline: pools made after it start cut off too

    async def deliver(self, message: QueuedMessage) -> dict[str, DeliveryResult]:
        plans = await mx.plan_message(self._resolver, message.recipients, self._port)
        # Domains are independent: a slow one must not hold up the others.
        parts = await asyncio.gather(*(self._deliver_plan(message, plan) for plan in plans))
        return {rcpt: result for part in parts for rcpt, result in part.items()}

    async def _deliver_plan(
        self, message: QueuedMessage, plan: mx.DomainPlan
    ) -> dict[str, DeliveryResult]:
        if plan.outcome is not None:
            return mx.outcomes(plan)
        targets = []
        refusal = None
        for target in plan.targets:
            refused = self._guard.refusal(target.host, target.address)
            if refused is None:
                targets.append(target)
            else:
                log.warning("%s: not connecting to MX %s", plan.domain, refused)
                refusal = refusal or refused
        if not targets:
            text = f"{plan.domain}: MX {refusal}; not connecting"
            return dict.fromkeys(
                plan.recipients, DeliveryResult(Outcome.BOUNCED, 550, "5.4.4", text)
            )
        part = replace(message, recipients=list(plan.recipients))
        return await self._deliver_domain(part, tuple(targets))

    async def _deliver_domain(
        self, message: QueuedMessage, targets: tuple[mx.MxTarget, ...]
    ) -> dict[str, DeliveryResult]:
        last = deferred("no MX host of the domain could be reached", "4.4.1")
        now = time.time()
        for target in targets:
            pool = self._pool(target)
            if message.retried_at is not None:  # an operator's retry: this host afresh
                pool.forgive(message.retried_at)
            if not pool.healthy(now):
                continue
            try:
                return await pool.send(message)
            except PoolUnavailable as unavailable:
                last = unavailable.result
        return dict.fromkeys(message.recipients, last)

    def _pool(self, target: mx.MxTarget) -> UpstreamPool:
        key = (target.address, target.port)
        pool = self._pools.get(key)
        if pool is None:
            settings = PoolSettings(
                id=f"mx:{target.address}:{target.port}",
                name=DIRECT,
                host=target.address,
                port=target.port,
                encryption="opportunistic",
                max_connections=self._per_destination,
            )
            pool = self._pools[key] = UpstreamPool(settings, self._session)
            if self._cut_off:  # the next MX host or domain must not start a send either
                pool.cut_off()
        return pool

    async def reap_idle(self) -> None:
        """Close idle sessions and forget destinations nobody uses (the map stays small)."""
        for key, pool in list(self._pools.items()):
            await pool.reap_idle()
            if pool.unused:
                del self._pools[key]

    def cut_off(self) -> None:
        self._cut_off = True
        for pool in self._pools.values():
            pool.cut_off()

    async def close(self) -> None:
        for pool in list(self._pools.values()):
            await pool.close()
        self._pools.clear()
