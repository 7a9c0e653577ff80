"""Direct delivery to the recipients' MX hosts, for mail whose route names no pool.

Each recipient domain is planned by gateway.mx (MX by preference, A/AAAA fallback, null MX
and NXDOMAIN bounce at once, DNS failures defer). Connections are pooled per destination
address with a small cap, like a configured pool's, and use opportunistic STARTTLS with no
AUTH. A destination that refuses a connection or answers 4xx for the whole transaction is
failed over to the next target of the plan; the last failure is what the recipients get.
"""

from __future__ import annotations

import time
from dataclasses import replace

from gateway import mx
from gateway.dns import Resolver
from gateway.message import DeliveryResult, QueuedMessage
from gateway.upstream import PoolSettings, PoolUnavailable, SessionSettings, UpstreamPool, deferred

DIRECT = "direct"  # the pool name in metrics and the mail log: one label for every MX host


class DirectRoutes:
    def __init__(
        self, resolver: Resolver, session: SessionSettings, port: int, per_destination: int = 4
    ) -> None:
        self._resolver = resolver
        self._session = session
        self._port = port
        self._per_destination = per_destination
        self._pools: dict[tuple[str, int], UpstreamPool] = {}

    async def deliver(self, message: QueuedMessage) -> dict[str, DeliveryResult]:
        plans = await mx.plan_message(self._resolver, message.recipients, self._port)
        results: dict[str, DeliveryResult] = {}
        for plan in plans:
            if plan.outcome is not None:
                results.update(mx.outcomes(plan))
                continue
            part = replace(message, recipients=list(plan.recipients))
            results.update(await self._deliver_domain(part, plan.targets))
        return results

    async def _deliver_domain(
        self, message: QueuedMessage, targets: tuple[mx.Target, ...]
    ) -> dict[str, DeliveryResult]:
        last = deferred("no MX host of the domain could be reached", "4.4.1")
        now = time.time()
        for target in targets:
            pool = self._pool(target)
            if not pool.healthy(now):
                continue
            try:
                return await pool.send(message)
            except PoolUnavailable as unavailable:
                last = unavailable.result
        return dict.fromkeys(message.recipients, last)

    def _pool(self, target: mx.Target) -> UpstreamPool:
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
        return pool

    async def reap_idle(self) -> None:
        """Close idle sessions and forget destinations nobody uses (the map stays small)."""
        for key, pool in list(self._pools.items()):
            await pool.reap_idle()
            if pool.unused:
                del self._pools[key]

    async def close(self) -> None:
        for pool in list(self._pools.values()):
            await pool.close()
        self._pools.clear()
