"""Each account's, pool's and domain's reputation as the API, the CLI, the dashboard and the
evaluation show it: the score (gateway.reputation.score) over the counts rolled up in
storage (storage.reputation), the blocklists' latest results (storage.blocklists), the
warmup (storage.warmup) and the domain's records as last checked.

Who counts what: an account, the mail sent through it (its pool label is its address) and
its address's domain records; a pool, the mail sent through it (its name), no domain of its
own; a domain, the mail sent From it through any route, and its records.

Blocklists: a subject's `blacklist_status` reads the verdicts of what the DNSBL check
(gateway.reputation.dnsbl) asks about, nothing else: an account, its email domain; a
domain, itself; a pool, the configured `[blocklists] sending_ips` (what receivers see of
mail relayed through it; a pool's host name is the provider's submission endpoint, never
asked). `clean` when every one of them has a clean verdict, `listed` when any is listed,
`unknown` otherwise: one not checked yet or not answered, or none to ask (a pool with no
`sending_ips` configured is `unknown`: nothing says what receivers see of it).
"""

from __future__ import annotations

import ipaddress
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from gateway.reputation.score import Counts, DomainSetup, Inputs, Score, Thresholds, Window, score
from storage import blocklists, mail_accounts, pools, reputation, warmup
from storage import domains as stored_domains
from storage.db import Database
from storage.mail_accounts import MailAccountRecord
from storage.pools import PoolRecord
from storage.reputation import DayCounts, SubjectState

ACCOUNT = "account"
POOL = "pool"
DOMAIN = "domain"
KINDS = (ACCOUNT, POOL, DOMAIN)
NOT_STARTED = "not_started"


@dataclass(frozen=True)
class Subject:
    kind: str  # account | pool | domain
    id: str  # the account's or pool's id, the domain's name
    name: str  # the account's address, the pool's name, the domain
    label: str  # what reputation_day's `pool` calls it ("" for a domain)
    domain: str | None  # whose records count (None: a pool)
    blocklist_subjects: tuple[str, ...] = ()


def account_subject(record: MailAccountRecord) -> Subject:
    """An account: blocklists asked about its email domain (as the DNSBL check asks)."""
    domain = reputation.domain_of(record.email)
    return Subject(
        ACCOUNT, record.id, record.email, record.email, domain or None, (domain,) if domain else ()
    )  # fmt: skip


def pool_subject(record: PoolRecord, sending_ips: Sequence[str] = ()) -> Subject:
    """A pool: blocklists asked about `sending_ips` ([blocklists] sending_ips; none: its
    status is unknown)."""
    ips = tuple(dict.fromkeys(str(ipaddress.ip_address(ip)) for ip in sending_ips))
    return Subject(POOL, record.id, record.name, record.name, None, ips)


def domain_subject(name: str) -> Subject:
    return Subject(DOMAIN, name, name, "", name, (name,))


async def all_subjects(db: Database, sending_ips: Sequence[str] = ()) -> list[Subject]:
    """Every connected account, pool and registered sender domain (`sending_ips`: the
    configured [blocklists] sending_ips, a pool's blocklist subjects)."""
    found = [account_subject(r) for r in await mail_accounts.list_accounts(db)]
    found += [pool_subject(r, sending_ips) for r in await pools.pool_records(db)]
    found += [domain_subject(r.domain) for r in await stored_domains.list_domains(db)]
    return found


@dataclass(frozen=True)
class Report:
    subject: Subject
    result: Score
    blacklist_status: str  # clean | listed | unknown
    listings: tuple[dict[str, str], ...]
    last_checked_at: float | None  # the last completed blocklist check
    warmup_status: str
    daily_limit: int | None
    sent_today: int
    evaluated_at: float | None = None
    counts: dict[int, Counts] = field(default_factory=dict)  # per window (days)

    def as_json(self) -> dict[str, Any]:
        """The fields shared by every kind (the caller adds its ids and times)."""
        return {
            "reputation_score": self.result.score,
            "reputation_status": self.result.status,
            "warmup_status": self.warmup_status,
            "daily_limit": self.daily_limit,
            "sent_today": self.sent_today,
            "blacklist_status": self.blacklist_status,
            "components": [c.as_json() for c in self.result.components],
        }


@dataclass(frozen=True)
class _Totals:
    """One window's counts summed by pool label and by sender domain."""

    by_pool: dict[str, Counts]
    by_domain: dict[str, Counts]

    @classmethod
    def of(cls, rows: Sequence[DayCounts]) -> _Totals:
        by_pool: dict[str, Counts] = defaultdict(Counts)
        by_domain: dict[str, Counts] = defaultdict(Counts)
        for row in rows:
            counts = Counts(row.delivered, row.hard_bounces, row.complaints, row.deferrals)
            by_pool[row.pool] += counts
            by_domain[row.domain] += counts
        return cls(dict(by_pool), dict(by_domain))

    def of_subject(self, subject: Subject) -> Counts:
        if subject.kind == DOMAIN:
            return self.by_domain.get(subject.id, Counts())
        return self.by_pool.get(subject.label, Counts())


def _blocklist(
    subject: Subject, results: dict[str, blocklists.BlocklistResult]
) -> tuple[str, tuple[dict[str, str], ...], float | None, int | None]:
    """(status, listings, last checked, how many lists) over the subject's IPs and names."""
    mine = [results[s] for s in subject.blocklist_subjects if s in results]
    listings = tuple(listing for r in mine for listing in r.listings)
    checked = [r.checked_at for r in mine if r.checked_at is not None]
    last = max(checked) if checked else None
    if any(r.status == "listed" for r in mine):
        lists = {listing.get("list", "") for listing in listings}
        return "listed", listings, last, max(len(lists), 1)
    whole = mine and len(mine) == len(subject.blocklist_subjects)
    if whole and all(r.status == "clean" for r in mine):
        return "clean", listings, last, 0
    return "unknown", listings, last, None


def _setup(subject: Subject, states: dict[tuple[str, str], SubjectState]) -> DomainSetup | None:
    if subject.domain is None:
        return None
    state = states.get((DOMAIN, subject.domain))
    if state is None:
        return DomainSetup()  # not looked up yet
    return DomainSetup(state.spf, state.dkim, state.dmarc)


async def reports(
    db: Database,
    subjects: Sequence[Subject],
    thresholds: Thresholds,
    at_risk_below: int,
    now: float,
) -> list[Report]:
    """The reputation of each of `subjects`, as of the last roll-up."""

    def read(conn: Any) -> tuple[dict[int, _Totals], _Totals, dict[Any, Any], Any]:
        windows = {
            days: _Totals.of(reputation.window_totals(conn, reputation.since_day(now, days)))
            for days in thresholds.windows
        }
        today = _Totals.of(reputation.window_totals(conn, reputation.day_of(now)))
        return windows, today, reputation.states(conn), reputation.last_evaluation(conn)

    windows, today, states, evaluated_at = await db.read(read)
    names = [s for subject in subjects for s in subject.blocklist_subjects]
    listed = await blocklists.latest_results(db, list(dict.fromkeys(names)))
    warm: dict[str, dict[str, warmup.WarmupState]] = {}
    for kind in (ACCOUNT, POOL):
        ids = [s.id for s in subjects if s.kind == kind]
        warm[kind] = await warmup.warmup_states(db, kind, ids, now) if ids else {}
    found = []
    for subject in subjects:
        counts = {days: totals.of_subject(subject) for days, totals in windows.items()}
        status, listings, last, lists = _blocklist(subject, listed)
        inputs = Inputs(
            tuple(Window(days, c) for days, c in counts.items()), lists, _setup(subject, states)
        )
        mine = today.of_subject(subject)
        state = warm.get(subject.kind, {}).get(subject.id)
        report = Report(
            subject, score(inputs, thresholds, at_risk_below), status, listings, last,
            state.status if state else NOT_STARTED,
            state.daily_limit if state else None,
            state.sent_today if state else mine.delivered + mine.hard_bounces,
            evaluated_at, counts,
        )  # fmt: skip
        found.append(report)
    return found


def by_kind(found: Sequence[Report]) -> dict[str, list[Report]]:
    grouped: dict[str, list[Report]] = defaultdict(list)
    for report in found:
        grouped[report.subject.kind].append(report)
    return grouped
