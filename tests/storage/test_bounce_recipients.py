"""Which recipients a report may touch, on both backends: one SMTP transaction to the bounce
listener (a real stdlib SMTP client, the real processing) with several VERP addresses is one
report per address, each acted on, and a redelivery to the same address is a duplicate; a
report arriving on a message's token touches only recipients that message had, each only by
its own entry (the per-message token's replay limit, README "Return path")."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from sqlalchemy import text

from gateway.bounces.ingest import Source
from gateway.queue.store import Queue
from gateway.smtpd.bounce_listener import BounceHandler
from gateway.smtpd.limits import ListenerLimits
from storage import bounce_reports as stored
from storage.db import Database
from tests.storage.test_bounce_ingest import RP, delivered, ingest, report, suppression, verp
from tests.support.processes import LOOPBACK
from tests.support.smtp import smtp_send
from tests.support.stored import fetch

pytestmark = pytest.mark.timeout(60)


def two_entry_dsn(first: str, second: str, nonce: str = "1") -> bytes:
    """One DSN naming two failed recipients (an MTA that took both in one transaction)."""
    blocks = "".join(
        f"Final-Recipient: rfc822; {r}\r\nAction: failed\r\nStatus: 5.1.1\r\n"
        "Diagnostic-Code: smtp; 550 5.1.1 user unknown\r\n\r\n"
        for r in (first, second)
    )
    return (
        f"From: MAILER-DAEMON@mx.example.test\r\nTo: bounces@bounce.test\r\n"
        f"Subject: Undelivered Mail\r\nMessage-ID: <two{nonce}@mx.example.test>\r\n"
        "MIME-Version: 1.0\r\n"
        'Content-Type: multipart/report; report-type=delivery-status; boundary="B"\r\n\r\n'
        "--B\r\nContent-Type: message/delivery-status\r\n\r\n"
        f"Reporting-MTA: dns; mx.example.test\r\n\r\n{blocks}--B--\r\n"
    ).encode()


def one_entry_dsn(recipient: str, nonce: str = "1") -> bytes:
    return (
        f"From: MAILER-DAEMON@mx.example.test\r\nTo: bounces@bounce.test\r\n"
        f"Subject: Undelivered Mail\r\nMessage-ID: <one{nonce}@mx.example.test>\r\n"
        "MIME-Version: 1.0\r\n"
        'Content-Type: multipart/report; report-type=delivery-status; boundary="B"\r\n\r\n'
        "--B\r\nContent-Type: message/delivery-status\r\n\r\n"
        "Reporting-MTA: dns; mx.example.test\r\n\r\n"
        f"Final-Recipient: rfc822; {recipient}\r\nAction: failed\r\nStatus: 5.1.1\r\n"
        "Diagnostic-Code: smtp; 550 5.1.1 user unknown\r\n\r\n--B--\r\n"
    ).encode()


@pytest.fixture
async def listener(backend: Database, queue: Queue) -> AsyncIterator[int]:
    """The bounce listener for `bounce.test` on loopback, with the real processing."""
    limits = ListenerLimits(
        hostname="mx.postern.test", max_message_size=64 * 1024, max_recipients=5,
        max_connections=10, idle_timeout=5, session_timeout=20,
        max_data_in_flight=256 * 1024,
    )  # fmt: skip
    handler = BounceHandler(ingest(backend, queue), RP, limits)
    server = await asyncio.get_running_loop().create_server(handler.protocol, LOOPBACK, 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        for session in list(handler.sessions):
            session.abort()
        await server.wait_closed()


async def _reports(db: Database) -> list[tuple[str, str | None, str | None]]:
    rows = await fetch(db, "SELECT status, message_id, envelope_recipient FROM bounce_report")
    return sorted((r.status, r.message_id, r.envelope_recipient) for r in rows)


async def test_one_transaction_to_several_verp_addresses_is_one_report_each(
    backend: Database, queue: Queue, listener: int
) -> None:
    first = await delivered(queue, "ann@example.test")
    second = await delivered(queue, "bob@example.test")
    raw = two_entry_dsn("ann@example.test", "bob@example.test")
    rcpts = [verp(first), verp(second)]
    assert (await smtp_send(listener, "", rcpts, raw))[0] == 250
    assert await _reports(backend) == sorted(
        [("processed", first, rcpts[0]), ("processed", second, rcpts[1])]
    )
    assert (await suppression(backend, "ann@example.test")).reason == "hard_bounce"
    assert (await suppression(backend, "bob@example.test")).reason == "hard_bounce"
    # The sending MTA retries the whole transaction (say it missed our 250): once each.
    assert (await smtp_send(listener, "", rcpts, raw))[0] == 250
    # The same report again for one address, case folded by a relay: a duplicate.
    assert (await smtp_send(listener, "", [rcpts[1].upper()], raw))[0] == 250
    assert len(await _reports(backend)) == 2


async def test_a_report_for_one_address_sent_to_several_touches_only_its_own(
    backend: Database, queue: Queue, listener: int
) -> None:
    """Both messages have one recipient: the report names ann only, so bob's message, which
    it also came for, is not bounced by elimination."""
    first = await delivered(queue, "ann@example.test")
    second = await delivered(queue, "bob@example.test")
    rcpts = [verp(first), verp(second)]
    assert (await smtp_send(listener, "", rcpts, one_entry_dsn("ann@example.test")))[0] == 250
    assert await _reports(backend) == sorted(
        [("processed", first, rcpts[0]), ("unmatched", second, rcpts[1])]
    )
    assert await suppression(backend, "ann@example.test") is not None
    assert await suppression(backend, "bob@example.test") is None


async def test_schema_9_rows_of_a_listener_report_stay_deduplicated(
    backend: Database, queue: Queue
) -> None:
    """Before, a listener report was stored under the bare hash of its bytes, for its first
    recipient only: met again for that recipient it is a duplicate, for another it is new."""
    first = await delivered(queue, "ann@example.test")
    second = await delivered(queue, "bob@example.test")
    raw = two_entry_dsn("ann@example.test", "bob@example.test", nonce="9")
    taker = ingest(backend, queue)
    old = await taker.ingest(raw, Source("listener", envelope_recipient=verp(first)))
    digest = stored.content_hash(raw)
    await backend.transaction(
        lambda conn: conn.execute(
            text("UPDATE bounce_report SET content_hash = :h, dedupe_key = :k WHERE id = :i"),
            {"h": digest, "k": f"sha256:{digest}", "i": old.report_id},
        )
    )
    again = await taker.ingest(raw, Source("listener", envelope_recipient=verp(first)))
    assert (again.outcome, again.report_id) == ("duplicate", old.report_id)
    other = await taker.ingest(raw, Source("listener", envelope_recipient=verp(second)))
    assert other.outcome == "processed"
    assert (await report(backend, other.report_id)).message_id == second


async def test_a_report_on_a_messages_token_touches_only_the_recipients_it_names(
    backend: Database, queue: Queue
) -> None:
    """The token is per message (one transaction carries all its recipients): a report on it
    may name only recipients the message had, and touches each only by its own entry."""
    message_id = await delivered(queue, "ann@example.test", "bob@example.test")
    taker = ingest(backend, queue)
    stranger = one_entry_dsn("carol@example.test", nonce="s")
    result = await taker.ingest(stranger, Source("listener", envelope_recipient=verp(message_id)))
    assert result.outcome == "unmatched"
    assert "no entry names a recipient" in (await report(backend, result.report_id)).error
    assert await suppression(backend, "carol@example.test") is None
    assert await suppression(backend, "ann@example.test") is None
    assert await suppression(backend, "bob@example.test") is None
    named = one_entry_dsn("bob@example.test", nonce="b")
    result = await taker.ingest(named, Source("listener", envelope_recipient=verp(message_id)))
    assert result.outcome == "processed"
    assert (await report(backend, result.report_id)).recipient == "bob@example.test"
    assert await suppression(backend, "bob@example.test") is not None
    assert await suppression(backend, "ann@example.test") is None  # untouched


async def test_a_single_recipients_forwarded_address_is_still_that_recipient(
    backend: Database, queue: Queue
) -> None:
    """By elimination (a signed claim, one recipient, one other address named): the address
    it forwarded to bounced."""
    message_id = await delivered(queue, "only@example.test")
    raw = one_entry_dsn("only.forwarded@elsewhere.test", nonce="f")
    source = Source("listener", envelope_recipient=verp(message_id))
    assert (await ingest(backend, queue).ingest(raw, source)).outcome == "processed"
    assert await suppression(backend, "only@example.test") is not None
    assert await suppression(backend, "only.forwarded@elsewhere.test") is None


async def test_two_other_addresses_are_not_the_only_recipient(
    backend: Database, queue: Queue
) -> None:
    message_id = await delivered(queue, "only@example.test")
    raw = two_entry_dsn("x@elsewhere.test", "y@elsewhere.test", nonce="xy")
    source = Source("listener", envelope_recipient=verp(message_id))
    assert (await ingest(backend, queue).ingest(raw, source)).outcome == "unmatched"
    assert await suppression(backend, "only@example.test") is None
