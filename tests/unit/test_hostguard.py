"""gateway.security.hostguard: which upstream hosts an API-created pool may point at (SSRF)."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.config import ConfigError, load
from gateway.security.hostguard import HostGuard, HostRefused, HostUnresolved, parse_networks


@pytest.mark.parametrize(
    "address",
    [
        "169.254.169.254",  # AWS, GCP, Azure, OpenStack metadata
        "169.254.0.1",
        "fe80::1",
        "fe80::1%eth0",
        "fd00:ec2::254",  # AWS IPv6 metadata
        "100.100.100.200",  # Alibaba
        "168.63.129.16",  # Azure wire server
        "::ffff:169.254.169.254",  # IPv4-mapped
        "64:ff9b::a9fe:a9fe",  # NAT64 of 169.254.169.254
    ],
)
def test_link_local_and_metadata_addresses_are_denied(address: str) -> None:
    assert HostGuard().denied(address) is not None


@pytest.mark.parametrize(
    "address", ["127.0.0.1", "::1", "10.1.2.3", "192.168.1.10", "8.8.8.8", "2001:db8::1"]
)
def test_loopback_private_and_public_addresses_are_allowed(address: str) -> None:
    assert HostGuard().denied(address) is None


def test_operators_can_deny_more_networks() -> None:
    guard = HostGuard(["10.0.0.0/8", "2001:db8::/32"])
    assert str(guard.denied("10.9.8.7")) == "10.0.0.0/8"
    assert guard.denied("2001:db8::5") is not None
    assert guard.denied("127.0.0.1") is None


@pytest.mark.parametrize(
    "host",
    ["metadata.google.internal", "METADATA.google.internal.", "169.254.169.254", "[fe80::1]"],
)
def test_metadata_names_and_literals_are_refused_without_a_lookup(host: str) -> None:
    with pytest.raises(HostRefused):
        HostGuard().check_name(host)


async def test_resolution_checks_every_address_a_name_stands_for() -> None:
    guard = HostGuard()
    # The decimal spelling of 169.254.169.254: the resolver turns it into the address.
    with pytest.raises(HostRefused, match=r"169\.254\.169\.254"):
        await guard.resolve("2852039166", 25)
    assert "127.0.0.1" in await guard.resolve("127.0.0.1", 25)
    assert await guard.resolve("localhost", 25)


async def test_loopback_can_be_denied_too() -> None:
    with pytest.raises(HostRefused):
        await HostGuard(["127.0.0.0/8", "::1/128"]).resolve("localhost", 25)


async def test_an_unresolvable_host_passes_the_stored_check_but_not_the_connection() -> None:
    guard = HostGuard()
    await guard.check("no-such-host.invalid", 25)  # stored: it cannot be reached either
    with pytest.raises(HostUnresolved):
        await guard.resolve("no-such-host.invalid", 25)


def test_bad_networks_are_refused() -> None:
    with pytest.raises(ValueError, match="not an IP network"):
        parse_networks(["10.0.0.0/33"])


def test_deny_networks_config_key(tmp_path: Path) -> None:
    path = tmp_path / "postern.toml"
    path.write_text('[security]\ndeny_networks = ["10.0.0.0/8", "fd00::/8"]\n')
    assert load(path).security.deny_networks == ("10.0.0.0/8", "fd00::/8")
    path.write_text('[security]\ndeny_networks = ["nope"]\n')
    with pytest.raises(ConfigError, match=r"security\.deny_networks"):
        load(path)
