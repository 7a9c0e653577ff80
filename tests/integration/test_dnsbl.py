"""DNSBL checks against a loopback DNS server (tests.support.dnsserver): a listed IP with its
code, meaning and TXT; a clean one; Spamhaus's 127.255.255.254 as an error, never a listing;
a timeout as unknown; IPv6 nibbles; list verification (a good list, a list answering
everything, a dead list); the DQS key in the query name and never in what is stored; and
a round end to end, from the subjects in storage to the verdicts stored."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from sqlalchemy import select

from gateway.dns import Resolver
from gateway.reputation.dnsbl import (
    BlocklistCheck,
    Dnsbl,
    Listed,
    NotListed,
    QueryError,
    Settings,
    query_name,
)
from gateway.reputation.lists import LISTS, SPAMCOP, SPAMHAUS_DBL, SPAMHAUS_ZEN
from storage import blocklists
from storage.db import Database, create_schema, database_url, open_database
from storage.domains import add_domain
from storage.models import BlocklistCheck as Row
from tests.support.dnsbl import list_subject, working_lists
from tests.support.dnsserver import DnsServer

BC = Row
KEY = "abcdef0123456789abcdef0123"


@pytest.fixture
def server() -> Iterator[DnsServer]:
    with DnsServer() as started:
        yield started


@pytest.fixture
async def db(tmp_path: Path) -> AsyncIterator[Database]:
    opened = open_database(database_url("", tmp_path))
    await create_schema(opened)
    try:
        yield opened
    finally:
        await opened.dispose()


def resolver(server: DnsServer, timeout: float = 0.5) -> Resolver:
    return Resolver([server.nameserver], timeout=timeout, lifetime=timeout, cache_size=0)


def test_query_names() -> None:
    assert query_name("192.0.2.7", SPAMHAUS_ZEN) == "7.2.0.192.zen.spamhaus.org"
    assert query_name("Example.COM", SPAMHAUS_DBL) == "example.com.dbl.spamhaus.org"
    v6 = query_name("2001:db8::1", SPAMHAUS_ZEN)
    assert v6 == "1." + "0." * 23 + "8.b.d.0.1.0.0.2.zen.spamhaus.org"
    assert query_name("2001:db8::1", SPAMCOP) is None  # an IPv4-only list
    assert (
        query_name("example.com", SPAMCOP) is None and query_name("192.0.2.7", SPAMHAUS_DBL) is None
    )
    assert query_name("192.0.2.7", SPAMHAUS_ZEN, KEY) == f"7.2.0.192.{KEY}.zen.dq.spamhaus.net"
    assert query_name("192.0.2.7", SPAMCOP, KEY) == "7.2.0.192.bl.spamcop.net"  # not Spamhaus


async def test_listed_clean_error_and_timeout(server: DnsServer) -> None:
    dnsbl = Dnsbl(resolver(server))
    list_subject(server, "192.0.2.7", "spamhaus-zen", "127.0.0.4", "https://check.spamhaus.org/x")
    listed = await dnsbl.query("192.0.2.7", SPAMHAUS_ZEN)
    assert listed == Listed(
        "127.0.0.4", SPAMHAUS_ZEN.codes["127.0.0.4"], "https://check.spamhaus.org/x"
    )
    assert await dnsbl.query("192.0.2.8", SPAMHAUS_ZEN) == NotListed()  # NXDOMAIN
    # Spamhaus's "public resolver" answer is an error, never a listing.
    list_subject(server, "192.0.2.9", "spamhaus-zen", "127.255.255.254")
    error = await dnsbl.query("192.0.2.9", SPAMHAUS_ZEN)
    assert isinstance(error, QueryError) and "public or open resolver" in error.reason
    list_subject(server, "192.0.2.10", "spamhaus-zen", "127.255.255.255")
    assert isinstance(await dnsbl.query("192.0.2.10", SPAMHAUS_ZEN), QueryError)
    # Spamhaus reserves all of 127.255.255.0/24 for errors: a code there it has not named
    # (yet) is an error too, on ZEN and on the DBL, never a listing.
    list_subject(server, "192.0.2.16", "spamhaus-zen", "127.255.255.1")
    reserved = await dnsbl.query("192.0.2.16", SPAMHAUS_ZEN)
    assert isinstance(reserved, QueryError) and "127.255.255.0/24" in reserved.reason
    list_subject(server, "odd.example", "spamhaus-dbl", "127.255.255.200")
    assert isinstance(await dnsbl.query("odd.example", SPAMHAUS_DBL), QueryError)
    # ... but only Spamhaus's: on SpamCop the same answer is a listing (127/8).
    list_subject(server, "192.0.2.17", "spamcop", "127.255.255.1")
    assert isinstance(await dnsbl.query("192.0.2.17", SPAMCOP), Listed)
    # A TXT with control characters (an escape sequence, a line break) is kept without them.
    list_subject(server, "192.0.2.18", "spamcop", "127.0.0.2", "see\\027[31m red\\010")
    cleaned = await dnsbl.query("192.0.2.18", SPAMCOP)
    assert isinstance(cleaned, Listed) and "\x1b" not in cleaned.text and "\n" not in cleaned.text
    assert cleaned.text.startswith("see") and "[31m red" in cleaned.text
    # An answer outside 127/8 (a resolver that invents answers) is no listing either.
    list_subject(server, "192.0.2.11", "spamcop", "198.51.100.1")
    odd = await dnsbl.query("192.0.2.11", SPAMCOP)
    assert isinstance(odd, QueryError) and "outside 127.0.0.0/8" in odd.reason
    # A code the table does not name is still a listing.
    list_subject(server, "192.0.2.12", "spamcop", "127.0.0.9")
    unnamed = await dnsbl.query("192.0.2.12", SPAMCOP)
    assert isinstance(unnamed, Listed) and "does not name" in unnamed.meaning
    server.fail(query_name("192.0.2.13", SPAMCOP), "timeout")
    timed_out = await dnsbl.query("192.0.2.13", SPAMCOP)
    assert isinstance(timed_out, QueryError) and "timed out" in timed_out.reason
    server.fail(query_name("192.0.2.14", SPAMCOP), "servfail")
    assert isinstance(await dnsbl.query("192.0.2.14", SPAMCOP), QueryError)
    list_subject(server, "2001:db8::1", "spamhaus-zen", "127.0.0.3")
    assert await dnsbl.query("2001:db8::1", SPAMHAUS_ZEN) == Listed(
        "127.0.0.3", SPAMHAUS_ZEN.codes["127.0.0.3"]
    )
    assert await dnsbl.query("2001:db8::1", SPAMCOP) is None  # not asked at all
    # ZEN answering several codes at once (SBL and XBL): each is a listing.
    several = query_name("192.0.2.15", SPAMHAUS_ZEN)
    assert several is not None
    server.set(several, "A", "127.0.0.4", "127.0.0.2")
    both = await dnsbl.query("192.0.2.15", SPAMHAUS_ZEN)
    assert isinstance(both, Listed)
    assert [code for code, _ in both.codes] == ["127.0.0.2", "127.0.0.4"]


async def test_verification(server: DnsServer) -> None:
    dnsbl = Dnsbl(resolver(server))
    working_lists(server, ("spamhaus-zen", "spamhaus-dbl"))
    assert await dnsbl.verify(SPAMHAUS_ZEN) is None
    assert await dnsbl.verify(SPAMHAUS_DBL) is None  # dbltest.com listed, "invalid" not
    assert server.count("dbltest.com.dbl.spamhaus.org", "A") == 1
    assert server.count("invalid.dbl.spamhaus.org", "A") == 1
    # A list answering everything: its clean entry 127.0.0.1 is listed too.
    working_lists(server, ("spamcop",))
    server.set("1.0.0.127.bl.spamcop.net", "A", "127.0.0.2")
    everything = await dnsbl.verify(SPAMCOP)
    assert everything is not None and "answers everything" in everything
    # A dead list: its test entry is not listed (the zone went away), or it times out.
    dead = await dnsbl.verify(LISTS["barracuda"])
    assert dead is not None and "not listed" in dead
    server.fail("2.0.0.127.b.barracudacentral.org", "timeout")
    silent = await dnsbl.verify(LISTS["barracuda"])
    assert silent is not None and "timed out" in silent
    # Spamhaus through a public resolver: its test entry answers the error code.
    server.set("2.0.0.127.zen.spamhaus.org", "A", "127.255.255.254")
    refused = await dnsbl.verify(SPAMHAUS_ZEN)
    assert refused is not None and "public or open resolver" in refused


def settings(**changes: object) -> Settings:
    base: dict[str, object] = {"node": "node-a", "timeout": 0.5, "concurrency": 4}
    return Settings(**(base | changes))  # type: ignore[arg-type]


async def test_round_stores_verdicts(server: DnsServer, db: Database) -> None:
    working_lists(server, ("spamhaus-zen", "spamhaus-dbl", "spamcop"))  # barracuda: dead
    await add_domain(db, "listed.example", verified=True)
    await add_domain(db, "clean.example", verified=True)
    await add_domain(db, "unverified.example")  # mail is not sent From it: not checked
    list_subject(server, "192.0.2.7", "spamcop", "127.0.0.2", "Blocked - see spamcop.net")
    list_subject(server, "listed.example", "spamhaus-dbl", "127.0.1.4")
    check = BlocklistCheck(
        db, resolver(server),
        settings(sending_ips=("192.0.2.7", "192.0.2.8"),
                 lists=("spamhaus-zen", "spamhaus-dbl", "spamcop")),
    )  # fmt: skip
    report = await check.check_now()
    assert report.ran and report.verification == dict.fromkeys(
        ("spamhaus-zen", "spamhaus-dbl", "spamcop")
    )
    assert {v.subject for v in report.newly_listed} == {"192.0.2.7", "listed.example"}
    found = await blocklists.latest_results(
        db, ["192.0.2.7", "192.0.2.8", "listed.example", "clean.example", "unverified.example"]
    )
    assert set(found) == {"192.0.2.7", "192.0.2.8", "listed.example", "clean.example"}
    ip = found["192.0.2.7"]
    assert ip.status == "listed" and ip.checked_at == report.completed_at
    assert ip.listings == (
        {"list": "spamcop", "code": "127.0.0.2", "meaning": SPAMCOP.codes["127.0.0.2"]},
    )  # exactly the three keys; the TXT is kept for the CLI and the API
    stored = await blocklists.all_checks(db)
    assert stored[0].status == "listed"
    assert {"text": "Blocked - see spamcop.net"}.items() <= dict(
        next(s for s in stored if s.subject == "192.0.2.7").listings[0]
    ).items()
    assert found["192.0.2.8"].status == "clean" and found["192.0.2.8"].listings == ()
    assert found["clean.example"].status == "clean"
    assert found["listed.example"].listings[0]["meaning"] == "phishing domain"
    state = await blocklists.run_state(db)
    assert state is not None and state.completed_at == report.completed_at
    assert state.claimed_by is None

    # Not due again before `interval`; a second round of the loop does nothing.
    queries = server.count("8.2.0.192.zen.spamhaus.org", "A")
    await check.run_once()
    assert server.count("8.2.0.192.zen.spamhaus.org", "A") == queries

    # Next round: SpamCop times out. The IP is unknown (not clean, not delisted), and its
    # checked_at stays the last completed check; no new "listed" for it.
    server.fail(query_name("192.0.2.7", SPAMCOP), "timeout")
    again = await check.check_now()
    assert again.newly_listed == ()
    after = await blocklists.latest_results(db, ["192.0.2.7", "listed.example"])
    assert after["192.0.2.7"].status == "unknown"
    assert after["192.0.2.7"].checked_at == report.completed_at
    assert after["listed.example"].checked_at == again.completed_at


async def test_a_dead_list_is_left_out_of_the_verdicts(server: DnsServer, db: Database) -> None:
    """A list failing its start verification (Barracuda asked through an unregistered
    resolver) is not asked and says nothing of any subject: the verified one beside it
    decides clean or listed; the round and the log report the dead one."""
    working_lists(server, ("spamhaus-zen",))  # spamcop's test entry: not listed (dead)
    list_subject(server, "192.0.2.7", "spamhaus-zen", "127.0.0.2")
    check = BlocklistCheck(
        db,
        resolver(server),
        settings(sending_ips=("192.0.2.7", "192.0.2.8"), lists=("spamhaus-zen", "spamcop")),
    )
    report = await check.check_now()
    assert report.verification["spamhaus-zen"] is None
    assert report.verification["spamcop"] is not None
    verdicts = {v.subject: v for v in report.verdicts}
    assert verdicts["192.0.2.8"].status == "clean" and verdicts["192.0.2.8"].errors == ()
    assert verdicts["192.0.2.7"].status == "listed" and verdicts["192.0.2.7"].errors == ()
    assert [x["list"] for x in verdicts["192.0.2.7"].listings] == ["spamhaus-zen"]
    assert server.count("8.2.0.192.bl.spamcop.net", "A") == 0  # an untrusted list is not asked
    # No verified list at all (every list dead): unknown, never clean.
    check = BlocklistCheck(
        db, resolver(server), settings(sending_ips=("192.0.2.8",), lists=("spamcop",))
    )
    (verdict,) = (await check.check_now()).verdicts
    assert verdict.status == "unknown" and "no verified list" in verdict.errors[0]["reason"]
    # Spamhaus's error answer for the subject itself: unknown too.
    list_subject(server, "192.0.2.8", "spamhaus-zen", "127.255.255.252")
    check = BlocklistCheck(
        db, resolver(server), settings(sending_ips=("192.0.2.8",), lists=("spamhaus-zen",))
    )
    (verdict,) = (await check.check_now()).verdicts
    assert verdict.status == "unknown" and verdict.listings == ()


async def test_dqs_key_asked_and_never_stored(
    server: DnsServer, db: Database, caplog: pytest.LogCaptureFixture
) -> None:
    working_lists(server, ("spamhaus-zen",), key=KEY)
    server.fail(query_name("192.0.2.8", SPAMHAUS_ZEN, KEY), "timeout")
    check = BlocklistCheck(
        db, resolver(server),
        settings(sending_ips=("192.0.2.7", "192.0.2.8"), lists=("spamhaus-zen",),
                 spamhaus_dqs_key=KEY),
    )  # fmt: skip
    list_subject(server, "192.0.2.7", "spamhaus-zen", "127.0.0.2", f"listed, see {KEY}", key=KEY)
    report = await check.check_now()
    assert report.verification == {"spamhaus-zen": None}
    assert server.count(f"7.2.0.192.{KEY}.zen.dq.spamhaus.net", "A") == 1
    assert server.count("7.2.0.192.zen.spamhaus.org", "A") == 0
    rows = await db.read(lambda conn: [dict(r._mapping) for r in conn.execute(select(BC))])
    assert rows and KEY not in json.dumps(rows)
    assert "<dqs-key>" in json.dumps(rows)  # the timeout's reason, masked
    assert KEY not in caplog.text


async def test_nothing_to_check_sends_no_query(server: DnsServer, db: Database) -> None:
    check = BlocklistCheck(db, resolver(server), settings())
    report = await check.check_now()
    assert not report.ran and sum(server.transports.values()) == 0


async def test_a_restarted_node_verifies_at_start_without_a_round(
    server: DnsServer, db: Database, caplog: pytest.LogCaptureFixture
) -> None:
    working_lists(server, ("spamcop",))  # barracuda: dead
    lists = {"sending_ips": ("192.0.2.8",), "lists": ("spamcop", "barracuda")}
    await BlocklistCheck(db, resolver(server), settings(**lists)).check_now()
    asked = server.count("8.2.0.192.bl.spamcop.net", "A")
    tests = server.count("2.0.0.127.bl.spamcop.net", "A")
    caplog.clear()
    restarted = BlocklistCheck(db, resolver(server), settings(node="node-b", **lists))
    await restarted.run_once()  # within the interval: no round, but the lists are verified
    assert server.count("8.2.0.192.bl.spamcop.net", "A") == asked
    assert server.count("2.0.0.127.bl.spamcop.net", "A") == tests + 1
    assert "blocklist barracuda failed verification" in caplog.text
    await restarted.run_once()  # once per process
    assert server.count("2.0.0.127.bl.spamcop.net", "A") == tests + 1
