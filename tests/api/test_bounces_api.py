"""/api/v1/bounces end to end: a message sent, its DSN uploaded by HTTP, the recipient
suppressed, a `bounced` webhook with `async: true`; listing, one report with its raw bytes,
duplicates, unmatched reports, and the bounds of the upload."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from gateway.bounces.returnpath import VERP_KEY, ReturnPath
from gateway.webhooks.sender import WebhookSender
from tests.support.api import Api, ApiFactory, auth, payload
from tests.support.reports import auto_reply, dsn
from tests.support.service import metric, wait_until
from tests.support.webhook_receiver import Receiver

pytestmark = pytest.mark.timeout(40)
DOMAIN = "bounce.postern.test"


@pytest.fixture(autouse=True)
def quick_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(WebhookSender, "schedule", (0.3,))


@pytest.fixture
async def api(api_client: ApiFactory) -> Api:
    return await api_client(
        webhooks={"allow_private": True}, bounces={"domain": DOMAIN, "max_report_size": 20_000}
    )


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    running = await Receiver().start()
    try:
        yield running
    finally:
        await running.stop()


def return_path(api: Api) -> ReturnPath:
    assert api.svc.box is not None
    return ReturnPath(DOMAIN, api.svc.box.derive(VERP_KEY))


async def upload(api: Api, key: str, raw: bytes, **params: str) -> Any:
    return await api.http.post(
        "/api/v1/bounces", content=raw, headers=auth(key) | {"Content-Type": "message/rfc822"},
        params=params or None,
    )  # fmt: skip


async def test_an_uploaded_dsn_suppresses_and_a_webhook_says_async(
    api: Api, receiver: Receiver
) -> None:
    key = await api.key("send", "webhooks", "suppressions")
    made = await api.http.post("/api/v1/webhooks", json={"url": receiver.url}, headers=auth(key))
    hook = made.json()["webhook"]
    receiver.secrets[hook["id"]] = hook["secret"]
    sent = await api.send(payload(to=[{"email": "gone@example.test"}]), key=key)
    assert sent.status_code == 200, sent.text
    message_id = sent.json()["message_id"]
    raw = dsn("gone@example.test", to=return_path(api).address(message_id, ""))
    answer = await upload(api, key, raw)
    assert answer.status_code == 201, answer.text
    assert answer.json()["outcome"] == "processed"
    report_id = answer.json()["report_id"]

    def bounced() -> list[dict[str, Any]]:
        return [e for e in receiver.events if e["type"] == "bounced"]

    assert await wait_until(lambda: bool(bounced()), timeout=10)
    event = bounced()[0]
    assert event["async"] is True and event["message_id"] == message_id
    assert event["bounce"]["classification"] == "hard" and event["bounce"]["rule"]
    assert event["bounce"]["report_id"] == report_id
    assert receiver.bad_signatures == 0
    entry = await api.get("/api/v1/suppressions/gone@example.test", key=key)
    assert entry.json()["suppression"]["reason"] == "hard_bounce"
    status = await api.get(f"/v1/messages/{message_id}", key=key)
    assert status.json()["status"] == "bounced"
    refused = await api.send(payload(to=[{"email": "gone@example.test"}]), key=key)
    assert refused.status_code == 422  # suppressed on this node at once
    again = await upload(api, key, raw)
    assert (again.status_code, again.json()["outcome"]) == (200, "duplicate")
    assert again.json()["report_id"] == report_id
    shown = await api.get(f"/api/v1/bounces/{report_id}", key=key)
    body = shown.json()["bounce"]
    assert body["status"] == "processed" and body["matched_by"] == "verp"
    assert "user unknown" in body["raw"] and body["truncated"] is False
    assert body["entries"][0]["matched"] == "gone@example.test"


async def test_unmatched_and_ignored_reports_are_listed(api: Api) -> None:
    key = await api.key("suppressions", "admin")  # a report matched to no message: an admin's
    forged = f"bounces+msg_00000000000000000000000000a-aaaaaaaaaaaaaaaa@{DOMAIN}"
    assert (await upload(api, key, dsn("x@example.test", to=forged))).json()["outcome"] == (
        "unmatched"
    )
    assert (await upload(api, key, auto_reply("app@x.test"))).json()["outcome"] == "ignored"
    unmatched = await api.get("/api/v1/bounces", key=key, status="unmatched")
    rows = unmatched.json()["bounces"]
    assert len(rows) == 1 and "does not verify" in rows[0]["error"] and "raw" not in rows[0]
    everything = (await api.get("/api/v1/bounces", key=key, limit=1)).json()
    assert len(everything["bounces"]) == 1 and everything["next_cursor"] is not None
    rest = await api.get("/api/v1/bounces", key=key, cursor=everything["next_cursor"])
    assert [b["status"] for b in rest.json()["bounces"]] == ["unmatched"]


async def test_the_bounds_of_the_api(api: Api) -> None:
    key = await api.key("suppressions")
    sender = await api.key("send")
    assert (await upload(api, sender, b"x")).status_code == 403
    assert (await upload(api, key, b"x" * 20_001)).status_code == 413
    assert (await upload(api, key, b"")).status_code == 422
    assert (await upload(api, key, b"x", envelope_recipient="a\r\nb")).status_code == 400
    assert (await upload(api, key, b"x", other="1")).status_code == 400
    assert (await api.get("/api/v1/bounces/999", key=key)).status_code == 404
    assert (await api.get("/api/v1/bounces/abc", key=key)).status_code == 404
    assert (await api.get("/api/v1/bounces", key=key, status="nope")).status_code == 400
    assert (await api.get("/api/v1/bounces", key=key, limit="0")).status_code == 400
    listed = await api.get("/api/v1/bounces", key=sender)  # reads need no scope: its own mail
    assert (listed.status_code, listed.json()["bounces"]) == (200, [])


async def test_uploads_are_counted_by_their_outcome(api: Api) -> None:
    key = await api.key("suppressions")
    before = metric("postern_bounce_reports_total", source="api", result="ignored")
    assert (await upload(api, key, auto_reply("app@y.test"))).json()["outcome"] == "ignored"
    assert metric("postern_bounce_reports_total", source="api", result="ignored") == before + 1
