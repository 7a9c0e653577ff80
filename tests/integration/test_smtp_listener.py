"""Dialogues with the real SMTP listener over a raw socket (SPEC "SMTP listener" and
"Known pitfalls"): exact bytes in, exact reply lines out, so that smuggling, bare line ends,
control characters and limits are tested as a hostile client would send them.

"Nothing reached the sink" is only meaningful after the relay had every chance to deliver:
tests that expect nothing send a correct marker message afterwards and wait for it, then
check that the marker is the only thing the upstream ever saw.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import subprocess
from collections.abc import AsyncIterator

import pytest

from gateway.process.startup import BACKLOG
from gateway.smtpd import replies
from gateway.smtpd.commands import HELD_LIMIT
from tests.support.service import ManagedService, ServiceFactory, metric
from tests.support.sink import Sink
from tests.support.smtp import (
    GOOD,
    OpenClient,
    RawClient,
    assert_refused,
    only_the_marker_arrives,
)

pytestmark = pytest.mark.timeout(30)

REFUSED = "postern_messages_refused_total"


@pytest.fixture
async def client_factory() -> AsyncIterator[OpenClient]:
    """`await client_factory(svc)`: a connected RawClient, closed after the test."""
    clients: list[RawClient] = []

    async def open_client(svc: ManagedService, greet: bool = True) -> RawClient:
        client = await RawClient.connect(svc.smtp_port, greet=greet)
        clients.append(client)
        return client

    yield open_client
    for client in clients:
        await client.close()


# --- greeting and EHLO ---------------------------------------------------------------------


async def test_ehlo_advertises_size_8bitmime_smtputf8_pipelining_enhancedstatuscodes(
    service: ServiceFactory, client_factory: OpenClient
) -> None:
    svc = await service(smtp={"max_message_size": 12345})
    client = await client_factory(svc)
    assert client.greeting is not None and client.greeting.code == 220

    reply = await client.ehlo()

    keywords = {line.split(" ")[0].upper(): line for line in reply.lines[1:]}
    assert keywords["SIZE"] == "SIZE 12345"
    for extension in ("8BITMIME", "SMTPUTF8", "PIPELINING", "ENHANCEDSTATUSCODES"):
        assert extension in keywords, reply.lines


async def test_replies_after_ehlo_carry_enhanced_status_codes(
    service: ServiceFactory, client_factory: OpenClient
) -> None:
    """RFC 2034 §3: once ENHANCEDSTATUSCODES is advertised, every reply but the greeting
    and the EHLO/HELO answer carries one (as Postfix does: "250 2.0.0 Ok")."""
    svc = await service()
    client = await client_factory(svc)
    await client.ehlo()

    replies = {
        "NOOP": await client.command("NOOP"),
        "RSET": await client.command("RSET"),
        "BOGUS": await client.command("BOGUS"),
        "QUIT": await client.command("QUIT"),
    }

    missing = {verb: str(reply) for verb, reply in replies.items() if not reply.enhanced}
    assert not missing, f"replies without an enhanced status code: {missing}"


async def test_pipelined_commands_get_their_replies_in_order(
    service: ServiceFactory, sink: Sink, client_factory: OpenClient
) -> None:
    svc = await service()
    client = await client_factory(svc)
    await client.ehlo()

    await client.send(
        b"MAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\nRCPT TO:<c@y.test>\r\nDATA\r\n"
    )
    replies = [await client.reply() for _ in range(4)]
    assert [r.code for r in replies] == [250, 250, 250, 354]
    await client.send(GOOD + b".\r\n")
    assert (await client.reply()).code == 250
    assert await sink.wait_for_async(1, timeout=5)
    assert sink.messages[0].rcpt_tos == ["b@y.test", "c@y.test"]


def _writes_of_the_session(svc: ManagedService) -> list[bytes]:
    """What the one SMTP session open on `svc` writes from now on, each write as it went
    (the real write still made)."""
    assert svc.smtp_handler is not None
    (session,) = svc.smtp_handler.sessions
    writes: list[bytes] = []
    write = session._writer.write

    def noted(data: bytes) -> None:
        writes.append(bytes(data))
        write(data)

    session._writer.write = noted  # type: ignore[method-assign,assignment]
    return writes


async def test_the_replies_to_a_pipelined_group_go_out_in_one_write(
    service: ServiceFactory, sink: Sink, client_factory: OpenClient
) -> None:
    """RFC 2920 §3.2, as Postfix: MAIL's and RCPT's 250 wait while the next command is read
    already, and go out with the reply that ends the group (one write, not four); EHLO's
    lines go out as one. A refusal is not held (nor what was held before it)."""
    svc = await service()
    client = await client_factory(svc)
    writes = _writes_of_the_session(svc)
    await client.ehlo()
    assert len(writes) == 1 and writes[0].count(b"\r\n") >= 6, writes

    writes.clear()
    group = b"MAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\nRCPT TO:<c@y.test>\r\n"
    await client.send(group + b"DATA\r\n")  # one send: read as one
    assert [(await client.reply()).code for _ in range(4)] == [250, 250, 250, 354]
    assert writes == [
        f"{replies.OK_SENDER}\r\n{replies.OK_RECIPIENT}\r\n{replies.OK_RECIPIENT}\r\n"
        f"{replies.START_DATA}\r\n".encode()
    ]
    await client.send(GOOD + b".\r\n")
    assert (await client.reply()).code == 250

    writes.clear()
    await client.send(b"MAIL FROM:<a@x.test>\r\nRCPT TO:<b\x01@y.test>\r\nRCPT TO:<c@y.test>\r\n")
    assert [(await client.reply()).code for _ in range(3)] == [250, 501, 250]
    assert len(writes) == 2, writes  # 250 with the 501, then the last 250 alone
    assert await sink.wait_for_async(1, timeout=5)


async def test_replies_held_for_a_pipelined_group_go_out_every_4_kib(
    service: ServiceFactory, client_factory: OpenClient
) -> None:
    """A recipient named again is answered 250 and takes no recipient slot: thousands of
    them pipelined in one send are answered in writes of about 4 KiB each (HELD_LIMIT), not
    gathered into one reply buffer copied whole at each 250 (1.3 s of the event loop for
    15,000)."""
    svc = await service()
    client = await client_factory(svc)
    writes = _writes_of_the_session(svc)
    await client.ehlo()
    count = 3000
    writes.clear()
    await client.send(b"MAIL FROM:<a@x.test>\r\n" + b"RCPT TO:<b@y.test>\r\n" * count)
    codes = [(await client.reply()).code for _ in range(count + 1)]
    assert codes == [250] * (count + 1)
    assert HELD_LIMIT == 4096
    sizes = [len(data) for data in writes]
    assert max(sizes) <= 4096 + 100, max(sizes)  # the limit, and the reply that passed it


async def test_control_character_in_ehlo_name_is_refused_501(
    service: ServiceFactory, client_factory: OpenClient
) -> None:
    svc = await service()
    client = await client_factory(svc)

    reply = await client.command(b"EHLO bad\x01name.test")
    assert reply.code == 501, str(reply)
    assert reply.enhanced.startswith("5."), str(reply)

    reply = await client.command(b"HELO bad\x7fname.test")
    assert reply.code == 501, str(reply)
    assert reply.enhanced.startswith("5."), str(reply)

    await client.ehlo("good.test")  # the session goes on


# --- envelope ---------------------------------------------------------------------------


async def test_mail_from_with_size_over_the_limit_is_refused_552_5_3_4(
    service: ServiceFactory, client_factory: OpenClient
) -> None:
    svc = await service(smtp={"max_message_size": 10000})
    client = await client_factory(svc)
    await client.ehlo()

    assert_refused(await client.command("MAIL FROM:<a@x.test> SIZE=10001"), replies.SIZE_EXCEEDED)
    reply = await client.command("MAIL FROM:<a@x.test> SIZE=10000")
    assert reply.code == 250, str(reply)


async def test_too_many_recipients_is_452_4_5_3(
    service: ServiceFactory, client_factory: OpenClient
) -> None:
    svc = await service(smtp={"max_recipients": 2})
    client = await client_factory(svc)
    await client.ehlo()

    assert (await client.command("MAIL FROM:<a@x.test>")).code == 250
    assert (await client.command("RCPT TO:<r1@y.test>")).code == 250
    assert (await client.command("RCPT TO:<r2@y.test>")).code == 250
    assert_refused(await client.command("RCPT TO:<r3@y.test>"), replies.TOO_MANY_RECIPIENTS)


async def test_null_sender_for_bounces_is_accepted(
    service: ServiceFactory, sink: Sink, client_factory: OpenClient
) -> None:
    svc = await service()
    client = await client_factory(svc)
    await client.ehlo()

    reply = await client.command("MAIL FROM:<>")
    assert reply.code == 250, str(reply)
    assert (await client.command("RCPT TO:<b@y.test>")).code == 250
    assert (await client.data(GOOD)).code == 250
    assert await sink.wait_for_async(1, timeout=5)
    assert sink.messages[0].mail_from in ("", "<>")


@pytest.mark.parametrize(
    "command",
    [
        b"RCPT TO:<c@y.test\x01>",
        b"RCPT TO:<c\x01@y.test>",
        b"RCPT TO:<c@y.test\r>",
        b"RCPT TO:<c\r@y.test>",
        b"RCPT TO:<c\x00@y.test>",
    ],
    ids=["soh-after-domain", "soh-in-local", "cr-after-domain", "cr-in-local", "nul"],
)
async def test_control_character_in_recipient_is_refused_501(
    service: ServiceFactory, sink: Sink, client_factory: OpenClient, command: bytes
) -> None:
    svc = await service()
    client = await client_factory(svc)
    await client.ehlo()
    assert (await client.command("MAIL FROM:<a@x.test>")).code == 250

    reply = await client.command(command)

    assert reply.code == 501, str(reply)
    assert reply.enhanced.startswith("5."), str(reply)
    assert (await client.command("RCPT TO:<b@y.test>")).code == 250
    assert (await client.data(GOOD)).code == 250
    assert await sink.wait_for_async(1, timeout=5)
    await asyncio.sleep(0.3)
    assert [m.rcpt_tos for m in sink.messages] == [["b@y.test"]]  # nothing else was added


@pytest.mark.parametrize(
    "command",
    [b"MAIL FROM:<a\x01@x.test>", b"MAIL FROM:<a@x.test\x01>", b"MAIL FROM:<a@x.test\r>"],
    ids=["soh-in-local", "soh-after-domain", "cr-after-domain"],
)
async def test_control_character_in_sender_is_refused_501(
    service: ServiceFactory, client_factory: OpenClient, command: bytes
) -> None:
    svc = await service()
    client = await client_factory(svc)
    await client.ehlo()

    reply = await client.command(command)

    assert reply.code == 501, str(reply)
    assert reply.enhanced.startswith("5."), str(reply)
    assert (await client.command("MAIL FROM:<a@x.test>")).code == 250


# --- content ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "content",
    [
        b"Subject: lf\r\n\r\nbare\nLF inside\r\n",
        b"Subject: cr\r\n\r\nbare\rCR inside\r\n",
        b"Subject: nul\r\n\r\na NUL\x00byte\r\n",
        b"Subject: lf-header\nX-Injected: yes\r\n\r\nbody\r\n",
    ],
    ids=["bare-lf", "bare-cr", "nul", "bare-lf-in-header"],
)
async def test_bare_line_ends_and_nul_are_refused_550_5_6_0_and_the_session_goes_on(
    service: ServiceFactory, sink: Sink, client_factory: OpenClient, content: bytes
) -> None:
    svc = await service()
    client = await client_factory(svc)
    await client.ehlo()

    reply = await client.transaction(content)

    assert_refused(reply, replies.BAD_CONTENT)
    await only_the_marker_arrives(client, sink)


SMUGGLED_TAIL = (
    b"MAIL FROM:<attacker@evil.test>\r\n"
    b"RCPT TO:<victim@y.test>\r\n"
    b"DATA\r\n"
    b"From: ceo@x.test\r\nSubject: smuggled\r\n\r\npay the invoice\r\n"
)


@pytest.mark.parametrize(
    "content",
    [
        b"Subject: s1\r\n\r\nhello\n.\r\n" + SMUGGLED_TAIL,
        b"Subject: s2\r\n\r\nhello\r\n.\n" + SMUGGLED_TAIL,
        b"Subject: s3\r\n\r\nhello\n.\n" + SMUGGLED_TAIL,
        b"Subject: s4\r\n\r\nhello\r.\r\n" + SMUGGLED_TAIL,
        b"Subject: s5\r\n\r\nhello\r\n.\r" + SMUGGLED_TAIL,
    ],
    ids=["lf-dot-crlf", "crlf-dot-lf", "lf-dot-lf", "cr-dot-crlf", "crlf-dot-cr"],
)
async def test_smuggling_attempt_never_yields_a_second_message_upstream(
    service: ServiceFactory, sink: Sink, client_factory: OpenClient, content: bytes
) -> None:
    svc = await service()
    client = await client_factory(svc)
    await client.ehlo()

    reply = await client.transaction(content)

    assert_refused(reply, replies.BAD_CONTENT)
    await only_the_marker_arrives(client, sink)
    assert not any(b"smuggled" in m.data or b"evil.test" in m.data for m in sink.messages)
    assert all(m.mail_from != "attacker@evil.test" for m in sink.messages)


async def test_line_of_999_bytes_in_data_is_refused_and_998_is_accepted(
    service: ServiceFactory, sink: Sink, client_factory: OpenClient
) -> None:
    svc = await service()
    client = await client_factory(svc)
    await client.ehlo()

    too_long = b"Subject: long\r\n\r\n" + b"x" * 999 + b"\r\n"
    reply = await client.transaction(too_long)
    assert 500 <= reply.code < 600, str(reply)
    assert reply.enhanced.startswith("5."), str(reply)

    longest = b"Subject: longest\r\n\r\n" + b"y" * 998 + b"\r\n"
    assert (await client.transaction(longest)).code == 250
    assert await sink.wait_for_async(1, timeout=5)
    await asyncio.sleep(0.3)
    assert len(sink.messages) == 1
    assert sink.messages[0].data.endswith(b"y" * 998 + b"\r\n")


async def test_command_line_of_999_bytes_is_refused(
    service: ServiceFactory, client_factory: OpenClient
) -> None:
    svc = await service()
    client = await client_factory(svc)
    await client.ehlo()

    local = "l" * 40
    domain = ".".join(["d" * 60] * 16)[: 999 - len("RCPT TO:<@>") - len(local)]
    assert (await client.command("MAIL FROM:<a@x.test>")).code == 250
    line = f"RCPT TO:<{local}@{domain}>".encode()
    assert len(line) == 999
    reply = await client.command(line)
    assert 500 <= reply.code < 600, str(reply)
    assert (await client.command("NOOP")).code == 250  # the session goes on


async def test_message_over_size_without_size_parameter_is_552_5_3_4_after_the_final_dot(
    service: ServiceFactory, sink: Sink, client_factory: OpenClient
) -> None:
    svc = await service(smtp={"max_message_size": 2000})
    client = await client_factory(svc)
    await client.ehlo()

    big = b"Subject: big\r\n\r\n" + (b"z" * 76 + b"\r\n") * 40  # ~3.1 kB
    reply = await client.transaction(big)

    assert_refused(reply, replies.TOO_BIG)
    await only_the_marker_arrives(client, sink)


async def test_too_big_and_too_long_line_refusals_are_counted_by_reason(
    service: ServiceFactory, client_factory: OpenClient
) -> None:
    svc = await service(smtp={"max_message_size": 2000})
    client = await client_factory(svc)
    await client.ehlo()
    before = {r: metric(REFUSED, reason=r) for r in ("too_big", "line_too_long")}

    big = b"Subject: big\r\n\r\n" + (b"z" * 76 + b"\r\n") * 40
    assert_refused(await client.transaction(big), replies.TOO_BIG)
    long_line = b"Subject: long\r\n\r\n" + b"x" * 999 + b"\r\n"
    assert_refused(await client.transaction(long_line), replies.LINE_TOO_LONG)

    assert metric(REFUSED, reason="too_big") == before["too_big"] + 1
    assert metric(REFUSED, reason="line_too_long") == before["line_too_long"] + 1


# --- failures and limits --------------------------------------------------------------------


async def test_storage_failure_is_451_4_3_0_never_5xx(
    service: ServiceFactory, sink: Sink, client_factory: OpenClient
) -> None:
    svc = await service()
    client = await client_factory(svc)
    await client.ehlo()
    assert (await client.command("MAIL FROM:<a@x.test>")).code == 250
    assert (await client.command("RCPT TO:<b@y.test>")).code == 250

    await svc.writer.stop()
    try:
        reply = await client.data(GOOD)
    finally:
        svc.writer.start()  # so that the service can stop cleanly

    assert_refused(reply, replies.TEMPORARY)
    assert "Error" not in reply.text and "Exception" not in reply.text  # no internals leak
    assert (await client.command("NOOP")).code == 250  # the session goes on
    await asyncio.sleep(1.2)
    assert sink.messages == []


async def test_third_connection_over_the_cap_gets_421_4_7_0(
    service: ServiceFactory, client_factory: OpenClient
) -> None:
    svc = await service(smtp={"max_connections": 2})
    first = await client_factory(svc)
    second = await client_factory(svc)
    assert first.greeting is not None and first.greeting.code == 220
    assert second.greeting is not None and second.greeting.code == 220

    third = await client_factory(svc, greet=False)
    assert_refused(await third.reply(), replies.TOO_MANY_CONNECTIONS)
    assert await third.at_eof()

    await first.ehlo()  # the admitted sessions work
    await second.ehlo()

    assert (await first.command("QUIT")).code == 221
    await first.close()

    async def admitted() -> bool:
        client = await RawClient.connect(svc.smtp_port, greet=False)
        try:
            return (await client.reply()).code == 220
        finally:
            await client.close()

    for _ in range(50):  # a freed slot is usable again once the server saw the close
        if await admitted():
            break
        await asyncio.sleep(0.05)
    else:
        pytest.fail("a slot freed by QUIT was never given to a new client")


async def test_the_listener_keeps_its_backlog_of_1024(service: ServiceFactory) -> None:
    """create_server listens again with 100 unless told: a burst of more clients than that
    had SYNs dropped, each retried a second later. `ss` shows a listener's backlog as its
    Send-Q."""
    if shutil.which("ss") is None:
        pytest.skip("no ss here")
    svc = await service()
    shown = subprocess.run(
        ["ss", "-ltnH", f"sport = :{svc.smtp_port}"], capture_output=True, text=True, check=True
    ).stdout.split()
    assert shown[0] == "LISTEN"
    assert int(shown[2]) == BACKLOG == 1024


# --- aiosmtpd's command loop (gateway.smtpd.commands) ------------------------------------------


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


async def test_command_lines_are_logged_only_when_info_is_on_and_secrets_hidden(
    service: ServiceFactory, client_factory: OpenClient
) -> None:
    """aiosmtpd's per-line log calls are made only when its logger's level is on; when on,
    they are as aiosmtpd makes them: an AUTH line's argument hidden."""
    svc = await service()
    assert svc.smtp_handler is not None
    protocol = svc.smtp_handler.protocol()  # the configuration CommandLoop follows
    assert protocol._proxy_timeout is None and not protocol._enforce_call_limit
    assert protocol.enable_SMTPUTF8
    records = _Records()
    chatter = logging.getLogger("mail.log")
    previous = chatter.level
    chatter.setLevel(logging.WARNING)  # as gateway.process.logs sets it
    chatter.addHandler(records)
    try:
        client = await client_factory(svc)
        await client.ehlo()
        assert (await client.command("NOOP quiet")).code == 250
        assert not [line for line in records.lines if "quiet" in line]

        chatter.setLevel(logging.DEBUG)
        reply = await client.command("AUTH PLAIN !not-base64-secret")
        assert reply.code == 501, reply
        assert (await client.command("NOOP loud")).code == 250
        assert [line for line in records.lines if ">> b'NOOP loud'" in line]
        assert [line for line in records.lines if "<< b'250 2.0.0 OK'" in line]
        assert [line for line in records.lines if "b'AUTH PLAIN ********'" in line]
        assert not [line for line in records.lines if "not-base64-secret" in line]
    finally:
        chatter.removeHandler(records)
        chatter.setLevel(previous)
