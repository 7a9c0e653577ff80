"""Tests for the upstream SMTP sink used by the rest of the suite."""

from __future__ import annotations

import asyncio
import smtplib
import socket
import time
from collections.abc import Iterator
from typing import Any

import aiosmtplib
import pytest
from aiosmtplib import (
    SMTPAuthenticationError,
    SMTPConnectError,
    SMTPResponseException,
    SMTPServerDisconnected,
    SMTPTimeoutError,
)

from tests.support.sink import Sink

SENDER = "sender@example.com"
MESSAGE = b"Subject: hello\r\n\r\nline one\r\n.leading dot\r\n"


@pytest.fixture
def sink() -> Iterator[Sink]:
    with Sink() as running:
        yield running


def client(sink: Sink, **kwargs: Any) -> aiosmtplib.SMTP:
    options: dict[str, Any] = {
        "hostname": sink.host,
        "port": sink.port,
        "local_hostname": "client.test",
        "timeout": 1.0,
        "start_tls": False,
    }
    options.update(kwargs)
    return aiosmtplib.SMTP(**options)


async def send(sink: Sink, recipients: list[str] | None = None, **kwargs: Any) -> int:
    """One full session, step by step; the code of the first non-success reply,
    or 250 if the message was accepted."""
    smtp = client(sink, **kwargs)
    try:
        await smtp.connect()
        await smtp.ehlo()
        await smtp.mail(SENDER)
        for rcpt in recipients or ["rcpt@example.com"]:
            await smtp.rcpt(rcpt)
        await smtp.data(MESSAGE)
        await smtp.quit()
    except SMTPResponseException as error:
        return error.code
    finally:
        smtp.close()
    return 250


async def wait_until(predicate: Any, timeout: float = 1.0) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() >= deadline:
            return False
        await asyncio.sleep(0.01)
    return True


@pytest.mark.asyncio
async def test_delivery_is_recorded(sink: Sink) -> None:
    assert await send(sink, ["a@example.com", "b@example.com"]) == 250

    assert await sink.wait_for_async(1, timeout=1.0)
    [message] = sink.messages
    assert message.mail_from == SENDER
    assert message.rcpt_tos == ["a@example.com", "b@example.com"]
    assert message.data == MESSAGE  # dot-unstuffed, CRLF preserved
    assert message.connection_id == 1
    assert message.peer[0] == "127.0.0.1"
    assert not message.tls and message.login is None
    assert sink.recipients() == ["a@example.com", "b@example.com"]
    verbs = [verb for cid, verb in sink.commands if cid == 1]
    assert verbs == ["EHLO", "MAIL", "RCPT", "RCPT", "DATA", "QUIT"]
    assert sink.dropped_after_data == []


def test_sync_client_and_wait_for(sink: Sink) -> None:
    with smtplib.SMTP(sink.host, sink.port, local_hostname="client.test", timeout=1) as smtp:
        smtp.sendmail(SENDER, ["x@example.com"], MESSAGE)
        smtp.rset()
        smtp.sendmail(SENDER, ["y@example.com"], MESSAGE)
    assert sink.wait_for(2, timeout=1.0)
    assert sink.recipients() == ["x@example.com", "y@example.com"]
    assert (1, "RSET") in sink.commands
    assert not sink.wait_for(3, timeout=0.05)


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("stage", "reply"),
    [
        ("connect", "554 5.3.2 go away"),
        ("connect", "421 4.3.2 busy"),
        ("ehlo", "550 5.7.1 no"),
        ("mail", "451 4.3.0 try later"),
        ("rcpt", "550 5.1.1 no such user"),
        ("data", "452 4.3.1 out of space"),
        ("eom", "554 5.6.0 rejected"),
    ],
)
async def test_fail_at_each_stage(sink: Sink, stage: Any, reply: str) -> None:
    sink.fail(stage, reply)

    assert await send(sink) == int(reply[:3])
    assert await send(sink) == int(reply[:3])  # times=None: stays
    assert sink.messages == []
    sink.clear()
    assert await send(sink) == 250


@pytest.mark.asyncio
async def test_default_reply_and_times_one_clears(sink: Sink) -> None:
    sink.fail("rcpt", times=1)

    assert await send(sink) == 451
    assert await send(sink) == 250
    assert len(sink.messages) == 1


@pytest.mark.asyncio
async def test_match_restricts_fault_to_one_recipient(sink: Sink) -> None:
    sink.fail("rcpt", "550 5.1.1 unknown", match="bad@example.com")

    smtp = client(sink)
    async with smtp:
        errors, _ = await smtp.sendmail(SENDER, ["good@example.com", "bad@example.com"], MESSAGE)
    assert errors["bad@example.com"].code == 550
    assert sink.recipients() == ["good@example.com"]


@pytest.mark.asyncio
async def test_match_on_sender(sink: Sink) -> None:
    sink.fail("mail", "553 5.7.1 not you", match="other@example.com")
    assert await send(sink) == 250
    smtp = client(sink)
    async with smtp:
        with pytest.raises(SMTPResponseException) as excinfo:
            await smtp.sendmail("other@example.com", ["r@example.com"], MESSAGE)
    assert excinfo.value.code == 553


@pytest.mark.asyncio
async def test_421_closes_connection(sink: Sink) -> None:
    sink.fail("mail", "421 4.3.2 shutting down")
    smtp = client(sink)
    await smtp.connect()
    with pytest.raises(SMTPResponseException) as excinfo:
        await smtp.mail(SENDER)
    assert excinfo.value.code == 421
    with pytest.raises(SMTPServerDisconnected):
        await smtp.noop()
    smtp.close()


@pytest.mark.asyncio
async def test_drop_at_eom_records_possible_duplicate(sink: Sink) -> None:
    sink.drop("eom", times=1)

    with pytest.raises(SMTPServerDisconnected):
        await send(sink)
    assert await wait_until(lambda: len(sink.dropped_after_data) == 1)
    assert sink.messages == []
    assert sink.dropped_after_data[0].data == MESSAGE

    assert await send(sink) == 250
    assert len(sink.messages) == 1


@pytest.mark.asyncio
@pytest.mark.parametrize("stage", ["connect", "ehlo", "mail", "rcpt", "data"])
async def test_drop_before_message_closes_without_reply(sink: Sink, stage: Any) -> None:
    sink.drop(stage)
    # aiosmtplib reports a connection closed before the greeting as SMTPConnectError.
    with pytest.raises((SMTPServerDisconnected, SMTPConnectError)):
        await send(sink)
    assert sink.messages == [] and sink.dropped_after_data == []


@pytest.mark.asyncio
@pytest.mark.parametrize("stage", ["connect", "mail", "eom"])
async def test_hang_makes_client_time_out(sink: Sink, stage: Any) -> None:
    sink.hang(stage)
    started = time.monotonic()

    with pytest.raises(SMTPTimeoutError):
        await send(sink, timeout=0.2)

    assert time.monotonic() - started < 1.0
    assert sink.messages == []
    if stage == "eom":  # read in full, never acknowledged
        assert await wait_until(lambda: len(sink.dropped_after_data) == 1)


def test_hang_is_cancelled_by_stop() -> None:
    sink = Sink().start()
    sink.hang("connect")
    with socket.create_connection((sink.host, sink.port), timeout=1.0) as conn:
        assert wait_sync(lambda: sink.connections_open == 1)
        started = time.monotonic()
        sink.stop()
        assert time.monotonic() - started < 1.0
        assert conn.recv(100) == b""  # closed, never greeted
    sink.stop()  # idempotent


def wait_sync(predicate: Any, timeout: float = 1.0) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.01)
    return True


@pytest.mark.asyncio
async def test_hang_with_short_duration_then_proceeds(sink: Sink) -> None:
    sink.hang("rcpt", seconds=0.1, times=1)
    assert await send(sink) == 250


@pytest.mark.asyncio
async def test_stop_closes_open_connections_and_restart_reuses_port(sink: Sink) -> None:
    port = sink.port
    smtp = client(sink)
    await smtp.connect()
    await smtp.ehlo()
    assert sink.connections_open == 1

    sink.stop()
    assert sink.connections_open == 0
    assert not sink.running
    with pytest.raises(SMTPServerDisconnected):
        await smtp.noop()
    smtp.close()
    with pytest.raises(OSError):
        await send(sink)  # connection refused while down

    sink.start()
    assert sink.port == port
    assert await send(sink) == 250
    sink.restart()
    assert sink.port == port
    assert await send(sink) == 250
    assert sink.connections_total == 3


@pytest.mark.asyncio
async def test_max_connections_open(sink: Sink) -> None:
    clients = [client(sink) for _ in range(3)]
    await asyncio.gather(*(c.connect() for c in clients))
    assert await wait_until(lambda: sink.connections_open == 3)
    for c in clients:
        await c.quit()
    assert await wait_until(lambda: sink.connections_open == 0)

    assert await send(sink) == 250
    assert sink.max_connections_open == 3
    assert sink.connections_total == 4


@pytest.mark.asyncio
async def test_auth_required() -> None:
    with Sink(auth=("user", "pass")) as sink:
        assert await send(sink) == 530  # MAIL without AUTH

        for method in ("auth_plain", "auth_login"):
            smtp = client(sink)
            async with smtp:
                await smtp.ehlo()
                with pytest.raises(SMTPAuthenticationError) as excinfo:
                    await getattr(smtp, method)("user", "wrong")
                assert excinfo.value.code == 535
                assert "5.7.8" in excinfo.value.message

        for method in ("auth_plain", "auth_login"):
            smtp = client(sink)
            async with smtp:
                await smtp.ehlo()
                await getattr(smtp, method)("user", "pass")
                await smtp.sendmail(SENDER, ["r@example.com"], MESSAGE)

        assert sink.auth_logins == ["user", "user"]
        assert [m.login for m in sink.messages] == ["user", "user"]
        assert "AUTH" in {verb for _, verb in sink.commands}


@pytest.mark.asyncio
async def test_starttls() -> None:
    with Sink(tls="starttls") as sink:
        assert await send(sink, start_tls=True, validate_certs=False) == 250
        assert sink.cert_path is not None
        assert await send(sink, start_tls=True, cert_bundle=sink.cert_path) == 250
        assert await send(sink) == 250  # STARTTLS is offered, not required

        assert [m.tls for m in sink.messages] == [True, True, False]
        verbs = [verb for cid, verb in sink.commands if cid == 1]
        assert verbs[:3] == ["EHLO", "STARTTLS", "EHLO"]


@pytest.mark.asyncio
async def test_implicit_tls() -> None:
    with Sink(tls="implicit") as sink:
        assert sink.cert_path is not None
        assert await send(sink, use_tls=True, cert_bundle=sink.cert_path) == 250
        assert sink.messages[0].tls
        sink.stop()
        assert sink.connections_open == 0


def test_invalid_arguments(sink: Sink) -> None:
    with pytest.raises(ValueError):
        sink.fail("nope", "451 x")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        sink.fail("rcpt", "try later")
    with pytest.raises(ValueError):
        sink.drop("connect", match="x@example.com")
    with pytest.raises(ValueError):
        sink.hang("mail", times=0)
