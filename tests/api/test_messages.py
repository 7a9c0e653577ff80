"""GET /v1/messages/{message_id}: the SPEC's fields, per-recipient results, and a 404 for an
unknown id or another key's message (an admin key sees every message). GET /v1/messages by
the client's own Message-ID.
"""

from __future__ import annotations

import asyncio
import re

import pytest

from api.schemas import MessageContent, MessageStatus
from gateway.queue.retention import Retention
from storage.queue_sql import bodies_of
from tests.support.api import RCPT, Api, auth, payload
from tests.support.service import SINK_POOL
from tests.support.sink import Sink
from tests.support.smtp import smtp_send

pytestmark = pytest.mark.timeout(30)

TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


async def test_status_has_the_spec_fields_and_each_recipient(api: Api, sink: Sink) -> None:
    sink.fail("rcpt", "550 5.1.1 no such user", match="bad@example.test")
    key = await api.key()
    body = payload(
        to=[{"email": RCPT}, {"email": "bad@example.test"}],
        tags=["welcome"],
        metadata={"user_id": "42"},
    )
    sent = (await api.send(body, key=key)).json()

    response = await api.get(f"/v1/messages/{sent['message_id']}", key=key)

    assert response.status_code == 200
    data = response.json()
    MessageStatus.model_validate(data)  # the documented shape
    assert data["message_id"] == sent["message_id"]
    assert data["status"] == "bounced"  # one recipient refused for good
    assert data["pool"] == SINK_POOL
    assert data["attempts"] == 1
    assert data["recipients"] == [
        {"email": RCPT, "status": "delivered", "response": "250 2.0.0 OK queued"},
        {"email": "bad@example.test", "status": "bounced", "response": "550 5.1.1 no such user"},
    ]
    assert TIMESTAMP.match(data["created_at"]) and TIMESTAMP.match(data["updated_at"])
    assert data["created_at"] == sent["timestamp"]
    assert data["tags"] == ["welcome"] and data["metadata"] == {"user_id": "42"}


async def test_deferred_recipient_reads_deferred(api: Api, sink: Sink) -> None:
    sink.fail("rcpt", "451 4.3.0 try later")
    key = await api.key()
    sent = await api.send(key=key)
    assert sent.status_code == 202
    data = (await api.get(f"/v1/messages/{sent.json()['message_id']}", key=key)).json()
    assert data["status"] == "deferred"
    assert data["recipients"][0]["status"] == "deferred"
    assert data["recipients"][0]["response"] == "451 4.3.0 try later"


async def test_unknown_message_is_404(api: Api) -> None:
    key = await api.key()
    for message_id in ("msg_0000000000000000000000000", "x" * 500, "..%2F..%2Fetc"):
        response = await api.get(f"/v1/messages/{message_id}", key=key)
        assert response.status_code == 404
        assert response.json()["code"] == "not_found"


async def test_another_keys_message_is_404_but_admin_sees_it(api: Api, sink: Sink) -> None:
    owner = await api.key(name="owner")
    sent = (await api.send(key=owner)).json()
    path = f"/v1/messages/{sent['message_id']}"
    assert (await api.get(path, key=await api.key(name="stranger"))).status_code == 404
    assert (await api.get(path, key=await api.key("admin"))).status_code == 200
    assert (await api.get(path, key=None)).status_code == 401


async def _smtp_with_message_id(api: Api, header: str) -> str:
    data = f"From: app@sender.test\r\nTo: {RCPT}\r\nMessage-ID: {header}\r\n\r\nHi\r\n"
    code, text = await smtp_send(api.svc.smtp_port, "app@sender.test", [RCPT], data.encode())
    assert code == 250, text
    found = re.search(r"msg_\w+", text)
    assert found is not None
    return found.group(0)


async def test_search_by_the_clients_message_id_with_or_without_brackets(api: Api) -> None:
    wanted = await _smtp_with_message_id(api, "<Order-7@shop.example>")
    await _smtp_with_message_id(api, "<Order-8@shop.example>")
    admin = await api.key("admin")
    for value in ("<Order-7@shop.example>", "Order-7@shop.example", " <Order-7@shop.example> "):
        response = await api.get("/v1/messages", key=admin, message_id_header=value)
        assert response.status_code == 200, response.text
        assert [m["message_id"] for m in response.json()["data"]] == [wanted]
    none = await api.get("/v1/messages", key=admin, message_id_header="order-7@shop.example")
    assert none.json()["data"] == []  # compared exactly, as the Message-ID was written
    for bad in ("<>", "a\x01b"):
        refused = await api.get("/v1/messages", key=admin, message_id_header=bad)
        assert refused.status_code == 400
        assert refused.json()["details"][0]["field"] == "message_id_header"
    body = {"filter": {"message_id_header": "Order-7@shop.example"}, "dry_run": True}
    counted = await api.http.post("/v1/messages/cancel", json=body, headers=auth(admin))
    assert counted.status_code == 200 and counted.json()["dry_run"] is True  # a criterion
    spec = (await api.http.get("/openapi.json")).json()
    names = [p["name"] for p in spec["paths"]["/v1/messages"]["get"]["parameters"]]
    assert "message_id_header" in names


MIXED = (
    "From: app@sender.test\r\nTo: {rcpt}\r\nSubject: =?utf-8?q?Caf=C3=A9?= report\r\n"
    "Message-ID: <cat-1@sender.test>\r\nMIME-Version: 1.0\r\n"
    'Content-Type: multipart/mixed; boundary="b1"\r\n\r\n'
    '--b1\r\nContent-Type: multipart/alternative; boundary="b2"\r\n\r\n'
    "--b2\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nHello text\r\n"
    "--b2\r\nContent-Type: text/html; charset=utf-8\r\n\r\n<p>Hello html</p>\r\n--b2--\r\n"
    "--b1\r\nContent-Type: image/png\r\nContent-ID: <logo@x>\r\n"
    'Content-Disposition: inline; filename="logo.png"\r\n'
    "Content-Transfer-Encoding: base64\r\n\r\nAAECAwQ=\r\n--b1--\r\n"
)


async def _until_status(api: Api, key: str, message_id: str, status: str) -> None:
    for _ in range(100):  # bounded: 10 s
        answer = await api.get(f"/v1/messages/{message_id}", key=key)
        if answer.json()["status"] == status:
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"{message_id} never became {status}")


async def _stored_body(api: Api, message_id: str) -> bytes:
    rows = await api.svc.db.read(lambda conn: bodies_of(conn, [message_id]))
    return bytes(rows[message_id])


async def test_raw_and_content_of_a_message_with_work_left(api: Api, sink: Sink) -> None:
    sink.fail("rcpt", "451 4.3.0 try later")  # deferred: its body is kept
    data = MIXED.format(rcpt=RCPT).encode()
    code, text = await smtp_send(api.svc.smtp_port, "app@sender.test", [RCPT], data)
    assert code == 250, text
    found = re.search(r"msg_\w+", text)
    assert found is not None
    message_id, admin = found.group(0), await api.key("admin")

    raw = await api.get(f"/v1/messages/{message_id}/raw", key=admin)
    assert raw.status_code == 200, raw.text
    assert raw.headers["content-type"] == "message/rfc822"
    assert raw.content == await _stored_body(api, message_id)
    assert raw.content.endswith(data.split(b"\r\n\r\n", 1)[1])  # the body as sent

    content = await api.get(f"/v1/messages/{message_id}/content", key=admin)
    assert content.status_code == 200, content.text
    shown = content.json()
    MessageContent.model_validate(shown)  # the documented shape
    assert ["Subject", "Café report"] in shown["headers"]
    assert shown["text"] == "Hello text" and shown["html"] == "<p>Hello html</p>"
    assert shown["attachments"] == [
        {"filename": "logo.png", "content_type": "image/png", "size": 5, "content_id": "logo@x"}
    ]
    assert shown["truncated"] is False


async def test_raw_and_content_are_404_for_another_and_410_once_the_body_is_gone(
    api: Api, sink: Sink
) -> None:
    owner, stranger = await api.key(name="owner"), await api.key(name="stranger")
    sink.fail("rcpt", "451 4.3.0 try later", match="later@example.test")
    later = payload(to=[{"email": "later@example.test"}])
    kept = (await api.send(later, key=owner)).json()["message_id"]
    delivered = (await api.send(key=owner)).json()["message_id"]  # final: body_retention on
    await _until_status(api, owner, delivered, "delivered")
    kept_after = await api.get(f"/v1/messages/{delivered}/raw", key=owner)
    assert kept_after.status_code == 200  # a final message's body stays for body_retention
    assert await Retention(api.svc.writer, keep=3600, body_keep=0).sweep_bodies() == 1
    for part in ("raw", "content"):
        assert (await api.get(f"/v1/messages/{kept}/{part}", key=owner)).status_code == 200
        hidden = await api.get(f"/v1/messages/{kept}/{part}", key=stranger)
        assert hidden.status_code == 404 and hidden.json()["code"] == "not_found"
        gone = await api.get(f"/v1/messages/{delivered}/{part}", key=owner)
        assert gone.status_code == 410 and gone.json()["code"] == "body_gone"
        assert "gone" in gone.json()["error"]
        missing = await api.get(f"/v1/messages/msg_nope/{part}", key=owner)
        assert missing.json()["code"] == "not_found"
    spec = (await api.http.get("/openapi.json")).json()["paths"]
    assert "get" in spec["/v1/messages/{message_id}/raw"]
    assert "get" in spec["/v1/messages/{message_id}/content"]
