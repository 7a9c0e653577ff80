"""DKIM through the whole relay: signed once at intake with the key `postern dkim generate`
stores, and verified at a real sink against exactly the record it printed."""

from __future__ import annotations

from pathlib import Path

import dkim as dkimpy
import pytest

from tests.support.dkim import dkim_cli, published
from tests.support.service import ServiceFactory, make_config, metric
from tests.support.sink import Sink
from tests.support.smtp import smtp_send

pytestmark = pytest.mark.timeout(30)


def message(body: bytes = b"Hello, signed world.\r\n") -> bytes:
    return (
        b"From: App <app@signed.test>\r\nTo: rcpt@example.test\r\nSubject: signed\r\n"
        b"Date: Sun, 22 Nov 2026 00:00:00 +0000\r\nMessage-ID: <1@signed.test>\r\n"
        b"MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n" + body
    )


@pytest.mark.parametrize("algorithm", ["rsa", "ed25519"])
async def test_relayed_mail_verifies_against_the_printed_record(
    tmp_path: Path, service: ServiceFactory, sink: Sink, algorithm: str
) -> None:
    config = make_config(tmp_path, sink)
    key = await dkim_cli(config, "generate", domain="signed.test", algorithm=algorithm)
    svc = await service(config)
    before = metric("postern_dkim_signatures_total", where="event_loop")
    body = ("Grüße — " + "x" * 900 + "\r\n").encode() * 3  # 8-bit, long lines
    code, _ = await smtp_send(
        svc.config.smtp.listen[0][1], "app@signed.test", ["rcpt@example.test"], message(body),
        mail_options=["BODY=8BITMIME"],
    )  # fmt: skip
    assert code == 250
    assert await sink.wait_for_async(1, timeout=10)
    received = sink.messages[0].data
    assert received.count(b"DKIM-Signature:") == 1
    assert dkimpy.verify(received, dnsfunc=published(key))
    # Both algorithms sign on the worker's event loop (the label keeps its one value).
    assert metric("postern_dkim_signatures_total", where="event_loop") == before + 1


async def test_mail_from_a_domain_without_a_key_is_relayed_unsigned(
    tmp_path: Path, service: ServiceFactory, sink: Sink
) -> None:
    svc = await service(make_config(tmp_path, sink))
    port = svc.config.smtp.listen[0][1]
    assert (await smtp_send(port, "app@signed.test", ["rcpt@example.test"], message()))[0] == 250
    assert await sink.wait_for_async(1, timeout=10)
    assert b"DKIM-Signature:" not in sink.messages[0].data


async def test_rotation_keeps_mail_signed_before_verifiable(
    tmp_path: Path, service: ServiceFactory, sink: Sink
) -> None:
    config = make_config(tmp_path, sink)
    old = await dkim_cli(config, "generate", domain="signed.test", algorithm="rsa")
    svc = await service(config)
    port = svc.config.smtp.listen[0][1]
    assert (await smtp_send(port, "app@signed.test", ["rcpt@example.test"], message()))[0] == 250
    new = await dkim_cli(config, "generate", domain="signed.test", algorithm="ed25519")
    assert new["status"] == "pending"  # published first, activated when DNS has it
    await dkim_cli(config, "activate", domain="signed.test", selector=new["selector"])
    await svc.signers.reload()  # a running node would see it within its 2 s refresh
    assert (await smtp_send(port, "app@signed.test", ["rcpt@example.test"], message()))[0] == 250
    assert await sink.wait_for_async(2, timeout=10)
    first, second = (m.data for m in sink.messages)
    both = published(old, new)
    assert dkimpy.verify(first, dnsfunc=both) and f"s={old['selector']};" in first.decode()
    assert dkimpy.verify(second, dnsfunc=both) and f"s={new['selector']};" in second.decode()
