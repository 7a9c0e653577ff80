"""Sandbox sends: `X-MisarMail-Sandbox: true` (or `X-Postern-Sandbox`) needs scope `sandbox`,
stores the message with provider `sandbox` and an id `sandbox_msg_...`, delivers nothing,
and counts against the key's rate limit. The SMTP header does the same.
"""

from __future__ import annotations

import asyncio
import re

import pytest

from tests.support.api import Api, ApiFactory, payload
from tests.support.rows import message_row
from tests.support.sink import Sink
from tests.support.smtp import smtp_send

pytestmark = pytest.mark.timeout(30)

SANDBOX_ID = re.compile(r"^sandbox_msg_[0-9a-f]+$")


@pytest.mark.parametrize("header", ["X-MisarMail-Sandbox", "X-Postern-Sandbox"])
async def test_sandbox_send_is_stored_and_never_delivered(
    api: Api, sink: Sink, header: str
) -> None:
    key = await api.key("sandbox")
    response = await api.send(key=key, headers={header: "true"})

    assert response.status_code == 200, response.text
    data = response.json()
    assert data["success"] is True
    assert data["provider"] == "sandbox"
    assert SANDBOX_ID.match(data["message_id"])
    row = await message_row(api.svc, data["message_id"])
    assert row is not None and row["status"] == "sandbox" and row["due_at"] is None
    status = (await api.get(f"/v1/messages/{data['message_id']}", key=key)).json()
    assert status["status"] == "sandbox" and status["provider"] == "sandbox"
    assert status["recipients"][0]["status"] == "sandbox"
    await asyncio.sleep(0.3)
    assert sink.messages == [] and sink.connections_total == 0


async def test_sandbox_needs_the_sandbox_scope(api: Api, sink: Sink) -> None:
    response = await api.send(key=await api.key("send"), headers={"X-MisarMail-Sandbox": "true"})
    assert response.status_code == 403
    assert response.json()["code"] == "forbidden"


async def test_sandbox_only_key_cannot_send_for_real(api: Api) -> None:
    response = await api.send(key=await api.key("sandbox"))
    assert response.status_code == 403


async def test_sandbox_header_must_be_true_or_false(api: Api) -> None:
    key = await api.key("send", "sandbox")
    response = await api.send(key=key, headers={"X-MisarMail-Sandbox": "yes"})
    assert response.status_code == 400
    off = await api.send(key=key, headers={"X-Postern-Sandbox": "false"})
    assert off.status_code == 200 and off.json()["provider"] == "smtp"


async def test_sandbox_still_applies_suppression_and_routing(api: Api) -> None:
    key = await api.key("sandbox")
    headers = {"X-MisarMail-Sandbox": "true"}
    assert (await api.send(payload(alias_id="nope"), key=key, headers=headers)).status_code == 400


async def test_sandbox_sends_count_against_the_rate_limit(api_client: ApiFactory) -> None:
    api = await api_client(http={"rate_limit": "3/m"})
    key = await api.key("sandbox")
    codes = [
        (await api.send(key=key, headers={"X-MisarMail-Sandbox": "true"})).status_code
        for _ in range(4)
    ]
    assert codes == [200, 200, 200, 429]


async def test_smtp_sandbox_header_stores_without_delivering(api: Api, sink: Sink) -> None:
    data = (
        b"From: app@sender.test\r\nTo: rcpt@example.test\r\nSubject: s\r\n"
        b"X-Postern-Sandbox: true\r\nX-Postern-Tags: ci, smoke\r\n\r\nBody\r\n"
    )
    code, text = await smtp_send(api.svc.smtp_port, "app@sender.test", ["rcpt@example.test"], data)
    assert code == 250
    message_id = text.rsplit(" ", 1)[-1]
    assert SANDBOX_ID.match(message_id)
    row = await message_row(api.svc, message_id)
    assert row is not None and row["status"] == "sandbox"
    status = (await api.get(f"/v1/messages/{message_id}", key=await api.key("admin"))).json()
    assert status["tags"] == ["ci", "smoke"] and status["provider"] == "sandbox"
    await asyncio.sleep(0.3)
    assert sink.messages == []
