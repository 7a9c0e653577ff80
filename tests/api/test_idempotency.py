"""idempotency_key: the same key and API key within 24 h returns the first result with
`idempotent: true` and sends nothing more, even when the requests race; other keys and
expired reservations start afresh; the SMTP header carries the same rule. The same key
with a different request is refused (409 `idempotency_key_reused`, SMTP 550 5.7.1).
"""

from __future__ import annotations

import asyncio
import json
import time
from email.message import EmailMessage
from email.policy import SMTP
from email.utils import formatdate

import pytest
from sqlalchemy import Connection, text

from gateway.queue.idempotency import TTL, purge_expired
from gateway.smtpd import replies
from tests.support.api import Api, payload
from tests.support.rows import query
from tests.support.sink import Sink
from tests.support.smtp import smtp_send

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


# --- the same key for a different request -------------------------------------------------


async def test_the_same_key_with_a_different_body_is_409_and_sends_nothing(
    api: Api, sink: Sink
) -> None:
    key = await api.key("send", "sandbox")
    first = await api.send(payload(idempotency_key="order-1"), key=key)
    assert first.status_code == 200

    for other, headers in (
        (payload(idempotency_key="order-1", subject="Another order"), {}),
        (payload(idempotency_key="order-1", to=[{"email": "someone-else@example.test"}]), {}),
        (payload(idempotency_key="order-1"), {"X-MisarMail-Sandbox": "true"}),
    ):
        reused = await api.send(other, key=key, headers=headers)
        assert reused.status_code == 409, reused.text
        body = reused.json()
        assert (body["success"], body["code"]) == (False, "idempotency_key_reused")
        assert body["details"][0]["field"] == "idempotency_key"

    # The same request, spelled differently (key order, defaults written out), is a replay.
    spelled = {"tags": [], "cc": [], **dict(reversed(payload(idempotency_key="order-1").items()))}
    again = await api.send(spelled, key=key)
    assert again.status_code == 200 and again.json()["idempotent"] is True
    assert again.json()["message_id"] == first.json()["message_id"]
    await asyncio.sleep(0.2)
    assert len(sink.messages) == 1
    assert len(await query(api.svc, "SELECT id FROM message")) == 1


async def test_a_different_request_refused_by_policy_is_409_too(api: Api, sink: Sink) -> None:
    """The reuse is found by the look-up made when policy refuses the retry, as well."""
    key = await api.key("send", "suppressions")
    assert (await api.send(payload(idempotency_key="k-policy"), key=key)).status_code == 200
    gone = {"email": "gone@example.test", "reason": "manual"}
    await api.http.post(
        "/api/v1/suppressions", json=gone, headers={"Authorization": f"Bearer {key}"}
    )
    other = payload(idempotency_key="k-policy", to=[{"email": "gone@example.test"}])
    reused = await api.send(other, key=key)
    assert (reused.status_code, reused.json()["code"]) == (409, "idempotency_key_reused")


async def test_a_reservation_from_before_request_digests_replays_any_request(
    api: Api, sink: Sink
) -> None:
    """Rows written by an older Postern (or a node not yet upgraded) have no digest: they
    answer the first result, as they did; an old saved answer's `suppressed` list is
    given under its new name."""
    key = await api.key()
    first = await api.send(payload(idempotency_key="from-v4"), key=key)
    old_answer = {**first.json(), "suppressed": ["gone@example.test"]}

    def as_written_by_v4(conn: Connection) -> None:
        conn.execute(
            text("UPDATE idempotency SET request_hash = NULL, response = :r"),
            {"r": json.dumps({"status": 200, "body": old_answer})},
        )

    await api.svc.db.transaction(as_written_by_v4)
    again = await api.send(payload(idempotency_key="from-v4", subject="changed"), key=key)
    assert again.status_code == 200
    assert again.json()["message_id"] == first.json()["message_id"]
    assert again.json()["suppressed_recipients"] == ["gone@example.test"]
    assert "suppressed" not in again.json()


def _mime(subject: str, body: str, stamp: int) -> bytes:
    """A message as a mail library builds it for each copy: a new Date, Message-ID and MIME
    boundary every time, and the body in another transfer encoding."""
    message = EmailMessage()
    message["From"] = "app@sender.test"
    message["To"] = "rcpt@example.test"
    message["Subject"] = subject
    message["Date"] = formatdate(1_700_000_000 + stamp)
    message["Message-ID"] = f"<copy-{stamp}@sender.test>"
    message["X-Postern-Idempotency-Key"] = "smtp-order-7"
    message.set_content(body, cte="quoted-printable" if stamp % 2 else "base64")
    message.add_alternative(f"<p>{body}</p>", subtype="html")
    return message.as_bytes(policy=SMTP)


async def test_smtp_the_same_key_for_another_message_is_550_and_a_rebuilt_copy_is_not(
    api: Api, sink: Sink
) -> None:
    port, sender, rcpt = api.svc.smtp_port, "app@sender.test", ["rcpt@example.test"]
    first = await smtp_send(port, sender, rcpt, _mime("Order 7", "Thanks for order 7.", 1))
    assert first[0] == 250
    rebuilt = await smtp_send(port, sender, rcpt, _mime("Order 7", "Thanks for order 7.", 2))
    assert rebuilt == first  # the same logical message: the first id, nothing sent again

    for data, recipients in (
        (_mime("Order 8", "Thanks for order 7.", 3), rcpt),
        (_mime("Order 7", "Thanks for order 8.", 4), rcpt),
        (_mime("Order 7", "Thanks for order 7.", 5), ["other@example.test"]),
    ):
        code, reply = await smtp_send(port, sender, recipients, data)
        assert (code, reply[:5]) == replies.KEY_REUSED.status, reply
        assert "X-Postern-Idempotency-Key" in reply and first[1].split()[-1] in reply
    assert await sink.wait_for_async(1, timeout=5)
    await asyncio.sleep(0.3)
    assert len(sink.messages) == 1
