"""storage.throttle on SQLite and PostgreSQL: the rolling window, sends in flight (leased)
counting however long they take, the daily cap, and two nodes racing for the same pool's
last slots (PostgreSQL: the pool row lock); gateway.delivery.throttle's lease renewal on top."""

from __future__ import annotations

import asyncio
import time

from sqlalchemy import Connection, func, select

from gateway.delivery.slowdown import Wait
from gateway.delivery.throttle import Throttle, Ticket
from gateway.delivery.upstream import PoolSettings
from storage import throttle as sql
from storage.db import Database
from storage.models import Pool
from storage.writer import Writer

P = Pool
POOL = "smtp_limited"


async def _add_pool(db: Database) -> None:
    await db.transaction(
        lambda conn: conn.execute(
            P.insert().values(id=POOL, name="limited", host="127.0.0.1", port=25,
                              created_at=time.time())
        )
    )  # fmt: skip


async def _reserve(
    db: Database, now: float, count: int, window: float, daily: int, lease: float = 0.0
) -> object:
    """`lease` 0: a send that ends as soon as it is reserved (its window starts `now`)."""
    return await db.transaction(
        lambda conn: sql.reserve(conn, POOL, now, count, window, daily, lease=lease)
    )


async def _finish(db: Database, send_id: object, done: float) -> int:
    """SENT: the rows it moved (1 while the reservation still exists)."""
    params = {"send_id": send_id, "done": done}
    return await db.transaction(lambda conn: conn.execute(sql.SENT, params).rowcount)


async def _renew(db: Database, send_id: object, until: float) -> None:
    params = {"send_id": send_id, "until": until}
    await db.transaction(lambda conn: conn.execute(sql.RENEW, [params]))


async def _ats(db: Database) -> list[float]:
    def read(conn: Connection) -> list[float]:
        ats = conn.execute(select(sql.PS.c.at).order_by(sql.PS.c.at)).scalars()
        return [float(at) for at in ats]

    return await db.read(read)


async def test_rolling_window(backend: Database) -> None:
    await _add_pool(backend)
    start = 1_000_000.0
    granted = [await _reserve(backend, start + i, 3, 10.0, 0) for i in range(3)]
    assert all(isinstance(g, int) and g > 0 for g in granted)
    refused = await _reserve(backend, start + 5, 3, 10.0, 0)
    assert isinstance(refused, sql.OverLimit) and refused.reason == "rate"
    assert refused.slots == (start + 10, start + 11, start + 12)
    # The first send leaves the window at start + 10: one slot again, and only one.
    assert isinstance(await _reserve(backend, start + 10.5, 3, 10.0, 0), int)
    assert isinstance(await _reserve(backend, start + 10.6, 3, 10.0, 0), sql.OverLimit)


async def test_a_sent_row_moves_its_window(backend: Database) -> None:
    await _add_pool(backend)
    send_id = await _reserve(backend, 100.0, 1, 10.0, 0)
    assert await _finish(backend, send_id, 104.0) == 1
    refused = await _reserve(backend, 111.0, 1, 10.0, 0)  # 10 s after the answer, not the start
    assert isinstance(refused, sql.OverLimit) and refused.slots == (114.0,)


async def test_a_send_in_flight_counts_however_long_it_takes(backend: Database) -> None:
    """The reviewer's case: 1/s, a send that waits longer than the window for a connection
    or an answer. It blocks the next one all along, its row survives the pruning of later
    reservations, and once it ends at T the next slot opens at T + 1 s exactly."""
    await _add_pool(backend)
    start, lease = 1_000_000.0, 120.0
    send_id = await _reserve(backend, start, 1, 1.0, 0, lease)
    assert isinstance(send_id, int) and send_id > 0
    assert await _ats(backend) == [start + lease]
    refused = await _reserve(backend, start + 0.5, 1, 1.0, 0, lease)
    # It could end any moment: the earliest slot is a window from now, not from its lease.
    assert isinstance(refused, sql.OverLimit) and refused.slots == (start + 1.5,)
    for later in (start + 1.01, start + 30.0, start + 119.0):  # still in flight: refused
        refused = await _reserve(backend, later, 1, 1.0, 0, lease)
        assert isinstance(refused, sql.OverLimit) and refused.reason == "rate"
        assert refused.slots == (later + 1.0,)
    assert await _ats(backend) == [start + lease]  # never pruned while in flight

    done = start + 40.0  # the upstream answers (or the send fails) at T
    assert await _finish(backend, send_id, done) == 1  # the row was still there
    refused = await _reserve(backend, done + 0.99, 1, 1.0, 0, lease)
    assert isinstance(refused, sql.OverLimit) and refused.slots == (done + 1.0,)
    assert isinstance(await _reserve(backend, done + 1.0, 1, 1.0, 0, lease), int)
    assert await _ats(backend) == [done + 1.0 + lease]  # the finished send pruned, not before


async def test_a_renewed_lease_holds_and_an_abandoned_one_runs_out(backend: Database) -> None:
    await _add_pool(backend)
    start = 2_000_000.0
    send_id = await _reserve(backend, start, 2, 1.0, 0, 10.0)
    assert isinstance(await _reserve(backend, start, 2, 1.0, 0, 10.0), int)
    await _renew(backend, send_id, start + 8.0 + 10.0)  # renewed at +8, then its node dies
    assert await _ats(backend) == [start + 10.0, start + 18.0]
    # The other one, never renewed, runs out with its lease: counted until +10 + window.
    assert isinstance(await _reserve(backend, start + 10.5, 2, 1.0, 0, 10.0), sql.OverLimit)
    assert isinstance(await _reserve(backend, start + 11.0, 2, 1.0, 0, 10.0), int)
    # The renewed one lapses at +18 (no renewal since): it frees its slot at +19; the one
    # just reserved, in flight, no sooner than a window from now.
    refused = await _reserve(backend, start + 18.5, 2, 1.0, 0, 10.0)
    assert isinstance(refused, sql.OverLimit) and refused.slots == (start + 19.0, start + 19.5)
    assert isinstance(await _reserve(backend, start + 19.0, 2, 1.0, 0, 10.0), int)
    assert await _finish(backend, send_id, start + 30.0) == 0  # long gone: a no-op


async def test_the_throttle_leases_renews_and_ends_a_send(
    backend: Database, writer: Writer
) -> None:
    await _add_pool(backend)
    pool = PoolSettings(id=POOL, name="limited", host="127.0.0.1", port=25, rate="1/s")
    throttle = Throttle(backend, writer, lease=0.4)
    before = time.time()
    ticket = await throttle.reserve(pool)
    assert isinstance(ticket, Ticket) and ticket.send_id > 0 and throttle.in_flight == 1
    [at] = await _ats(backend)
    assert before + 0.4 <= at <= time.time() + 0.4
    assert isinstance(await throttle.reserve(pool), Wait)

    await asyncio.sleep(0.15)
    renewed = time.time()
    await throttle.renew()
    [at] = await _ats(backend)
    assert renewed + 0.4 <= at <= time.time() + 0.4

    await throttle.sent(ticket)
    [at] = await _ats(backend)
    assert throttle.in_flight == 0 and at <= time.time()
    await asyncio.sleep(0.15)
    await throttle.renew()  # nothing in flight: the finish time stands
    assert await _ats(backend) == [at]


async def test_daily_cap_until_utc_midnight(backend: Database) -> None:
    await _add_pool(backend)
    noon = 1_700_049_600.0  # 2023-11-15 12:00 UTC
    assert sql.utc_day(noon) == "2023-11-15"
    for _ in range(2):
        assert await _reserve(backend, noon, 0, 0.0, 2) == 0
    refused = await _reserve(backend, noon + 60, 0, 0.0, 2)
    assert isinstance(refused, sql.OverLimit) and refused.reason == "daily"
    assert refused.slots == (1_700_092_800.0,)  # 2023-11-16 00:00 UTC
    assert await _reserve(backend, 1_700_092_800.0, 0, 0.0, 2) == 0  # a new day


async def test_two_nodes_never_exceed_the_limit(backend: Database, other_db: Database) -> None:
    await _add_pool(backend)
    now = time.time()
    tries = [_reserve(db, now, 10, 60.0, 0) for _ in range(20) for db in (backend, other_db)]
    results = await asyncio.gather(*tries)
    assert sum(isinstance(r, int) for r in results) == 10

    def rows(conn: Connection) -> int:
        return int(conn.execute(select(func.count()).select_from(sql.PS)).scalar_one())

    assert await backend.read(rows) == 10


async def test_prune_drops_what_no_limit_counts(backend: Database) -> None:
    await _add_pool(backend)
    now = 2_000_000_000.0
    await _reserve(backend, now - 3 * 86400, 5, 60.0, 5)
    await _reserve(backend, now, 5, 60.0, 5)
    await backend.transaction(lambda conn: sql.prune(conn, now))

    def counts(conn: Connection) -> tuple[int, int]:
        sends = conn.execute(select(func.count()).select_from(sql.PS)).scalar_one()
        days = conn.execute(select(func.count()).select_from(sql.PD)).scalar_one()
        return int(sends), int(days)

    assert await backend.read(counts) == (1, 1)
