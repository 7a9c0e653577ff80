"""DNSBL verdicts and the check's lease in storage, on SQLite and PostgreSQL: a subject's
verdict replaced round by round (`checked_at` only moved by a verdict, `listed_since` kept
through an unknown round, "became listed" said once), the seed's read of the latest results,
and two nodes starting the scheduled check at once against one database: exactly one runs it."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from gateway.dns import Resolver
from gateway.reputation.dnsbl import BlocklistCheck, Settings
from storage import blocklists
from storage.blocklists import Verdict
from storage.db import Database
from tests.support.dnsbl import list_subject, working_lists
from tests.support.dnsserver import DnsServer

LISTING = {"list": "spamcop", "code": "127.0.0.2", "meaning": "reported", "text": "see x"}


async def test_record_and_latest(backend: Database) -> None:
    assert await blocklists.latest_results(backend, ["192.0.2.1"]) == {}
    newly = await blocklists.record(
        backend,
        [
            Verdict("192.0.2.1", "ip", "listed", (LISTING,)),
            Verdict("example.com", "domain", "clean"),
            Verdict("example.net", "domain", "unknown", (), ({"list": "x", "reason": "y"},)),
        ],
        now=100.0,
    )
    assert [v.subject for v in newly] == ["192.0.2.1"]
    found = await blocklists.latest_results(backend, ["192.0.2.1", "Example.COM", "example.net"])
    assert found["192.0.2.1"] == blocklists.BlocklistResult(
        "192.0.2.1", "listed", ({"list": "spamcop", "code": "127.0.0.2", "meaning": "reported"},),
        100.0,
    )  # fmt: skip
    assert found["example.com"].status == "clean" and found["example.com"].checked_at == 100.0
    assert found["example.net"].checked_at is None  # never a completed check

    # An unknown round: checked_at and listed_since stay; then listed again is not "new".
    await blocklists.record(backend, [Verdict("192.0.2.1", "ip", "unknown")], now=200.0)
    (row,) = [c for c in await blocklists.all_checks(backend) if c.subject == "192.0.2.1"]
    assert (row.status, row.checked_at, row.attempted_at, row.listed_since) == (
        "unknown", 100.0, 200.0, 100.0,
    )  # fmt: skip
    again = await blocklists.record(
        backend, [Verdict("192.0.2.1", "ip", "listed", (LISTING,))], now=300.0
    )
    assert again == []
    # Clean: delisted; listed later is new again.
    await blocklists.record(backend, [Verdict("192.0.2.1", "ip", "clean")], now=400.0)
    relisted = await blocklists.record(
        backend, [Verdict("192.0.2.1", "ip", "listed", (LISTING,))], now=500.0
    )
    assert [v.subject for v in relisted] == ["192.0.2.1"]
    listed = [c for c in await blocklists.all_checks(backend) if c.subject == "192.0.2.1"]
    assert listed[0].listed_since == 500.0 and listed[0].listings == (LISTING,)


async def test_lease(backend: Database) -> None:

    async def take(node: str, now: float, due_before: float = 50.0) -> bool:
        return await backend.transaction(
            lambda conn: blocklists.claim(conn, node, now, now + 10, due_before)
        )

    assert await take("a", 100.0)
    assert not await take("b", 105.0)  # a live lease
    assert await take("b", 111.0)  # a's lapsed (a died)
    assert not await backend.transaction(lambda conn: blocklists.finish(conn, "a", 112.0))
    assert await backend.transaction(lambda conn: blocklists.finish(conn, "b", 112.0))
    assert not await take("a", 113.0, due_before=50.0)  # completed at 112: not due
    assert await take("a", 113.0, due_before=float("inf"))  # forced (the CLI's check)
    await backend.transaction(lambda conn: blocklists.release(conn, "a"))
    state = await blocklists.run_state(backend)
    assert state is not None and state.claimed_by is None and state.completed_at == 112.0


@pytest.fixture
def server() -> Iterator[DnsServer]:
    with DnsServer() as started:
        yield started


async def test_two_nodes_one_round(
    backend: Database, other_db: Database, server: DnsServer
) -> None:
    working_lists(server, ("spamcop",))
    list_subject(server, "192.0.2.7", "spamcop", "127.0.0.2")

    def node(db: Database, name: str) -> BlocklistCheck:
        resolver = Resolver([server.nameserver], timeout=1.0, lifetime=1.0, cache_size=0)
        settings = Settings(name, interval=3600.0, timeout=1.0, sending_ips=("192.0.2.7",),
                            lists=("spamcop",))  # fmt: skip
        return BlocklistCheck(db, resolver, settings)

    reports = await asyncio.gather(
        node(backend, "node-a").round(force=False), node(other_db, "node-b").round(force=False)
    )
    assert sorted(report.ran for report in reports) == [False, True]
    assert server.count("7.2.0.192.bl.spamcop.net", "A") == 1  # asked once, by one node
    found = await blocklists.latest_results(backend, ["192.0.2.7"])
    assert found["192.0.2.7"].status == "listed"
    # Within the interval neither node runs again.
    again = await asyncio.gather(
        node(backend, "node-a").round(force=False), node(other_db, "node-b").round(force=False)
    )
    assert not any(report.ran for report in again)
