"""The reputation roll-up, its lease and each subject's crossing, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import json

from sqlalchemy import Connection, text

from storage import reputation
from storage.db import Database
from storage.reputation import DayCounts
from tests.support.reputation import record_sends

DAY = 86400.0
NOW = 1_780_000_000.0  # 2026-05-28 (UTC) 20:26:40


def totals(rows: list[DayCounts]) -> dict[tuple[str, str], tuple[int, int, int, int]]:
    return {
        (r.pool, r.domain): (r.delivered, r.hard_bounces, r.complaints, r.deferrals) for r in rows
    }


async def roll(db: Database, node: str, now: float) -> None:
    assert await db.transaction(lambda c: reputation.take_lease(c, node, now, now + 600))
    while await db.transaction(lambda c: reputation.roll_up_step(c, node, now, ("simulator",))):
        pass


async def test_roll_up_counts_each_event_once_by_pool_and_sender_domain(backend: Database) -> None:
    await record_sends(backend, "relay", "a@Example.com", NOW - 3 * DAY, delivered=5, bounced=1)
    await record_sends(
        backend, "relay", "b@example.com", NOW - 20 * DAY, delivered=2, deferred=3, waited=4
    )  # Postern's own waiting (no upstream reply) is no receiver's deferral
    await record_sends(backend, "acct@x.org", "acct@x.org", NOW - 600, complaints=1, late_bounces=2)
    await record_sends(backend, "relay", "c@example.com", NOW - 10, delivered=7)  # in the margin
    await record_sends(backend, "relay", "d@example.com", NOW - 40 * DAY, delivered=9)  # too old
    await record_sends(backend, "simulator", "e@example.com", NOW - DAY, bounced=9)  # a test
    await roll(backend, "n1", NOW)
    week = await backend.read(lambda c: reputation.window_totals(c, reputation.since_day(NOW, 7)))
    month = await backend.read(lambda c: reputation.window_totals(c, reputation.since_day(NOW, 30)))
    assert totals(week) == {
        ("relay", "example.com"): (5, 1, 0, 0),
        ("acct@x.org", "x.org"): (0, 2, 1, 0),
    }
    assert totals(month)[("relay", "example.com")] == (7, 1, 0, 3)
    # a second run adds only what is new: the margin's message, once
    await roll(backend, "n1", NOW + reputation.MARGIN)
    await roll(backend, "n1", NOW + reputation.MARGIN)
    week = await backend.read(lambda c: reputation.window_totals(c, reputation.since_day(NOW, 7)))
    assert totals(week)[("relay", "example.com")] == (12, 1, 0, 0)


async def test_a_span_never_crosses_midnight(backend: Database) -> None:
    midnight = reputation.day_start(NOW)
    await record_sends(backend, "relay", "a@example.com", midnight - 5, delivered=1)
    await record_sends(backend, "relay", "a@example.com", midnight + 5, delivered=2)
    await roll(backend, "n1", NOW)

    def days(conn: Connection) -> list[tuple[str, int]]:
        rows = conn.execute(text("SELECT day, delivered FROM reputation_day ORDER BY day"))
        return [(r.day, r.delivered) for r in rows]

    assert await backend.read(days) == [
        (reputation.day_of(midnight - 5), 1),
        (reputation.day_of(midnight + 5), 2),
    ]


async def test_one_node_holds_the_lease_until_it_lapses(
    backend: Database, other_db: Database
) -> None:
    assert await backend.transaction(lambda c: reputation.take_lease(c, "n1", NOW, NOW + 60))
    assert not await other_db.transaction(lambda c: reputation.take_lease(c, "n2", NOW, NOW + 60))
    assert await backend.transaction(lambda c: reputation.take_lease(c, "n1", NOW + 1, NOW + 61))
    assert not await other_db.transaction(lambda c: reputation.roll_up_step(c, "n2", NOW))
    assert await other_db.transaction(lambda c: reputation.take_lease(c, "n2", NOW + 62, NOW + 99))
    await other_db.transaction(lambda c: reputation.release_lease(c, "n2"))
    assert await backend.transaction(lambda c: reputation.take_lease(c, "n1", NOW + 63, NOW + 99))


async def test_a_crossing_into_risk_is_reported_once(backend: Database) -> None:
    def record(score: int, at_risk: bool) -> object:
        return lambda c: reputation.record_score(c, "pool", "p1", score, at_risk, NOW)

    assert not await backend.transaction(record(90, False))
    assert await backend.transaction(record(60, True))
    assert not await backend.transaction(record(55, True))
    assert not await backend.transaction(record(80, False))
    assert await backend.transaction(record(65, True))
    state = (await backend.read(reputation.states))[("pool", "p1")]
    assert state.score == 65 and state.at_risk


async def test_collecting_leaves_the_risk_as_it_was(backend: Database) -> None:
    def record(score: int | None, at_risk: bool) -> object:
        return lambda c: reputation.record_score(c, "pool", "p1", score, at_risk, NOW)

    assert await backend.transaction(record(60, True))
    assert not await backend.transaction(record(None, False))  # too little volume to judge
    state = (await backend.read(reputation.states))[("pool", "p1")]
    assert state.score is None and state.at_risk  # still at risk: not judged again
    assert not await backend.transaction(record(55, True))  # the same crossing: no event
    assert not await backend.transaction(record(None, False))
    assert not await backend.transaction(record(80, False))  # judged fine: no longer at risk
    assert not (await backend.read(reputation.states))[("pool", "p1")].at_risk


async def test_purge_keeps_the_windows_and_recent_events(backend: Database) -> None:
    old, recent = NOW - 40 * DAY, NOW - DAY
    await record_sends(backend, "relay", "a@example.com", old, delivered=1)
    await record_sends(backend, "relay", "a@example.com", recent, delivered=2)

    def fill(conn: Connection) -> None:
        reputation.add_counts(conn, reputation.day_of(old), [DayCounts("relay", "x", 1, 0, 0, 0)])
        reputation.add_counts(
            conn, reputation.day_of(recent), [DayCounts("relay", "x", 2, 0, 0, 0)]
        )
        for at in (old, recent):
            conn.execute(
                text(
                    "INSERT INTO event (type, message_id, message_status, created_at, attempt,"
                    " txid) VALUES ('reputation_at_risk', '', '', :at, 0, 0)"
                ),
                {"at": at},
            )

    await backend.transaction(fill)
    first = reputation.since_day(NOW, 30)
    await backend.transaction(
        lambda c: reputation.purge(c, first, NOW - 30 * DAY, "reputation_at_risk")
    )

    def left(conn: Connection) -> tuple[list[str], list[float], int]:
        days = [r.day for r in conn.execute(text("SELECT day FROM reputation_day"))]
        risky = "SELECT created_at FROM event WHERE type = 'reputation_at_risk'"
        others = "SELECT count(*) FROM event WHERE message_id <> ''"
        return days, [r[0] for r in conn.execute(text(risky))], conn.execute(text(others)).scalar()

    days, risky, others = await backend.read(left)
    assert days == [reputation.day_of(recent)] and risky == [recent]
    assert others == 3  # a message's events are retention's to purge, not this


async def test_a_reputation_event_is_in_the_stream_for_all_but_owners(backend: Database) -> None:
    from storage import event_stream

    def add(conn: Connection) -> None:
        conn.execute(
            text(
                "INSERT INTO event (type, message_id, message_status, pool, created_at, attempt,"
                " txid) VALUES ('reputation_at_risk', '', '', 'relay', :at, 0, 0)"
            ),
            {"at": NOW},
        )

    await backend.transaction(add)
    everyone = event_stream.EventFilter()
    members = event_stream.EventFilter(user_id="usr_x")
    start, end = event_stream.Position(0, 0), event_stream.Position(2**62, 2**62)

    def seen(flt: event_stream.EventFilter) -> object:
        return lambda c: event_stream.read(c, start, end, flt, 10)[0]

    rows = await backend.read(seen(everyone))
    assert [json.loads(row.json)["type"] for row in rows] == ["reputation_at_risk"]
    assert await backend.read(seen(members)) == []


async def test_two_nodes_one_evaluation_one_event(backend: Database, other_db: Database) -> None:
    from gateway.dns import Resolver
    from gateway.reputation.watch import ReputationWatch, WatchSettings
    from storage import pools

    await pools.create_pool(backend, {"name": "relay", "host": "127.0.0.1", "port": 25}, str)
    await record_sends(backend, "relay", "a@x.test", NOW, delivered=150, complaints=1)
    resolver = Resolver(["127.0.0.1:9"])  # no domain here: never asked
    later = NOW + reputation.MARGIN + 60
    nodes = [
        ReputationWatch(db, resolver, WatchSettings(node), clock=lambda: later)
        for db, node in ((backend, "node-a"), (other_db, "node-b"))
    ]
    first, second = await asyncio.gather(*(node.run_once() for node in nodes))
    assert (first is None) != (second is None)  # one node evaluated
    winner = nodes[0] if first is not None else nodes[1]
    await winner.run_once()  # again: still at risk, no second event

    def risky(conn: Connection) -> int:
        query = "SELECT count(*) FROM event WHERE type = 'reputation_at_risk'"
        return int(conn.execute(text(query)).scalar() or 0)

    assert await backend.read(risky) == 1
    week = await backend.read(lambda c: reputation.window_totals(c, reputation.since_day(NOW, 7)))
    assert totals(week) == {("relay", "x.test"): (150, 0, 1, 0)}  # counted once
    await winner.release()
    loser = nodes[1] if winner is nodes[0] else nodes[0]
    assert await loser.run_once() is not None  # the lease given back: the other takes it


async def test_pause_on_risk_pauses_a_pool_never_a_domain(backend: Database) -> None:
    """The crossing, its event and the pause in one commit: the pool's sending held (a
    finished warmup, paused); the domain at risk too, but only its event (no warmup row)."""
    from gateway.dns import Resolver
    from gateway.reputation.watch import ReputationWatch, WatchSettings
    from storage import domains, pools, warmup

    pool = await pools.create_pool(backend, {"name": "relay", "host": "127.0.0.1", "port": 25}, str)
    await domains.add_domain(backend, "x.test", verified=True)
    # its records as looked up a moment ago: not due, DNS never asked
    await backend.transaction(lambda c: reputation.record_setup(c, "x.test", True, None, True, NOW))
    await record_sends(backend, "relay", "a@x.test", NOW, delivered=150, complaints=1)
    settings = WatchSettings("node-a", pause_on_risk=True)
    watch = ReputationWatch(
        backend, Resolver(["127.0.0.1:9"]), settings, clock=lambda: NOW + reputation.MARGIN + 60
    )
    found = await watch.run_once()
    assert found is not None
    assert {(r.subject.kind, r.result.status) for r in found} >= {
        ("pool", "at_risk"),
        ("domain", "at_risk"),
    }

    def risky(conn: Connection) -> list[str]:
        query = "SELECT detail FROM event WHERE type = 'reputation_at_risk'"
        return sorted(json.loads(r[0])["reputation"]["kind"] for r in conn.execute(text(query)))

    assert await backend.read(risky) == ["domain", "pool"]
    held = await warmup.list_warmups(backend, NOW)
    assert [(w.kind, w.subject_id, w.status) for w in held] == [("pool", pool.id, "paused")]
