"""Hold and release (postsuper -h/-H) over HTTP, through a real Service on loopback in front
of a real sink: a held message is never delivered, survives a restart and its max_age, is
found by `status=held`, refuses a retry, and is delivered once released; another key's
message is a 404; the bulk forms take the filters and a dry run; a webhook asking for
`held` and `released` gets them, signed."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from sqlalchemy import Connection, update

from api.schemas import BulkResult, MessageStatus
from storage.models import Message
from tests.support.api import Api, ApiFactory, auth, payload
from tests.support.service import wait_until
from tests.support.sink import Sink
from tests.support.webhook_receiver import Receiver

pytestmark = pytest.mark.timeout(90)

M = Message
# A deferral waits an hour, so nothing but a retry or a release brings the mail back; and
# max_age is a minute, which the test moves the message past.
LATER = {"delivery": {"retry_schedule": ["1h"], "handoff_timeout": "3s", "max_age": "60s"}}


async def _post(api: Api, path: str, key: str, body: Any = None) -> Any:
    return await api.http.post(path, headers=auth(key), json=body)


async def _deferred(api: Api, key: str, sink: Sink, **fields: Any) -> str:
    sink.fail("rcpt", "451 4.3.0 try later")
    sent = await api.send(payload(**fields), key=key)
    assert sent.status_code == 202, sent.text
    return str(sent.json()["message_id"])


async def test_a_held_message_survives_a_restart_and_max_age_then_is_delivered_on_release(
    api_client: ApiFactory, sink: Sink
) -> None:
    api = await api_client(**LATER)
    key = await api.key()
    message_id = await _deferred(api, key, sink)
    path = f"/v1/messages/{message_id}"

    held = await _post(api, f"{path}/hold", key)
    assert held.status_code == 200, held.text
    assert held.json() == {"message_id": message_id, "status": "held"}
    status = (await api.get(path, key=key)).json()
    MessageStatus.model_validate(status)
    assert status["status"] == "held" and status["next_attempt_at"] is None
    assert [e["type"] for e in status["events"]] == ["queued", "deferred", "held"]
    listed = (await api.get("/v1/messages", key=key, status="held")).json()["data"]
    assert [m["message_id"] for m in listed] == [message_id]

    retried = await _post(api, f"{path}/retry", key)
    assert retried.status_code == 409 and retried.json()["code"] == "message_held"
    again = await _post(api, f"{path}/hold", key)
    assert again.status_code == 409 and again.json()["code"] == "message_held"

    # Accepted two minutes ago (max_age is one): only its time held keeps it alive.
    now = time.time()

    def age(conn: Connection) -> None:
        conn.execute(
            update(M).where(M.c.id == message_id).values(created_at=now - 120, held_at=now - 110)
        )

    await api.svc.db.transaction(age)
    sink.clear()
    await api.svc.stop()
    api = await api_client(**LATER)  # the same data_dir: a restart
    await asyncio.sleep(1.5)  # pollers ran: a held message is not theirs
    assert sink.messages == []
    assert (await api.get(path, key=key)).json()["status"] == "held"

    released = await _post(api, f"{path}/release", key)
    assert released.status_code == 200, released.text
    assert released.json() == {"message_id": message_id, "status": "deferred"}

    async def delivered() -> bool:
        return bool((await api.get(path, key=key)).json()["status"] == "delivered")

    assert await wait_until(delivered, timeout=10)
    final = (await api.get(path, key=key)).json()
    assert [e["type"] for e in final["events"]] == [
        "queued", "deferred", "held", "released", "delivered"
    ]  # fmt: skip
    assert len(sink.messages) == 1
    not_held = await _post(api, f"{path}/release", key)
    assert not_held.status_code == 409 and not_held.json()["code"] == "message_final"


async def test_release_of_a_message_not_held_is_409_and_another_keys_is_404(
    api_client: ApiFactory, sink: Sink
) -> None:
    api = await api_client(**LATER)
    key = await api.key()
    stranger = await api.key(name="stranger")
    message_id = await _deferred(api, key, sink)
    path = f"/v1/messages/{message_id}"
    refused = await _post(api, f"{path}/release", key)
    assert refused.status_code == 409 and refused.json()["code"] == "message_not_held"
    for action in ("hold", "release"):
        hidden = await _post(api, f"{path}/{action}", stranger)
        assert hidden.status_code == 404, hidden.text
    assert (await api.get(path, key=key)).json()["status"] == "deferred"


async def test_bulk_hold_and_release_with_filters_and_dry_run(
    api_client: ApiFactory, sink: Sink
) -> None:
    api = await api_client(**LATER)
    key = await api.key()
    ids = [await _deferred(api, key, sink, tags=["bulk"]) for _ in range(3)]
    other = await _deferred(api, key, sink, tags=["keep"])
    chosen = {"filter": {"tag": "bulk"}}

    dry = await _post(api, "/v1/messages/hold", key, {**chosen, "dry_run": True})
    assert dry.status_code == 200, dry.text
    BulkResult.model_validate(dry.json())
    assert dry.json() == {"matched": 3, "held": 0, "busy": 0, "dry_run": True}
    done = (await _post(api, "/v1/messages/hold", key, chosen)).json()
    assert done == {"matched": 3, "held": 3, "busy": 0, "dry_run": False}
    held = (await api.get("/v1/messages", key=key, status="held")).json()["data"]
    assert sorted(m["message_id"] for m in held) == sorted(ids)
    assert (await api.get(f"/v1/messages/{other}", key=key)).json()["status"] == "deferred"

    dry = (await _post(api, "/v1/messages/release", key, {**chosen, "dry_run": True})).json()
    assert dry == {"matched": 3, "released": 0, "busy": 0, "dry_run": True}
    sink.clear()
    done = (await _post(api, "/v1/messages/release", key, {"filter": {"all": True}})).json()
    assert done == {"matched": 3, "released": 3, "busy": 0, "dry_run": False}
    assert await sink.wait_for_async(3, timeout=10)
    await asyncio.sleep(0.5)
    assert len(sink.messages) == 3  # the other one waits its hour: not released, not retried

    whole = await _post(api, "/v1/messages/hold", key, {"filter": {}})
    assert whole.status_code == 400 and whole.json()["code"] == "invalid_request"


async def test_a_webhook_gets_the_held_and_released_events(
    api_client: ApiFactory, sink: Sink
) -> None:
    receiver = await Receiver().start()
    try:
        api = await api_client(**LATER, webhooks={"allow_private": True})
        key = await api.key("send", "webhooks")
        made = await _post(
            api, "/api/v1/webhooks", key,
            {"url": receiver.url, "event_types": ["held", "released"]},
        )  # fmt: skip
        assert made.status_code == 201, made.text
        hook = made.json()["webhook"]
        receiver.secrets[hook["id"]] = hook["secret"]
        message_id = await _deferred(api, key, sink)
        assert (await _post(api, f"/v1/messages/{message_id}/hold", key)).status_code == 200
        assert (await _post(api, f"/v1/messages/{message_id}/release", key)).status_code == 200
        assert await wait_until(lambda: len(receiver.events) >= 2, timeout=10)
        got = [(e["type"], e["message_id"], e["recipient"]) for e in receiver.events]
        assert got == [
            ("held", message_id, "rcpt@example.test"),
            ("released", message_id, "rcpt@example.test"),
        ]
    finally:
        await receiver.stop()
