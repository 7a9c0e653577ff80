"""Signed webhooks end to end: a real Service, a real upstream sink and a real HTTP receiver
(tests/support/webhook_receiver.py) on loopback, which `[webhooks] allow_private` lets through."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from gateway.queue import events
from gateway.webhooks.sender import WebhookSender
from gateway.webhooks.signing import new_secret, seal
from storage.webhooks import create_webhook
from tests.support.api import Api, ApiFactory, auth, payload
from tests.support.rows import query
from tests.support.service import metric, wait_until
from tests.support.sink import Sink
from tests.support.smtp import smtp_send
from tests.support.webhook_receiver import Receiver

MESSAGE = b"From: app@sender.test\r\nTo: r@example.test\r\nSubject: hi\r\n\r\nbody\r\n"


@pytest.fixture(autouse=True)
def quick_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(WebhookSender, "schedule", (0.3,))


@pytest.fixture
async def api(api_client: ApiFactory) -> Api:
    """The receiver is on loopback: these tests opt in to private webhook addresses."""
    return await api_client(webhooks={"allow_private": True})


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    running = await Receiver().start()
    try:
        yield running
    finally:
        await running.stop()


async def make_hook(api: Api, key: str, receiver: Receiver, **fields: Any) -> dict[str, Any]:
    response = await api.http.post(
        "/api/v1/webhooks", json={"url": receiver.url, **fields}, headers=auth(key)
    )
    assert response.status_code == 201, response.text
    hook: dict[str, Any] = response.json()["webhook"]
    receiver.secrets[hook["id"]] = hook["secret"]
    return hook


async def stored_events(api: Api, since_id: int = 0) -> list[dict[str, Any]]:
    return await query(api.svc, "SELECT * FROM event WHERE id > ? ORDER BY id", since_id)


async def test_signed_events_arrive_with_tags_and_metadata(api: Api, receiver: Receiver) -> None:
    key = await api.key("send", "webhooks")
    hook = await make_hook(api, key, receiver)
    assert hook["secret"].startswith("whsec_") and hook["event_types"] is None
    before = metric("postern_webhook_deliveries_total", status="delivered")
    body = payload(tags=["welcome"], metadata={"user": "42"})
    sent = await api.send(body, key=key)
    assert sent.status_code == 200, sent.text
    message_id = sent.json()["message_id"]

    def arrived() -> list[str]:
        return [e["type"] for e in receiver.events if e["message_id"] == message_id]

    assert await wait_until(lambda: "delivered" in arrived(), timeout=10)
    assert arrived() == ["queued", "delivered"]  # in order
    event = receiver.events[-1]
    assert event["tags"] == ["welcome"] and event["metadata"] == {"user": "42"}
    assert event["recipient"] == "rcpt@example.test" and event["id"].startswith("evt_")
    assert event["response"]["code"] == 250
    assert receiver.bad_signatures == 0
    headers = receiver.requests[-1]
    assert headers["postern-webhook-id"] == hook["id"]
    assert headers["content-type"] == "application/json"
    assert headers["postern-signature"].startswith("t=")
    delivered = lambda: metric("postern_webhook_deliveries_total", status="delivered")  # noqa: E731
    assert await wait_until(lambda: delivered() >= before + 2)  # counted after the commit


async def test_receiver_down_then_up_loses_nothing(api: Api, receiver: Receiver) -> None:
    key = await api.key("webhooks")
    await make_hook(api, key, receiver)
    await receiver.stop()
    for n in range(15):
        code, _ = await smtp_send(api.svc.smtp_port, "app@sender.test", [f"r{n}@x.test"], MESSAGE)
        assert code == 250
    hook_id = next(iter(receiver.secrets))

    async def failures() -> bool:
        rows = await query(api.svc, "SELECT failures FROM webhook WHERE id = ?", hook_id)
        return rows[0]["failures"] >= 2

    assert await wait_until(failures, timeout=10)
    assert receiver.events == []
    await receiver.start()  # same port

    async def all_recorded() -> set[str]:  # queued + delivered for each message
        found = {f"evt_{row['id']}" for row in await stored_events(api)}
        return found if len(found) == 30 else set()

    expected = await wait_until(all_recorded, timeout=10)
    assert len(expected) == 30
    assert await wait_until(lambda: set(receiver.ids()) >= expected, timeout=15)
    assert len(receiver.ids()) == len(set(receiver.ids()))

    async def attempts_now() -> list[dict[str, Any]]:
        response = await api.get(f"/api/v1/webhooks/{hook_id}/deliveries", key=key)
        return list(response.json()["deliveries"])

    # The receiver holds the events before the sender has recorded its POST: wait for that.
    assert await wait_until(lambda: _outcomes(attempts_now(), "delivered", 1), timeout=10)
    attempts = await attempts_now()
    assert attempts[0]["outcome"] == "delivered" and attempts[0]["status_code"] == 200
    failed = [a for a in attempts if a["outcome"] == "failed"]
    assert failed and failed[0]["status_code"] is None and failed[0]["error"]


async def test_final_only_gets_one_event_per_recipient(
    api: Api, receiver: Receiver, sink: Sink
) -> None:
    key = await api.key("send", "webhooks")
    await make_hook(api, key, receiver, final_only=True)
    sink.fail("rcpt", "451 4.3.0 try later", times=1, match="slow@example.test")
    sink.fail("rcpt", "550 5.1.1 no such user", match="gone@example.test")
    rcpts = ["a@example.test", "slow@example.test", "gone@example.test"]
    body = payload(to=[{"email": r} for r in rcpts])
    sent = await api.send(body, key=key)
    message_id = sent.json()["message_id"]

    def mine() -> list[dict[str, Any]]:
        return [e for e in receiver.events if e["message_id"] == message_id]

    assert await wait_until(lambda: len(mine()) >= 3, timeout=15)
    await wait_until(lambda: len(mine()) > 3, timeout=1.0)  # nothing more comes
    outcome = {e["recipient"]: e["type"] for e in mine()}
    assert len(mine()) == 3
    assert outcome == {
        "a@example.test": "delivered",
        "slow@example.test": "delivered",
        "gone@example.test": "bounced",
    }


async def test_event_type_filter_and_replay_since(api: Api, receiver: Receiver) -> None:
    key = await api.key("send", "webhooks")
    hook = await make_hook(api, key, receiver, event_types=["delivered"])
    started = time.time()
    for _ in range(3):
        assert (await api.send(key=key)).status_code == 200
    assert await wait_until(lambda: len(receiver.events) >= 3, timeout=10)
    assert {e["type"] for e in receiver.events} == {"delivered"}
    first = list(receiver.ids())
    replay = await api.http.post(
        f"/api/v1/webhooks/{hook['id']}/replay",
        json={"since": started - 1},
        headers=auth(key),
    )
    assert replay.status_code == 202, replay.text
    assert replay.json()["queued"] == 3
    assert await wait_until(lambda: len(receiver.events) >= 6, timeout=10)
    assert receiver.ids()[3:] == first  # the same ids, in order
    future = await api.http.post(
        f"/api/v1/webhooks/{hook['id']}/replay",
        json={"since": "2999-01-01T00:00:00Z"},
        headers=auth(key),
    )
    assert future.json()["queued"] == 0


async def test_failing_receiver_is_retried_and_shown(api: Api, receiver: Receiver) -> None:
    key = await api.key("send", "webhooks")
    hook = await make_hook(api, key, receiver)
    receiver.status = 500
    assert (await api.send(key=key)).status_code == 200

    async def attempts() -> list[dict[str, Any]]:
        response = await api.get(f"/api/v1/webhooks/{hook['id']}/deliveries", key=key)
        return list(response.json()["deliveries"])

    assert await wait_until(lambda: _outcomes(attempts(), "failed", 2), timeout=10)
    shown = await api.get(f"/api/v1/webhooks/{hook['id']}", key=key)
    assert shown.json()["webhook"]["failures"] >= 1
    receiver.status = 200
    assert await wait_until(lambda: len(receiver.events) >= 2, timeout=10)
    # The receiver has the events before the sender has recorded its POST: wait for that.
    assert await wait_until(lambda: _outcomes(attempts(), "delivered", 1), timeout=10)
    rows = await attempts()
    assert rows[0]["status_code"] == 200 and rows[0]["events"] >= 1
    failed = [r for r in rows if r["outcome"] == "failed"]
    assert failed[0]["status_code"] == 500 and failed[0]["duration_ms"] >= 0
    limited = await api.get(f"/api/v1/webhooks/{hook['id']}/deliveries", key=key, limit="1")
    assert len(limited.json()["deliveries"]) == 1


async def test_events_past_max_age_are_dropped_and_counted(api: Api, receiver: Receiver) -> None:
    """A receiver down longer than max_age: what is older is skipped (one `dropped`
    attempt with their number), what is younger still arrives."""
    key = await api.key("send", "webhooks")
    hook = await make_hook(api, key, receiver)
    receiver.status = 500
    old = time.time() - 3 * 86400 - 60
    rows = [events.row("delivered", f"msg_old{n}", "delivered", old, "r@x.test") for n in range(3)]
    await api.svc.db.transaction(lambda conn: conn.execute(events.INSERT_EVENT, rows))
    sent = await api.send(key=key)
    assert sent.status_code == 200, sent.text
    before = metric("postern_webhook_deliveries_total", status="dropped")
    receiver.status = 200
    message_id = sent.json()["message_id"]
    assert await wait_until(
        lambda: {e["message_id"] for e in receiver.events} == {message_id}, timeout=10
    )
    shown = await api.get(f"/api/v1/webhooks/{hook['id']}/deliveries", key=key)
    dropped = [r for r in shown.json()["deliveries"] if r["outcome"] == "dropped"]
    assert [r["events"] for r in dropped] == [3]
    assert metric("postern_webhook_deliveries_total", status="dropped") == before + 3


async def test_replay_sends_events_older_than_max_age_again(api: Api, receiver: Receiver) -> None:
    """What max_age dropped, a replay sends: the replay is what counts as new."""
    key = await api.key("send", "webhooks")
    hook = await make_hook(api, key, receiver)
    old = time.time() - 4 * 86400
    rows = [events.row("delivered", f"msg_old{n}", "delivered", old, "r@x.test") for n in range(2)]
    await api.svc.db.transaction(lambda conn: conn.execute(events.INSERT_EVENT, rows))
    path = f"/api/v1/webhooks/{hook['id']}"

    async def dropped() -> bool:
        shown = await api.get(path + "/deliveries", key=key)
        return any(r["outcome"] == "dropped" for r in shown.json()["deliveries"])

    assert await wait_until(dropped, timeout=10)
    assert receiver.events == []
    replay = await api.http.post(path + "/replay", json={"since": old - 60}, headers=auth(key))
    assert replay.status_code == 202 and replay.json()["queued"] == 2, replay.text
    assert await wait_until(lambda: len(receiver.events) == 2, timeout=10)
    assert {e["message_id"] for e in receiver.events} == {"msg_old0", "msg_old1"}

    off = await api.http.patch(path, json={"is_active": False}, headers=auth(key))
    assert off.status_code == 200
    refused = await api.http.post(path + "/replay", json={"since": 0}, headers=auth(key))
    assert refused.status_code == 409 and refused.json()["code"] == "webhook_inactive"


async def test_a_stream_of_events_goes_out_in_a_few_large_posts(
    api: Api, receiver: Receiver
) -> None:
    """At most one POST of a partial batch per linger (0.5 s): 40 messages sent over about
    a second arrive in a handful of POSTs, not one or two per message. Checked as the gaps
    between POSTs, which do not depend on how fast a loaded machine sends the 40."""
    key = await api.key("send", "webhooks")
    await make_hook(api, key, receiver)
    for _ in range(40):
        assert (await api.send(key=key)).status_code == 200
        await asyncio.sleep(0.02)
    assert await wait_until(lambda: len(receiver.events) >= 80, timeout=15)
    gaps = [later - earlier for earlier, later in itertools.pairwise(receiver.arrivals)]
    # Every batch is partial (80 < 500); the 2% is asyncio's timer, which may fire a hair early.
    assert all(gap >= WebhookSender.linger * 0.98 for gap in gaps), gaps
    assert len(receiver.requests) < 40, len(receiver.requests)
    ids = [e["id"] for e in receiver.events]
    assert len(set(ids)) == len(ids) == 80


async def _outcomes(rows: Any, outcome: str, at_least: int) -> bool:
    return sum(r["outcome"] == outcome for r in await rows) >= at_least


@pytest.mark.parametrize(
    "url",
    [
        "http://169.254.169.254/latest/meta-data",
        "http://metadata.google.internal/",
        "http://[::ffff:169.254.169.254]/",
        "http://[fe80::1]/",
    ],
)
async def test_ssrf_refused_on_create_and_patch(api: Api, receiver: Receiver, url: str) -> None:
    key = await api.key("webhooks")
    created = await api.http.post("/api/v1/webhooks", json={"url": url}, headers=auth(key))
    assert created.status_code == 400 and created.json()["code"] == "host_not_allowed"
    hook = await make_hook(api, key, receiver)
    patched = await api.http.patch(
        f"/api/v1/webhooks/{hook['id']}", json={"url": url}, headers=auth(key)
    )
    assert patched.status_code == 400 and patched.json()["code"] == "host_not_allowed"


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:8080/hook",
        "http://localhost/",
        "http://10.1.2.3/",
        "http://192.168.0.10/",
        "http://[::1]/",
        "http://[fd00::1]/",
        "http://[::ffff:127.0.0.1]/",
    ],
)
async def test_private_receivers_are_refused_by_default(
    api_client: ApiFactory, receiver: Receiver, url: str
) -> None:
    """A key with the webhooks scope must not make Postern POST to internal services."""
    api = await api_client()  # no [webhooks] allow_private
    key = await api.key("webhooks")
    created = await api.http.post("/api/v1/webhooks", json={"url": url}, headers=auth(key))
    assert created.status_code == 400, created.text
    assert created.json()["code"] == "host_not_allowed"
    public = await api.http.post(
        "/api/v1/webhooks", json={"url": "https://192.0.1.1/hook"}, headers=auth(key)
    )
    assert public.status_code == 201, public.text
    hook_id = public.json()["webhook"]["id"]
    patched = await api.http.patch(
        f"/api/v1/webhooks/{hook_id}", json={"url": url}, headers=auth(key)
    )
    assert patched.status_code == 400 and patched.json()["code"] == "host_not_allowed"


async def test_a_stored_private_receiver_is_not_posted_to_by_default(
    api_client: ApiFactory, receiver: Receiver
) -> None:
    """A webhook made while private addresses were allowed (or by a node that allowed them):
    the check before each POST refuses it once they are not."""
    api = await api_client()
    box = api.svc.api.management().box
    record = await create_webhook(
        api.svc.db, {"url": receiver.url}, lambda hook_id: seal(box, hook_id, new_secret())
    )
    key = await api.key("send", "webhooks")
    assert (await api.send(key=key)).status_code == 200

    async def refused() -> bool:
        response = await api.get(f"/api/v1/webhooks/{record.id}/deliveries", key=key)
        rows = response.json()["deliveries"]
        return any("denied network" in (row["error"] or "") for row in rows)

    assert await wait_until(refused, timeout=10)
    assert receiver.requests == []


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"url": "ftp://example.test/"}, "url"),
        ({"url": "http://user:pw@example.test/"}, "url"),
        ({"url": "not a url"}, "url"),
        ({"url": "http://127.0.0.1/", "event_types": ["nope"]}, "event_types[0]"),
        ({"url": "http://127.0.0.1/", "event_types": []}, "event_types"),
        (
            {"url": "http://127.0.0.1/", "event_types": ["queued"], "final_only": True},
            "event_types",
        ),
        ({"url": "http://127.0.0.1/", "extra": 1}, "extra"),
        ({"url": "http://127.0.0.1/", "final_only": "yes"}, "final_only"),
        ({}, "url"),
    ],
)
async def test_create_refuses_bad_input(api: Api, body: dict[str, Any], field: str) -> None:
    key = await api.key("webhooks")
    response = await api.http.post("/api/v1/webhooks", json=body, headers=auth(key))
    assert response.status_code == 400, response.text
    assert response.json()["details"][0]["field"] == field


async def test_crud_and_errors(api: Api, receiver: Receiver, tmp_path: Path) -> None:
    key = await api.key("webhooks")
    admin = await api.key("admin")
    sender = await api.key("send")
    hook = await make_hook(api, admin, receiver, description="orders", event_types=["bounced"])
    secret = hook["secret"]
    assert (await api.get("/api/v1/webhooks", key=sender)).status_code == 403
    assert (await api.get("/api/v1/webhooks", key=None)).status_code == 401
    listed = await api.get("/api/v1/webhooks", key=key)
    assert [h["id"] for h in listed.json()["webhooks"]] == [hook["id"]]
    assert secret not in listed.text
    shown = await api.get(f"/api/v1/webhooks/{hook['id']}", key=key)
    assert shown.json()["webhook"]["event_types"] == ["bounced"] and secret not in shown.text
    path = f"/api/v1/webhooks/{hook['id']}"
    patched = await api.http.patch(
        path, json={"is_active": False, "event_types": None}, headers=auth(key)
    )
    assert patched.status_code == 200, patched.text
    assert patched.json()["webhook"]["is_active"] is False
    assert patched.json()["webhook"]["event_types"] is None
    assert secret not in patched.text
    bad = await api.http.patch(path, json={"url": None}, headers=auth(key))
    assert bad.status_code == 400
    broken = await api.http.patch(path, content=b"{", headers=auth(key))
    assert broken.status_code == 400
    for since in ("yesterday", -5, True):
        replay = await api.http.post(path + "/replay", json={"since": since}, headers=auth(key))
        assert replay.status_code == 400, (since, replay.text)
    assert (await api.get(path + "/deliveries", key=key, limit="0")).status_code == 400
    files = list((api.svc.config.server.data_dir).glob("postern.db*"))
    assert files and not any(secret.encode() in f.read_bytes() for f in files)
    assert (await api.http.delete(path, headers=auth(key))).status_code == 200
    missing = "/api/v1/webhooks/wh_nope"
    assert (await api.get(path, key=key)).status_code == 404
    assert (await api.get(missing + "/deliveries", key=key)).status_code == 404
    assert (await api.http.patch(missing, json={}, headers=auth(key))).status_code == 404
    assert (await api.http.delete(missing, headers=auth(key))).status_code == 404
    replay = await api.http.post(missing + "/replay", json={"since": 0}, headers=auth(key))
    assert replay.status_code == 404


async def test_each_simulator_outcome_reaches_the_webhook_with_no_upstream(
    api_client: Any, receiver: Receiver, sink: Sink
) -> None:
    """SPEC "simulator": the whole pipeline, events and webhooks included, no upstream."""
    api = await api_client(delivery={"retry_schedule": ["0.3s"]}, webhooks={"allow_private": True})
    key = await api.key("send", "webhooks")
    await make_hook(api, key, receiver, final_only=False)
    sim = "simulator.postern.invalid"
    wanted = {
        f"delivered@{sim}": ["queued", "delivered"],
        f"bounced@{sim}": ["queued", "bounced"],
        f"deferred@{sim}": ["queued", "deferred", "deferred", "delivered"],
        f"complained@{sim}": ["queued", "delivered", "complaint"],
    }
    for address in wanted:
        sent = await api.send(payload(to=[{"email": address}]), key=key)
        assert sent.status_code in (200, 202, 422), sent.text  # 422: bounced in the handoff

    def arrived() -> dict[str, list[str]]:
        got: dict[str, list[str]] = {}
        for event in receiver.events:
            got.setdefault(event["recipient"], []).append(event["type"])
        return got

    assert await wait_until(lambda: arrived() == wanted, timeout=20), arrived()
    assert receiver.bad_signatures == 0
    assert sink.connections_total == 0
