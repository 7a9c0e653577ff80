"""[storage] body_retention: a final message's stored body stays that long (7 days by
default), then the retention sweep deletes it while the message's status, recipients and
events stay until [storage] retention; /raw and /content then answer 410 body_gone. A
message with work left keeps its body however old. Real uvicorn and an aiosmtpd sink, on
SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from gateway.config import StorageConfig
from gateway.queue.retention import Retention
from tests.support.api import Api, auth, payload
from tests.support.sink import Sink

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
async def api(api_on_both: Api) -> Api:
    return api_on_both


async def status_of(api: Api, key: str, message_id: str, status: str) -> dict[str, Any]:
    for _ in range(100):
        state: dict[str, Any] = (await api.get(f"/v1/messages/{message_id}", key=key)).json()
        if state["status"] == status:
            return state
        await asyncio.sleep(0.1)
    raise AssertionError(f"{message_id} stayed {state['status']}")


def test_the_default_is_seven_days() -> None:
    assert StorageConfig().body_retention == 7 * 86400


async def test_bodies_of_final_messages_go_after_body_retention_and_the_rest_stays(
    api: Api, sink: Sink
) -> None:
    key = await api.key()
    sink.fail("rcpt", "451 4.3.0 try later", match="later@example.test")
    delivered = (await api.send(key=key)).json()["message_id"]
    waiting = (await api.send(payload(to=[{"email": "later@example.test"}]), key=key)).json()
    other = (await api.send(payload(to=[{"email": "c@example.test"}]), key=key)).json()
    await status_of(api, key, delivered, "delivered")
    await status_of(api, key, other["message_id"], "delivered")
    for message_id in (delivered, waiting["message_id"], other["message_id"]):
        raw = await api.get(f"/v1/messages/{message_id}/raw", key=key)
        assert raw.status_code == 200 and b"Subject: Hello" in raw.content

    writer = api.svc.writer
    assert writer is not None
    assert await Retention(writer, keep=30 * 86400).sweep_bodies() == 0  # not 7 days old
    assert await Retention(writer, keep=30 * 86400, body_keep=0).sweep_bodies() == 2

    for part in ("raw", "content"):
        gone = await api.get(f"/v1/messages/{delivered}/{part}", key=key)
        assert gone.status_code == 410, gone.text
        assert gone.json()["code"] == "body_gone" and "body_retention" in gone.json()["error"]
    state = await status_of(api, key, delivered, "delivered")
    assert state["recipients"][0]["status"] == "delivered" and state["events"]
    still = await api.get(f"/v1/messages/{waiting['message_id']}/raw", key=key)
    assert still.status_code == 200  # work left: never swept


async def test_a_cancelled_message_keeps_its_body_until_the_sweep(api: Api, sink: Sink) -> None:
    key = await api.key()
    sent = (await api.send(payload(scheduled_at=time.time() + 60), key=key)).json()
    cancel = await api.http.post(f"/v1/messages/{sent['message_id']}/cancel", headers=auth(key))
    assert cancel.status_code == 200, cancel.text
    raw = await api.get(f"/v1/messages/{sent['message_id']}/raw", key=key)
    assert raw.status_code == 200
    writer = api.svc.writer
    assert writer is not None
    assert await Retention(writer, keep=30 * 86400, body_keep=0).sweep_bodies() == 1
    gone = await api.get(f"/v1/messages/{sent['message_id']}/raw", key=key)
    assert gone.status_code == 410
