"""The inbound bounce listener on loopback, with the stdlib SMTP client and raw bytes: mail
for the bounce domain's VERP addresses is handed to the report processing (a recording
stand-in) and answered 250 only once that committed; any other recipient is 550 5.7.1
relaying denied at RCPT, and a VERP address whose token Postern did not sign is 550 5.1.1;
a storage failure is a 451 4.3.0; the main door's checks hold."""

from __future__ import annotations

import asyncio
import smtplib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from gateway.bounces.returnpath import ReturnPath
from gateway.reports import IngestResult, Source
from gateway.smtpd.bounce_listener import BounceHandler
from gateway.smtpd.limits import ListenerLimits
from tests.support.ingest import RecordingIngest
from tests.support.processes import LOOPBACK
from tests.support.service import metric
from tests.support.smtp import RawClient, smtp_send

pytestmark = pytest.mark.timeout(30)

DOMAIN = "bounce.example.test"
RETURN_PATH = ReturnPath(DOMAIN, b"k" * 32)
VERP = RETURN_PATH.address("msg_" + "1" * 27, "")
OTHER = RETURN_PATH.address("msg_" + "2" * 27, "")
DSN = (Path(__file__).parents[1] / "data" / "bounces" / "rfc3464_simple.eml").read_bytes()
REPORT = DSN.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
MAX_SIZE = 64 * 1024


@dataclass
class Listener:
    port: int
    ingest: RecordingIngest
    handler: BounceHandler


@pytest.fixture
async def listener() -> AsyncIterator[Listener]:
    ingest = RecordingIngest()
    limits = ListenerLimits(
        hostname="mx.postern.test", max_message_size=MAX_SIZE, max_recipients=5,
        max_connections=10, idle_timeout=5, session_timeout=20, max_data_in_flight=4 * MAX_SIZE,
    )  # fmt: skip
    handler = BounceHandler(ingest, RETURN_PATH, limits)
    server = await asyncio.get_running_loop().create_server(handler.protocol, LOOPBACK, 0)
    try:
        yield Listener(server.sockets[0].getsockname()[1], ingest, handler)
    finally:
        server.close()
        for session in list(handler.sessions):
            session.abort()
        await server.wait_closed()


async def test_a_report_for_the_bounce_domain_is_taken_after_the_commit(
    listener: Listener,
) -> None:
    before = metric("postern_bounce_reports_total", source="listener", result="processed")
    code, text = await smtp_send(listener.port, "", [VERP], REPORT)
    assert (code, text.split(" ", 1)[0]) == (250, "2.0.0"), text
    ((raw, source),) = listener.ingest.calls
    assert raw == REPORT
    assert source == Source(kind="listener", envelope_recipient=VERP)
    after = metric("postern_bounce_reports_total", source="listener", result="processed")
    assert after == before + 1


@pytest.mark.parametrize(
    "recipient",
    [
        "someone@elsewhere.test",  # a relay attempt
        f"postmaster@{DOMAIN}",  # the domain, but no VERP address
        f"bounces@{DOMAIN}",  # the bare prefix: no token at all
        VERP.replace(DOMAIN, "other.example.test"),  # a VERP address of another domain
        VERP.replace(DOMAIN, f"sub.{DOMAIN}"),
    ],
)
async def test_anything_else_is_relaying_denied_at_rcpt(listener: Listener, recipient: str) -> None:
    client = await RawClient.connect(listener.port)
    try:
        await client.ehlo()
        assert (await client.command("MAIL FROM:<>")).code == 250
        reply = await client.command(f"RCPT TO:<{recipient}>")
        assert (reply.code, reply.text) == (550, "5.7.1 relaying denied")
        assert (await client.command(f"RCPT TO:<{VERP.upper()}>")).code == 250  # any case
    finally:
        await client.close()
    assert listener.ingest.calls == []


async def test_no_auth_is_offered(listener: Listener) -> None:
    client = await RawClient.connect(listener.port)
    try:
        offered = (await client.ehlo()).lines
    finally:
        await client.close()
    assert not any(line.upper().startswith("AUTH") for line in offered)
    assert "PIPELINING" in offered


async def test_250_only_once_the_report_is_committed(listener: Listener) -> None:
    release = asyncio.Event()
    real = listener.ingest.ingest

    async def held(raw: bytes, source: Source) -> IngestResult:
        await release.wait()
        return await real(raw, source)

    listener.ingest.ingest = held  # type: ignore[method-assign]
    sending = asyncio.create_task(smtp_send(listener.port, "", [VERP], REPORT))
    await asyncio.sleep(0.5)
    assert not sending.done()  # no answer while the commit is under way
    release.set()
    code, _ = await asyncio.wait_for(sending, 10)
    assert code == 250 and len(listener.ingest.calls) == 1


async def test_a_storage_failure_is_a_451(listener: Listener) -> None:
    listener.ingest.fail = True
    before = metric("postern_bounce_reports_total", source="listener", result="failed")
    code, text = await smtp_send(listener.port, "", [VERP], REPORT)
    assert (code, text.split(" ", 1)[0]) == (451, "4.3.0"), text
    assert metric("postern_bounce_reports_total", source="listener", result="failed") == before + 1
    listener.ingest.fail = False  # the sender retries
    assert (await smtp_send(listener.port, "", [VERP], REPORT))[0] == 250


async def test_each_recipient_is_handed_over_with_its_address(listener: Listener) -> None:
    code, _ = await smtp_send(listener.port, "", [VERP, "x@elsewhere.test", OTHER], REPORT)
    assert code == 250
    assert [s.envelope_recipient for s in listener.ingest.sources] == [VERP, OTHER]


async def test_the_main_doors_checks_hold(listener: Listener) -> None:
    client = await RawClient.connect(listener.port)
    try:
        await client.ehlo()
        for content, code in (
            (b"Subject: x\r\n\r\nbare\nLF\r\n", 550),  # would smuggle a second message
            (b"Subject: big\r\n\r\n" + (b"y" * 70 + b"\r\n") * 1000, 552),  # over 64 KiB
        ):
            await client.command("MAIL FROM:<>")
            await client.command(f"RCPT TO:<{VERP}>")
            assert (await client.data(content)).code == code
        reply = await client.command(f"RCPT TO:<{VERP}\x01>")
        assert reply.code == 501
    finally:
        await client.close()
    assert listener.ingest.calls == []


def _forged() -> list[str]:
    token = VERP.split("+", 1)[1].split("@")[0]
    message_id, mac = token.rsplit("-", 1)
    other_key = ReturnPath(DOMAIN, b"o" * 32).address(message_id, "")
    return [
        f"bounces+{message_id}-{'a' * 16}@{DOMAIN}",  # a mac of the right shape, not ours
        f"bounces+{message_id[:-1]}2-{mac}@{DOMAIN}",  # our mac on another message id
        other_key,  # signed, by another installation's key
        f"bounces+k7q2m4@{DOMAIN}",  # no mac at all
        f"bounces+{token}x@{DOMAIN}",  # ours, mangled
    ]


def _rcpt(port: int, recipients: list[str]) -> list[tuple[int, bytes]]:
    """Each RCPT's reply to the stdlib SMTP client, then RSET: nothing is sent."""
    with smtplib.SMTP(LOOPBACK, port, timeout=10) as client:
        client.ehlo("mta.example.test")
        assert client.mail("<>")[0] == 250
        found = [client.rcpt(recipient) for recipient in recipients]
        client.rset()
    return found


@pytest.mark.parametrize("forged", _forged())
async def test_a_token_postern_did_not_sign_is_550_5_1_1_at_rcpt(
    listener: Listener, forged: str
) -> None:
    replies_ = await asyncio.to_thread(_rcpt, listener.port, [forged, VERP, VERP.upper()])
    assert replies_[0] == (550, b"5.1.1 no such bounce address")
    assert [code for code, _ in replies_[1:]] == [250, 250]  # ours, in any case
    assert listener.ingest.calls == []


async def test_a_message_to_a_forged_token_alone_is_never_handed_over(listener: Listener) -> None:
    forged = _forged()[0]
    with pytest.raises(smtplib.SMTPRecipientsRefused) as refused:
        await asyncio.to_thread(_sendmail, listener.port, [forged])
    assert refused.value.recipients[forged][0] == 550
    await asyncio.to_thread(_sendmail, listener.port, [forged, VERP])  # the good one is taken
    assert [source.envelope_recipient for source in listener.ingest.sources] == [VERP]


def _sendmail(port: int, recipients: list[str]) -> None:
    with smtplib.SMTP(LOOPBACK, port, timeout=10) as client:
        client.sendmail("<>", recipients, REPORT)
