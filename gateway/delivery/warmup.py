"""Warmup in delivery: a warming account or pool sends no more than its schedule's daily
limit, spread over the day by an hourly cap, and stops when it is paused.

Before a message goes through a pool or a connected account that has a warmup, one send is
taken from the warmup (storage.warmup.reserve, counted in the database across nodes, by
the machinery of the pools' own rate and daily limit). Over the hour's cap or the day's
limit, or paused, the message WAITs (gateway.delivery.slowdown): back to the queue,
deferred with the reason, no attempt counted, never bounced; max_age still applies, as
for a pool's limits. A route with another pool goes through that one meanwhile.

Postern pauses a warmup itself on (a) a bounce or complaint spike in the mail through the
subject over the last `[warmup] window` (`check_spikes`, a loop on every node, run by the one
that leases it each `check_interval`, one grouped query; idempotent)
and (b) the receivers' throttling replies, `throttle_replies` within `throttle_window`
counted on this node (`throttled`). `paused_reason` says which and the figures, and a
`warmup_paused` event (message_id "", webhooks) is written in the pause's own transaction:
once per pause, whichever node pauses it. Only a person resumes it (API, CLI).

Which subjects have a warmup is held in memory (`follow`, every 2 s and at once after a
change through this node's API), so a send through a subject without one costs nothing.
The warmup's clock is injectable (`clock`): its days and hours are counted by it, and a
wait until a clock time becomes a wait of the same length on the wall clock the queue uses.
"""

from __future__ import annotations

import collections
import json
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection

from gateway import metrics
from gateway.config import WarmupConfig
from gateway.delivery.slowdown import Wait
from gateway.delivery.upstream import PoolSettings
from gateway.message import DeliveryResult
from gateway.queue import events
from storage import blocklists as leases
from storage import queue_sql
from storage import throttle as throttle_sql
from storage import warmup as stored
from storage.db import Database
from storage.writer import StorageUnavailable, Writer

log = logging.getLogger("postern.warmup")

LEASE = 120.0  # as gateway.delivery.throttle.LEASE: a send in flight counts this far ahead
FOLLOW_INTERVAL = 2.0  # other nodes' warmup changes are seen within this
SPIKE_RUN = "warmup_spikes"  # the spike check's lease: its row in blocklist_run
SPIKE_LEASE = 120.0  # at least this long a node holds it (a node that died lets it lapse)
# A receiver asking us to slow down (in a 421 or 4.7.x reply): what pauses a warmup.
THROTTLING_TEXT = re.compile(
    r"rate.?limit|too many|try (again )?later|throttl|slow down|exceeded|"
    r"temporarily (deferred|rejected|blocked)|unusual (rate|volume)",
    re.IGNORECASE,
)


def kind_of(pool: PoolSettings) -> str:
    """A warmup's kind for a live upstream: a connected account's, or a pool's."""
    return "account" if pool.source == "account" else "pool"


def is_receiver_throttling(result: DeliveryResult) -> bool:
    """A synchronous reply in which the receiver says we send too fast: 421 or 4.7.x, and
    words to that effect ("rate limited", "try again later", "too many"...)."""
    asks = result.code == 421 or bool(result.enhanced and result.enhanced.startswith("4.7."))
    return asks and bool(THROTTLING_TEXT.search(result.text))


@dataclass
class _Closed:
    """What this node knows of a subject that may not send: until `until` (warmup clock)."""

    until: float
    reason: str
    text: str
    step: float  # spacing of further waiters (hourly cap), 0 = none
    name: str  # the subject's, as its waiting mail's last_response names it


class WarmupGate:
    def __init__(
        self,
        db: Database,
        writer: Writer,
        settings: WarmupConfig,
        clock: Callable[[], float] = time.time,
        lease: float = LEASE,
        node: str | None = None,
        keep_events: float = 30 * 86400.0,
    ) -> None:
        self._db = db
        self._node = node  # the spike check is leased to one node at a time (None: unleased)
        self._keep_events = keep_events  # its warmup_paused events: [storage] retention
        self._writer = writer
        self.settings = settings
        self.clock = clock
        self._lease = lease
        self._subjects: set[tuple[str, str]] = set()
        # Each one's stored status, updated_at and start day, as last read: a change is seen.
        self._seen: dict[tuple[str, str], tuple[str, float, str]] = {}
        self._closed: dict[tuple[str, str], _Closed] = {}
        self._tail: dict[tuple[str, str], float] = {}
        self._in_flight: dict[int, None] = {}
        self._renewed = time.monotonic()
        self._replies: dict[tuple[str, str], collections.deque[float]] = {}

    def now(self) -> float:
        """The warmups' time (`clock`): what their days and hours are counted by."""
        return self.clock()

    # --- which subjects have a warmup ---------------------------------------------------

    async def follow(self) -> None:
        """Reload which subjects have a warmup (a loop; at once after a change here)."""
        records = await stored.list_warmups(self._db, self.clock())
        seen = {
            (r.kind, r.subject_id): (r.stored_status, r.updated_at, r.start_day)
            for r in records
            if r.status != "complete"
        }
        # A warmup changed elsewhere (another node, the CLI, the reputation watcher):
        # what this node knew of it is forgotten, so a resume there counts here at once.
        kept = {k: v for k, v in self._closed.items() if seen.get(k) == self._seen.get(k)}
        dropped = [(k, v) for k, v in self._closed.items() if k not in kept]
        self._closed = {k: v for k, v in kept.items() if k in seen}
        self._seen = seen
        self._subjects = set(seen)
        for (kind, _), closed in dropped:
            if closed.reason == "warmup_paused":  # resumed or cleared: its mail goes now
                await self._wake_paused(kind, closed.name)

    async def _wake_paused(self, kind: str, name: str) -> None:
        """Make the mail this node held for a pause due now: a resume made elsewhere
        (another node, the CLI) may have woken it while this node still knew it paused."""
        prefix = f"{stored.waiting_text(kind, name)} paused:"

        def work(conn: Connection) -> int:
            return queue_sql.wake_waiting(conn, prefix, time.time())

        try:
            await self._writer.submit(work)
        except StorageUnavailable as error:  # it looks again at its paused_recheck
            log.warning("waking the mail of a resumed warmup failed: %s", error)

    async def changed(self, kind: str, subject_id: str) -> None:
        """A warmup was set, cleared, paused or resumed through this node: forget what
        was known of it and follow storage at once."""
        closed = self._closed.pop((kind, subject_id), None)
        self._tail.pop((kind, subject_id), None)
        await self.follow()
        if closed is not None and closed.reason == "warmup_paused":
            await self._wake_paused(kind, closed.name)

    # --- one send -------------------------------------------------------------------------

    def limits(self, pool: PoolSettings) -> bool:
        """Whether a warmup limits `pool` now (else `reserve` would answer None)."""
        return bool(self._subjects) and (kind_of(pool), pool.id) in self._subjects

    async def reserve(self, pool: PoolSettings) -> stored.Reserved | Wait | None:
        """Take one send from the warmup of `pool` (a pool or a connected account): None
        when none limits it, a Reserved to hand back to `sent` (or `release`), or a Wait."""
        if not self.limits(pool):
            return None
        subject = (kind_of(pool), pool.id)
        now = self.clock()
        closed = self._closed.get(subject)
        if closed is not None and now < closed.until:
            return self._wait(pool, subject, closed, now)
        settings = self.settings

        def work(conn: Connection) -> Any:
            return stored.reserve(
                conn, subject[0], pool.id, now, lease=self._lease,
                active_hours=settings.active_hours, burst=settings.burst,
            )  # fmt: skip

        verdict = await self._run(work)
        if isinstance(verdict, stored.Paused):
            text = stored.paused_text(subject[0], pool.name, verdict.reason)
            until = now + settings.paused_recheck
            closed = self._closed[subject] = _Closed(until, "warmup_paused", text, 0.0, pool.name)
            return self._wait(pool, subject, closed, now)
        if isinstance(verdict, stored.Over):
            if verdict.reason == "warmup_daily":
                text = f"{stored.waiting_text(subject[0], pool.name)} daily limit {verdict.limit}"
                step = 0.0
            else:
                text = f"{stored.waiting_text(subject[0], pool.name)} hourly cap {verdict.limit}"
                step = stored.HOUR / max(1, verdict.limit)
            closed = self._closed[subject] = _Closed(
                verdict.until, verdict.reason, text, step, pool.name
            )
            return self._wait(pool, subject, closed, now)
        self._closed.pop(subject, None)
        self._tail.pop(subject, None)
        if isinstance(verdict, stored.Reserved) and verdict.send_id:
            self._in_flight[verdict.send_id] = None
        return verdict

    def _wait(
        self, pool: PoolSettings, subject: tuple[str, str], closed: _Closed, now: float
    ) -> Wait:
        """The next time for one more waiter (successive waiters of an hourly cap, later
        times), as a Wait on the wall clock."""
        until = closed.until
        if closed.step:
            tail = self._tail.get(subject, 0.0)
            until = until if until > tail else tail + closed.step
            self._tail[subject] = until
        metrics.POOL_THROTTLED.labels(pool=pool.name, reason=closed.reason).inc()
        wall = time.time() + max(0.0, until - now)
        return Wait(pool.name, closed.reason, wall, closed.text)

    async def release(self, reserved: stored.Reserved) -> None:
        """Give back a send taken but not made (the pool's own limit refused it)."""
        self._in_flight.pop(reserved.send_id, None)

        def work(conn: Connection) -> None:
            stored.release(conn, reserved)

        try:
            await self._run(work)
        except StorageUnavailable as error:  # it counts: errs on the side of sending less
            log.warning("giving back a warmup send failed: %s", error)

    async def sent(self, reserved: stored.Reserved) -> None:
        """The send is over: its hour runs from now (warmup clock)."""
        if not reserved.send_id:
            return
        self._in_flight.pop(reserved.send_id, None)
        done = self.clock()

        def work(conn: Connection) -> None:
            conn.execute(throttle_sql.SENT, {"send_id": reserved.send_id, "done": done})

        try:
            await self._writer.submit(work)
        except StorageUnavailable as error:
            log.warning("recording a warmup send's time failed: %s", error)

    async def renew(self) -> None:
        """Push on the lease of this node's warmup sends in flight (delivery's
        housekeeping calls it every 5 s; it writes every quarter of the lease)."""
        if time.monotonic() - self._renewed < self._lease / 4:
            return
        self._renewed = time.monotonic()
        if not self._in_flight:
            return
        until = self.clock() + self._lease
        rows = [{"send_id": send_id, "until": until} for send_id in self._in_flight]

        def work(conn: Connection) -> None:
            conn.execute(throttle_sql.RENEW, rows)

        try:
            await self._writer.submit(work)
        except StorageUnavailable as error:
            log.warning("renewing warmup sends in flight failed: %s", error)

    async def _run(self, work: Callable[[Connection], Any]) -> Any:
        # As gateway.delivery.throttle: SQLite through the writer, PostgreSQL a short
        # transaction of its own (the warmup row's lock held for one reservation only).
        if self._db.is_sqlite:
            return await self._writer.submit(work)
        return await self._db.transaction(work)

    # --- pausing ----------------------------------------------------------------------------

    async def throttled(self, pool: PoolSettings, result: DeliveryResult) -> None:
        """A reply from the upstream of `pool`: a receiver's throttling reply counts, and
        `throttle_replies` of them within `throttle_window` (on this node) pause its
        warmup."""
        subject = (kind_of(pool), pool.id)
        limit = self.settings.throttle_replies
        if subject not in self._subjects or not limit or not is_receiver_throttling(result):
            return
        now = time.monotonic()
        seen = self._replies.setdefault(subject, collections.deque())
        seen.append(now)
        while seen and seen[0] < now - self.settings.throttle_window:
            seen.popleft()
        if len(seen) < limit:
            return
        seen.clear()
        reason = (
            f"receiver throttling: {limit} throttling replies within "
            f"{_span(self.settings.throttle_window)}, the last: {_reply(result)}"
        )
        await self._pause(subject, pool.name, reason, "throttling")

    async def check_spikes(self) -> None:
        """Pause each active warmup whose mail over the last `window` (wall clock: the
        events' time), since it was set or resumed, bounced or was complained of at or over
        the configured rates. One node of many runs it each `check_interval` (a lease in
        storage, blocklist_run's row `warmup_spikes`), one grouped query for all warmups."""
        node = self._node
        if node is None:
            await self._check_spikes()
            return
        wall, every = time.time(), self.settings.check_interval
        lease = max(SPIKE_LEASE, 2 * every)

        def claim(conn: Connection) -> bool:
            due_before = wall - every / 2  # the last check ended at least half an interval ago
            return leases.claim(conn, node, wall, wall + lease, due_before, name=SPIKE_RUN)

        if not await self._db.transaction(claim):
            return  # another node checked (or checks) them
        try:
            await self._check_spikes()
        except BaseException:
            await self._db.transaction(lambda conn: leases.release(conn, node, name=SPIKE_RUN))
            raise
        done = time.time()
        await self._db.transaction(lambda conn: leases.finish(conn, node, done, name=SPIKE_RUN))

    async def _check_spikes(self) -> None:
        settings = self.settings
        wall, now = time.time(), self.clock()
        found = await stored.active(self._db, now)
        # Since the warmup was set or last resumed: what a person resumed is judged
        # afresh, not paused again at once for the spike they looked at.
        since: dict[str, float] = {}
        for record, name in found:
            start = max(wall - settings.window, wall - max(0.0, now - record.updated_at))
            since[name] = max(since.get(name, start), start)
        seen_all = await stored.outcomes_since(self._db, since)
        for record, name in found:
            seen = seen_all[name]
            if seen.sent < settings.min_volume:
                continue
            window = _span(settings.window)
            bounce_rate = seen.bounced / seen.sent
            complaint_rate = seen.complaints / seen.sent
            if complaint_rate >= settings.complaint_rate:
                reason = (
                    f"complaint spike: {seen.complaints} complaints of {seen.sent} recipients "
                    f"({complaint_rate:.2%}) within {window}, the limit "
                    f"{settings.complaint_rate:.2%}"
                )
                await self._pause((record.kind, record.subject_id), name, reason, "complaints")
            elif bounce_rate >= settings.bounce_rate:
                reason = (
                    f"bounce spike: {seen.bounced} hard bounces of {seen.sent} recipients "
                    f"({bounce_rate:.2%}) within {window}, the limit {settings.bounce_rate:.2%}"
                )
                await self._pause((record.kind, record.subject_id), name, reason, "bounces")

    async def _pause(self, subject: tuple[str, str], name: str, reason: str, why: str) -> None:
        """Pause the subject's warmup with `reason` and, in the same transaction, write a
        `warmup_paused` event; neither when it was paused already (by a person, or another
        node first)."""
        kind, subject_id = subject
        now, wall = self.clock(), time.time()
        detail = {"warmup": {"kind": kind, "id": subject_id, "name": name, "reason": reason}}
        event = events.row(
            events.WARMUP_PAUSED, "", "", wall, pool=name[:128], response=reason[:1000],
            detail=json.dumps(detail, separators=(",", ":")),
        )  # fmt: skip

        def work(conn: Connection) -> bool:
            if not stored.pause_in(conn, kind, subject_id, reason, now):
                return False
            conn.execute(events.INSERT_EVENT, [event])
            # Retention purges events by message: these (message_id "") go here, as the
            # reputation watcher's own go with its runs.
            stored.purge_events(conn, events.WARMUP_PAUSED, wall - self._keep_events)
            return True

        if await self._db.transaction(work):
            metrics.WARMUP_PAUSED.labels(kind=kind, reason=why).inc()
            log.warning("warmup of %s %s paused: %s", kind, name, reason)
            self._closed.pop(subject, None)


def _span(seconds: float) -> str:
    if seconds % 3600 == 0:
        return f"{int(seconds // 3600)}h"
    if seconds % 60 == 0:
        return f"{int(seconds // 60)}m"
    return f"{seconds:g}s"


def _reply(result: DeliveryResult) -> str:
    parts = [str(result.code or ""), result.enhanced or "", result.text]
    return " ".join(p for p in parts if p)[:200]
