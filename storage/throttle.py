"""The SQL of per-pool throttling: reserve one send against a pool's limits, atomically.

Counted in the database, not per process, so that the limits hold across nodes. The
reserving transaction is serialised per pool: on PostgreSQL it locks the pool's
`smtp_pool` row FOR UPDATE (other nodes wait for the commit); SQLite has one writer.

    rolling window: allowed iff fewer than N `pool_send` rows have `at` in the window;
                    then a row is added (and rows that left the window are pruned)
    daily:          allowed iff `pool_day.count` for today (UTC) < daily_limit; then +1

A `pool_send` row's `at` is when its window starts. While the send is in flight (waiting
for a connection, or for the upstream's answer) that moment is not known yet, so the row
holds a lease instead: `at` = now + lease, in the future, where the window count always
includes it and no pruning reaches it, however long the send takes. The sending node
pushes the lease on while the send lasts (RENEW) and sets `at` to the finish time once the
upstream has answered or the send failed (SENT). A reservation whose node died is renewed
no more: it counts until its lease runs out and one window more, then it is pruned.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import Column, Connection, bindparam, delete, func, insert, select, update

from storage.dialects import dialect_module
from storage.limits import MAX_WINDOW
from storage.models import Pool, PoolDay, PoolSend

P = Pool
PS = PoolSend
PD = PoolDay

# How many upcoming slot times a refusal reports (enough to spread a burst of waiters).
_SLOTS = 100

# A send's time moved to when the upstream answered or the send failed ({"send_id",
# "done"}): the window then runs from when the send ended, not from the reservation.
SENT = update(PS).where(PS.c.id == bindparam("send_id")).values(at=bindparam("done"))
# The lease of a send still in flight pushed on ({"send_id", "until"}: now + lease).
RENEW = update(PS).where(PS.c.id == bindparam("send_id")).values(at=bindparam("until"))


@dataclass(frozen=True)
class OverLimit:
    """Over a limit: `slots` are the times at which the next sends become allowed."""

    reason: str  # rate | daily
    slots: tuple[float, ...]


def utc_day(now: float) -> str:
    return datetime.fromtimestamp(now, UTC).strftime("%Y-%m-%d")


def next_midnight(now: float) -> float:
    day = datetime.fromtimestamp(now, UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    return (day + timedelta(days=1)).timestamp()


def reserve(
    conn: Connection,
    pool_id: str,
    now: float,
    count: int,
    window: float,
    daily: int,
    *,
    lease: float,
) -> int | OverLimit:
    """Take one send from the pool's limits: the id of its `pool_send` row (0 without a
    rate), or why not. `count`/`window` 0 = no rate; `daily` 0 = no daily cap. The row is
    in flight until SENT, its `at` leased to `now + lease` (see the module docstring)."""
    if conn.dialect.name == "postgresql":
        conn.execute(select(P.c.id).where(P.c.id == pool_id).with_for_update())
    return reserve_counted(
        conn, pool_id, now, count, window, daily,
        lease=lease, day=utc_day(now), day_ends=next_midnight(now),
    )  # fmt: skip


def reserve_counted(
    conn: Connection,
    key: str,
    now: float,
    count: int,
    window: float,
    daily: int,
    *,
    lease: float,
    day: str,
    day_ends: float,
) -> int | OverLimit:
    """`reserve` for any counted subject (`key`: a pool's id, or a warmup's
    `warmup:<kind>:<id>`), its day named by the caller (`day`, ending at `day_ends`). The
    caller serialises: it holds a lock on the subject's row (PostgreSQL) or runs in
    SQLite's one writer."""
    if daily:
        used = conn.execute(select(PD.c.count).where(PD.c.pool_id == key, PD.c.day == day)).scalar()
        if (used or 0) >= daily:
            return OverLimit("daily", (day_ends,))
    send_id = 0
    if count:
        taken = take(conn, PS.c.pool_id, key, now, count, window, lease=lease)
        if isinstance(taken, OverLimit):
            return taken
        send_id = taken.row_id
    if daily:
        count_day(conn, key, day, 1)
    return send_id


@dataclass(frozen=True)
class Taken:
    """One more counted in a rolling window: its row, and how many the window held before."""

    row_id: int
    used: int


def take(
    conn: Connection,
    key_column: Column[str],
    key: str,
    now: float,
    count: int,
    window: float,
    *,
    lease: float = 0.0,
    slots: int = _SLOTS,
    prune: bool = True,
) -> Taken | OverLimit:
    """The rolling window of any counted subject: one more row for `key` (in the table of
    `key_column`, which has an `id` and an `at`) when fewer than `count` have `at` within
    `window` seconds of `now`, dated `now + lease`; else OverLimit("rate") with up to
    `slots` of the times the next become allowed. `prune`: delete the key's rows that left
    the window first (else the caller prunes). The caller serialises per key (see
    `reserve_counted`); pool sends (`pool_send`) and SMTP AUTH failures
    (storage.auth_failures) are counted by it."""
    table = key_column.table
    at = table.c.at
    if prune:  # keeps the table at about N rows per key: one index range each time
        conn.execute(delete(table).where(key_column == key, at <= now - window))
    in_window = (key_column == key, at > now - window)
    used = conn.execute(select(func.count()).select_from(table).where(*in_window)).scalar()
    used = used or 0
    if used >= count:
        if not slots:
            return OverLimit("rate", ())
        # The (used - count + 1)-th oldest row leaving the window frees the first slot. A
        # send in flight (`at` in the future) ends at the earliest now: its slot is then
        # no sooner than now + window (a lower bound; asking again then is exact).
        oldest = conn.execute(
            select(at).where(*in_window).order_by(at).offset(used - count).limit(slots)
        ).scalars()
        return OverLimit("rate", tuple(min(when, now) + window for when in oldest))
    row_id = conn.execute(
        insert(table).values({key_column: key, at: now + lease}).returning(table.c.id)
    ).scalar_one()
    return Taken(row_id, used)


def count_day(conn: Connection, key: str, day: str, delta: int) -> None:
    """Add `delta` to `key`'s count for `day` (a row made at 1 when there is none)."""
    dialect = dialect_module(conn.dialect.name)
    upsert = dialect.insert(PD).values(pool_id=key, day=day, count=max(delta, 0))
    conn.execute(
        upsert.on_conflict_do_update(
            index_elements=["pool_id", "day"], set_={"count": PD.c.count + delta}
        )
    )


def prune(conn: Connection, now: float) -> None:
    """Drop rows no limit can still count (pools deleted, limits removed, past days)."""
    conn.execute(delete(PS).where(PS.c.at <= now - MAX_WINDOW))
    conn.execute(delete(PD).where(PD.c.day < utc_day(now - 2 * 86400)))
