"""Warmups of connected accounts and pools: the `warmup` table, and the counting of their
sends across nodes, through the same machinery as a pool's rate and daily limit
(storage.throttle: `pool_send` rows for the rolling hour, `pool_day` for the day), under
the key `warmup:<kind>:<id>` and the warmup's local day.

    status      not_started   before its start day (it limits nothing yet)
                active        day 1 .. last day: `daily_limit` is the schedule's for today
                paused        stopped by a spike, a receiver's throttling, or a person: its
                              subject sends nothing until a person resumes it
                complete      after the last day: it limits nothing any more

A pause keeps the day it was on: `resume` moves the start day on by the days paused, so the
ramp goes on where it stopped. `sent_today` counts the sends made under an active warmup
on today's local day (what is sent before it starts, or once it is complete, is not
counted); `warmup_states` leaves out a subject without a warmup.

The reserving transaction is serialised per subject as a pool's is: on PostgreSQL it locks
the warmup's row FOR UPDATE; SQLite has one writer.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from sqlalchemy import (
    Connection,
    Float,
    String,
    and_,
    cast,
    delete,
    func,
    insert,
    literal,
    select,
    union_all,
    update,
)
from sqlalchemy.engine import RowMapping

from storage import queue_sql, throttle
from storage.db import Database
from storage.dialects import dialect_module
from storage.models import Event, MailAccount, Message, Pool, PoolDay, PoolSend, Warmup
from storage.warmup_schedule import (
    MAX_VOLUME,
    Schedule,
    ScheduleError,
    day_key,
    day_number,
    hourly_cap,
    local_day,
    next_midnight,
    shifted_start,
    zone,
)

W = Warmup
PS = PoolSend
PD = PoolDay
E = Event
M = Message
P = Pool
A = MailAccount

KINDS = ("account", "pool")
STATUSES = ("not_started", "active", "paused", "complete")
HOUR = 3600.0


@dataclass(frozen=True)
class WarmupState:
    status: str  # not_started | active | paused | complete
    daily_limit: int | None
    sent_today: int


@dataclass(frozen=True)
class WarmupRecord:
    """A stored warmup and what it means at `now` (the time it was read for)."""

    kind: str
    subject_id: str
    schedule: Schedule
    timezone: str
    start_day: str
    stored_status: str  # active | paused
    paused_reason: str | None
    paused_at: float | None
    created_at: float
    updated_at: float
    created_by: str | None
    status: str  # as of now: not_started | active | paused | complete
    day: int  # the day of the ramp it is on (the paused day while paused); 0 before it
    daily_limit: int | None
    sent_today: int

    @property
    def state(self) -> WarmupState:
        return WarmupState(self.status, self.daily_limit, self.sent_today)


@dataclass(frozen=True)
class Reserved:
    """One send taken from a warmup: its window row and day counted (for `release`)."""

    key: str
    day: str
    send_id: int


@dataclass(frozen=True)
class Paused:
    """The subject's warmup is paused: nothing goes until a person resumes it."""

    reason: str


@dataclass(frozen=True)
class Over:
    """Over today's or this hour's warmup limit: the next send may go at `until`."""

    reason: str  # warmup_hourly | warmup_daily
    until: float
    limit: int


def waiting_text(kind: str, name: str) -> str:
    """How a message waiting for a warmup's limits begins its last_response."""
    return f"waiting: warmup of {kind} {name}"


def paused_text(kind: str, name: str, reason: str) -> str:
    """The last_response of a message waiting for a paused warmup (`resume` wakes them)."""
    return f"{waiting_text(kind, name)} paused: {reason}"


def key(kind: str, subject_id: str) -> str:
    """The counters' key (pool_send.pool_id, pool_day.pool_id) of a warmup."""
    return f"warmup:{kind}:{subject_id}"


def check_kind(kind: str) -> str:
    if kind not in KINDS:
        raise ScheduleError(f"kind must be one of {', '.join(KINDS)}")
    return kind


def _schedule(row: RowMapping) -> Schedule:
    if row["preset"] is not None:
        return Schedule(preset=row["preset"])
    return Schedule(start=row["start_volume"], step=row["step"], cap=row["cap"])


def _record(row: RowMapping, now: float, sent_today: int) -> WarmupRecord:
    schedule, tz = _schedule(row), row["timezone"]
    paused = row["status"] == "paused"
    at = row["paused_at"] if paused and row["paused_at"] is not None else now
    day = day_number(row["start_day"], at, tz)
    limit = schedule.limit(day)
    if paused:  # paused stays paused (on the day it was paused on) until resumed
        status = "paused"
    elif day < 1:
        status = "not_started"
    elif day > schedule.days:
        status = "complete"
    else:
        status = "active"
    return WarmupRecord(
        kind=row["kind"],
        subject_id=row["subject_id"],
        schedule=schedule,
        timezone=tz,
        start_day=row["start_day"],
        stored_status=row["status"],
        paused_reason=row["paused_reason"],
        paused_at=row["paused_at"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        created_by=row["created_by"],
        status=status,
        day=max(day, 0),
        daily_limit=limit,
        sent_today=sent_today,
    )


def _sent_today(conn: Connection, rows: Sequence[RowMapping], now: float) -> dict[str, int]:
    """Each warmup's count for its own local today, one query."""
    wanted = {(key(r["kind"], r["subject_id"]), day_key(now, r["timezone"])) for r in rows}
    if not wanted:
        return {}
    found = conn.execute(
        select(PD.c.pool_id, PD.c.day, PD.c.count).where(PD.c.pool_id.in_([k for k, _ in wanted]))
    ).all()
    return {pool_id: count for pool_id, day, count in found if (pool_id, day) in wanted}


def _read(conn: Connection, now: float, *where: Any) -> list[WarmupRecord]:
    rows = conn.execute(select(W).where(*where).order_by(W.c.kind, W.c.subject_id)).mappings()
    rows_list = list(rows)
    counts = _sent_today(conn, rows_list, now)
    return [
        _record(row, now, counts.get(key(row["kind"], row["subject_id"]), 0)) for row in rows_list
    ]


async def warmup_states(
    db: Database, kind: str, ids: Sequence[str], now: float
) -> dict[str, WarmupState]:
    """The warmup of each id that has one, as of `now` (an id without one is missing: its
    caller knows best what to say of it, `not_started` with its own count of the day)."""
    wanted = list(dict.fromkeys(ids))
    if not wanted:
        return {}

    def query(conn: Connection) -> list[WarmupRecord]:
        return _read(conn, now, W.c.kind == kind, W.c.subject_id.in_(wanted))

    return {record.subject_id: record.state for record in await db.read(query)}


async def get_warmup(db: Database, kind: str, subject_id: str, now: float) -> WarmupRecord | None:
    def query(conn: Connection) -> list[WarmupRecord]:
        return _read(conn, now, W.c.kind == kind, W.c.subject_id == subject_id)

    found = await db.read(query)
    return found[0] if found else None


async def list_warmups(db: Database, now: float, kind: str | None = None) -> list[WarmupRecord]:
    def query(conn: Connection) -> list[WarmupRecord]:
        return _read(conn, now, *([W.c.kind == kind] if kind else []))

    return await db.read(query)


async def set_warmup(
    db: Database,
    kind: str,
    subject_id: str,
    schedule: Schedule,
    tz: str,
    now: float,
    *,
    start_day: str | None = None,
    created_by: str | None = None,
) -> WarmupRecord:
    """Start (or replace) the subject's warmup: day 1 is `start_day` (default: today in
    `tz`), active. What was sent today still counts against today's limit."""
    check_kind(kind)
    zone(tz)
    first = start_day or local_day(now, tz).isoformat()
    values = {
        "preset": schedule.preset,
        "start_volume": schedule.start,
        "step": schedule.step,
        "cap": schedule.cap,
        "timezone": tz,
        "start_day": first,
        "status": "active",
        "paused_reason": None,
        "paused_at": None,
        "updated_at": now,
    }

    def work(conn: Connection) -> WarmupRecord:
        where = (W.c.kind == kind, W.c.subject_id == subject_id)
        changed = conn.execute(update(W).where(*where).values(**values)).rowcount
        if not changed:
            conn.execute(
                insert(W).values(
                    kind=kind, subject_id=subject_id, created_at=now,
                    created_by=created_by, **values,
                )
            )  # fmt: skip
        return _read(conn, now, *where)[0]

    return await db.transaction(work)


async def clear_warmup(db: Database, kind: str, subject_id: str) -> bool:
    """Remove the subject's warmup (its counters go with it); False when it had none."""

    def work(conn: Connection) -> bool:
        gone = conn.execute(
            delete(W).where(W.c.kind == kind, W.c.subject_id == subject_id)
        ).rowcount
        counted = key(kind, subject_id)
        conn.execute(delete(PS).where(PS.c.pool_id == counted))
        conn.execute(delete(PD).where(PD.c.pool_id == counted))
        return bool(gone)

    return await db.transaction(work)


async def resume(
    db: Database,
    kind: str,
    subject_id: str,
    now: float,
    name: str | None = None,
    wall: float | None = None,
) -> WarmupRecord | None:
    """A person resumes a paused warmup: active again on the day it was paused on (the
    start day moves on by the days paused). Not paused: unchanged. None: no warmup. A
    HOLD (a subject paused with no warmup of its own) is deleted: the record returned is
    what it was, `not_started` (the subject has no warmup again, and sends unlimited by
    one). With the subject's `name`, the mail waiting for the pause is due at once
    (`wall`: the queue's time, `now` by default)."""

    def work(conn: Connection) -> WarmupRecord | None:
        where = (W.c.kind == kind, W.c.subject_id == subject_id)
        found = _read(conn, now, *where)
        if not found:
            return None
        record = found[0]
        if is_hold(record):
            conn.execute(delete(W).where(*where))
            counted = key(kind, subject_id)
            conn.execute(delete(PS).where(PS.c.pool_id == counted))
            conn.execute(delete(PD).where(PD.c.pool_id == counted))
            record = replace(
                record, status="not_started", stored_status="active", paused_reason=None,
                paused_at=None, updated_at=now, day=0, daily_limit=None, sent_today=0,
            )  # fmt: skip
        elif record.stored_status != "paused":
            return record
        else:
            start = record.start_day
            if record.day >= 1:  # paused during the ramp: go on from that day
                start = shifted_start(record.day, now, record.timezone)
            conn.execute(
                update(W)
                .where(*where)
                .values(status="active", start_day=start, paused_reason=None, paused_at=None,
                        updated_at=now)
            )  # fmt: skip
            record = _read(conn, now, *where)[0]
        if name is not None:
            due = now if wall is None else wall
            queue_sql.wake_waiting(conn, f"{waiting_text(kind, name)} paused:", due)
        return record

    return await db.transaction(work)


# A subject paused with no warmup running gets a finished one-day ramp, paused (a HOLD): its
# sending waits until a person resumes it, and the resume deletes it (no warmup again).
HOLD = {"preset": None, "start_volume": MAX_VOLUME, "step": 0, "cap": MAX_VOLUME,
        "timezone": "UTC", "start_day": "2000-01-01"}  # fmt: skip
HOLD_BY = "postern:hold"  # a HOLD row's created_by: no person's id looks like it


def is_hold(record: WarmupRecord) -> bool:
    """Whether `record` is a HOLD, no warmup a person set: `resume` deletes it rather than
    leave the subject with a `complete` warmup it never had. Told by HOLD's own values (a
    start day of 2000 no API or CLI call sets with that schedule) and no person's name."""
    schedule = record.schedule
    return (
        record.created_by == HOLD_BY
        and record.start_day == HOLD["start_day"]
        and record.timezone == HOLD["timezone"]
        and schedule.preset is None
        and (schedule.start, schedule.step, schedule.cap) == (MAX_VOLUME, 0, MAX_VOLUME)
    )


def pause_in(conn: Connection, kind: str, subject_id: str, reason: str, now: float) -> bool:
    """Pause the subject's sending on `conn` with `reason` (True): its warmup, whatever its
    day, or (none running) a finished one, paused (HOLD). A paused one keeps its first
    reason (False). Only an account or a pool (KINDS): any other kind is refused
    (ScheduleError), never written."""
    check_kind(kind)
    found = _read(conn, now, W.c.kind == kind, W.c.subject_id == subject_id)
    paused = {"status": "paused", "paused_reason": reason[:512], "paused_at": now}
    if not found:
        # A pause racing another (a person's and the reputation crossing's): one inserts,
        # the other then finds it paused, rather than failing its whole transaction.
        dialect = dialect_module(conn.dialect.name)
        made = conn.execute(
            dialect.insert(W).values(kind=kind, subject_id=subject_id, created_at=now,
                                     updated_at=now, created_by=HOLD_BY, **HOLD, **paused)
            .on_conflict_do_nothing()
        )  # fmt: skip
        if made.rowcount == 1:
            return True
    changed = conn.execute(
        update(W)
        .where(W.c.kind == kind, W.c.subject_id == subject_id, W.c.status == "active")
        .values(updated_at=now, **paused)
    )
    return changed.rowcount == 1


def purge_events(conn: Connection, event_type: str, before: float) -> None:
    """Delete the events of `event_type` about no message (message_id "") written before
    `before`, on ix_event_message: retention, which purges by message, never reaches them."""
    conn.execute(
        delete(E).where(E.c.message_id == "", E.c.type == event_type, E.c.created_at < before)
    )


async def pause(db: Database, kind: str, subject_id: str, reason: str, now: float) -> None:
    """A person's pause (`postern warmup pause`, the API): pause the subject's sending,
    recording why (its warmup, or a finished one made to hold it: pause_in). Mail waits in
    the queue, deferred with the reason, until a person resumes it."""

    def work(conn: Connection) -> bool:
        return pause_in(conn, kind, subject_id, reason, now)

    await db.transaction(work)


async def paused(db: Database, kind: str, subject_id: str, reason: str, now: float) -> bool:
    """`pause`, saying whether this call paused it."""

    def work(conn: Connection) -> bool:
        return pause_in(conn, kind, subject_id, reason, now)

    return await db.transaction(work)


def reserve(
    conn: Connection,
    kind: str,
    subject_id: str,
    now: float,
    *,
    lease: float,
    active_hours: int,
    burst: float,
) -> Reserved | Paused | Over | None:
    """Take one send from the subject's warmup (run in the caller's transaction): None
    when no warmup limits it now (none, not started, complete), else Reserved, Paused or
    Over (the hour's cap, or the day's limit)."""
    where = (W.c.kind == kind, W.c.subject_id == subject_id)
    if conn.dialect.name == "postgresql":
        conn.execute(select(W.c.kind).where(*where).with_for_update())
    row = conn.execute(select(W).where(*where)).mappings().first()
    if row is None:
        return None
    record = _record(row, now, 0)
    if record.status == "paused":
        return Paused(record.paused_reason or "paused")
    if record.status != "active" or record.daily_limit is None:
        return None
    daily = record.daily_limit
    hourly = hourly_cap(daily, active_hours, burst)
    counted, day = key(kind, subject_id), day_key(now, record.timezone)
    verdict = throttle.reserve_counted(
        conn, counted, now, hourly, HOUR, daily,
        lease=lease, day=day, day_ends=next_midnight(now, record.timezone),
    )  # fmt: skip
    if isinstance(verdict, throttle.OverLimit):
        if verdict.reason == "daily":
            return Over("warmup_daily", verdict.slots[0], daily)
        return Over("warmup_hourly", verdict.slots[0], hourly)
    return Reserved(counted, day, verdict)


def release(conn: Connection, reserved: Reserved) -> None:
    """Give back a send taken but not made (another limit refused it)."""
    if reserved.send_id:
        conn.execute(delete(PS).where(PS.c.id == reserved.send_id))
    conn.execute(
        update(PD)
        .where(PD.c.pool_id == reserved.key, PD.c.day == reserved.day, PD.c.count > 0)
        .values(count=PD.c.count - 1)
    )


async def active(db: Database, now: float) -> list[tuple[WarmupRecord, str]]:
    """The warmups active now, each with its subject's name as delivery records it in
    `message.last_pool` and `event.pool` (the pool's name, the account's address)."""
    records = [r for r in await list_warmups(db, now) if r.status == "active"]
    if not records:
        return []

    def names(conn: Connection) -> dict[tuple[str, str], str]:
        pools = [r.subject_id for r in records if r.kind == "pool"]
        accounts = [r.subject_id for r in records if r.kind == "account"]
        found: dict[tuple[str, str], str] = {}
        if pools:
            for pool_id, name in conn.execute(select(P.c.id, P.c.name).where(P.c.id.in_(pools))):
                found["pool", pool_id] = name
        if accounts:
            query = select(A.c.id, A.c.email).where(A.c.id.in_(accounts))
            for account_id, email in conn.execute(query):
                found["account", account_id] = email
        return found

    known = await db.read(names)
    return [
        (record, known[record.kind, record.subject_id])
        for record in records
        if (record.kind, record.subject_id) in known
    ]


@dataclass(frozen=True)
class Outcomes:
    """What happened to mail sent through one subject since a moment: recipients."""

    delivered: int = 0
    bounced: int = 0  # hard bounces: the upstream's 5xx, and reports that came back
    complaints: int = 0

    @property
    def sent(self) -> int:
        return self.delivered + self.bounced


async def outcomes(db: Database, name: str, since: float) -> Outcomes:
    """`outcomes_since` for one subject."""
    return (await outcomes_since(db, {name: since}))[name]


async def outcomes_since(db: Database, since: Mapping[str, float]) -> dict[str, Outcomes]:
    """For each subject named (as `event.pool`, or its message's `last_pool` for a report
    that came back later), the delivered, hard-bounced and complained-of recipients of its
    mail from its own `since` on: one statement for them all, grouped by subject, reading
    `ix_event_created` from the earliest `since`."""
    if not since:
        return {}
    first = min(since.values())
    rows = [
        select(cast(literal(name), String).label("name"), cast(literal(t), Float).label("since"))
        for name, t in since.items()
    ]
    subjects = (rows[0] if len(rows) == 1 else union_all(*rows)).cte("warmup_subject")

    def query(conn: Connection) -> list[Any]:
        kinds = ("delivered", "bounced", "complaint")
        # The upstream's answers name the pool in the event itself (no message joined) ...
        sync = (
            select(subjects.c.name, E.c.type, func.count().label("n"))
            .select_from(
                E.join(
                    subjects, and_(E.c.pool == subjects.c.name, E.c.created_at >= subjects.c.since)
                )
            )
            .where(E.c.created_at >= first, E.c.type.in_(kinds))
            .group_by(subjects.c.name, E.c.type)
        )
        # ... a report that came back later names none: its message's last pool does.
        late = (
            select(subjects.c.name, E.c.type, func.count().label("n"))
            .select_from(
                E.join(M, M.c.id == E.c.message_id).join(
                    subjects,
                    and_(M.c.last_pool == subjects.c.name, E.c.created_at >= subjects.c.since),
                )
            )
            .where(
                E.c.created_at >= first,
                E.c.pool.is_(None),
                E.c.type.in_(("bounced", "complaint")),
            )
            .group_by(subjects.c.name, E.c.type)
        )
        return list(conn.execute(union_all(sync, late)).all())

    counts: dict[str, dict[str, int]] = {name: {} for name in since}
    for name, kind, count in await db.read(query):
        found = counts.setdefault(name, {})
        found[kind] = found.get(kind, 0) + count
    return {
        name: Outcomes(
            delivered=found.get("delivered", 0),
            bounced=found.get("bounced", 0),
            complaints=found.get("complaint", 0),
        )
        for name, found in counts.items()
    }
