"""The VERP return path through the whole relay: with `[bounces] domain` set, the sink sees
MAIL FROM bounces+<token>@domain, the message carries X-Postern-Ref with the same token,
and its DKIM signature (made after the field was added) still verifies."""

from __future__ import annotations

from pathlib import Path

import dkim as dkimpy
import pytest

from gateway.bounces.returnpath import VERP_KEY, ReturnPath
from tests.support.dkim import dkim_cli, published
from tests.support.service import ServiceFactory, make_config
from tests.support.sink import Sink
from tests.support.smtp import smtp_send

pytestmark = pytest.mark.timeout(30)

MESSAGE = (
    b"From: App <app@signed.test>\r\nTo: rcpt@example.test\r\nSubject: verp\r\n"
    b"Date: Sun, 22 Nov 2026 00:00:00 +0000\r\nMessage-ID: <1@signed.test>\r\n"
    b"MIME-Version: 1.0\r\nContent-Type: text/plain\r\n\r\nHello.\r\n"
)


async def test_mail_leaves_with_the_verp_sender_and_reference_header(
    tmp_path: Path, service: ServiceFactory, sink: Sink
) -> None:
    config = make_config(tmp_path, sink, bounces={"domain": "bounce.postern.test"})
    key = await dkim_cli(config, "generate", domain="signed.test", algorithm="ed25519")
    svc = await service(config)
    code, reply = await smtp_send(svc.smtp_port, "app@signed.test", ["rcpt@example.test"], MESSAGE)
    assert code == 250
    assert await sink.wait_for_async(1, timeout=10)
    received = sink.messages[0]
    assert svc.box is not None
    verp = ReturnPath("bounce.postern.test", svc.box.derive(VERP_KEY))
    local, _, domain = received.mail_from.partition("@")
    assert domain == "bounce.postern.test" and local.startswith("bounces+")
    token = local.removeprefix("bounces+")
    message_id = verp.message_of(token)
    assert message_id is not None and message_id in reply
    assert f"X-Postern-Ref: {token}\r\n".encode() in received.data
    assert dkimpy.verify(received.data, dnsfunc=published(key))


async def test_without_a_bounce_domain_the_sender_is_the_clients(
    tmp_path: Path, service: ServiceFactory, sink: Sink
) -> None:
    svc = await service(make_config(tmp_path, sink))
    code, _ = await smtp_send(svc.smtp_port, "app@signed.test", ["rcpt@example.test"], MESSAGE)
    assert code == 250
    assert await sink.wait_for_async(1, timeout=10)
    assert sink.messages[0].mail_from == "app@signed.test"
    assert b"X-Postern-Ref" not in sink.messages[0].data
