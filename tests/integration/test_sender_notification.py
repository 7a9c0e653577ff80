"""A bounce goes back to the envelope sender of SMTP-submitted mail, as Postfix does: an RFC
3464 report (multipart/report; report-type=delivery-status) from the null sender, stored in
the transaction that records the bounce. Never for a null sender, never for a notification
(no loop), never for HTTP mail (webhooks tell those), and off with
`[delivery] notify_sender = false`. Real SMTP in, a real aiosmtpd sink out; the report read
back with the standard library."""

from __future__ import annotations

import asyncio
import email
from email.message import Message
from email.policy import default
from typing import Any

import pytest
from sqlalchemy import text

from tests.support.api import auth, payload
from tests.support.databases import clean_postgresql
from tests.support.rows import wait_for_status
from tests.support.service import ServiceFactory
from tests.support.sink import Received, Sink
from tests.support.smtp import SENDER, message, queued_id, smtp_send

pytestmark = pytest.mark.timeout(60)
GONE = "550 5.1.1 <bad@example.test>: Recipient address rejected: User unknown"


def report_of(received: Received) -> tuple[Message, list[Message], str]:
    """(the report, its delivery-status blocks, the returned header) as the stdlib reads it."""
    parsed = email.message_from_bytes(received.data, policy=default)
    assert parsed.get_content_type() == "multipart/report"
    assert parsed.get_param("report-type") == "delivery-status"
    human, status, returned = parsed.get_payload()  # type: ignore[misc]
    assert human.get_content_type() == "text/plain"
    assert status.get_content_type() == "message/delivery-status"
    assert returned.get_content_type() == "text/rfc822-headers"
    blocks: list[Message] = status.get_payload()  # type: ignore[assignment]
    return parsed, blocks, returned.get_payload()  # type: ignore[return-value]


async def stored(svc: Any) -> list[tuple[str, str, str]]:
    """(source, mail_from, status) of every stored message, oldest first (either database)."""
    rows = "SELECT source, mail_from, status FROM message ORDER BY created_at"
    return [tuple(row) for row in await svc.db.read(lambda conn: conn.execute(text(rows)).all())]


async def test_a_bounce_is_reported_to_the_envelope_sender(
    service: ServiceFactory, sink: Sink
) -> None:
    svc = await service()
    sink.fail("rcpt", GONE, match="bad@example.test")
    recipients = ["bad@example.test", "good@example.test"]
    message_id = queued_id(
        await smtp_send(svc.smtp_port, SENDER, recipients, message("Quarterly report"))
    )
    assert await sink.wait_for_async(2)
    await wait_for_status(svc, message_id, {"bounced"})
    original, notice = sorted(sink.messages, key=lambda m: m.mail_from != SENDER)
    assert original.rcpt_tos == ["good@example.test"]
    assert notice.mail_from in ("", "<>") and notice.rcpt_tos == [SENDER]  # MAIL FROM:<>

    report, blocks, returned = report_of(notice)
    assert report["To"] == SENDER and report["Auto-Submitted"] == "auto-replied"
    assert "MAILER-DAEMON@" in report["From"]
    per_message, *per_recipient = blocks
    assert per_message["Reporting-MTA"].startswith("dns; ")
    assert len(per_recipient) == 1  # only the one that bounced
    [rcpt] = per_recipient
    assert rcpt["Final-Recipient"] == "rfc822; bad@example.test"
    assert rcpt["Action"] == "failed" and rcpt["Status"] == "5.1.1"
    assert "User unknown" in rcpt["Diagnostic-Code"]
    assert "Subject: Quarterly report" in returned
    assert [(s, f) for s, f, _ in await stored(svc)] == [("smtp", SENDER), ("dsn", "")]


async def test_an_expired_message_is_reported_with_5_4_7(
    service: ServiceFactory, sink: Sink
) -> None:
    svc = await service(delivery={"max_age": "2s", "retry_schedule": ["1s"]})
    sink.fail("rcpt", "451 4.2.2 mailbox full", match="full@example.test")
    message_id = queued_id(await smtp_send(svc.smtp_port, SENDER, ["full@example.test"], message()))
    await wait_for_status(svc, message_id, {"bounced"}, timeout=15)
    assert await sink.wait_for_async(1, timeout=10)
    [notice] = sink.messages
    _, blocks, _ = report_of(notice)
    assert blocks[1]["Status"] == "5.4.7"
    assert "mailbox full" in blocks[1]["Diagnostic-Code"]


async def test_no_report_for_a_null_sender_nor_for_a_report_that_bounces(
    service: ServiceFactory, sink: Sink
) -> None:
    svc = await service()
    sink.fail("rcpt", GONE, match="bad@example.test")
    sink.fail("rcpt", "550 5.1.1 no such sender mailbox", match=SENDER)
    null = queued_id(await smtp_send(svc.smtp_port, "", ["bad@example.test"], message()))
    await wait_for_status(svc, null, {"bounced"})
    sink.fail("rcpt", "554 5.7.1 refused by policy", match="policy@example.test")
    bounced = queued_id(await smtp_send(svc.smtp_port, SENDER, ["policy@example.test"], message()))
    await wait_for_status(svc, bounced, {"bounced"})
    for _ in range(50):  # the report is tried, and bounces in its turn
        messages = await stored(svc)
        if len(messages) == 3 and messages[-1][2] == "bounced":
            break
        await asyncio.sleep(0.1)
    await asyncio.sleep(1.5)  # time for a report of the report, which must not come
    assert [(s, f, st) for s, f, st in await stored(svc)] == [
        ("smtp", "", "bounced"),
        ("smtp", SENDER, "bounced"),
        ("dsn", "", "bounced"),
    ]
    assert sink.messages == []


async def test_notify_sender_false_sends_no_report(service: ServiceFactory, sink: Sink) -> None:
    svc = await service(delivery={"notify_sender": False})
    sink.fail("rcpt", GONE, match="bad@example.test")
    smtp = queued_id(await smtp_send(svc.smtp_port, SENDER, ["bad@example.test"], message()))
    await wait_for_status(svc, smtp, {"bounced"})
    await asyncio.sleep(1.5)
    assert sink.messages == []
    assert [s for s, _, _ in await stored(svc)] == ["smtp"]


async def test_http_mail_gets_no_report(api_client: Any, sink: Sink) -> None:
    api = await api_client()
    sink.fail("rcpt", GONE, match="bad@example.test")
    key = await api.key()
    sent = await api.http.post(
        "/v1/send", json=payload(to=[{"email": "bad@example.test"}]), headers=auth(key)
    )
    assert sent.status_code == 422, sent.text  # the answer (and webhooks) tell HTTP senders
    await asyncio.sleep(1.5)
    assert sink.messages == []
    assert [s for s, _, _ in await stored(api.svc)] == ["http"]


async def test_on_postgresql_the_report_is_stored_with_the_bounce(
    service: ServiceFactory, sink: Sink
) -> None:
    async with clean_postgresql() as url:
        svc = await service(storage={"url": url})
        sink.fail("rcpt", GONE, match="bad@example.test")
        queued_id(await smtp_send(svc.smtp_port, SENDER, ["bad@example.test"], message()))
        assert await sink.wait_for_async(1, timeout=10)
        [notice] = sink.messages
        _, blocks, _ = report_of(notice)
        assert blocks[1]["Final-Recipient"] == "rfc822; bad@example.test"
        for _ in range(50):
            if [st for _, _, st in await stored(svc)] == ["bounced", "delivered"]:
                break
            await asyncio.sleep(0.1)
        assert await stored(svc) == [("smtp", SENDER, "bounced"), ("dsn", "", "delivered")]
        await svc.stop()


async def test_a_delay_warning_is_sent_once_while_the_message_is_retried(
    service: ServiceFactory, sink: Sink
) -> None:
    svc = await service(
        delivery={"delay_warning": "1s", "retry_schedule": ["1s"], "max_age": "30s"}
    )
    sink.fail("rcpt", "451 4.2.2 mailbox full", times=3, match="slow@example.test")
    message_id = queued_id(await smtp_send(svc.smtp_port, SENDER, ["slow@example.test"], message()))
    await wait_for_status(svc, message_id, {"delivered"}, timeout=20)
    assert await sink.wait_for_async(2, timeout=10)
    await asyncio.sleep(0.5)
    notices = [m for m in sink.messages if m.rcpt_tos == [SENDER]]
    assert len(notices) == 1  # once, though two attempts were past the warning time
    report, blocks, _ = report_of(notices[0])
    assert report["Subject"].startswith("Delayed Mail")
    assert blocks[1]["Action"] == "delayed" and blocks[1]["Status"] == "4.2.2"
    assert [m.rcpt_tos for m in sink.messages if m.rcpt_tos != [SENDER]] == [["slow@example.test"]]
