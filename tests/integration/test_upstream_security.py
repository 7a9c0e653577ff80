"""Upstream sessions per pool: STARTTLS, implicit TLS and AUTH; and require_auth inbound.

SPEC "Routing": a pool's `encryption` (tls | ssl | none) and optional username/password.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.smtpd import replies
from tests.support.service import ServiceFactory, make_config
from tests.support.sink import Sink
from tests.support.smtp import smtp_send

pytestmark = pytest.mark.timeout(30)

MESSAGE = b"From: app@sender.test\r\nTo: rcpt@example.test\r\nSubject: secure\r\n\r\nHi.\r\n"


@pytest.fixture
def tls_sink(request: pytest.FixtureRequest) -> Iterator[Sink]:
    sink = Sink(tls=request.param).start()
    try:
        yield sink
    finally:
        sink.stop()


@pytest.mark.parametrize(
    ("tls_sink", "encryption"), [("starttls", "tls"), ("implicit", "ssl")], indirect=["tls_sink"]
)
async def test_pool_encryption_reaches_the_upstream_over_tls(
    tmp_path: Path, service: ServiceFactory, tls_sink: Sink, encryption: str
) -> None:
    config = make_config(tmp_path, tls_sink, pool={"encryption": encryption, "tls_verify": False})
    svc = await service(config)
    code, _ = await smtp_send(
        svc.config.smtp.listen[0][1], "app@sender.test", ["rcpt@example.test"], MESSAGE
    )
    assert code == 250
    assert await tls_sink.wait_for_async(1, timeout=10)
    assert tls_sink.messages[0].tls


@pytest.mark.parametrize("tls_sink", ["starttls"], indirect=True)
async def test_unverifiable_upstream_certificate_defers_instead_of_sending(
    tmp_path: Path, service: ServiceFactory, tls_sink: Sink
) -> None:
    svc = await service(make_config(tmp_path, tls_sink, pool={"encryption": "tls"}))
    code, _ = await smtp_send(
        svc.config.smtp.listen[0][1], "app@sender.test", ["rcpt@example.test"], MESSAGE
    )
    assert code == 250  # accepted and kept: a TLS failure is never a bounce
    assert not await tls_sink.wait_for_async(1, timeout=1.5)
    assert tls_sink.messages == []


async def test_pool_with_username_logs_in_before_sending(
    tmp_path: Path, service: ServiceFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    sink = Sink(auth=("relay-user", "s3cret")).start()
    try:
        monkeypatch.setenv("POSTERN_TEST_POOL_PASSWORD", "s3cret")
        pool = {"username": "relay-user", "password_env": "POSTERN_TEST_POOL_PASSWORD"}
        svc = await service(make_config(tmp_path, sink, pool=pool))
        code, _ = await smtp_send(
            svc.config.smtp.listen[0][1], "app@sender.test", ["rcpt@example.test"], MESSAGE
        )
        assert code == 250
        assert await sink.wait_for_async(1, timeout=10)
        assert sink.auth_logins == ["relay-user"]
    finally:
        sink.stop()


async def test_require_auth_refuses_mail_without_login(
    tmp_path: Path, service: ServiceFactory, sink: Sink
) -> None:
    svc = await service(make_config(tmp_path, sink, smtp={"require_auth": True}))
    code, text = await smtp_send(
        svc.config.smtp.listen[0][1], "app@sender.test", ["rcpt@example.test"], MESSAGE
    )
    assert code == 530 and text.startswith("5.7.0"), (code, text)
    assert sink.messages == []


async def test_utf8_recipient_goes_through_an_upstream_with_smtputf8(
    tmp_path: Path, service: ServiceFactory, sink: Sink
) -> None:
    svc = await service(make_config(tmp_path, sink))
    rcpt = "josé@example.test"
    code, _ = await smtp_send(
        svc.config.smtp.listen[0][1], "app@sender.test", [rcpt], MESSAGE, mail_options=["SMTPUTF8"]
    )
    assert code == 250
    assert await sink.wait_for_async(1, timeout=10)
    assert sink.messages[0].rcpt_tos == [rcpt]


async def test_a_looping_message_is_refused_554(
    tmp_path: Path, service: ServiceFactory, sink: Sink
) -> None:
    svc = await service(make_config(tmp_path, sink))
    hops = b"".join(b"Received: from relay%d.test by relay.test; now\r\n" % n for n in range(50))
    code, text = await smtp_send(
        svc.config.smtp.listen[0][1], "app@sender.test", ["rcpt@example.test"], hops + MESSAGE
    )
    assert (code, text[:5]) == replies.TOO_MANY_HOPS.status, (code, text)
    assert sink.messages == []
