"""gateway.delivery.probe, the connection test of a pool, against real sinks: each stage's failure
has its code, and the password never shows in what comes back."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Iterator

import pytest

from gateway.delivery.probe import ProbeResult, ProbeTarget, probe
from tests.support.processes import LOOPBACK, free_port
from tests.support.sink import Sink

pytestmark = pytest.mark.timeout(30)
SECRET = "pw-Zq81-never-shown"


@pytest.fixture
def sink(request: pytest.FixtureRequest) -> Iterator[Sink]:
    options = getattr(request, "param", {})
    running = Sink(**options).start()
    try:
        yield running
    finally:
        running.stop()


async def run(sink: Sink | None, timeout: float = 2.0, **fields: object) -> ProbeResult:
    port = sink.port if sink is not None else free_port()
    target = ProbeTarget(**{"host": LOOPBACK, "port": port, "encryption": "none", **fields})  # type: ignore[arg-type]
    return await probe(target, [LOOPBACK], local_hostname="postern.test", timeout=timeout)


async def test_plain_success_says_ehlo_and_quit(sink: Sink) -> None:
    result = await run(sink)
    assert result.success and result.message == "SMTP connection successful"
    assert result.error is None and result.code is None and result.latency_ms >= 0
    verbs = [verb for _, verb in sink.commands]
    assert verbs[0] == "EHLO" and verbs[-1] == "QUIT" and "MAIL" not in verbs


@pytest.mark.parametrize(
    ("sink", "encryption"),
    [({"tls": "starttls"}, "tls"), ({"tls": "implicit"}, "ssl")],
    indirect=["sink"],
)
async def test_tls_success_and_certificate_checks(sink: Sink, encryption: str) -> None:
    assert (await run(sink, encryption=encryption, tls_verify=False)).success
    checked = await run(sink, encryption=encryption, tls_verify=True)  # self-signed
    assert (checked.success, checked.code) == (False, "smtp_tls_error")
    assert "certificate" in (checked.error or "").lower()


async def test_starttls_required_but_not_offered(sink: Sink) -> None:
    result = await run(sink, encryption="tls")
    assert (result.code, result.message) == ("smtp_tls_error", "SMTP TLS negotiation failed")
    assert "STARTTLS" in (result.error or "")


@pytest.mark.parametrize("sink", [{"auth": ("user", SECRET)}], indirect=True)
async def test_auth_success_and_failure(sink: Sink) -> None:
    assert (await run(sink, username="user", password=SECRET)).success
    assert sink.auth_logins == ["user"]
    wrong = await run(sink, username="user", password=SECRET + "x")
    assert (wrong.success, wrong.code) == (False, "smtp_auth_error")
    assert wrong.message == "SMTP authentication failed" and "535" in (wrong.error or "")
    assert SECRET not in repr(wrong)


async def test_auth_not_offered(sink: Sink) -> None:
    result = await run(sink, username="user", password=SECRET)
    assert result.code == "smtp_auth_error" and "AUTH" in (result.error or "")


async def test_closed_port_is_a_connection_error() -> None:
    result = await run(None)
    assert (result.success, result.code) == (False, "smtp_connection_error")
    assert result.message == "SMTP connection failed"
    assert "connect 127.0.0.1:" in (result.error or "")


async def test_bad_greeting_is_a_connection_error(sink: Sink) -> None:
    sink.fail("connect", "554 5.3.2 go away")
    result = await run(sink)
    assert result.code == "smtp_connection_error" and "554" in (result.error or "")


@pytest.mark.parametrize("stage", ["connect", "ehlo"])
async def test_silence_is_a_timeout(sink: Sink, stage: str) -> None:
    sink.hang(stage, seconds=5)  # type: ignore[arg-type]
    result = await run(sink, timeout=0.5)
    assert (result.success, result.code) == (False, "timeout")
    assert result.message == "SMTP server timed out"


async def test_the_password_is_scrubbed_from_an_echoing_server(sink: Sink) -> None:
    sink.fail("connect", f"554 5.7.0 nope {SECRET}")
    result = await run(sink, username="u", password=SECRET)
    assert SECRET not in (result.error or "") and "***" in (result.error or "")
    assert SECRET not in repr(ProbeTarget(LOOPBACK, 25, "tls", "u", SECRET))


async def test_an_echoed_password_is_masked_before_the_reply_is_cut(sink: Sink) -> None:
    sink.fail("connect", "554 5.7.0 " + "x" * 185 + SECRET)  # the cut falls inside it
    result = await run(sink, username="u", password=SECRET)
    assert result.reason == "rejected" and result.reply is not None
    assert len(result.reply) <= 200 and SECRET[:5] not in result.reply
    assert SECRET[:5] not in (result.error or "")


ODD_SECRET = "pä  ss\tw\u00f6rd-Zq81"  # non-ASCII and a double space: sanitising would split it


async def _echoing_server(echo: str) -> asyncio.Server:
    """A raw SMTP peer that refuses any AUTH with a 535 repeating `echo`."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"220 echo.test ESMTP\r\n")
        try:
            while line := await asyncio.wait_for(reader.readline(), 5):
                verb = line.split(b" ")[0].strip().upper()
                if verb in (b"EHLO", b"HELO"):
                    writer.write(b"250-echo.test\r\n250 AUTH PLAIN LOGIN\r\n")
                elif verb == b"AUTH":
                    writer.write(f"535 5.7.8 bad credentials {echo} end\r\n".encode())
                else:
                    writer.write(b"221 bye\r\n")
                await writer.drain()
        except (TimeoutError, OSError):
            pass
        finally:
            writer.close()

    return await asyncio.start_server(serve, LOOPBACK, 0)


@pytest.mark.parametrize(
    "echo",
    [
        ODD_SECRET,
        base64.b64encode(f"\0user\0{ODD_SECRET}".encode()).decode(),  # AUTH PLAIN
        base64.b64encode(ODD_SECRET.encode()).decode(),  # AUTH LOGIN's password
    ],
    ids=["raw", "plain-base64", "login-base64"],
)
async def test_a_server_echoing_the_password_in_any_form_does_not_leak_it(echo: str) -> None:
    server = await _echoing_server(echo)
    try:
        port = server.sockets[0].getsockname()[1]
        target = ProbeTarget(LOOPBACK, port, "none", username="user", password=ODD_SECRET)
        result = await probe(target, [LOOPBACK], local_hostname="postern.test", timeout=2.0)
    finally:
        server.close()
        await server.wait_closed()
    assert (result.success, result.reason) == (False, "auth_failed")
    shown = f"{result.reply} {result.error}"
    assert "535 5.7.8 bad credentials *** end" in shown, shown
    for fragment in ("Zq81", "ss w", "pä", base64.b64encode(ODD_SECRET.encode()).decode()[:12]):
        assert fragment not in shown, shown
