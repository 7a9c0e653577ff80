"""idempotency_key: the same key and API key within 24 h returns the first result with
`idempotent: true` and sends nothing more, even when the requests race; other keys and
expired reservations start afresh; the SMTP header carries the same rule.
"""

from __future__ import annotations

import asyncio
import time

import pytest
from sqlalchemy import Connection, text

from storage.idempotency import TTL, purge_expired
from tests.api.conftest import Api, payload
from tests.conftest import query, smtp_send
from tests.sink import Sink

pytestmark = pytest.mark.timeout(30)


async def test_retry_with_the_same_key_returns_the_first_result_and_sends_nothing(
    api: Api, sink: Sink
) -> None:
    key = await api.key()
    body = payload(idempotency_key="welcome-usr_abc123")
    first = await api.send(body, key=key)
    again = await api.send(body, key=key)

    assert first.status_code == again.status_code == 200
    assert again.json() == {**first.json(), "idempotent": True}
    assert "idempotent" not in first.json()
    await asyncio.sleep(0.2)
    assert len(sink.messages) == 1


async def test_ten_concurrent_requests_with_one_key_make_one_message(api: Api, sink: Sink) -> None:
    key = await api.key()
    body = payload(idempotency_key="race-1")
    responses = await asyncio.gather(*(api.send(body, key=key) for _ in range(10)))

    assert [r.status_code for r in responses] == [200] * 10
    ids = {r.json()["message_id"] for r in responses}
    assert len(ids) == 1
    assert sum(1 for r in responses if r.json().get("idempotent")) == 9
    await asyncio.sleep(0.3)
    assert len(sink.messages) == 1
    assert len(await query(api.svc, "SELECT id FROM message")) == 1


async def test_same_idempotency_key_under_two_api_keys_makes_two_messages(
    api: Api, sink: Sink
) -> None:
    body = payload(idempotency_key="shared-name")
    one = await api.send(body, key=await api.key(name="a"))
    two = await api.send(body, key=await api.key(name="b"))
    assert one.json()["message_id"] != two.json()["message_id"]
    assert "idempotent" not in two.json()
    assert len(sink.messages) == 2


async def test_a_202_is_replayed_as_202_while_the_message_waits(api: Api, sink: Sink) -> None:
    key = await api.key()
    sink.stop()
    body = payload(idempotency_key="queued-1")
    first = await api.send(body, key=key)
    again = await api.send(body, key=key)
    assert first.status_code == again.status_code == 202
    assert again.json()["message_id"] == first.json()["message_id"]
    assert again.json()["idempotent"] is True


async def test_refused_requests_do_not_use_up_the_key(api: Api, sink: Sink) -> None:
    key = await api.key()
    refused = await api.send(payload(idempotency_key="k-400", alias_id="nope"), key=key)
    assert refused.status_code == 400
    accepted = await api.send(payload(idempotency_key="k-400"), key=key)
    assert accepted.status_code == 200
    assert "idempotent" not in accepted.json()


async def test_expired_reservation_sends_again_and_purge_removes_it(api: Api, sink: Sink) -> None:
    key = await api.key()
    body = payload(idempotency_key="old-key")
    first = await api.send(body, key=key)
    old = time.time() - TTL - 60

    def age(conn: Connection) -> None:
        conn.execute(text("UPDATE idempotency SET created_at = :old"), {"old": old})

    await api.svc.db.transaction(age)
    again = await api.send(body, key=key)
    assert again.status_code == 200
    assert again.json()["message_id"] != first.json()["message_id"]
    assert "idempotent" not in again.json()
    assert len(sink.messages) == 2

    await api.svc.db.transaction(age)
    assert await purge_expired(api.svc.db) == 1
    assert await query(api.svc, "SELECT * FROM idempotency") == []


async def test_smtp_idempotency_header_accepts_once_and_answers_the_first_id(
    api: Api, sink: Sink
) -> None:
    data = (
        b"From: app@sender.test\r\nTo: rcpt@example.test\r\nSubject: once\r\n"
        b"X-Postern-Idempotency-Key: smtp-1\r\n\r\nBody\r\n"
    )
    first = await smtp_send(api.svc.smtp_port, "app@sender.test", ["rcpt@example.test"], data)
    again = await smtp_send(api.svc.smtp_port, "app@sender.test", ["rcpt@example.test"], data)
    assert first[0] == again[0] == 250
    assert first[1] == again[1]  # "... queued as msg_<the same id>"
    assert await sink.wait_for_async(1, timeout=5)
    await asyncio.sleep(0.3)
    assert len(sink.messages) == 1
    assert b"X-Postern" not in sink.messages[0].data
