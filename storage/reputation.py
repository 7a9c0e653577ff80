"""The reputation evaluation's SQL (issue 21): the daily roll-up of events, the windows'
totals, the evaluation's lease and each subject's last evaluation.

Counting. What a score needs is read from `event` (one row per recipient result, in the
change's transaction): `delivered`, `bounced` (a 5xx at once, or a report that came back:
gateway.bounces.effects writes `bounced` with `async`), `complaint` (a feedback report, or
an upstream's complaint reply), `deferred` with an upstream's reply (`code` set: a receiver
deferred it; Postern's own waiting, `Queue.postpone` for a warmup's or a pool's limits,
writes `deferred` with no code and is not the receivers' verdict) and `throttled`.
Reading 30 days of events for every subject at every evaluation would scan the whole
window each time, so the evaluation rolls the events up once into `reputation_day` (day,
pool label, sender domain -> counts): each run reads only the events since the last
(`rolled_until`, on `ix_event_created`, each message by its primary key), stops `MARGIN`
seconds short of now (a transaction stamped before it commits is still counted) and never
crosses a UTC midnight in one step, and adds to the day's rows in the same transaction that
moves `rolled_until`: counted once. A window's totals then read its days' rows (the primary
key starts with `day`). The roll-up outlives [storage] retention: a 30-day window holds
even with 7 days of events kept.

The bound of rolling up by `created_at`: an event is counted when its `created_at` is past
`rolled_until` at the run that reads it. An event committed more than `MARGIN` after its
`created_at` (a transaction that long), or written by a node whose clock is behind the
evaluating node's by more than `MARGIN`, lands behind `rolled_until` and is never counted.
`MARGIN` (two minutes) is well above a delivery's transaction and NTP-kept clocks' skew;
the scores are rates over days, so a rare missed event does not move them.

A report's event carries no pool (pool NULL): it counts for the pool of the message's last
attempt (`message.last_pool`). An account's pool label is its address (the routes'
name, as the metrics' `pool` label).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Connection, and_, func, insert, or_, select, update

from storage.dialects import dialect_module
from storage.models import Event, Message, ReputationDay, ReputationJob, ReputationSubject

E = Event
M = Message
D = ReputationDay
J = ReputationJob
S = ReputationSubject

JOB = "evaluation"
MARGIN = 120.0  # seconds: events newer than this are left for the next run
FIRST_DAYS = 30  # a first run rolls up this many days back
COUNTED = {
    "delivered": "delivered",
    "bounced": "hard_bounces",
    "complaint": "complaints",
    "deferred": "deferrals",
    "throttled": "deferrals",
}
FIELDS = ("delivered", "hard_bounces", "complaints", "deferrals")


@dataclass(frozen=True)
class DayCounts:
    pool: str
    domain: str
    delivered: int
    hard_bounces: int
    complaints: int
    deferrals: int


def day_of(moment: float) -> str:
    return datetime.fromtimestamp(moment, UTC).strftime("%Y-%m-%d")


def day_start(moment: float) -> float:
    point = datetime.fromtimestamp(moment, UTC)
    return datetime(point.year, point.month, point.day, tzinfo=UTC).timestamp()


def since_day(now: float, days: int) -> str:
    """The first day of a window of `days` days ending today (today included)."""
    return (datetime.fromtimestamp(now, UTC) - timedelta(days=days - 1)).strftime("%Y-%m-%d")


def domain_of(address: str | None) -> str:
    if not address or "@" not in address:
        return ""
    return address.rsplit("@", 1)[1].strip().lower().rstrip(".")[:253]


# --- the lease ------------------------------------------------------------------------------


def take_lease(conn: Connection, node: str, now: float, until: float) -> bool:
    """Lease the evaluation to `node` until `until` (renewing its own): of two nodes at
    once, one gets it."""
    if conn.execute(select(J.c.name).where(J.c.name == JOB)).first() is None:
        conn.execute(_insert_ignore(conn, J, {"name": JOB}, ["name"]))
    done = conn.execute(
        update(J)
        .where(
            J.c.name == JOB,
            or_(J.c.claimed_by.is_(None), J.c.claimed_until < now, J.c.claimed_by == node),
        )
        .values(claimed_by=node, claimed_until=until)
    )
    return bool(done.rowcount == 1)


def release_lease(conn: Connection, node: str) -> None:
    conn.execute(
        update(J)
        .where(J.c.name == JOB, J.c.claimed_by == node)
        .values(claimed_by=None, claimed_until=None)
    )


def holds_lease(conn: Connection, node: str, now: float) -> bool:
    row = conn.execute(select(J.c.claimed_by, J.c.claimed_until).where(J.c.name == JOB)).first()
    return row is not None and row.claimed_by == node and (row.claimed_until or 0) >= now


def evaluated(conn: Connection, node: str, now: float) -> None:
    conn.execute(update(J).where(J.c.name == JOB, J.c.claimed_by == node).values(evaluated_at=now))


def last_evaluation(conn: Connection) -> float | None:
    value = conn.execute(select(J.c.evaluated_at).where(J.c.name == JOB)).scalar()
    return float(value) if value is not None else None


# --- the roll-up ----------------------------------------------------------------------------


def roll_up_step(conn: Connection, node: str, now: float, skip_pools: tuple[str, ...] = ()) -> bool:
    """Roll one span of events up (at most to the next UTC midnight) if `node` holds the
    lease; True when there is more to roll. Events of `skip_pools` (the simulator's: its
    scripted bounces are tests, not a reputation) are not counted."""
    if not holds_lease(conn, node, now):
        return False
    rolled = conn.execute(select(J.c.rolled_until).where(J.c.name == JOB)).scalar()
    start = day_start(now) - (FIRST_DAYS - 1) * 86400.0 if rolled is None else float(rolled)
    horizon = now - MARGIN
    if start >= horizon:
        return False
    end = min(horizon, day_start(start) + 86400.0)
    # The span is claimed first, compare-and-set: a second run that read the same start
    # (a lease taken over mid-run) moves nothing and counts nothing.
    same = J.c.rolled_until.is_(None) if rolled is None else J.c.rolled_until == rolled
    claimed = conn.execute(update(J).where(J.c.name == JOB, same).values(rolled_until=end))
    if claimed.rowcount != 1:
        return False
    counts = [c for c in count_events(conn, start, end) if c.pool not in skip_pools]
    add_counts(conn, day_of(start), counts)
    return end < horizon


def count_events(conn: Connection, start: float, end: float) -> list[DayCounts]:
    """The counted events created in [start, end), by pool label and sender domain."""
    pool = func.coalesce(E.c.pool, M.c.last_pool, "")
    query = (
        select(pool.label("pool"), M.c.mail_from, E.c.type, func.count().label("n"))
        .select_from(E.outerjoin(M, M.c.id == E.c.message_id))
        .where(
            E.c.created_at >= start,
            E.c.created_at < end,
            E.c.type.in_(list(COUNTED)),
            # a receiver's deferral has its reply; Postern's own waiting has none
            or_(E.c.type != "deferred", E.c.code.is_not(None)),
        )
        .group_by(pool, M.c.mail_from, E.c.type)
    )
    totals: dict[tuple[str, str], dict[str, int]] = defaultdict(lambda: dict.fromkeys(FIELDS, 0))
    for row in conn.execute(query):
        key = (str(row.pool)[:128], domain_of(row.mail_from))
        totals[key][COUNTED[row.type]] += int(row.n)
    return [DayCounts(pool, domain, **counts) for (pool, domain), counts in totals.items()]


def add_counts(conn: Connection, day: str, counts: Iterable[DayCounts]) -> None:
    rows = [
        {"day": day, "pool": c.pool, "domain": c.domain}
        | {name: getattr(c, name) for name in FIELDS}
        for c in counts
    ]
    if not rows:
        return
    dialect = dialect_module(conn.dialect.name)
    statement = dialect.insert(D)
    statement = statement.on_conflict_do_update(
        index_elements=["day", "pool", "domain"],
        set_={name: D.c[name] + statement.excluded[name] for name in FIELDS},
    )
    conn.execute(statement, rows)


def window_totals(conn: Connection, first_day: str) -> list[DayCounts]:
    """Each (pool, domain)'s counts from `first_day` on."""
    query = (
        select(D.c.pool, D.c.domain, *[func.sum(D.c[name]).label(name) for name in FIELDS])
        .where(D.c.day >= first_day)
        .group_by(D.c.pool, D.c.domain)
    )
    return [
        DayCounts(r.pool, r.domain, *[int(getattr(r, name) or 0) for name in FIELDS])
        for r in conn.execute(query)
    ]


# --- each subject's last evaluation -----------------------------------------------------------


@dataclass(frozen=True)
class SubjectState:
    kind: str
    subject: str
    score: int | None
    at_risk: bool
    evaluated_at: float | None
    spf: bool | None
    dkim: bool | None
    dmarc: bool | None
    setup_checked_at: float | None


def states(conn: Connection) -> dict[tuple[str, str], SubjectState]:
    found = {}
    for r in conn.execute(select(S)):
        found[(r.kind, r.subject)] = SubjectState(
            r.kind, r.subject, r.score, bool(r.at_risk), r.evaluated_at,
            r.spf, r.dkim, r.dmarc, r.setup_checked_at,
        )  # fmt: skip
    return found


def _ensure(conn: Connection, kind: str, subject: str) -> None:
    conn.execute(_insert_ignore(conn, S, {"kind": kind, "subject": subject}, ["kind", "subject"]))


def record_score(
    conn: Connection, kind: str, subject: str, score: int | None, at_risk: bool, now: float
) -> bool:
    """Store a subject's score; True when it has just crossed into risk (it was not at
    risk): the caller's event fires once per crossing, in this transaction. A score of
    None (collecting: too little volume to judge) leaves `at_risk` as it was, so that
    at risk -> collecting -> at risk is one crossing, not two."""
    _ensure(conn, kind, subject)
    where = and_(S.c.kind == kind, S.c.subject == subject)
    crossed = False
    if at_risk:
        done = conn.execute(update(S).where(where, S.c.at_risk.is_(False)).values(at_risk=True))
        crossed = done.rowcount == 1
    values: dict[str, Any] = {"score": score, "evaluated_at": now}
    if score is not None:
        values["at_risk"] = at_risk
    conn.execute(update(S).where(where).values(**values))
    return crossed


def record_setup(
    conn: Connection,
    domain: str,
    spf: bool | None,
    dkim: bool | None,
    dmarc: bool | None,
    now: float | None,
) -> None:
    """A domain's records as looked up (None: not known); `now` None leaves it due again."""
    _ensure(conn, "domain", domain)
    conn.execute(
        update(S)
        .where(S.c.kind == "domain", S.c.subject == domain)
        .values(spf=spf, dkim=dkim, dmarc=dmarc, setup_checked_at=now)
    )


def forget(conn: Connection, keep: set[tuple[str, str]]) -> None:
    """Delete the states of subjects that are gone (an account disconnected, a pool removed)."""
    for row in conn.execute(select(S.c.kind, S.c.subject)).all():
        if (row.kind, row.subject) not in keep:
            conn.execute(S.delete().where(S.c.kind == row.kind, S.c.subject == row.subject))


def purge(conn: Connection, first_day: str, events_before: float, event_type: str) -> None:
    """Delete the roll-up's days before `first_day` (no window reads them) and the
    evaluation's own events (message_id "": retention, which purges by message, never
    reaches them) written before `events_before`, on ix_event_message."""
    conn.execute(D.delete().where(D.c.day < first_day))
    conn.execute(
        E.delete().where(
            E.c.message_id == "", E.c.type == event_type, E.c.created_at < events_before
        )
    )


def _insert_ignore(conn: Connection, table: Any, values: dict[str, Any], keys: list[str]) -> Any:
    if conn.dialect.name == "postgresql":
        return (
            dialect_module("postgresql")
            .insert(table)
            .values(**values)
            .on_conflict_do_nothing(index_elements=keys)
        )
    return insert(table).values(**values).prefix_with("OR IGNORE")
