"""scheduled_at on /v1/send and batch items: the message waits in the queue until then
(never claimed earlier), can be cancelled until then, and max_age counts from it. Up to 30
days ahead; further, or in the past by more than a few minutes, is a 400. Real uvicorn and
an aiosmtpd sink, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime
from typing import Any

import pytest

from api import errors
from api.routes.send import MAX_SCHEDULE, SCHEDULE_GRACE, scheduled_time
from tests.support.api import Api, ApiFactory, auth, payload
from tests.support.sink import Sink

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
async def api(api_on_both: Api) -> Api:
    return api_on_both


async def settled(api: Api, key: str, message_id: str, status: str) -> dict[str, Any]:
    """The message's state once it has `status` (the sink answers before it is recorded)."""
    for _ in range(100):
        state: dict[str, Any] = (await api.get(f"/v1/messages/{message_id}", key=key)).json()
        if state["status"] == status:
            return state
        await asyncio.sleep(0.1)
    raise AssertionError(f"{message_id} stayed {state['status']}")


def rfc3339(moment: float) -> str:
    return datetime.fromtimestamp(moment, UTC).isoformat().replace("+00:00", "Z")


async def test_a_scheduled_message_waits_until_its_time(api: Api, sink: Sink) -> None:
    key = await api.key()
    when = time.time() + 3.0
    answer = await api.send(payload(scheduled_at=rfc3339(when)), key=key)
    body = answer.json()
    assert answer.status_code == 202, body
    assert body["queued"] is True and body["scheduled_at"].endswith("Z")

    await asyncio.sleep(max(0.0, when - 1.5 - time.time()))
    state = (await api.get(f"/v1/messages/{body['message_id']}", key=key)).json()
    if time.time() < when - 0.5:  # (a loaded machine may have spent the margin answering)
        assert sink.messages == []
        assert state["status"] == "queued"
    assert state["scheduled_at"] == body["scheduled_at"]
    assert abs(datetime.fromisoformat(state["next_attempt_at"]).timestamp() - when) < 0.01

    assert await sink.wait_for_async(1, timeout=10)
    scheduled = datetime.fromisoformat(body["scheduled_at"]).timestamp()  # (the server's)
    arrived = sink.messages[0].at
    assert arrived >= scheduled, (arrived, scheduled)  # never early, however slow the machine
    await settled(api, key, body["message_id"], "delivered")


async def test_a_scheduled_message_can_be_cancelled_until_then(api: Api, sink: Sink) -> None:
    key = await api.key()
    when = time.time() + 2.0
    sent = (await api.send(payload(scheduled_at=when), key=key)).json()
    cancel = await api.http.post(f"/v1/messages/{sent['message_id']}/cancel", headers=auth(key))
    assert cancel.status_code == 200, cancel.text
    await asyncio.sleep(3.0)
    assert sink.messages == []
    state = (await api.get(f"/v1/messages/{sent['message_id']}", key=key)).json()
    assert state["status"] == "cancelled"


async def test_times_too_far_ahead_or_past_are_refused(api: Api, sink: Sink) -> None:
    key = await api.key()
    now = time.time()
    for bad in (rfc3339(now + 31 * 86400), rfc3339(now - 3600), "tomorrow", "2026-02-30"):
        answer = await api.send(payload(scheduled_at=bad), key=key)
        assert answer.status_code == 400, (bad, answer.text)
        assert answer.json()["details"][0]["field"] == "scheduled_at"
        shape = bad in ("tomorrow", "2026-02-30")
        expected = "invalid_request" if shape else "schedule_out_of_range"
        assert answer.json()["code"] == expected
    # A minute past (a client's clock) is now: sent at once.
    answer = await api.send(payload(scheduled_at=rfc3339(now - 60)), key=key)
    assert answer.status_code == 200, answer.text
    assert "scheduled_at" not in answer.json()


async def test_a_batch_item_may_be_scheduled(api: Api, sink: Sink) -> None:
    key = await api.key()
    items = [
        payload(to=[{"email": "now@example.test"}]),
        payload(to=[{"email": "later@example.test"}], scheduled_at=time.time() + 2.0),
    ]
    answer = await api.http.post("/v1/send/batch", json=items, headers=auth(key))
    body = answer.json()
    assert answer.status_code == 200, body
    assert "scheduled_at" not in body["results"][0]
    assert "scheduled_at" in body["results"][1]
    assert await sink.wait_for_async(1)
    await asyncio.sleep(0.5)
    assert [m.rcpt_tos for m in sink.messages] == [["now@example.test"]]
    assert await sink.wait_for_async(2, timeout=10)


async def test_max_age_counts_from_the_scheduled_time(api_client: ApiFactory, sink: Sink) -> None:
    """With max_age 2 s and a send scheduled 3 s ahead, a first attempt that is deferred is
    retried, not expired (it would be, counted from the time it was accepted)."""
    api = await api_client(delivery={"max_age": "2s", "retry_schedule": ["1s"]})
    key = await api.key()
    sink.fail("rcpt", "451 4.3.0 try later", times=1)
    sent = (await api.send(payload(scheduled_at=time.time() + 3.0), key=key)).json()
    assert await sink.wait_for_async(1, timeout=15)
    state = await settled(api, key, sent["message_id"], "delivered")
    assert state["attempts"] == 2


def test_scheduled_time_bounds() -> None:
    now = 1_800_000_000.0
    assert scheduled_time(None, now) is None
    assert scheduled_time(now + 60, now) == now + 60
    assert scheduled_time(now + MAX_SCHEDULE, now) == now + MAX_SCHEDULE
    assert scheduled_time(now - SCHEDULE_GRACE, now) is None
    # now is 2027-01-15T08:00:00Z: an hour later, written in another zone
    assert scheduled_time("2027-01-15T10:00:00+01:00", now) == now + 3600
    assert scheduled_time("2027-01-15 09:00", now) == now + 3600
    for bad in (now + MAX_SCHEDULE + 1, now - SCHEDULE_GRACE - 1, "soon", True):
        with pytest.raises(errors.InvalidRequest):
            scheduled_time(bad, now)
