"""Direct MX delivery is decided by the same guard as pools and webhooks.

It used to allow 168.63.129.16 (the Azure wire server: "globally routable" to Python's
ipaddress) and IPv6 addresses embedding denied IPv4 ones (NAT64, 6to4, IPv4-compatible,
Teredo, ISATAP). Anyone who owns a recipient domain chooses its MX records.

These tests run the service in process, behind a tripwire that refuses (and records) any
connect to an address that is not loopback before a packet leaves: a regression here can
not reach the metadata service of the machine running the tests.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.security.hostguard import HostGuard
from tests.support.attacks import Tripwire
from tests.support.dnsserver import DnsServer
from tests.support.rows import recipient_rows, wait_for_status
from tests.support.service import ServiceFactory, make_config
from tests.support.smtp import smtp_send

pytestmark = pytest.mark.timeout(60)

WIRE_SERVER = "168.63.129.16"  # a83f:8110
# The Azure wire server and the ways an IPv6 address leads to it; the AWS metadata address.
TARGETS = {
    "plain.test": ("A", WIRE_SERVER),
    "mapped.test": ("AAAA", "::ffff:168.63.129.16"),
    "compat.test": ("AAAA", "::a83f:8110"),
    "nat64.test": ("AAAA", "64:ff9b::a83f:8110"),
    "nat64local.test": ("AAAA", "64:ff9b:1::a83f:8110"),
    "sixtofour.test": ("AAAA", "2002:a83f:8110::1"),
    "teredo.test": ("AAAA", "2001:0:4136:e378:8000:63bf:57c0:7eef"),  # client ~a83f:8110
    "isatap.test": ("AAAA", "2600::5efe:a83f:8110"),
    "aws.test": ("A", "169.254.169.254"),
    "aws6.test": ("AAAA", "fd00:ec2::254"),
}
LITERALS = ["user@[168.63.129.16]", "user@[IPv6:::ffff:a9fe:a9fe]"]


@pytest.mark.parametrize("address", [address for _, address in TARGETS.values()])
@pytest.mark.parametrize("allow_private", [False, True])
def test_the_mx_guard_denies_metadata_and_its_embeddings(address: str, allow_private: bool) -> None:
    assert HostGuard(allow_private=allow_private).denied(address) is not None


@pytest.fixture
def dns() -> Iterator[DnsServer]:
    with DnsServer() as server:
        for domain, (rtype, address) in TARGETS.items():
            server.add(domain, "MX", f"10 mx.{domain}.").add(f"mx.{domain}", rtype, address)
        yield server


@pytest.mark.parametrize("allow_private", [False, True])
async def test_mail_to_an_mx_at_a_metadata_address_bounces_without_a_connection(
    tmp_path: Path,
    service: ServiceFactory,
    dns: DnsServer,
    no_outside_connections: Tripwire,
    allow_private: bool,
) -> None:
    config = make_config(
        tmp_path, None,
        dns={"nameservers": [dns.nameserver]},
        delivery={"mx_port": 25, "mx_allow_private": allow_private},
    )  # fmt: skip
    svc = await service(config)
    recipients = [f"user@{domain}" for domain in TARGETS] + LITERALS
    message = b"From: app@sender.test\r\nTo: x\r\nSubject: metadata\r\n\r\nHi.\r\n"
    code, text = await smtp_send(svc.smtp_port, "app@sender.test", recipients, message)
    assert code == 250, text
    message_id = text.rsplit(" ", 1)[-1]
    assert await wait_for_status(svc, message_id, {"bounced"}, timeout=20)
    rows = await recipient_rows(svc, message_id)
    for rcpt in recipients:
        response = rows[rcpt]["response"]
        assert "5.4.4" in response and "denied network" in response, (rcpt, response)
    assert WIRE_SERVER + "/32" in rows["user@plain.test"]["response"]
    assert "169.254.0.0/16" in rows["user@[IPv6:::ffff:a9fe:a9fe]"]["response"]
    wire = no_outside_connections
    assert wire.outside == []
    assert ("127.0.0.1", svc.smtp_port) in wire.seen  # the tripwire was live
