"""DNS lookups through a real DNS server on loopback, and direct-MX planning from them."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import dkim as dkimpy
import pytest

from gateway.config import ConfigError
from gateway.delivery import mx
from gateway.dkim.keys import generate_key
from gateway.dkim.signer import Signer
from gateway.dns import (
    Addresses,
    AddressResult,
    MxHost,
    MxHosts,
    NoMx,
    NoRecords,
    NoSuchDomain,
    NullMx,
    Resolver,
    Temporary,
    TxtRecords,
    parse_nameserver,
)
from gateway.message import DeliveryResult, Outcome
from tests.support.dnsserver import DnsServer

PORT = 2525


@pytest.fixture
def server() -> Iterator[DnsServer]:
    with DnsServer() as running:
        yield running


def resolver_for(server: DnsServer, **kw: float) -> Resolver:
    return Resolver(
        [server.nameserver], timeout=kw.get("timeout", 0.3), lifetime=kw.get("lifetime", 1.0)
    )


# --- configuration ---------------------------------------------------------------------------


def test_nameserver_entries() -> None:
    assert parse_nameserver("127.0.0.1:5353") == ("127.0.0.1", 5353)
    assert parse_nameserver("9.9.9.9") == ("9.9.9.9", 53)
    assert parse_nameserver("[::1]:5353") == ("::1", 5353)
    assert parse_nameserver("::1") == ("::1", 53)
    for bad in ("dns.google", "1.2.3.4:0", "1.2.3.4:x", "[::1", "[::1]x", ""):
        with pytest.raises(ConfigError, match=r"dns\.nameservers"):
            parse_nameserver(bad)


# --- lookups ---------------------------------------------------------------------------------


async def test_mx_hosts_come_by_preference(server: DnsServer) -> None:
    server.add("example.test", "MX", "30 c.example.test.")
    server.add("example.test", "MX", "10 A.Example.Test.")
    server.add("example.test", "MX", "20 b.example.test.")
    result = await resolver_for(server).mx("example.test")
    assert result == MxHosts(
        (MxHost("a.example.test", 10), MxHost("b.example.test", 20), MxHost("c.example.test", 30))
    )


async def test_equal_preferences_are_shuffled_on_every_lookup(server: DnsServer) -> None:
    for name in ("a", "b", "c"):
        server.add("example.test", "MX", f"10 {name}.example.test.")
    server.add("example.test", "MX", "20 backup.example.test.")
    resolver = resolver_for(server)
    orders = set()
    for _ in range(60):
        result = await resolver.mx("example.test")
        assert isinstance(result, MxHosts)
        hosts = [item.host for item in result.hosts]
        assert sorted(hosts[:3]) == ["a.example.test", "b.example.test", "c.example.test"]
        assert hosts[3] == "backup.example.test"
        orders.add(tuple(hosts))
    assert len(orders) >= 3
    assert server.count("example.test", "MX") == 1  # shuffled from the cached answer


async def test_no_mx_null_mx_and_nxdomain(server: DnsServer) -> None:
    server.add("plain.test", "A", "127.0.0.1")
    server.add("null.test", "MX", "0 .")
    resolver = resolver_for(server)
    assert await resolver.mx("plain.test") == NoMx()
    assert await resolver.mx("null.test") == NullMx()
    assert await resolver.mx("missing.test") == NoSuchDomain()


async def test_a_dot_among_real_hosts_is_ignored(server: DnsServer) -> None:
    server.add("mixed.test", "MX", "0 .").add("mixed.test", "MX", "10 mx.mixed.test.")
    assert await resolver_for(server).mx("mixed.test") == MxHosts((MxHost("mx.mixed.test", 10),))


async def test_servfail_is_temporary_and_not_cached(server: DnsServer) -> None:
    server.add("flaky.test", "MX", "10 mx.flaky.test.")
    server.fail("flaky.test", "servfail")
    resolver = resolver_for(server)
    result = await resolver.mx("flaky.test")
    assert isinstance(result, Temporary) and "SERVFAIL" in result.reason
    server.heal("flaky.test")
    assert await resolver.mx("flaky.test") == MxHosts((MxHost("mx.flaky.test", 10),))


async def test_refused_is_temporary(server: DnsServer) -> None:
    server.fail(None, "refused")
    assert isinstance(await resolver_for(server).mx("any.test"), Temporary)


async def test_a_silent_server_is_temporary_within_the_lifetime(server: DnsServer) -> None:
    server.fail("slow.test", "timeout")
    started = time.monotonic()
    result = await resolver_for(server, timeout=0.2, lifetime=0.5).mx("slow.test")
    assert isinstance(result, Temporary) and "timed out" in result.reason
    assert time.monotonic() - started < 2.0


async def test_answers_are_cached_for_their_ttl(server: DnsServer) -> None:
    server.add("ttl.test", "MX", "10 old.ttl.test.", ttl=1)
    resolver = resolver_for(server)
    assert await resolver.mx("ttl.test") == MxHosts((MxHost("old.ttl.test", 10),))
    server.set("ttl.test", "MX", "10 new.ttl.test.", ttl=1)
    assert await resolver.mx("ttl.test") == MxHosts((MxHost("old.ttl.test", 10),))
    assert server.count("ttl.test", "MX") == 1
    await asyncio.sleep(1.1)
    assert await resolver.mx("ttl.test") == MxHosts((MxHost("new.ttl.test", 10),))
    assert server.count("ttl.test", "MX") == 2


async def test_negative_answers_are_cached_too(server: DnsServer) -> None:
    resolver = resolver_for(server)
    assert await resolver.mx("gone.test") == NoSuchDomain()
    assert await resolver.mx("gone.test") == NoSuchDomain()
    assert server.count("gone.test", "MX") == 1


async def test_addresses_ipv4_first_then_ipv6(server: DnsServer) -> None:
    server.add("dual.test", "AAAA", "::1").add("dual.test", "A", "127.0.0.1")
    server.add("v6.test", "AAAA", "::1")
    server.add("txtonly.test", "TXT", '"x"')
    server.add("bad.test", "A", "127.0.0.9")
    server.fail("bad.test", "servfail")
    resolver = resolver_for(server)
    assert await resolver.addresses("dual.test") == Addresses(("127.0.0.1", "::1"))
    assert await resolver.addresses("v6.test") == Addresses(("::1",))
    assert await resolver.addresses("txtonly.test") == NoRecords()
    assert await resolver.addresses("nowhere.test") == NoSuchDomain()
    assert isinstance(await resolver.addresses("bad.test"), Temporary)


async def test_large_answers_fall_back_to_tcp(server: DnsServer) -> None:
    for i in range(40):
        server.add("big.test", "MX", f"{i} mx{i:02d}.a-rather-long-host-name.big.test.")
    result = await resolver_for(server).mx("big.test")
    assert isinstance(result, MxHosts) and len(result.hosts) == 40
    assert server.transports["tcp"] >= 1


async def test_dkim_record_published_in_zone_form_verifies_through_dns(server: DnsServer) -> None:
    key = generate_key("rsa")
    signer = Signer("example.test", "s1", key.private_pem)
    record = signer.record()
    name, _, rdata = record.zone().partition(" IN TXT ")
    server.add(name, "TXT", rdata)
    txt = await resolver_for(server).txt(record.name)
    assert txt == TxtRecords((record.value,))
    assert isinstance(txt, TxtRecords)
    message = b"From: app@example.test\r\nSubject: hi\r\n\r\nhello\r\n"
    served = {(record.name + ".").encode(): txt.values[0].encode()}
    assert dkimpy.verify(signer.signed(message), dnsfunc=lambda qname, timeout=5: served.get(qname))


# --- planning (pure) ---------------------------------------------------------------------------


def test_recipients_are_grouped_by_normalised_domain() -> None:
    groups = mx.group_by_domain(
        ["a@Example.TEST", "b@other.test", "c@example.test.", "d@bücher.test", "e@[127.0.0.1]"]
    )
    assert groups == {
        "example.test": ["a@Example.TEST", "c@example.test."],
        "other.test": ["b@other.test"],
        "xn--bcher-kva.test": ["d@bücher.test"],
        "[127.0.0.1]": ["e@[127.0.0.1]"],
    }


def test_hops_for_each_kind_of_mx_answer() -> None:
    hosts = MxHosts((MxHost("mx1.a.test", 10), MxHost("mx2.a.test", 20)))
    expected = (mx.HostToTry("mx1.a.test", 25), mx.HostToTry("mx2.a.test", 25))
    assert mx.hops("a.test", hosts, 25) == expected
    assert mx.hops("a.test", NoMx(), PORT) == (("a.test", PORT),)

    null = mx.hops("a.test", NullMx(), 25)
    assert isinstance(null, DeliveryResult)
    assert (null.outcome, null.code, null.enhanced, null.hard_bounce) == (
        Outcome.BOUNCED, 556, "5.1.10", True,
    )  # fmt: skip
    gone = mx.hops("a.test", NoSuchDomain(), 25)
    assert isinstance(gone, DeliveryResult)
    assert (gone.outcome, gone.enhanced, gone.hard_bounce) == (Outcome.BOUNCED, "5.1.2", True)
    later = mx.hops("a.test", Temporary("SERVFAIL"), 25)
    assert isinstance(later, DeliveryResult)
    assert (later.outcome, later.enhanced) == (Outcome.DEFERRED, "4.4.3")
    assert "SERVFAIL" in later.text


def test_targets_keep_order_skip_repeats_and_respect_the_limit() -> None:
    route = (mx.HostToTry("mx1", 25), mx.HostToTry("mx2", 25), mx.HostToTry("mx3", 25))
    answers: dict[str, AddressResult] = {
        "mx1": Addresses(("192.0.2.1", "2001:db8::1")),
        "mx2": Addresses(("192.0.2.1", "192.0.2.2")),
        "mx3": NoSuchDomain(),
    }
    found = mx.targets("a.test", route, answers)
    assert found == (
        mx.MxTarget("mx1", "192.0.2.1", 25),
        mx.MxTarget("mx1", "2001:db8::1", 25),
        mx.MxTarget("mx2", "192.0.2.2", 25),
    )
    assert mx.targets("a.test", route, answers, limit=2) == found[:2]


def test_targets_defer_on_dns_trouble_and_bounce_when_no_host_exists() -> None:
    route = (mx.HostToTry("mx1", 25), mx.HostToTry("mx2", 25))
    half: dict[str, AddressResult] = {
        "mx1": Temporary("timed out"),
        "mx2": Addresses(("192.0.2.2",)),
    }
    assert mx.targets("a.test", route, half) == (mx.MxTarget("mx2", "192.0.2.2", 25),)
    stuck = mx.targets("a.test", route, {"mx1": Temporary("timed out"), "mx2": NoRecords()})
    assert isinstance(stuck, DeliveryResult) and stuck.outcome is Outcome.DEFERRED
    nowhere = mx.targets("a.test", route, {"mx1": NoSuchDomain(), "mx2": NoRecords()})
    assert isinstance(nowhere, DeliveryResult)
    assert (nowhere.outcome, nowhere.enhanced, nowhere.hard_bounce) == (
        Outcome.BOUNCED, "5.4.4", False,
    )  # fmt: skip


def test_domain_literals() -> None:
    assert mx.domain_literal("[192.0.2.1]") == "192.0.2.1"
    assert mx.domain_literal("[ipv6:2001:DB8::1]") == "2001:db8::1"
    assert mx.domain_literal("[not-an-ip]") is None
    assert mx.domain_literal("example.test") is None


# --- planning through DNS ----------------------------------------------------------------------


async def test_a_message_is_planned_per_domain(server: DnsServer) -> None:
    server.add("mx.test", "MX", "20 backup.mx.test.").add("mx.test", "MX", "10 primary.mx.test.")
    server.add("primary.mx.test", "A", "127.0.0.2").add("backup.mx.test", "A", "127.0.0.3")
    server.add("plain.test", "A", "127.0.0.4")
    server.add("null.test", "MX", "0 .")
    server.add("flaky.test", "MX", "10 mx.flaky.test.").fail("flaky.test", "servfail")
    server.add("nohost.test", "MX", "10 gone.nohost.test.")
    plans = await mx.plan_message(
        resolver_for(server),
        [
            "a@mx.test", "b@MX.test", "c@plain.test", "d@null.test", "e@missing.test",
            "f@flaky.test", "g@nohost.test", "h@[127.0.0.5]",
        ],
        PORT,
    )  # fmt: skip
    by_domain = {plan.domain: plan for plan in plans}
    assert list(by_domain) == [
        "mx.test", "plain.test", "null.test", "missing.test", "flaky.test", "nohost.test",
        "[127.0.0.5]",
    ]  # fmt: skip
    assert by_domain["mx.test"].recipients == ("a@mx.test", "b@MX.test")
    assert by_domain["mx.test"].targets == (
        mx.MxTarget("primary.mx.test", "127.0.0.2", PORT),
        mx.MxTarget("backup.mx.test", "127.0.0.3", PORT),
    )
    assert by_domain["plain.test"].targets == (mx.MxTarget("plain.test", "127.0.0.4", PORT),)
    assert by_domain["[127.0.0.5]"].targets == (mx.MxTarget("127.0.0.5", "127.0.0.5", PORT),)
    outcome = {domain: plan.outcome for domain, plan in by_domain.items()}
    assert outcome["mx.test"] is None
    enhanced = {d: o.enhanced for d, o in outcome.items() if o is not None}
    assert enhanced == {
        "null.test": "5.1.10",
        "missing.test": "5.1.2",
        "flaky.test": "4.4.3",
        "nohost.test": "5.4.4",
    }
    assert mx.outcomes(by_domain["null.test"]) == {"d@null.test": outcome["null.test"]}
    assert mx.outcomes(by_domain["mx.test"]) == {}


async def test_a_domain_deferred_by_servfail_is_delivered_once_dns_recovers(
    server: DnsServer,
) -> None:
    server.add("later.test", "MX", "10 mx.later.test.").add("mx.later.test", "A", "127.0.0.2")
    server.fail("later.test", "servfail")
    resolver = resolver_for(server)
    first = await mx.plan_domain(resolver, "later.test", ["a@later.test"], PORT)
    assert first.outcome is not None and first.outcome.outcome is Outcome.DEFERRED
    server.heal()
    second = await mx.plan_domain(resolver, "later.test", ["a@later.test"], PORT)
    assert second.outcome is None
    assert second.targets == (mx.MxTarget("mx.later.test", "127.0.0.2", PORT),)
