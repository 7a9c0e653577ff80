"""A bounce that comes back later, by report, after the upstream took a message submitted
over SMTP, is told to the envelope sender as a bounce during delivery is: one RFC 3464
report from the null sender, with the remote's Status and Diagnostic-Code, stored in the
transaction that applies the report. Once: the same report again, a second report about
the recipient, or a reclassification tells nobody again. None with `[delivery]
notify_sender = false`, none for HTTP mail (webhooks tell those). Real SMTP in, a real
aiosmtpd sink out, the report sent to the bounce listener over SMTP at the message's VERP
return path, the notification read back with the standard library. A recipient still
pending (the upstream deferred it) that a report bounces is told by that report, once, and
never tried again."""

from __future__ import annotations

import asyncio
import contextlib
import email
import time
from collections.abc import AsyncIterator
from email.message import Message
from email.policy import default
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

from tests.support.api import auth, payload
from tests.support.databases import clean_postgresql
from tests.support.processes import LOOPBACK, free_port
from tests.support.reports import dsn
from tests.support.service import ManagedService, ServiceFactory, make_config, wait_until
from tests.support.sink import Received, Sink
from tests.support.smtp import SENDER, message, queued_id, smtp_send

pytestmark = pytest.mark.timeout(60)

DOMAIN = "bounce.postern.test"
GONE = "gone@example.test"
KEPT = "kept@example.test"
REPLY = "550 5.1.1 <gone@example.test>: Recipient address rejected: User unknown"


BACKENDS = pytest.mark.parametrize("backend", ["sqlite", "postgresql"])


@contextlib.asynccontextmanager
async def storage_of(backend: str) -> AsyncIterator[dict[str, Any]]:
    """make_config's storage argument for `backend`: none (SQLite in data_dir), or a
    PostgreSQL database of the test's own, dropped after."""
    if backend == "sqlite":
        yield {}
        return
    async with clean_postgresql() as url:
        yield {"storage": {"url": url}}


def bounces() -> dict[str, str]:
    """The [bounces] section: VERP return paths and a listener on a free port."""
    return {"domain": DOMAIN, "listen": f"{LOOPBACK}:{free_port()}"}


def listener_port(svc: ManagedService) -> int:
    listen = svc.config.bounces.listen
    assert listen is not None
    return listen[1]


async def delivered_over_smtp(svc: ManagedService, sink: Sink) -> tuple[str, str]:
    """An SMTP message to GONE and KEPT, delivered: its id and the return path it left with."""
    reply = await smtp_send(svc.smtp_port, SENDER, [GONE, KEPT], message("Quarterly report"))
    message_id = queued_id(reply)
    await reaches(svc, message_id, "delivered")
    [sent] = [m for m in sink.messages if GONE in m.rcpt_tos]
    assert sent.mail_from.startswith("bounces+") and sent.mail_from.endswith(f"@{DOMAIN}")
    return message_id, sent.mail_from


async def report_back(svc: ManagedService, return_path: str, nonce: str = "1") -> None:
    """GONE's remote bounces the message later: its DSN, sent to the bounce listener."""
    raw = dsn(GONE, "5.1.1", REPLY, to=return_path, nonce=nonce)
    code, reply = await smtp_send(listener_port(svc), "", [return_path], raw)
    assert code == 250, reply


async def reaches(svc: Any, message_id: str, status: str) -> None:
    """Wait for the message's status, read through the service's database (either one)."""
    query = text("SELECT status FROM message WHERE id = :id")

    async def there() -> bool:
        found = await svc.db.read(lambda conn: conn.execute(query, {"id": message_id}).scalar())
        return bool(found == status)

    assert await wait_until(there, timeout=10), f"{message_id} never became {status}"


def notices(sink: Sink) -> list[Received]:
    return [m for m in sink.messages if m.rcpt_tos == [SENDER]]


async def stored(svc: Any) -> list[tuple[str, str, str]]:
    """(source, mail_from, status) of every stored message, oldest first."""
    rows = "SELECT source, mail_from, status FROM message ORDER BY created_at"
    return [tuple(row) for row in await svc.db.read(lambda conn: conn.execute(text(rows)).all())]


async def reports_of(svc: Any) -> list[int]:
    rows = "SELECT id FROM bounce_report WHERE status = 'processed' ORDER BY id"
    return [row[0] for row in await svc.db.read(lambda conn: conn.execute(text(rows)).all())]


def delivery_status(received: Received) -> tuple[Message, list[Message], str]:
    """(the notification, its delivery-status blocks, the returned header), read by the
    standard library."""
    parsed = email.message_from_bytes(received.data, policy=default)
    assert parsed.get_content_type() == "multipart/report"
    assert parsed.get_param("report-type") == "delivery-status"
    _, status, returned = parsed.get_payload()  # type: ignore[misc]
    assert status.get_content_type() == "message/delivery-status"
    blocks: list[Message] = status.get_payload()  # type: ignore[assignment]
    return parsed, blocks, returned.get_payload()  # type: ignore[return-value]


async def told_once(svc: ManagedService, sink: Sink) -> None:
    """The whole story on one service: delivered, bounced later by report, told once."""
    _, return_path = await delivered_over_smtp(svc, sink)
    await report_back(svc, return_path)
    assert await sink.wait_for_async(2, timeout=10)
    [notice] = notices(sink)
    assert notice.mail_from in ("", "<>")  # MAIL FROM:<>: a null sender is never told
    report, blocks, returned = delivery_status(notice)
    assert report["To"] == SENDER and report["Auto-Submitted"] == "auto-replied"
    _, *per_recipient = blocks
    [rcpt] = per_recipient  # GONE alone: KEPT was not bounced
    assert rcpt["Final-Recipient"] == f"rfc822; {GONE}"
    assert rcpt["Action"] == "failed" and rcpt["Status"] == "5.1.1"
    assert rcpt["Diagnostic-Code"] == f"smtp; {REPLY}"
    assert "Subject: Quarterly report" in returned

    await report_back(svc, return_path)  # the same report again: a duplicate
    await report_back(svc, return_path, nonce="2")  # another report about GONE
    first, _ = await reports_of(svc)  # both processed, but GONE was bounced already
    assert svc.bounces is not None  # an operator's reclassifications (the API's processing)
    assert await svc.bounces.reclassify(first, "soft") == "changed"
    assert await svc.bounces.reclassify(first, "hard") == "changed"
    await asyncio.sleep(2)  # time for any second notification, which must not come
    assert len(notices(sink)) == 1
    assert await stored(svc) == [("smtp", SENDER, "bounced"), ("dsn", "", "delivered")]


@BACKENDS
async def test_a_later_bounce_is_told_to_the_sender_once(
    tmp_path: Path, service: ServiceFactory, sink: Sink, backend: str
) -> None:
    async with storage_of(backend) as storage:
        svc = await service(make_config(tmp_path, sink, bounces=bounces(), **storage))
        await told_once(svc, sink)
        await svc.stop()  # before its database goes


async def deferred_over_smtp(svc: ManagedService, sink: Sink) -> tuple[str, str]:
    """An SMTP message to GONE and KEPT whose upstream takes KEPT and defers GONE (450 at
    RCPT, every attempt): its id and the return path it left with, GONE still pending."""
    sink.fail("rcpt", "450 4.2.1 mailbox busy, try later", match=GONE)
    reply = await smtp_send(svc.smtp_port, SENDER, [GONE, KEPT], message("Quarterly report"))
    message_id = queued_id(reply)
    assert await sink.wait_for_async(1, timeout=10)
    [sent] = sink.messages
    assert sent.rcpt_tos == [KEPT]
    await reaches(svc, message_id, "deferred")
    gone = "SELECT status FROM recipient WHERE message_id = :id AND email = :email"
    found = await svc.db.read(
        lambda conn: conn.execute(text(gone), {"id": message_id, "email": GONE}).scalar()
    )
    assert found == "pending"
    return message_id, sent.mail_from


async def told_once_while_pending(svc: ManagedService, sink: Sink) -> None:
    """The report makes GONE final before any attempt settles it: the report tells, once;
    the message ends bounced and GONE is never delivered, even once the upstream would take
    it. Retries run every second meanwhile, so the report may land between two attempts or
    while one is under way: either way, one notification."""
    message_id, return_path = await deferred_over_smtp(svc, sink)
    await report_back(svc, return_path)
    await reaches(svc, message_id, "bounced")
    assert await wait_until(lambda: len(notices(sink)) == 1, timeout=10)
    sink.clear()  # the upstream would take GONE now
    await report_back(svc, return_path, nonce="2")  # a second report about GONE
    await asyncio.sleep(3)  # three retry intervals: time for any attempt or second notice
    [notice] = notices(sink)
    assert notice.mail_from in ("", "<>")
    report, blocks, returned = delivery_status(notice)
    assert report["To"] == SENDER
    _, *per_recipient = blocks
    [rcpt] = per_recipient  # GONE alone: KEPT was delivered
    assert rcpt["Final-Recipient"] == f"rfc822; {GONE}"
    assert rcpt["Action"] == "failed" and rcpt["Status"] == "5.1.1"
    assert rcpt["Diagnostic-Code"] == f"smtp; {REPLY}"
    assert "Subject: Quarterly report" in returned
    assert [m for m in sink.messages if GONE in m.rcpt_tos] == []  # never delivered
    assert await stored(svc) == [("smtp", SENDER, "bounced"), ("dsn", "", "delivered")]
    rows = "SELECT email, status FROM recipient WHERE message_id = :id ORDER BY email"
    found = await svc.db.read(lambda conn: conn.execute(text(rows), {"id": message_id}).all())
    assert [tuple(row) for row in found] == [(GONE, "bounced"), (KEPT, "delivered")]


@BACKENDS
async def test_a_pending_recipient_bounced_by_a_report_is_told_once(
    tmp_path: Path, service: ServiceFactory, sink: Sink, backend: str
) -> None:
    async with storage_of(backend) as storage:
        svc = await service(make_config(tmp_path, sink, bounces=bounces(), **storage))
        await told_once_while_pending(svc, sink)
        await svc.stop()  # before its database goes


async def test_a_lapsed_claim_left_with_nothing_pending_is_settled_without_the_upstream(
    tmp_path: Path, service: ServiceFactory, sink: Sink
) -> None:
    """A node that died holding the message: the report bounces its last pending recipient
    and tells, but leaves the message to the claim. When the claim lapses, the node that
    takes the message over settles it bounced without a transaction upstream (it used to
    send MAIL FROM with no RCPT), and nobody is told again."""
    delivery = {"retry_schedule": ["1h"]}  # no retry of its own during the test
    svc = await service(make_config(tmp_path, sink, bounces=bounces(), delivery=delivery))
    message_id, return_path = await deferred_over_smtp(svc, sink)
    claim = text("UPDATE message SET claimed_by = 'node-gone', due_at = :due WHERE id = :id")
    now = time.time()
    await svc.db.transaction(
        lambda conn: conn.execute(claim, {"due": now + 3600, "id": message_id})
    )
    await report_back(svc, return_path)
    assert await wait_until(lambda: len(notices(sink)) == 1, timeout=10)
    assert (await stored(svc))[0] == ("smtp", SENDER, "deferred")  # the claim's to settle
    mails = [verb for _, verb in sink.commands].count("MAIL")
    await svc.db.transaction(lambda conn: conn.execute(claim, {"due": now, "id": message_id}))
    await reaches(svc, message_id, "bounced")
    await asyncio.sleep(1)
    assert [verb for _, verb in sink.commands].count("MAIL") == mails  # no upstream asked
    assert len(notices(sink)) == 1
    # No attempt counted for it; the dashboard keeps the last pool and shows the bounce.
    row = "SELECT attempts, last_pool, last_response FROM message WHERE id = :id"
    found = await svc.db.read(lambda conn: conn.execute(text(row), {"id": message_id}).one())
    assert found.attempts == 1 and found.last_pool is not None
    assert found.last_response == f"5.1.1 {REPLY}"


async def test_notify_sender_false_tells_nobody(
    tmp_path: Path, service: ServiceFactory, sink: Sink
) -> None:
    config = make_config(tmp_path, sink, bounces=bounces(), delivery={"notify_sender": False})
    svc = await service(config)
    message_id, return_path = await delivered_over_smtp(svc, sink)
    await report_back(svc, return_path)
    await reaches(svc, message_id, "bounced")  # the report was applied
    await asyncio.sleep(2)
    assert notices(sink) == []
    assert await stored(svc) == [("smtp", SENDER, "bounced")]


async def test_http_mail_is_told_by_webhooks_not_by_a_notification(
    api_client: Any, sink: Sink
) -> None:
    api = await api_client(bounces=bounces())
    key = await api.key()
    body = payload(to=[{"email": GONE}])
    sent = await api.http.post("/v1/send", json=body, headers=auth(key))
    assert sent.status_code == 200, sent.text
    message_id = sent.json()["message_id"]
    await reaches(api.svc, message_id, "delivered")
    [original] = sink.messages
    await report_back(api.svc, original.mail_from)
    await reaches(api.svc, message_id, "bounced")
    await asyncio.sleep(2)
    assert len(sink.messages) == 1
    assert [s for s, _, _ in await stored(api.svc)] == ["http"]
    events = f"SELECT type FROM event WHERE message_id = '{message_id}' ORDER BY id"
    found = await api.svc.db.read(lambda conn: [r[0] for r in conn.execute(text(events))])
    assert found[-1] == "bounced"  # what webhooks carry, as for any late bounce
