"""The guard's rules (gateway.security.hostguard), address by address: what counts as loopback,
which embeddings lead where, and which resolver a name goes through."""

from __future__ import annotations

import pytest

from gateway.dns import Resolver
from gateway.security.hostguard import HostGuard, HostRefused, HostUnresolved
from tests.support.dnsserver import DnsServer
from tests.support.processes import free_port

# Every way to write an address that reaches this host: unspecified forms (a connection to
# 0.0.0.0 or :: goes to the local host), and IPv6 addresses embedding 127.0.0.1.
UNSPECIFIED = ["0.0.0.0", "0.1.2.3", "::", "::ffff:0.0.0.0", "::ffff:0.0.0.9"]
LOOPBACK_EMBEDDED = [
    "::ffff:127.0.0.1",  # IPv4-mapped
    "::7f00:1",  # IPv4-compatible
    "64:ff9b::7f00:1",  # NAT64
    "2002:7f00:1::1",  # 6to4
    "2001:0:4136:e378:8000:63bf:80ff:fffe",  # Teredo, client ~7f00:0001
    "2600::5efe:7f00:1",  # ISATAP
]


@pytest.mark.parametrize("address", UNSPECIFIED)
def test_unspecified_addresses_are_always_denied(address: str) -> None:
    assert HostGuard().denied(address) is not None


@pytest.mark.parametrize("address", LOOPBACK_EMBEDDED)
def test_embedded_loopback_counts_as_loopback(address: str) -> None:
    assert HostGuard().denied(address) is None  # pools may use loopback by default
    assert str(HostGuard(["127.0.0.0/8"]).denied(address)) == "127.0.0.0/8"
    assert HostGuard(allow_private=False).denied(address) is not None  # direct MX


@pytest.mark.parametrize(
    "address", ["127.0.0.1", "::1", "10.1.2.3", "172.16.0.1", "192.168.1.1", "100.64.0.1",
                "fc00::1", "fec0::1", "224.0.0.1", "ff02::1", "255.255.255.255", "192.0.2.1"],
)  # fmt: skip
def test_direct_mx_denies_every_address_that_is_not_public(address: str) -> None:
    assert HostGuard(allow_private=False).denied(address) is not None
    assert HostGuard(allow_private=True).denied(address) is None


@pytest.mark.parametrize("address", ["8.8.8.8", "2a00:1450::1", "2002:808:808::1"])
def test_public_addresses_pass_both_guards(address: str) -> None:
    assert HostGuard(allow_private=False).denied(address) is None


def test_a_refusal_names_the_embedded_address_and_the_network() -> None:
    with pytest.raises(HostRefused, match=r"\(169\.254\.169\.254\).*169\.254\.0\.0/16"):
        HostGuard().check_name("[::ffff:a9fe:a9fe]")


async def test_names_resolve_through_the_configured_nameservers() -> None:
    with DnsServer() as dns:
        dns.add("relay.test", "A", "127.0.0.1").add("meta.test", "A", "169.254.169.254")
        dns.fail("broken.test", "servfail")
        guard = HostGuard(resolver=Resolver([dns.nameserver]))
        assert await guard.resolve("relay.test", 25) == ["127.0.0.1"]
        with pytest.raises(HostRefused, match=r"meta\.test resolves to 169\.254\.169\.254"):
            await guard.resolve("meta.test", 25)
        with pytest.raises(HostUnresolved, match="no server answered"):
            await guard.resolve("broken.test", 25)
        # A name those servers do not know goes to the system's resolver (/etc/hosts).
        assert set(await guard.resolve("localhost", 25)) & {"127.0.0.1", "::1"}
        assert dns.count("localhost", "A") == 1


async def test_connect_dials_a_checked_address_and_names_the_failure() -> None:
    guard = HostGuard(["127.0.0.3/32"])
    with pytest.raises(HostRefused):
        await guard.connect("127.0.0.3", 9, timeout=1)
    with pytest.raises(OSError, match=r"connect 127\.0\.0\.1:\d+: "):
        await guard.connect("127.0.0.1", free_port(), timeout=1)
