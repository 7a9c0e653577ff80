"""Per-pool sending limits: `rate` (sends per rolling window) and `daily_limit` (per UTC day).

Upstream providers cap how fast and how much an account may send; going over earns 421s
or a suspended account. So before a message goes through a limited pool, one send is
reserved in the database (storage.throttle), where every node sees it. A message counts
once however many recipients it has: it is one transaction upstream. A reservation is
spent even when the upstream then fails: the count errs on the side of sending less.

A send counts from its reservation until one window after it ends, however long it waits
for a connection or for the upstream's answer: its row is leased into the future while it
is in flight (this node renews the lease of its sends in flight, `renew`, called by the
delivery housekeeping) and dated to the end of the send by `sent`. A node that dies leaves
its reservations to run out with their lease.

A refused reservation says when slots free up: the message WAITs for one, with no attempt
counted (gateway.delivery.slowdown names every way delivery slows down). Messages refused
while the pool is full are handed successive slot times (a small per-node queue), so a
backlog comes back spread out at the pace slots free, not all at once; until the first slot
frees, further refusals are answered from memory without a database round trip. Pools
without limits cost nothing.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from sqlalchemy import Connection

from gateway import metrics
from gateway.delivery.slowdown import Wait
from gateway.delivery.upstream import PoolSettings
from gateway.rates import Rate, parse_rate
from storage import throttle as sql
from storage.db import Database
from storage.writer import Batch, StorageUnavailable, Writer

log = logging.getLogger("postern.throttle")

_PRUNE_EVERY = 600.0  # seconds between sweeps of rows no limit can count any more
# How far ahead a send in flight is leased (renewed every quarter of it while it lasts):
# how long a dead node's reservations still count before their window starts.
LEASE = 120.0


def show_limits(pools: Iterable[PoolSettings]) -> None:
    """Export each pool's configured rate (sends per second; 0 = none) as a gauge."""
    for pool in pools:
        rate = _rate_of(pool)
        metrics.POOL_RATE_LIMIT.labels(pool=pool.name).set(rate.per_second if rate else 0.0)


@dataclass(frozen=True)
class Ticket:
    """A reserved send; `send_id` names its window row (0 without a rate)."""

    send_id: int


@dataclass
class _Closed:
    """What this node knows of a full pool: it stays full until `slots[0]`."""

    limits: tuple[str, int]
    refused: sql.OverLimit
    step: float  # spacing of waiters beyond the known slots


class Throttle:
    def __init__(self, db: Database, writer: Writer, lease: float = LEASE) -> None:
        self._db = db
        self._writer = writer
        self._lease = lease
        self._closed: dict[str, _Closed] = {}
        self._tail: dict[str, float] = {}  # the last slot time handed to a waiter, per pool
        self._pruned = time.time()
        self._in_flight: set[int] = set()  # send ids reserved here and not yet sent
        self._renewed = time.time()

    def limits(self, pool: PoolSettings) -> bool:
        """Whether `pool` has a rate or a daily limit (else `reserve` would answer None)."""
        return bool(pool.daily_limit) or _rate_of(pool) is not None

    async def reserve(self, pool: PoolSettings) -> Ticket | Wait | None:
        """Reserve one send through `pool`: None (no limits), a Ticket, or a Wait."""
        if not self.limits(pool):
            return None
        rate = _rate_of(pool)  # (cached by its text)
        now = time.time()
        limits = (pool.rate, pool.daily_limit)
        closed = self._closed.get(pool.id)
        if closed is not None and closed.limits == limits and now < closed.refused.slots[0]:
            return self._wait(pool, closed, rate)
        count, window = (rate.count, rate.window) if rate else (0, 0.0)
        prune = now - self._pruned >= _PRUNE_EVERY
        if prune:
            self._pruned = now

        def work(conn: Connection) -> int | sql.OverLimit:
            if prune:
                sql.prune(conn, now)
            return sql.reserve(
                conn, pool.id, now, count, window, pool.daily_limit, lease=self._lease
            )

        verdict = await self._run(work)
        if isinstance(verdict, sql.OverLimit):
            step = rate.window / rate.count if rate and verdict.reason == "rate" else 0.0
            closed = self._closed[pool.id] = _Closed(limits, verdict, step)
            return self._wait(pool, closed, rate)
        self._closed.pop(pool.id, None)
        if verdict:
            self._in_flight.add(verdict)
        return Ticket(verdict)

    async def sent(self, ticket: Ticket) -> None:
        """The send is over (answered or failed): its window runs from now. Call it once
        per Ticket, whatever happened to the send."""
        if not ticket.send_id:
            return
        self._in_flight.discard(ticket.send_id)  # first: a failed write renews it no more
        params = {"send_id": ticket.send_id, "done": time.time()}
        try:
            await self._writer.submit(Batch([(sql.SENT, params)]))
        except StorageUnavailable as error:  # its lease stands: it counts a little too long
            log.warning("recording a send's time failed: %s", error)

    @property
    def in_flight(self) -> int:
        """Sends reserved by this node whose end is not recorded yet."""
        return len(self._in_flight)

    async def renew(self) -> None:
        """Push on the lease of this node's sends in flight (every quarter of the lease;
        cheap to call more often). No database call while nothing is in flight."""
        now = time.time()
        if now - self._renewed < self._lease / 4:
            return
        if not self._in_flight:
            self._renewed = now
            return
        rows = [{"send_id": send_id, "until": now + self._lease} for send_id in self._in_flight]

        # A function, not a Batch: the writer runs functions before the statements of a
        # group commit, so a SENT of the same send submitted after this always wins.
        def work(conn: Connection) -> None:
            conn.execute(sql.RENEW, rows)

        try:
            await self._writer.submit(work)
        except StorageUnavailable as error:  # tried again at the next call
            log.warning("renewing the lease of %d sends in flight failed: %s", len(rows), error)
            return
        self._renewed = now

    async def _run(self, work: Callable[[Connection], Any]) -> Any:
        # SQLite: through the group-commit writer (one writer serialises, one fsync for
        # many). PostgreSQL: a short transaction of its own, so the pool row's lock is
        # held for one reservation only and two pools' locks never meet in one
        # transaction (no deadlock between nodes).
        if self._db.is_sqlite:
            return await self._writer.submit(work)
        return await self._db.transaction(work)

    def _wait(self, pool: PoolSettings, closed: _Closed, rate: Rate | None) -> Wait:
        """The next free slot time for one more waiter (successive waiters, later slots)."""
        slots = closed.refused.slots
        tail = self._tail.get(pool.id, 0.0)
        until = next((at for at in slots if at > tail), max(tail, slots[-1]) + closed.step)
        self._tail[pool.id] = until
        reason = closed.refused.reason
        metrics.POOL_THROTTLED.labels(pool=pool.name, reason=reason).inc()
        limit = f"rate limit {pool.rate}" if reason == "rate" else f"daily limit {pool.daily_limit}"
        return Wait(pool.name, reason, until, f"waiting: pool {pool.name} {limit}")


def _rate_of(pool: PoolSettings) -> Rate | None:
    return _cached_rate(pool.rate)


@lru_cache(maxsize=256)
def _cached_rate(text: str) -> Rate | None:
    try:
        return parse_rate(text)
    except ValueError:  # checked when stored; an old row with a bad value limits nothing
        return None
