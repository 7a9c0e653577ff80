"""Hostile SMTP clients (issue 7): connection floods, idle and trickling clients, commands
injected before STARTTLS completes, pipelining after DATA, AUTH guessing from one address
while another logs in, and "never an open relay" for every kind of listener configuration.

Smuggling by bare line ends (bare LF, bare CR, `\\n.\\r\\n`, `\\r\\n.\\n`, NUL) is in
test_smtp_listener.py; this file adds what a client does with the protocol's timing.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import resource
import ssl
import time
from collections.abc import AsyncIterator

import pytest

from gateway.config import ConfigError, from_dict
from gateway.smtpd import auth as smtp_auth
from gateway.smtpd import replies
from tests.support.processes import LOOPBACK, free_port
from tests.support.service import ManagedService, ServiceFactory
from tests.support.sink import Sink
from tests.support.smtp import GOOD, OpenClient, RawClient, assert_refused, only_the_marker_arrives

pytestmark = pytest.mark.timeout(60)

IDLE_CONNECTIONS = 500


@pytest.fixture
async def clients() -> AsyncIterator[OpenClient]:
    """`await clients(svc)`: a connected RawClient, closed after the test."""
    opened: list[RawClient] = []

    async def open_client(svc: ManagedService, greet: bool = True) -> RawClient:
        client = await RawClient.connect(svc.smtp_port, greet=greet)
        opened.append(client)
        return client

    yield open_client
    for client in opened:
        await client.close()


def _allow_descriptors(needed: int) -> None:
    """Raise the soft fd limit (bounded by the hard one) so the flood fits in one process."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        target = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        soft = target
    if soft != resource.RLIM_INFINITY and soft < needed:
        pytest.skip(f"the fd limit ({soft}) is too low for {IDLE_CONNECTIONS} connections")


# --- exhaustion: floods, idle and slow clients ------------------------------------------


async def test_a_new_client_is_served_while_500_idle_connections_are_open(
    service: ServiceFactory,
) -> None:
    # Both ends of every connection live in this process: 2 fds each, plus the service's.
    _allow_descriptors(2 * IDLE_CONNECTIONS + 200)
    svc = await service(smtp={"max_connections": IDLE_CONNECTIONS + 10, "idle_timeout": "60s"})
    idle: list[asyncio.StreamWriter] = []
    try:
        for _ in range(IDLE_CONNECTIONS):
            reader, writer = await asyncio.open_connection(LOOPBACK, svc.smtp_port)
            idle.append(writer)
            greeting = await asyncio.wait_for(reader.readline(), 5)
            assert greeting.startswith(b"220 "), greeting  # admitted, then silent
        assert len(svc.smtp_handler.sessions) >= IDLE_CONNECTIONS

        started = time.monotonic()
        client = await RawClient.connect(svc.smtp_port)
        await client.ehlo()
        took = time.monotonic() - started
        await client.close()
    finally:
        for writer in idle:
            writer.close()
    assert took < 5.0, f"EHLO took {took:.2f}s with {IDLE_CONNECTIONS} idle connections"


async def test_an_idle_client_is_disconnected_after_idle_timeout(
    service: ServiceFactory, clients: OpenClient
) -> None:
    svc = await service(smtp={"idle_timeout": "1s"})
    client = await clients(svc)
    await client.ehlo()
    started = time.monotonic()
    assert await client.at_eof()
    assert 0.8 <= time.monotonic() - started < 6.0
    await _wait_for_sessions(svc, 0)


async def test_each_command_restarts_the_idle_timeout_and_silence_then_ends_it(
    service: ServiceFactory, clients: OpenClient
) -> None:
    """Commands every 0.3 s keep a 1 s idle timeout from firing for well past it (the one
    timer sets itself again for what is left); once the client falls silent it is cut off
    about idle_timeout later, not sooner."""
    svc = await service(smtp={"idle_timeout": "1s", "session_timeout": "60s"})
    client = await clients(svc)
    await client.ehlo()
    started = time.monotonic()
    while True:
        assert (await client.command("NOOP")).code == 250
        silent = time.monotonic()  # from the last command's reply
        if silent - started > 2.5:
            break
        await asyncio.sleep(0.3)
    assert await client.at_eof()
    assert 0.8 <= time.monotonic() - silent < 6.0
    await _wait_for_sessions(svc, 0)


async def test_a_command_trickled_a_byte_at_a_time_is_cut_off_at_idle_timeout(
    service: ServiceFactory, clients: OpenClient
) -> None:
    """Bytes alone never restart the timer: only a complete, valid command does."""
    svc = await service(smtp={"idle_timeout": "1s"})
    client = await clients(svc)
    await client.ehlo()
    started = time.monotonic()
    closed_after = None
    for byte in b"MAIL FROM:<a@x.test>" * 10:  # ~200 bytes over ~10 s if nobody stops it
        try:
            await client.send(bytes([byte]))
        except ConnectionError:
            closed_after = time.monotonic() - started
            break
        if client.reader.at_eof():
            closed_after = time.monotonic() - started
            break
        await asyncio.sleep(0.05)
        with contextlib.suppress(TimeoutError):
            if await asyncio.wait_for(client.reader.read(1), 0.001) == b"":
                closed_after = time.monotonic() - started
                break
    assert closed_after is not None, "the trickling client was never disconnected"
    assert closed_after < 6.0, closed_after


async def test_a_client_sending_noop_forever_is_closed_at_session_timeout_421(
    service: ServiceFactory, clients: OpenClient
) -> None:
    svc = await service(smtp={"idle_timeout": "1s", "session_timeout": "2s"})
    client = await clients(svc)
    await client.ehlo()
    started = time.monotonic()
    while time.monotonic() - started < 10:
        try:
            reply = await client.command("NOOP")
        except ConnectionError:
            pytest.fail("closed without a 421")
        if reply.code != 250:
            assert_refused(reply, replies.SESSION_TOO_LONG)
            break
        await asyncio.sleep(0.3)  # well inside idle_timeout: only the session deadline ends it
    else:
        pytest.fail("a NOOP-sending client held its session past session_timeout")
    assert 1.8 <= time.monotonic() - started < 7.0
    assert await client.at_eof()


async def _wait_for_sessions(svc: object, count: int) -> None:
    handler = svc.smtp_handler  # type: ignore[attr-defined]
    for _ in range(100):
        if len(handler.sessions) == count:
            return
        await asyncio.sleep(0.05)
    assert len(handler.sessions) == count


# --- smuggling by timing: STARTTLS and pipelining ----------------------------------------


async def test_commands_injected_before_starttls_completes_are_discarded(
    service: ServiceFactory, sink: Sink
) -> None:
    """CVE-2024-34083's shape (and CVE-2011-0411's): plaintext sent behind STARTTLS must
    never be executed inside the TLS session."""
    certs = Sink(tls="starttls")  # only for its self-signed certificate files
    assert certs.cert_path and certs.key_path
    svc = await service(smtp={"tls_cert": certs.cert_path, "tls_key": certs.key_path})
    client = await RawClient.connect(svc.smtp_port)
    try:
        assert "STARTTLS" in (await client.ehlo()).text
        await client.send(
            b"STARTTLS\r\nMAIL FROM:<attacker@evil.test>\r\nRCPT TO:<victim@y.test>\r\n"
        )
        assert (await client.reply()).code == 220
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        await client.writer.start_tls(context)

        await client.ehlo()
        # Had the injected MAIL survived, this DATA would find a transaction.
        reply = await client.command("DATA")
        assert reply.code == 503, str(reply)
        await only_the_marker_arrives(client, sink)
        assert all(m.mail_from != "attacker@evil.test" for m in sink.messages)
    finally:
        await client.close()


async def test_two_transactions_pipelined_in_one_write_are_two_intact_messages(
    service: ServiceFactory, sink: Sink, clients: OpenClient
) -> None:
    svc = await service()
    client = await clients(svc)
    await client.ehlo()
    first = b"From: a@x.test\r\nSubject: first\r\n\r\none\r\n"
    second = b"From: a@x.test\r\nSubject: second\r\n\r\ntwo\r\n"
    await client.send(
        b"MAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\nDATA\r\n" + first + b".\r\n"
        b"MAIL FROM:<a@x.test>\r\nRCPT TO:<c@y.test>\r\nDATA\r\n" + second + b".\r\n"
        b"QUIT\r\n"
    )
    codes = [(await client.reply()).code for _ in range(9)]
    assert codes == [250, 250, 354, 250, 250, 250, 354, 250, 221], codes
    assert await sink.wait_for_async(2, timeout=5)
    await asyncio.sleep(0.3)
    by_rcpt = {tuple(m.rcpt_tos): m.data for m in sink.messages}
    assert len(sink.messages) == 2, [m.data for m in sink.messages]
    assert by_rcpt[("b@y.test",)].endswith(first)
    assert by_rcpt[("c@y.test",)].endswith(second)


async def test_content_pipelined_behind_a_refused_data_never_becomes_a_message(
    service: ServiceFactory, sink: Sink, clients: OpenClient
) -> None:
    """No recipient accepted: DATA is 503, and the lines the client sent after it are
    commands (RFC 2920 §3.1), none of which can start a transaction of its own here."""
    svc = await service()
    client = await clients(svc)
    await client.ehlo()
    await client.send(
        b"MAIL FROM:<a@x.test>\r\nRCPT TO:<bad\x01@y.test>\r\nDATA\r\n"
        b"From: a@x.test\r\nSubject: orphan\r\n\r\nbody\r\n.\r\n"
    )
    replies = [await client.reply() for _ in range(3)]
    assert [r.code for r in replies] == [250, 501, 503], [str(r) for r in replies]
    for _ in range(5):  # each content line is an unknown command (or the session ends)
        try:
            reply = await client.reply()
        except (ConnectionError, TimeoutError):
            break
        assert reply.code >= 500, str(reply)
    with contextlib.suppress(Exception):
        await client.close()
    fresh = await clients(svc)
    await fresh.ehlo()
    await only_the_marker_arrives(fresh, sink)


async def test_data_content_sent_before_the_354_is_one_message(
    service: ServiceFactory, sink: Sink, clients: OpenClient
) -> None:
    svc = await service()
    client = await clients(svc)
    await client.ehlo()
    await client.send(b"MAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\nDATA\r\n" + GOOD + b".\r\n")
    codes = [(await client.reply()).code for _ in range(4)]
    assert codes == [250, 250, 354, 250], codes
    assert await sink.wait_for_async(1, timeout=5)
    await asyncio.sleep(0.3)
    assert len(sink.messages) == 1 and sink.messages[0].data.endswith(GOOD)


# --- AUTH guessing -------------------------------------------------------------------------


def _plain(secret: str) -> bytes:
    return b"AUTH PLAIN " + base64.b64encode(f"\0user\0{secret}".encode()) + b"\r\n"


async def _auth_client(port: int, source: str) -> RawClient:
    reader, writer = await asyncio.open_connection(LOOPBACK, port, local_addr=(source, 0))
    client = RawClient(reader, writer)
    client.greeting = await client.reply()
    await client.ehlo()
    return client


async def _failed_auth(client: RawClient) -> float:
    started = time.monotonic()
    await client.send(_plain("msk_wrong"))
    reply = await asyncio.wait_for(client.reply(), 10)
    assert reply.code == 535, str(reply)
    return time.monotonic() - started


async def test_auth_failures_slow_down_only_the_client_that_fails(
    service: ServiceFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(smtp_auth, "BASE_DELAY", 0.2)  # 0.2, 0.4, 0.8, 1.6 ...
    svc = await service(smtp={"require_auth": True})
    guesser = await _auth_client(svc.smtp_port, "127.0.0.1")
    other = await _auth_client(svc.smtp_port, "127.0.0.2")  # another client address
    again = None
    try:
        waits = [await _failed_auth(guesser) for _ in range(3)]
        assert waits[2] >= 0.75, waits
        # Its session is over after three failures; on a new connection the guesser's
        # fourth failure waits 1.6 s; meanwhile the other client's first failure is
        # answered after its own base delay, not after the guesser's.
        again = await _auth_client(svc.smtp_port, "127.0.0.1")
        slow = asyncio.create_task(_failed_auth(again))
        await asyncio.sleep(0.05)
        quick = await _failed_auth(other)
        assert quick < 1.2, f"another client waited {quick:.2f}s for the guesser's failures"
        assert await slow >= 1.5
    finally:
        await guesser.close()
        await other.close()
        if again is not None:
            await again.close()


# --- never an open relay -----------------------------------------------------------------


@pytest.mark.parametrize(
    "listen",
    [
        ["0.0.0.0:2525"],
        ["[::]:2525"],
        ["192.0.2.10:25"],
        ["mail.example.com:25"],
        ["127.0.0.1:2525", "0.0.0.0:2526"],
        ["[::1]:2525", "[2001:db8::1]:25"],
    ],
    ids=["any-v4", "any-v6", "public-v4", "hostname", "loopback-and-any", "v6-loopback-and-public"],
)
def test_a_non_loopback_listener_without_auth_is_refused_at_start(listen: list[str]) -> None:
    with pytest.raises(ConfigError, match="require_auth"):
        from_dict({"smtp": {"listen": listen}})
    with pytest.raises(ConfigError, match="require_auth"):
        from_dict({"smtp": {"listen": listen, "require_auth": False}})
    assert from_dict({"smtp": {"listen": listen, "require_auth": True}}).smtp.require_auth


@pytest.mark.parametrize(
    "listen", [["127.0.0.1:2525"], ["127.0.0.2:2525"], ["[::1]:2525"], ["localhost:2525"]]
)
def test_loopback_listeners_may_go_without_auth(listen: list[str]) -> None:
    assert not from_dict({"smtp": {"listen": listen}}).smtp.require_auth


@pytest.mark.parametrize("listen_host", ["127.0.0.1", "0.0.0.0"])
async def test_with_require_auth_nothing_is_relayed_before_auth(
    service: ServiceFactory, sink: Sink, clients: OpenClient, listen_host: str
) -> None:
    svc = await service(smtp={"require_auth": True, "listen": [f"{listen_host}:{free_port()}"]})
    client = await clients(svc)
    await client.ehlo()
    for command in ("MAIL FROM:<a@x.test>", "RCPT TO:<b@y.test>", "DATA"):
        reply = await client.command(command)
        assert reply.code == 530, f"{command}: {reply}"
    await client.send(GOOD + b".\r\n")  # as if DATA had gone through: lines are commands
    with contextlib.suppress(ConnectionError, TimeoutError):
        for _ in range(4):
            assert (await client.reply()).code >= 500
    await asyncio.sleep(1.0)
    assert sink.messages == []
