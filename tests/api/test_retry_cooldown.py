"""An operator's retry behaves like `postqueue -f`, through POST /v1/messages/{id}/retry and
the bulk POST /v1/messages/retry on a real Service in front of a real sink:

- it ends the cool-down the message's pool was in (three failures in a row), so the retried
  message goes at once instead of waiting for it;
- its attempt counts, but a failure of it takes no step of retry_schedule (`1h`, then
  `3h`: a failed retry waits the hour again);
- a retried message whose pool went back to cooling down since the retry (it failed again
  meanwhile) waits for the cool-down with no attempt counted, then goes.

One delivery worker, so that the messages go one after another and the pool's failures
add up in a known order.
"""

from __future__ import annotations

import time
from datetime import datetime
from typing import Any

import pytest

from tests.support.api import Api, ApiFactory, auth
from tests.support.service import SINK_POOL, wait_until
from tests.support.sink import Sink

pytestmark = pytest.mark.timeout(90)

CONFIG = {"delivery": {"retry_schedule": ["1h", "3h"], "handoff_timeout": "3s", "workers": 1}}
COOLING = "every pool of this route is cooling down"


def seconds(iso: str) -> float:
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


async def status(api: Api, key: str, message_id: str) -> dict[str, Any]:
    response = await api.get(f"/v1/messages/{message_id}", key=key)
    assert response.status_code == 200, response.text
    return dict(response.json())


async def send_while_down(api: Api, key: str, count: int) -> list[str]:
    """`count` messages, each attempted once against a sink that refuses connections: the
    first three failures put the pool in a cool-down, the messages after it meet it."""
    ids = []
    for _ in range(count):
        sent = await api.send(key=key)
        assert sent.status_code == 202, sent.text
        ids.append(sent.json()["message_id"])
    for message_id in ids:
        state = await status(api, key, message_id)
        assert state["status"] == "deferred" and state["attempts"] == 1, state
    return ids


async def test_a_retry_ends_the_pools_cool_down(api_client: ApiFactory, sink: Sink) -> None:
    api = await api_client(**CONFIG)
    key = await api.key("admin")
    sink.stop()
    first, *_, cooled = await send_while_down(api, key, 4)
    assert COOLING in (await status(api, key, cooled))["last_response"]  # the pool is cooling
    sink.start()  # the upstream is back, the cool-down has seconds to run

    retried = await api.http.post(f"/v1/messages/{first}/retry", headers=auth(key))
    assert retried.status_code == 200, retried.text

    async def delivered() -> bool:
        return (await status(api, key, first))["status"] == "delivered"

    assert await wait_until(delivered, timeout=5)  # not after the cool-down: at once
    final = await status(api, key, first)
    assert final["attempts"] == 2
    assert [e["type"] for e in final["events"]] == ["queued", "deferred", "delivered"]
    assert (await status(api, key, cooled))["status"] == "deferred"  # not retried: waits 1 h
    fresh = await api.send(key=key)  # the pool is healthy again for every message
    assert fresh.status_code == 200, fresh.text


async def test_a_bulk_retry_while_the_upstream_is_still_down(
    api_client: ApiFactory, sink: Sink
) -> None:
    api = await api_client(**CONFIG)
    key = await api.key("admin")
    sink.stop()
    ids = await send_while_down(api, key, 6)

    retried = await api.http.post(
        "/v1/messages/retry", headers=auth(key), json={"filter": {"status": "deferred"}}
    )
    assert retried.json() == {"matched": 6, "retried": 6, "busy": 0, "dry_run": False}

    async def settled() -> list[dict[str, Any]] | None:
        states = [await status(api, key, message_id) for message_id in ids]
        done = all(s["next_attempt_at"] is not None and s["last_response"] for s in states)
        waiting = [s for s in states if s["last_response"].startswith("waiting:")]
        return states if done and len(waiting) == 3 else None

    states = await wait_until(settled, timeout=10)
    assert states, [await status(api, key, m) for m in ids]
    now = time.time()
    # The retry forgave the failures from before it: three messages were tried again, and
    # failed, which put the pool back in a cool-down. Each counts its attempt, but waits the
    # first step again (1 h), not the second (3 h).
    tried = [s for s in states if s["attempts"] == 2]
    assert len(tried) == 3, states
    for state in tried:
        assert "waiting" not in state["last_response"]
        assert now + 3000 < seconds(state["next_attempt_at"]) < now + 4000
    # The other three met the new cool-down: they wait for it, with no attempt counted.
    waiting = [s for s in states if s["attempts"] == 1]
    assert len(waiting) == 3, states
    for state in waiting:
        assert state["status"] == "deferred"
        assert state["last_response"].startswith(f"waiting: pool {SINK_POOL} cooling down")
        assert seconds(state["next_attempt_at"]) < now + 60
        assert state["events"][-1]["type"] == "deferred"
        assert state["events"][-1]["attempt"] == 1

    sink.start()
    waiting_ids = [s["message_id"] for s in waiting]

    async def all_delivered() -> bool:
        return all([(await status(api, key, m))["status"] == "delivered" for m in waiting_ids])

    assert await wait_until(all_delivered, timeout=30)  # once the cool-down (10 s) is over
    for message_id in waiting_ids:
        assert (await status(api, key, message_id))["attempts"] == 2
