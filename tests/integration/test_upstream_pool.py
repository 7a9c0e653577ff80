"""Upstream session pooling: reuse, per-connection cap, idle timeout, stale sessions, RSET,
and the cool-down of a pool that keeps failing. Real sink, real sockets."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from gateway.delivery.upstream import PoolSettings, PoolUnavailable, SessionSettings, UpstreamPool
from gateway.message import QueuedMessage
from tests.support.processes import free_port
from tests.support.service import ServiceFactory, make_config, wait_until
from tests.support.sink import Sink
from tests.support.smtp import smtp_send

pytestmark = pytest.mark.timeout(30)

MESSAGE = b"From: app@sender.test\r\nTo: rcpt@example.test\r\nSubject: pool\r\n\r\nHi.\r\n"


async def _send(port: int, rcpt: str = "rcpt@example.test") -> tuple[int, str]:
    return await smtp_send(port, "app@sender.test", [rcpt], MESSAGE)


async def test_a_session_is_replaced_after_max_messages_per_connection(
    tmp_path: Path, service: ServiceFactory, sink: Sink
) -> None:
    config = make_config(
        tmp_path, sink, pool={"max_connections": 1}, delivery={"max_messages_per_connection": 3}
    )
    svc = await service(config)
    port = svc.config.smtp.listen[0][1]
    for n in range(7):
        assert (await _send(port))[0] == 250
        assert await sink.wait_for_async(n + 1, timeout=5)
    assert sink.connections_total == 3  # 3 + 3 + 1 messages


async def test_an_idle_session_is_not_reused_after_idle_timeout(
    tmp_path: Path, service: ServiceFactory, sink: Sink
) -> None:
    config = make_config(tmp_path, sink, delivery={"idle_timeout": "0.5s"})
    svc = await service(config)
    port = svc.config.smtp.listen[0][1]
    assert (await _send(port))[0] == 250
    assert await sink.wait_for_async(1, timeout=5)
    await asyncio.sleep(0.8)
    assert (await _send(port))[0] == 250
    assert await sink.wait_for_async(2, timeout=5)
    assert sink.connections_total == 2
    assert any(verb == "QUIT" for _, verb in sink.commands)  # the old one was closed politely


async def test_a_session_closed_by_the_upstream_is_replaced_without_a_deferral(
    tmp_path: Path, service: ServiceFactory, sink: Sink
) -> None:
    svc = await service(make_config(tmp_path, sink))
    port = svc.config.smtp.listen[0][1]
    assert (await _send(port))[0] == 250
    assert await sink.wait_for_async(1, timeout=5)
    sink.restart()  # drops the pooled session under Postern's feet
    started = time.monotonic()
    assert (await _send(port))[0] == 250
    assert await sink.wait_for_async(1, timeout=5)  # the restarted sink counts afresh
    assert time.monotonic() - started < 1.0  # no retry_schedule wait: retried at once


async def test_rset_precedes_the_next_transaction_after_a_refused_one(
    tmp_path: Path, service: ServiceFactory, sink: Sink
) -> None:
    svc = await service(make_config(tmp_path, sink, pool={"max_connections": 1}))
    port = svc.config.smtp.listen[0][1]
    sink.fail("rcpt", "550 5.1.1 no such user", times=1)
    await _send(port, "gone@example.test")
    assert (await _send(port))[0] == 250
    assert await sink.wait_for_async(1, timeout=5)
    verbs = [verb for _, verb in sink.commands]
    second_mail = [i for i, verb in enumerate(verbs) if verb == "MAIL"][1]
    assert verbs[second_mail - 1] == "RSET"
    assert sink.connections_total == 1


async def test_a_pool_that_keeps_failing_cools_down_then_is_tried_again() -> None:
    port = free_port()  # nothing listens: every connect is refused
    pool = UpstreamPool(
        PoolSettings(id="p", name="closed", host="127.0.0.1", port=port, encryption="none"),
        SessionSettings(local_hostname="postern.test", connect_timeout=2, cooldown=0.5),
    )
    message = QueuedMessage(
        id="msg_1",
        mail_from="a@b.test",
        recipients=["c@d.test"],
        content=MESSAGE,
        attempts=0,
        created_at=time.time(),
    )
    for _ in range(3):
        with pytest.raises(PoolUnavailable):
            await pool.send(message)
    assert not pool.healthy(time.time())
    assert await wait_until(lambda: pool.healthy(time.time()), timeout=2)
    await pool.close()
