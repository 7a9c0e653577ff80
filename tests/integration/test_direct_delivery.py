"""Direct delivery to MX hosts when no pool exists, through a real DNS server on loopback
and a real sink standing in for every MX host (`[delivery] mx_port` points at it)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.dnsserver import DnsServer
from tests.support.rows import recipient_rows, wait_for_status
from tests.support.service import ServiceFactory, make_config
from tests.support.sink import Sink
from tests.support.smtp import smtp_send

pytestmark = pytest.mark.timeout(30)

MESSAGE = b"From: app@sender.test\r\nTo: someone\r\nSubject: direct\r\n\r\nHi.\r\n"


@pytest.fixture
def dns() -> Iterator[DnsServer]:
    with DnsServer() as server:
        yield server


async def start(tmp_path: Path, service: ServiceFactory, sink: Sink, dns: DnsServer) -> int:
    config = make_config(
        tmp_path, None,
        dns={"nameservers": [dns.nameserver]},
        delivery={"mx_port": sink.port, "retry_schedule": ["1s"], "mx_allow_private": True},
    )  # fmt: skip
    svc = await service(config)
    return svc.config.smtp.listen[0][1]


async def send(port: int, rcpt: str) -> str:
    code, text = await smtp_send(port, "app@sender.test", [rcpt], MESSAGE)
    assert code == 250, (code, text)
    return text.rsplit(" ", 1)[-1]


async def test_mail_goes_to_the_domains_mx_host(
    tmp_path: Path, service: ServiceFactory, sink: Sink, dns: DnsServer
) -> None:
    dns.add("example.test", "MX", "10 mx1.example.test.").add("mx1.example.test", "A", "127.0.0.1")
    await send(await start(tmp_path, service, sink, dns), "user@example.test")
    assert await sink.wait_for_async(1, timeout=10)
    assert sink.messages[0].rcpt_tos == ["user@example.test"]


async def test_an_unreachable_preferred_mx_fails_over_to_the_next(
    tmp_path: Path, service: ServiceFactory, sink: Sink, dns: DnsServer
) -> None:
    dns.add("example.test", "MX", "10 dead.example.test.").add(
        "dead.example.test", "A", "127.0.0.2"
    )
    dns.add("example.test", "MX", "20 live.example.test.").add(
        "live.example.test", "A", "127.0.0.1"
    )
    await send(await start(tmp_path, service, sink, dns), "user@example.test")
    assert await sink.wait_for_async(1, timeout=10)


async def test_a_domain_without_mx_is_delivered_to_its_address(
    tmp_path: Path, service: ServiceFactory, sink: Sink, dns: DnsServer
) -> None:
    dns.add("plain.test", "A", "127.0.0.1")
    await send(await start(tmp_path, service, sink, dns), "user@plain.test")
    assert await sink.wait_for_async(1, timeout=10)


async def test_null_mx_bounces_at_once_without_a_connection(
    tmp_path: Path, service: ServiceFactory, sink: Sink, dns: DnsServer
) -> None:
    dns.add("nomail.test", "MX", "0 .")
    port = await start(tmp_path, service, sink, dns)
    message_id = await send(port, "user@nomail.test")
    svc = service.started[-1]
    assert await wait_for_status(svc, message_id, {"bounced"}, timeout=10)
    rcpt = (await recipient_rows(svc, message_id))["user@nomail.test"]
    assert "5.1.10" in rcpt["response"]
    assert sink.connections_total == 0


async def test_servfail_defers_then_the_retry_delivers(
    tmp_path: Path, service: ServiceFactory, sink: Sink, dns: DnsServer
) -> None:
    dns.add("flaky.test", "MX", "10 mx.flaky.test.").add("mx.flaky.test", "A", "127.0.0.1")
    dns.fail("flaky.test", "servfail")
    port = await start(tmp_path, service, sink, dns)
    message_id = await send(port, "user@flaky.test")
    svc = service.started[-1]
    assert await wait_for_status(svc, message_id, {"deferred"}, timeout=10)
    assert sink.messages == []
    dns.heal("flaky.test")
    assert await sink.wait_for_async(1, timeout=10)


async def test_mx_hosts_offering_starttls_get_it_without_a_certificate_check(
    tmp_path: Path, service: ServiceFactory, dns: DnsServer
) -> None:
    sink = Sink(tls="starttls").start()  # a self-signed certificate, as many MX hosts have
    try:
        dns.add("tls.test", "MX", "10 mx.tls.test.").add("mx.tls.test", "A", "127.0.0.1")
        await send(await start(tmp_path, service, sink, dns), "user@tls.test")
        assert await sink.wait_for_async(1, timeout=10)
        assert sink.messages[0].tls
    finally:
        sink.stop()


async def test_an_mx_pointing_at_a_private_address_is_refused_by_default(
    tmp_path: Path, service: ServiceFactory, sink: Sink, dns: DnsServer
) -> None:
    dns.add("inside.test", "MX", "10 mx.inside.test.").add("mx.inside.test", "A", "127.0.0.1")
    config = make_config(
        tmp_path, None,
        dns={"nameservers": [dns.nameserver]}, delivery={"mx_port": sink.port},
    )  # fmt: skip
    svc = await service(config)
    message_id = await send(svc.config.smtp.listen[0][1], "user@inside.test")
    assert await wait_for_status(svc, message_id, {"bounced"}, timeout=10)
    assert sink.connections_total == 0
