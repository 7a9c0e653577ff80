"""GET /v1/messages/{message_id}: the SPEC's fields, per-recipient results, and a 404 for an
unknown id or another key's message (an admin key sees every message). GET /v1/messages by
the client's own Message-ID.
"""

from __future__ import annotations

import re

import pytest

from api.schemas import MessageStatus
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
