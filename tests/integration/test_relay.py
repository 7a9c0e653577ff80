"""End to end: client -> real in-process Service -> real upstream sink (tests/support/sink.py).

SPEC "Delivery semantics" and "Routing": durable acceptance, at-least-once delivery with
retries on `retry_schedule`, bounces on 5xx and past `max_age`, suppression after a hard
bounce, pooled and reused upstream connections, failover inside a pool group.
"""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import aiosmtplib
import pytest

from gateway.smtpd import replies
from tests.support.processes import LOOPBACK, free_port
from tests.support.rows import (
    all_messages,
    has_body,
    message_row,
    recipient_rows,
    suppression_reason,
    wait_for_status,
)
from tests.support.service import (
    SINK_POOL,
    ServiceFactory,
    make_config,
    metric,
    sink_pool,
    wait_until,
)
from tests.support.sink import Sink
from tests.support.smtp import CLIENT_HELO, SENDER, message, queued_id, smtp_send

pytestmark = pytest.mark.timeout(30)


def split_received(data: bytes) -> tuple[bytes, bytes]:
    """(the first header field with its continuation lines, everything after it)."""
    lines = data.split(b"\r\n")
    end = 1
    while end < len(lines) and lines[end][:1] in (b" ", b"\t"):
        end += 1
    head = b"\r\n".join(lines[:end]) + b"\r\n"
    return head, data[len(head) :]


# --- the happy path ----------------------------------------------------------------------


async def test_message_arrives_byte_for_byte_with_received_header_and_without_control_headers(
    service: ServiceFactory, sink: Sink
) -> None:
    svc = await service()
    body = (
        b"Line one\r\n"
        b".leading dot survives dot-stuffing\r\n"
        b"..two dots\r\n"
        b"  indented line with trailing spaces   \r\n"
        b"caf\xc3\xa9 \xe2\x82\xac 8-bit text\r\n"
        b"\r\n"
        b"last line\r\n"
    )
    headers = (
        b"From: App <app@sender.test>\r\n"
        b"To: A <a@example.test>, B <b@example.test>\r\n"
        b"Subject: byte for byte\r\n"
        b"X-Postern-Tags: welcome, onboarding\r\n"
        b"Date: Mon, 1 Jan 2024 00:00:00 +0100\r\n"
        b"Message-ID: <b4b@sender.test>\r\n"
        b"X-Custom: kept\r\n"
        b"X-Postern-Idempotency-Key: abc-123\r\n"
        b"  folded continuation of the control header\r\n"
        b"MIME-Version: 1.0\r\n"
        b"Content-Type: text/plain; charset=utf-8\r\n"
        b"Content-Transfer-Encoding: 8bit\r\n"
    )
    sent = headers + b"\r\n" + body
    expected = (
        b"From: App <app@sender.test>\r\n"
        b"To: A <a@example.test>, B <b@example.test>\r\n"
        b"Subject: byte for byte\r\n"
        b"Date: Mon, 1 Jan 2024 00:00:00 +0100\r\n"
        b"Message-ID: <b4b@sender.test>\r\n"
        b"X-Custom: kept\r\n"
        b"MIME-Version: 1.0\r\n"
        b"Content-Type: text/plain; charset=utf-8\r\n"
        b"Content-Transfer-Encoding: 8bit\r\n"
        b"\r\n" + body
    )

    reply = await smtp_send(
        svc.smtp_port,
        SENDER,
        ["a@example.test", "b@example.test"],
        sent,
        mail_options=["BODY=8BITMIME"],
    )
    message_id = queued_id(reply)

    assert await sink.wait_for_async(1, timeout=5)
    [got] = sink.messages
    assert got.mail_from == SENDER
    assert got.rcpt_tos == ["a@example.test", "b@example.test"]
    received, rest = split_received(got.data)
    assert received.startswith(f"Received: from {CLIENT_HELO} ([{LOOPBACK}])".encode())
    assert b"by postern.test" in received
    assert rest == expected
    assert b"x-postern" not in got.data.lower()

    row = await wait_for_status(svc, message_id, {"delivered"})
    assert row["attempts"] == 1
    assert row["last_pool"] == SINK_POOL
    assert {r["status"] for r in (await recipient_rows(svc, message_id)).values()} == {"delivered"}
    assert await has_body(svc, message_id)  # kept for storage.body_retention (the sweep's)


async def test_a_large_message_with_dot_lines_arrives_byte_for_byte(
    service: ServiceFactory, sink: Sink
) -> None:
    """Over a megabyte, the message is dot-stuffed and written a slice at a time (so that the
    event loop is not held for it): slice ends must not lose or double a dot."""
    svc = await service()
    lines = [b".", b"..x", b"", b"text. more", b"." * 998, b"y" * 997 + b"."] * 1500
    sent = b"From: App <app@sender.test>\r\nDate: Mon, 1 Jan 2024 00:00:00 +0100\r\n"
    sent += b"Message-ID: <big@sender.test>\r\n\r\n" + b"\r\n".join(lines)
    sent += b"\r\n"
    assert len(sent) > 2 << 20

    message_id = queued_id(await smtp_send(svc.smtp_port, SENDER, ["a@example.test"], sent))

    assert await sink.wait_for_async(1, timeout=10)
    assert split_received(sink.messages[0].data)[1] == sent
    assert (await wait_for_status(svc, message_id, {"delivered"}))["attempts"] == 1


async def test_100_messages_from_10_clients_arrive_over_at_most_max_connections_reused(
    service: ServiceFactory, sink: Sink
) -> None:
    svc = await service()

    async def client(number: int) -> list[str]:
        smtp = aiosmtplib.SMTP(
            hostname=LOOPBACK, port=svc.smtp_port, local_hostname=CLIENT_HELO, timeout=10
        )
        replies = []
        async with smtp:
            for index in range(10):
                subject = f"c{number}-m{index}"
                _, text = await smtp.sendmail(
                    SENDER, [f"user{number}@example.test"], message(subject)
                )
                replies.append(text)
        return replies

    replies = await asyncio.wait_for(asyncio.gather(*(client(n) for n in range(10))), 20)
    ids = [queued_id((250, text)) for batch in replies for text in batch]
    assert len(set(ids)) == 100

    assert await sink.wait_for_async(100, timeout=15), f"only {len(sink.messages)} arrived"
    subjects = sorted(
        re.search(rb"Subject: (\S+)", m.data).group(1).decode()  # type: ignore[union-attr]
        for m in sink.messages
    )
    assert subjects == sorted(f"c{n}-m{i}" for n in range(10) for i in range(10))
    assert sink.max_connections_open <= 3
    assert sink.connections_total <= 3, (
        f"{sink.connections_total} upstream connections for 100 messages: not reused"
    )


# --- retries, bounces, suppression --------------------------------------------------------


async def test_451_at_rcpt_is_retried_and_delivered_on_the_second_attempt(
    service: ServiceFactory, sink: Sink
) -> None:
    svc = await service()
    deferred_before = metric("postern_messages_deferred_total", pool=SINK_POOL)
    sink.fail("rcpt", "451 4.3.0 try later", times=1)

    message_id = queued_id(await smtp_send(svc.smtp_port, SENDER, ["r@example.test"], message()))

    assert await sink.wait_for_async(1, timeout=6)
    assert sink.messages[0].rcpt_tos == ["r@example.test"]
    row = await wait_for_status(svc, message_id, {"delivered"})
    assert row["attempts"] == 2
    [rcpt] = (await recipient_rows(svc, message_id)).values()
    assert rcpt["status"] == "delivered"
    assert rcpt["attempts"] == 2
    assert metric("postern_messages_deferred_total", pool=SINK_POOL) - deferred_before == 1


async def test_550_5_1_1_bounces_that_recipient_only_and_suppresses_it_at_rcpt(
    service: ServiceFactory, sink: Sink
) -> None:
    svc = await service()
    sink.fail("rcpt", "550 5.1.1 no such user", match="gone@example.test")

    message_id = queued_id(
        await smtp_send(
            svc.smtp_port, SENDER, ["kept@example.test", "gone@example.test"], message()
        )
    )

    assert await sink.wait_for_async(1, timeout=5)
    assert sink.messages[0].rcpt_tos == ["kept@example.test"]
    row = await wait_for_status(svc, message_id, {"bounced", "delivered"})
    recipients = await recipient_rows(svc, message_id)
    assert recipients["kept@example.test"]["status"] == "delivered"
    assert recipients["gone@example.test"]["status"] == "bounced"
    assert recipients["gone@example.test"]["code"] == 550
    assert row["due_at"] is None  # final: never retried
    assert await suppression_reason(svc, "gone@example.test") == "bounced"

    smtp = aiosmtplib.SMTP(
        hostname=LOOPBACK, port=svc.smtp_port, local_hostname=CLIENT_HELO, timeout=5
    )
    async with smtp:
        await smtp.mail(SENDER)
        with pytest.raises(aiosmtplib.SMTPRecipientRefused) as refused:
            await smtp.rcpt("gone@example.test")
        assert (refused.value.code, refused.value.message[:5]) == replies.SUPPRESSED.status
        ok = await smtp.rcpt("kept@example.test")
        assert ok.code == 250


async def test_upstream_down_message_waits_deferred_then_arrives_when_it_comes_back(
    service: ServiceFactory, sink: Sink
) -> None:
    svc = await service()
    await asyncio.to_thread(sink.stop)

    message_id = queued_id(await smtp_send(svc.smtp_port, SENDER, ["w@example.test"], message()))

    row = await wait_for_status(svc, message_id, {"deferred"})
    assert row["due_at"] is not None
    assert await has_body(svc, message_id)  # nothing lost while it waits
    await asyncio.sleep(1.5)  # at least one more failed attempt
    assert (await message_row(svc, message_id))["status"] == "deferred"  # type: ignore[index]

    await asyncio.to_thread(sink.start)
    assert await sink.wait_for_async(1, timeout=5), "not delivered after the upstream came back"
    row = await wait_for_status(svc, message_id, {"delivered"})
    assert row["attempts"] >= 2
    assert len(sink.messages) == 1


async def test_failover_to_the_next_pool_of_the_group_when_the_first_cannot_connect(
    service: ServiceFactory, sink: Sink
) -> None:
    closed_port = free_port()
    svc = await service(
        pools=[
            sink_pool(sink, name="dead", host=LOOPBACK, port=closed_port, priority=1),
            sink_pool(sink, name=SINK_POOL, priority=10),
        ]
    )

    message_id = queued_id(await smtp_send(svc.smtp_port, SENDER, ["f@example.test"], message()))

    assert await sink.wait_for_async(1, timeout=5)
    row = await wait_for_status(svc, message_id, {"delivered"})
    assert row["last_pool"] == SINK_POOL
    assert row["attempts"] == 1  # failover happens inside one attempt, not by a retry


async def test_5xx_after_the_final_dot_bounces_without_retry(
    service: ServiceFactory, sink: Sink
) -> None:
    svc = await service()
    sink.fail("eom", "554 5.6.0 content rejected", times=1)

    message_id = queued_id(await smtp_send(svc.smtp_port, SENDER, ["e@example.test"], message()))

    row = await wait_for_status(svc, message_id, {"bounced"})
    assert row["attempts"] == 1
    assert row["due_at"] is None
    [rcpt] = (await recipient_rows(svc, message_id)).values()
    assert rcpt["status"] == "bounced"
    assert rcpt["code"] == 554
    assert await suppression_reason(svc, "e@example.test") is None  # 5.6.x is not 5.1.x
    await asyncio.sleep(1.5)  # a retry (schedule 1s) would have been claimed by now
    # No retry reached the sink: only the bounce report to the sender (notify_sender).
    assert [(m.mail_from, m.rcpt_tos) for m in sink.messages] == [("<>", [SENDER])]
    assert (await message_row(svc, message_id))["attempts"] == 1  # type: ignore[index]


async def test_drop_after_the_final_dot_defers_retries_and_counts_a_possible_duplicate(
    service: ServiceFactory, sink: Sink
) -> None:
    svc = await service()
    duplicates_before = metric("postern_possible_duplicates_total", pool=SINK_POOL)
    sink.drop("eom", times=1)

    message_id = queued_id(await smtp_send(svc.smtp_port, SENDER, ["d@example.test"], message()))

    assert await sink.wait_for_async(1, timeout=6)
    row = await wait_for_status(svc, message_id, {"delivered"})
    assert row["attempts"] == 2
    assert len(sink.dropped_after_data) == 1  # the upstream had read it all once
    assert sink.dropped_after_data[0].data == sink.messages[0].data
    assert metric("postern_possible_duplicates_total", pool=SINK_POOL) - duplicates_before == 1


async def test_message_past_max_age_bounces(service: ServiceFactory, sink: Sink) -> None:
    svc = await service(delivery={"max_age": "2s"})
    sink.fail("rcpt", "451 4.7.1 greylisted, try later")  # forever

    message_id = queued_id(await smtp_send(svc.smtp_port, SENDER, ["old@example.test"], message()))

    row = await wait_for_status(svc, message_id, {"bounced"}, timeout=8)
    assert row["attempts"] >= 2
    assert row["due_at"] is None
    [rcpt] = (await recipient_rows(svc, message_id)).values()
    assert rcpt["status"] == "bounced"
    assert "max_age" in (rcpt["response"] or "")
    assert sink.messages == []
    assert await has_body(svc, message_id)  # kept for storage.body_retention


# --- lifecycle ----------------------------------------------------------------------------


async def test_graceful_stop_keeps_pending_mail_and_the_next_service_delivers_it(
    service: ServiceFactory, sink: Sink, tmp_path: Path
) -> None:
    svc = await service()
    sink.fail("rcpt", "451 4.3.0 try later")  # forever, until cleared
    ids = [
        queued_id(await smtp_send(svc.smtp_port, SENDER, [f"p{i}@example.test"], message(f"p{i}")))
        for i in range(5)
    ]
    for message_id in ids:
        await wait_for_status(svc, message_id, {"deferred"})

    await svc.stop()

    sink.clear()
    assert sink.messages == []
    again = await service(make_config(tmp_path, sink))  # same data_dir, fresh ports
    assert await sink.wait_for_async(5, timeout=8), f"only {len(sink.messages)} of 5 delivered"
    for message_id in ids:
        await wait_for_status(again, message_id, {"delivered"})
    assert sorted(r for m in sink.messages for r in m.rcpt_tos) == sorted(
        f"p{i}@example.test" for i in range(5)
    )


async def test_stop_with_deliveries_in_flight_loses_nothing(
    service: ServiceFactory, sink: Sink, tmp_path: Path
) -> None:
    svc = await service(drain_timeout=0.5)
    sink.hang("mail", seconds=1.5)  # every attempt is in flight when we stop
    ids = [
        queued_id(await smtp_send(svc.smtp_port, SENDER, [f"i{i}@example.test"], message(f"i{i}")))
        for i in range(3)
    ]

    mails = lambda: sum(verb == "MAIL" for _, verb in sink.commands)  # noqa: E731
    assert await wait_until(lambda: mails() >= 3, timeout=5)  # all three are in flight
    await asyncio.wait_for(svc.stop(), timeout=15)

    assert sink.messages == []  # nothing finished: every one was cut off mid-transaction
    sink.clear()
    again = await service(make_config(tmp_path, sink))  # same data_dir, fresh ports
    assert set(ids) <= {row["id"] for row in await all_messages(again)}
    assert await sink.wait_for_async(3, timeout=8), f"only {len(sink.messages)} of 3 delivered"
    for message_id in ids:
        await wait_for_status(again, message_id, {"delivered"})
