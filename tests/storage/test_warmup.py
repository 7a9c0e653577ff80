"""storage.warmup on SQLite and PostgreSQL: set, states, the hourly and daily counting
shared by two connection pools (two nodes), release, pause and resume on the paused day,
clear."""

from __future__ import annotations

import time
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import select

from gateway.config import WarmupConfig
from gateway.delivery.slowdown import Wait
from gateway.delivery.upstream import PoolSettings
from gateway.delivery.warmup import WarmupGate
from gateway.message import DeliveryResult, Outcome
from gateway.queue import events
from storage import pools, warmup
from storage.db import Database
from storage.models import BlocklistRun, Event
from storage.warmup_schedule import Schedule, ScheduleError
from storage.writer import Writer
from tests.support.reputation import record_sends

TZ = "Europe/Paris"
BR = BlocklistRun
EV = Event
OPTS = {"lease": 60.0, "active_hours": 2, "burst": 0.2}


def at(text: str) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=ZoneInfo(TZ)).timestamp()


async def take(db: Database, now: float, subject: str = "p1") -> object:
    return await db.transaction(lambda conn: warmup.reserve(conn, "pool", subject, now, **OPTS))


async def sent(db: Database, reserved: object, done: float) -> None:
    from storage.throttle import SENT

    assert isinstance(reserved, warmup.Reserved)
    await db.transaction(
        lambda conn: conn.execute(SENT, {"send_id": reserved.send_id, "done": done})
    )


async def test_states_of_subjects_with_and_without_a_warmup(backend: Database) -> None:
    now = at("2026-06-01T09:00:00")
    await warmup.set_warmup(backend, "pool", "p1", Schedule(start=4, step=4, cap=12), TZ, now)
    states = await warmup.warmup_states(backend, "pool", ["p1", "p2"], now)
    assert states == {"p1": warmup.WarmupState("active", 4, 0)}  # p2 has none: missing
    assert await warmup.warmup_states(backend, "account", ["p1"], now) == {}
    later = at("2026-06-03T09:00:00")
    assert (await warmup.warmup_states(backend, "pool", ["p1"], later))["p1"].daily_limit == 12
    done = at("2026-06-04T00:00:00")  # day 4 of a 3-day ramp
    assert (await warmup.warmup_states(backend, "pool", ["p1"], done))["p1"] == (
        warmup.WarmupState("complete", None, 0)
    )
    assert await take(backend, done) is None  # complete: limits nothing
    future = "2026-06-10"
    await warmup.set_warmup(backend, "account", "a1", Schedule(preset="aggressive"), TZ, now,
                            start_day=future)  # fmt: skip
    record = await warmup.get_warmup(backend, "account", "a1", now)
    assert record is not None and record.status == "not_started" and record.daily_limit is None


async def test_hourly_then_daily_limits_hold_across_two_nodes(
    backend: Database, other_db: Database
) -> None:
    now = at("2026-06-01T09:00:00")
    await warmup.set_warmup(backend, "pool", "p1", Schedule(start=4, step=4, cap=12), TZ, now)
    # Day 1: 4 a day over 2 active hours: ceil(4/2) + 1 = 3 in any rolling hour.
    first = [await take(db, now + i) for i, db in enumerate([backend, other_db, backend])]
    assert all(isinstance(r, warmup.Reserved) for r in first)
    for reserved in first:
        await sent(backend, reserved, now + 10)
    over = await take(other_db, now + 20)
    assert isinstance(over, warmup.Over) and over.reason == "warmup_hourly"
    assert over.limit == 3 and over.until == pytest.approx(now + 10 + 3600)
    hour_later = now + 3700
    fourth = await take(backend, hour_later)
    assert isinstance(fourth, warmup.Reserved)
    daily = await take(other_db, hour_later + 1)
    assert isinstance(daily, warmup.Over) and daily.reason == "warmup_daily"
    assert daily.until == at("2026-06-02T00:00:00")  # Paris midnight
    state = (await warmup.warmup_states(backend, "pool", ["p1"], hour_later))["p1"]
    assert state == warmup.WarmupState("active", 4, 4)
    # A send taken and given back (the pool's own limit refused it) does not count.
    await backend.transaction(lambda conn: warmup.release(conn, fourth))
    assert isinstance(await take(backend, hour_later + 2), warmup.Reserved)
    # Day 2 opens 8.
    tomorrow = at("2026-06-02T00:00:01")
    assert (await warmup.warmup_states(backend, "pool", ["p1"], tomorrow))["p1"] == (
        warmup.WarmupState("active", 8, 0)
    )
    assert isinstance(await take(other_db, tomorrow), warmup.Reserved)


async def test_pause_holds_the_day_and_resume_goes_on_from_it(backend: Database) -> None:
    now = at("2026-06-01T09:00:00")
    await warmup.set_warmup(backend, "pool", "p1", Schedule(preset="conservative"), TZ, now)
    day2 = at("2026-06-02T12:00:00")
    await warmup.pause(backend, "pool", "p1", "complaint spike: 2 of 40", day2)
    assert await take(backend, day2 + 60) == warmup.Paused("complaint spike: 2 of 40")
    # A second pause keeps the first reason.
    assert not await warmup.paused(backend, "pool", "p1", "another", day2 + 1)
    day5 = at("2026-06-05T08:00:00")
    record = await warmup.get_warmup(backend, "pool", "p1", day5)
    assert record is not None
    assert (record.status, record.day, record.daily_limit) == ("paused", 2, 30)
    assert record.paused_reason == "complaint spike: 2 of 40"
    resumed = await warmup.resume(backend, "pool", "p1", day5)
    assert resumed is not None
    assert (resumed.status, resumed.day, resumed.daily_limit) == ("active", 2, 30)
    assert resumed.paused_reason is None and resumed.start_day == "2026-06-04"
    assert isinstance(await take(backend, day5), warmup.Reserved)
    assert await warmup.resume(backend, "pool", "nobody", day5) is None


async def test_a_subject_without_a_warmup_is_held_until_resumed(backend: Database) -> None:
    """pause_on_risk's pause of a pool with no warmup running: its sending waits, and once
    resumed the hold is gone: no warmup (not `complete`, which it never had), nothing
    limits it; a warmup a person set is never taken for a hold."""
    now = at("2026-06-02T12:00:00")
    assert await take(backend, now, "plain") is None  # no warmup: nothing limits it
    assert await warmup.paused(backend, "pool", "plain", "score 41 < 70", now)
    assert await take(backend, now + 1, "plain") == warmup.Paused("score 41 < 70")
    state = (await warmup.warmup_states(backend, "pool", ["plain"], now + 2))["plain"]
    assert state.status == "paused"
    held = await warmup.get_warmup(backend, "pool", "plain", now + 2)
    assert held is not None and warmup.is_hold(held)
    resumed = await warmup.resume(backend, "pool", "plain", now + 3)
    assert resumed is not None and resumed.status == "not_started"
    assert (resumed.paused_reason, resumed.daily_limit) == (None, None)
    assert await warmup.get_warmup(backend, "pool", "plain", now + 3) is None  # deleted
    assert await warmup.warmup_states(backend, "pool", ["plain"], now + 3) == {}
    assert await take(backend, now + 4, "plain") is None
    assert await warmup.resume(backend, "pool", "plain", now + 5) is None  # nothing left
    # A person's warmup, paused and resumed, stays (whatever its schedule).
    big = Schedule(start=warmup.MAX_VOLUME, step=0, cap=warmup.MAX_VOLUME)
    await warmup.set_warmup(backend, "pool", "big", big, TZ, now, created_by="u1")
    await warmup.pause(backend, "pool", "big", "a person", now + 6)
    kept = await warmup.resume(backend, "pool", "big", now + 7)
    assert kept is not None and kept.status == "active"
    assert await warmup.get_warmup(backend, "pool", "big", now + 7) is not None


async def test_clear_removes_the_warmup_and_its_counts(backend: Database) -> None:
    now = at("2026-06-01T09:00:00")
    await warmup.set_warmup(backend, "pool", "p1", Schedule(start=1, step=1, cap=3), TZ, now)
    assert isinstance(await take(backend, now), warmup.Reserved)
    assert isinstance(await take(backend, now + 1), warmup.Over)
    assert await warmup.clear_warmup(backend, "pool", "p1")
    assert not await warmup.clear_warmup(backend, "pool", "p1")
    assert await take(backend, now + 2) is None
    await warmup.set_warmup(backend, "pool", "p1", Schedule(start=1, step=1, cap=3), TZ, now)
    assert isinstance(await take(backend, now + 3), warmup.Reserved)  # counts started over
    listed = await warmup.list_warmups(backend, now)
    assert [(r.kind, r.subject_id, r.sent_today) for r in listed] == [("pool", "p1", 1)]


async def test_the_gate_for_an_account(backend: Database, writer: Writer) -> None:
    """delivery's WarmupGate over real storage: an account's sends, its waits (on the wall
    clock, however the warmup clock is set), a send given back, throttling replies."""
    clock = [at("2026-06-01T09:00:00")]
    settings = WarmupConfig(active_hours=2, burst=0.0, throttle_replies=2)
    gate = WarmupGate(backend, writer, settings, clock=lambda: clock[0])
    account = PoolSettings(id="acc1", name="me@personal.test", host="h", port=1, source="account")
    pool = PoolSettings(id="acc1", name="same id, a pool", host="h", port=1)
    await warmup.set_warmup(backend, "account", "acc1", Schedule(start=4, step=1, cap=5), TZ,
                            clock[0])  # fmt: skip
    await gate.follow()
    assert await gate.reserve(pool) is None  # a pool's id is another subject
    first = await gate.reserve(account)
    assert isinstance(first, warmup.Reserved)
    await gate.release(first)  # the pool's own limit refused it: it does not count
    taken = [await gate.reserve(account) for _ in range(3)]  # ceil(4/2) + 1 an hour
    assert all(isinstance(t, warmup.Reserved) for t in taken)
    for reserved in taken:
        await gate.sent(reserved)  # type: ignore[arg-type]
    wait = await gate.reserve(account)
    assert isinstance(wait, Wait) and wait.reason == "warmup_hourly"
    assert wait.text == "waiting: warmup of account me@personal.test hourly cap 3"
    assert wait.until == pytest.approx(time.time() + 3600, abs=5)  # wall clock
    later = await gate.reserve(account)  # answered from memory, one step later
    assert isinstance(later, Wait) and later.until > wait.until
    state = (await warmup.warmup_states(backend, "account", ["acc1"], clock[0]))["acc1"]
    assert state == warmup.WarmupState("active", 4, 3)

    def reply(code: int, enhanced: str, text_: str) -> DeliveryResult:
        return DeliveryResult(Outcome.DEFERRED, code, enhanced, text_)

    await gate.throttled(account, reply(421, "4.3.2", "service shutting down"))
    await gate.throttled(account, reply(451, "4.7.1", "rate limited, try again later"))
    assert (await warmup.get_warmup(backend, "account", "acc1", clock[0])).status == "active"  # type: ignore[union-attr]
    await gate.throttled(account, reply(421, "4.7.0", "Too many messages"))
    record = await warmup.get_warmup(backend, "account", "acc1", clock[0])
    assert record is not None and record.status == "paused"
    assert record.paused_reason == (
        "receiver throttling: 2 throttling replies within 1h, the last: 421 4.7.0 Too many messages"
    )
    clock[0] += 7200
    paused = await gate.reserve(account)
    assert isinstance(paused, Wait) and paused.reason == "warmup_paused"
    assert paused.text.startswith("waiting: warmup of account me@personal.test paused: receiver")


async def test_only_an_account_or_a_pool_is_paused(backend: Database) -> None:
    """A domain at risk raises only the event: pause_in refuses it and writes nothing."""
    now = at("2026-06-02T12:00:00")
    with pytest.raises(ScheduleError):
        await backend.transaction(lambda c: warmup.pause_in(c, "domain", "x.test", "risk", now))
    assert await warmup.list_warmups(backend, now) == []


async def test_outcomes_of_every_subject_in_one_query(backend: Database) -> None:
    """The spike check's counts: each subject's from its own `since`, its synchronous
    answers by the event's pool and the reports that came back later by its message's."""
    t0 = at("2026-06-01T09:00:00")
    await record_sends(backend, "relay-a", "a@x.test", t0 - 1000, delivered=100)
    await record_sends(backend, "relay-a", "a@x.test", t0, delivered=10, bounced=2)
    await record_sends(backend, "relay-b", "b@x.test", t0 + 100, delivered=5, complaints=1,
                       late_bounces=1, deferred=3)  # fmt: skip
    found = await warmup.outcomes_since(
        backend, {"relay-a": t0 - 10, "relay-b": t0 + 50, "quiet": t0}
    )
    assert found == {
        "relay-a": warmup.Outcomes(delivered=10, bounced=2),
        "relay-b": warmup.Outcomes(delivered=5, bounced=1, complaints=1),
        "quiet": warmup.Outcomes(),
    }
    assert await warmup.outcomes_since(backend, {}) == {}
    assert (await warmup.outcomes(backend, "relay-a", t0 - 2000)).delivered == 110
    assert await warmup.outcomes(backend, "relay-b", t0 + 101) == warmup.Outcomes()


async def test_the_spike_check_runs_on_the_node_that_leases_it(
    backend: Database, writer: Writer
) -> None:
    """Two nodes' gates: one checks and pauses (a warmup_paused event, once, and those past
    retention purged); the other, within half an interval of it, checks nothing."""
    now = time.time()
    pool = await pools.create_pool(
        backend, {"name": "hot", "host": "127.0.0.1", "port": 2525}, lambda _: ""
    )
    await warmup.set_warmup(backend, "pool", pool.id, Schedule(preset="aggressive"), TZ,
                            now - 3600)  # fmt: skip
    await record_sends(backend, "hot", "a@x.test", now - 60, delivered=19, complaints=1,
                       bounced=1)  # fmt: skip
    old = events.row(events.WARMUP_PAUSED, "", "", now - 40 * 86400, pool="hot", detail="{}")
    await backend.transaction(lambda conn: conn.execute(events.INSERT_EVENT, [old]))
    settings = WarmupConfig(check_interval=60.0, min_volume=20)
    one = WarmupGate(backend, writer, settings, node="node-a", keep_events=30 * 86400)
    other = WarmupGate(backend, writer, settings, node="node-b")
    await one.check_spikes()
    record = await warmup.get_warmup(backend, "pool", pool.id, time.time())
    assert record is not None and record.status == "paused"
    assert record.paused_reason is not None and record.paused_reason.startswith(
        "complaint spike: 1 complaints of 20 recipients"
    )

    def lease(conn: Any) -> Any:
        return conn.execute(select(BR).where(BR.c.name == "warmup_spikes")).one()

    first = await backend.read(lease)
    assert first.claimed_by is None and first.completed_at is not None
    await other.check_spikes()  # node-b does not check at all within the interval
    assert (await backend.read(lease)).started_at == first.started_at

    def paused_events(conn: Any) -> list[Any]:
        return list(conn.execute(select(EV).where(EV.c.type == "warmup_paused")))

    (event,) = await backend.read(paused_events)  # the one past retention is gone
    assert event.message_id == "" and event.pool == "hot" and event.created_at > now - 60
    assert '"warmup":{"kind":"pool"' in event.detail
