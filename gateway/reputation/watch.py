"""The reputation evaluation: periodic (never per message), on one node at a time.

    run_once: take the lease (storage.reputation, a row every node races for; a dead node's
              lapses) -> roll the new events up -> look up due domains' SPF, DKIM and DMARC
              ([dns] nameservers, every `setup_interval`) -> score every account, pool and
              domain -> set the gauges -> for each that has just crossed below `threshold`:
              a `reputation_at_risk` event (webhooks pick it up from the event table) in
              the transaction that records the crossing, so it fires once per crossing on
              whichever node, and, if `pause_on_risk`, an account's or a pool's sending
              paused in that same transaction (storage.warmup.pause_in): the crossing, its
              event and the pause are committed together or not at all. A domain at risk
              only raises the event: a domain is no warmup's subject (its mail goes through
              accounts and pools, which have their own scores).

A subject that climbs back to `threshold` or above is no longer at risk; falling again is a
new crossing. One with too little volume to judge (collecting) stays as it was: at risk ->
collecting -> at risk is one crossing. Sending is never resumed here: a person resumes it
(warmup's own resume).

The gauges are labelled with the subject's id (an account's or pool's id, a domain's name),
never an account's address.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

from gateway import metrics
from gateway.dkim.domains import Check, check_records
from gateway.dns import Resolver
from gateway.message import SIMULATOR_POOL
from gateway.queue import events
from gateway.reputation.report import ACCOUNT, DOMAIN, POOL, Report, all_subjects, reports
from gateway.reputation.score import AT_RISK, Thresholds, shipped_thresholds
from storage import reputation, warmup
from storage.db import Database

log = logging.getLogger("postern.reputation")
MAX_ROLL_STEPS = 40  # spans rolled up per run (a first run: 30 days, one span each)


@dataclass(frozen=True)
class WatchSettings:
    node: str
    interval: float = 300.0  # seconds between evaluations
    threshold: int = 70  # below it: at risk
    pause_on_risk: bool = False
    setup_interval: float = 6 * 3600.0  # a domain's records are looked up again after this
    keep_events: float = 30 * 86400.0  # its reputation_at_risk events: [storage] retention
    sending_ips: tuple[str, ...] = ()  # [blocklists] sending_ips: a pool's blocklist subjects


def _known(check: Check | None) -> bool | None:
    """Whether a record passed; None when not known (a temporary error)."""
    if check is None or check.status == "temporary_error":
        return None
    return check.passed


class ReputationWatch:
    def __init__(
        self,
        db: Database,
        resolver: Resolver,
        settings: WatchSettings,
        thresholds: Thresholds | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._db = db
        self._resolver = resolver
        self.settings = settings
        self.thresholds = thresholds or shipped_thresholds()
        self.clock = clock  # tests move it past the roll-up's margin
        self._running = asyncio.Lock()

    async def run_once(self) -> list[Report] | None:
        """One evaluation if this node gets the lease; the reports, else None."""
        async with self._running:  # the loop's and a caller's, one after the other
            return await self._run()

    async def _run(self) -> list[Report] | None:
        node, now = self.settings.node, self.clock()
        until = now + 2 * self.settings.interval + 60.0
        taken = await self._db.transaction(lambda c: reputation.take_lease(c, node, now, until))
        if not taken:
            self._gauges([])  # another node evaluates: its gauges are the ones to read
            return None
        for _ in range(MAX_ROLL_STEPS):
            more = await self._db.transaction(
                lambda c: reputation.roll_up_step(c, node, now, (SIMULATOR_POOL,))
            )
            if not more:
                break
        subjects = await all_subjects(self._db, self.settings.sending_ips)
        await self._check_setups({s.domain for s in subjects if s.domain}, now)
        found = await reports(self._db, subjects, self.thresholds, self.settings.threshold, now)
        self._gauges(found)
        keep = {(r.subject.kind, r.subject.id) for r in found}
        keep |= {(DOMAIN, s.domain) for s in subjects if s.domain}  # their records
        crossed = await self._db.transaction(lambda c: self._record(c, found, keep, now))
        for report in crossed:
            log.warning("reputation at risk: %s", self._reason(report))
        return found

    async def release(self) -> None:
        """Give the lease back (shutdown): another node may evaluate at once."""
        node = self.settings.node
        await self._db.transaction(lambda c: reputation.release_lease(c, node))

    async def _check_setups(self, names: set[str], now: float) -> None:
        states = await self._db.read(reputation.states)
        for name in sorted(names):
            state = states.get((DOMAIN, name))
            checked = state.setup_checked_at if state else None
            if checked is not None and now - checked < self.settings.setup_interval:
                continue
            checks = {c.purpose: c for c in await check_records(self._db, self._resolver, name)}
            spf, dkim, dmarc = (_known(checks.get(p)) for p in ("spf", "dkim", "dmarc"))
            if not checks["dkim"].name:
                dkim = None  # no key of Postern's (an account's provider signs): not known
            # DMARC counts when published and aligned: Postern signs with the From domain's
            # own key (d= is the domain), so its verified DKIM record is the aligned
            # identifier; a published record with that record missing is not aligned.
            aligned = None if dmarc is None else bool(dmarc and dkim is not False)
            failed = {p for p, c in checks.items() if c.status == "temporary_error"}
            if state is not None:  # what DNS did not answer now stays as last known
                spf = state.spf if "spf" in failed else spf
                dkim = state.dkim if "dkim" in failed else dkim
                aligned = state.dmarc if failed & {"dkim", "dmarc"} else aligned
            # A failed lookup leaves the domain due: asked again at the next evaluation.
            record = partial(
                reputation.record_setup, domain=name, spf=spf, dkim=dkim, dmarc=aligned,
                now=None if failed else now,
            )  # fmt: skip
            await self._db.transaction(record)

    def _record(
        self, conn: Any, found: list[Report], keep: set[tuple[str, str]], now: float
    ) -> list[Report]:
        crossed = []
        for report in found:
            subject = report.subject
            at_risk = report.result.status == AT_RISK
            value = report.result.score
            if reputation.record_score(conn, subject.kind, subject.id, value, at_risk, now):
                conn.execute(events.INSERT_EVENT, [self._event(report, now)])
                if self.settings.pause_on_risk and subject.kind in (ACCOUNT, POOL):
                    warmup.pause_in(conn, subject.kind, subject.id, self._reason(report), now)
                crossed.append(report)
        reputation.forget(conn, keep)
        longest = max(self.thresholds.windows)
        reputation.purge(
            conn, reputation.since_day(now, longest), now - self.settings.keep_events,
            events.REPUTATION_AT_RISK,
        )  # fmt: skip
        reputation.evaluated(conn, self.settings.node, now)
        return crossed

    def _event(self, report: Report, now: float) -> dict[str, Any]:
        subject = report.subject
        detail = {
            "reputation": {
                "kind": subject.kind,
                "id": subject.id,
                "name": subject.name,
                "score": report.result.score,
                "threshold": self.settings.threshold,
                "window_days": report.result.window_days,
                "components": [c.as_json() for c in report.result.components if c.points],
            }
        }
        return events.row(
            events.REPUTATION_AT_RISK, "", "", now,
            pool=subject.name[:128], response=self._reason(report),
            detail=json.dumps(detail, separators=(",", ":")),
        )  # fmt: skip

    def _reason(self, report: Report) -> str:
        costly = [f"{c.signal} {c.points}" for c in report.result.components if c.points]
        return (
            f"{report.subject.kind} {report.subject.name}: score {report.result.score} "
            f"below {self.settings.threshold} ({', '.join(costly) or 'no single cause'})"
        )

    def _gauges(self, found: list[Report]) -> None:
        metrics.clear(metrics.REPUTATION_SCORE, metrics.REPUTATION_POINTS, metrics.REPUTATION_VALUE)
        for report in found:
            labels = {"kind": report.subject.kind, "subject": report.subject.id}
            if report.result.score is not None:  # collecting: no sample
                metrics.REPUTATION_SCORE.labels(**labels).set(report.result.score)
            for component in report.result.components:
                signal = {**labels, "signal": component.signal}
                metrics.REPUTATION_POINTS.labels(**signal).set(component.points)
                if component.value is not None:
                    metrics.REPUTATION_VALUE.labels(**signal).set(float(component.value))
