"""Warmup end to end: a real Service in front of the real sink, the warmup's clock
injected. Day 1 sends its limit spread by the hourly cap, the rest waits in the queue
(deferred with the reason, no attempt spent); day 2's limit opens; a complaint spike pauses
the warmup with its reason, mail waits, a person resumes it and the mail goes. Receivers'
throttling replies pause it too."""

from __future__ import annotations

import asyncio
import json
import time
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import pytest
from sqlalchemy import text

from storage import warmup as stored
from storage.pools import config_pool_id
from tests.support.api import Api, auth
from tests.support.reports import complaint
from tests.support.rows import query
from tests.support.service import (
    SINK_POOL,
    ManagedService,
    ServiceFactory,
    make_config,
    metric,
    wait_until,
)
from tests.support.sink import Sink
from tests.support.smtp import smtp_send
from tests.support.webhook_receiver import Receiver

pytestmark = pytest.mark.timeout(120)

TZ = "Europe/Paris"
SENDER = "app@sender.test"
POOL_ID = config_pool_id(SINK_POOL)
WARMUP = f"/api/v1/warmup/pool/{POOL_ID}"


class Clock:
    """The warmup's clock, moved by the test."""

    def __init__(self, start: float) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now


def paris(text_: str) -> float:
    return datetime.fromisoformat(text_).replace(tzinfo=ZoneInfo(TZ)).timestamp()


def mail(number: int) -> bytes:
    message_id = "<orig@app.test>" if number == 0 else f"<m{number}@app.test>"
    return (
        f"From: {SENDER}\r\nTo: r{number}@example.test\r\nSubject: n{number}\r\n"
        f"Message-ID: {message_id}\r\n\r\nbody\r\n"
    ).encode()


async def send_many(port: int, numbers: range) -> None:
    for number in numbers:
        code, _ = await smtp_send(port, SENDER, [f"r{number}@example.test"], mail(number))
        assert code == 250


async def started(
    service: ServiceFactory, tmp_path: Path, sink: Sink, clock: Clock, **warmup: Any
) -> Api:
    settings = {"timezone": TZ, "active_hours": 2, "burst": 0.2, "check_interval": "1s"}
    config = make_config(
        tmp_path, sink, warmup=settings | warmup, http={"rate_limit": "10000/s"},
        webhooks={"allow_private": True},
    )  # fmt: skip
    svc = ManagedService(config)
    svc.warmup_clock = clock
    service.started.append(svc)
    await svc.start()
    host, port = config.http.listen
    return Api(svc, httpx.AsyncClient(base_url=f"http://{host}:{port}", timeout=15.0))


async def paused_events(api: Api) -> list[dict[str, Any]]:
    return await query(api.svc, "SELECT * FROM event WHERE type = 'warmup_paused' ORDER BY id")


async def waiting(api: Api) -> list[dict[str, Any]]:
    return await query(api.svc, "SELECT * FROM message WHERE status != 'delivered' ORDER BY id")


async def make_due(api: Api) -> None:
    """The queue keeps wall time: what waits for the warmup's next hour or day (on its
    moved clock) is made due now, as the passing of that time would."""
    now = time.time()

    def work(conn: Any) -> None:
        conn.execute(
            text("UPDATE message SET due_at = :now WHERE status = 'deferred' AND due_at > :now"),
            {"now": now},
        )

    assert api.svc.db is not None and api.svc.delivery is not None
    await api.svc.db.transaction(work)
    api.svc.delivery.wake()


async def settled(api: Api, sink: Sink, delivered: int, left: int) -> list[dict[str, Any]]:
    assert await sink.wait_for_async(delivered, timeout=10)
    await asyncio.sleep(1.0)  # nothing more goes out
    assert len(sink.messages) == delivered

    async def rest() -> list[dict[str, Any]]:
        rows = await waiting(api)
        return rows if len(rows) == left and all(r["status"] == "deferred" for r in rows) else []

    rows = await wait_until(rest, timeout=5)
    assert len(rows) == left
    return rows


async def test_day_one_spread_day_two_opens_a_complaint_pauses_resume_sends(
    service: ServiceFactory, sink: Sink, tmp_path: Path
) -> None:
    clock = Clock(paris("2026-06-01T09:00:00"))
    api = await started(service, tmp_path, sink, clock, min_volume=3)
    try:
        key = await api.key("pools", "suppressions")
        answer = await api.http.put(WARMUP, json={"start": 4, "step": 4, "cap": 12},
                                    headers=auth(key))  # fmt: skip
        assert answer.status_code == 200, answer.text
        body = answer.json()
        assert (body["status"], body["day"], body["daily_limit"], body["hourly_limit"]) == (
            "active", 1, 4, 3,
        )  # fmt: skip
        assert body["timezone"] == TZ and body["schedule"]["days"] == 3

        # Day 1, 09:00: 4 a day over 2 active hours, 3 in any hour; 6 sent, 3 go.
        before = metric("postern_pool_throttled_total", pool=SINK_POOL, reason="warmup_hourly")
        await send_many(api.svc.smtp_port, range(6))
        rows = await settled(api, sink, delivered=3, left=3)
        for row in rows:
            assert row["attempts"] == 0  # a WAIT: no attempt spent, never bounced
            assert row["last_response"] == "waiting: warmup of pool sink hourly cap 3"
            assert row["due_at"] > time.time() + 3000  # the hour after the first sends
        assert metric("postern_pool_throttled_total", pool=SINK_POOL, reason="warmup_hourly") > (
            before
        )
        shown = (await api.get(WARMUP, key=key)).json()
        assert (shown["sent_today"], shown["daily_limit"]) == (3, 4)

        # An hour later: one more (the day's 4th); the other two wait for midnight.
        clock.now += 3601
        await make_due(api)
        rows = await settled(api, sink, delivered=4, left=2)
        midnight = paris("2026-06-02T00:00:00")
        for row in rows:
            assert row["last_response"] == "waiting: warmup of pool sink daily limit 4"
            assert row["due_at"] == pytest.approx(time.time() + midnight - clock.now, abs=5)
        events = await query(
            api.svc, "SELECT response FROM event WHERE type = 'deferred' AND message_id = ?",
            rows[0]["id"],
        )  # fmt: skip
        assert [e["response"] for e in events] == [
            "waiting: warmup of pool sink hourly cap 3",
            "waiting: warmup of pool sink daily limit 4",
        ]

        # Day 2 (Paris midnight): 8 a day; the two go.
        clock.now = midnight + 30
        await make_due(api)
        await settled(api, sink, delivered=6, left=0)
        shown = (await api.get(WARMUP, key=key)).json()
        assert (shown["day"], shown["daily_limit"], shown["sent_today"]) == (2, 8, 2)

        # A complaint about the first message: 1 of 6 is a spike; the warmup pauses. (An
        # admin uploads it: the mail came in by SMTP, no key's own mail.)
        admin = await api.key("admin")
        uploaded = await api.http.post(
            "/api/v1/bounces", content=complaint("r0@example.test"),
            headers=auth(admin) | {"Content-Type": "message/rfc822"},
        )  # fmt: skip
        assert uploaded.json()["outcome"] == "processed", uploaded.text

        async def paused() -> dict[str, Any] | None:
            shown = (await api.get(WARMUP, key=key)).json()
            return shown if shown["status"] == "paused" else None

        shown = await wait_until(paused, timeout=10)
        assert shown, "the complaint spike did not pause the warmup"
        reason = shown["paused_reason"]
        assert reason.startswith("complaint spike: 1 complaints of 6 recipients (16.67%)")
        assert metric("postern_warmup_paused_total", kind="pool", reason="complaints") >= 1
        # ... and fires the event, once (the check runs on, the warmup is paused already).
        await asyncio.sleep(1.5)
        (event,) = await paused_events(api)
        assert (event["message_id"], event["pool"], event["response"]) == ("", SINK_POOL, reason)
        assert json.loads(event["detail"]) == {
            "warmup": {"kind": "pool", "id": POOL_ID, "name": SINK_POOL, "reason": reason}
        }

        # Paused: new mail waits, deferred with the reason.
        await send_many(api.svc.smtp_port, range(6, 8))
        rows = await settled(api, sink, delivered=6, left=2)
        for row in rows:
            assert row["last_response"] == f"waiting: warmup of pool sink paused: {reason}"
            assert row["attempts"] == 0

        # A person resumes it: it goes on from day 2, and its mail is judged afresh from
        # now (the complaint looked at pauses it no more); what waited for it goes.
        resumed = await api.http.post(WARMUP + "/resume", headers=auth(key))
        assert resumed.status_code == 200, resumed.text
        assert (resumed.json()["status"], resumed.json()["day"]) == ("active", 2)
        assert resumed.json()["paused_reason"] is None
        await settled(api, sink, delivered=8, left=0)
    finally:
        await api.http.aclose()


async def test_receiver_throttling_replies_pause_the_warmup(
    service: ServiceFactory, sink: Sink, tmp_path: Path
) -> None:
    clock = Clock(paris("2026-06-01T09:00:00"))
    api = await started(service, tmp_path, sink, clock, throttle_replies=2)
    receiver = await Receiver().start()
    try:
        hooks = await api.key("webhooks")
        hook = await api.http.post(
            "/api/v1/webhooks", json={"url": receiver.url, "event_types": ["warmup_paused"]},
            headers=auth(hooks),
        )  # fmt: skip
        assert hook.status_code == 201, hook.text
        receiver.secrets[hook.json()["webhook"]["id"]] = hook.json()["webhook"]["secret"]
        key = await api.key("pools")
        answer = await api.http.put(WARMUP, json={"preset": "transactional"}, headers=auth(key))
        assert answer.json()["daily_limit"] == 50
        # A 421 that is no throttling (a shutdown) does not count; two "try again later" do.
        sink.fail("mail", "421 4.3.2 service shutting down", times=1)
        await send_many(api.svc.smtp_port, range(1))
        assert await sink.wait_for_async(1, timeout=10)
        sink.fail("mail", "421 4.7.0 rate limited, try again later", times=2)
        await send_many(api.svc.smtp_port, range(1, 3))

        async def paused() -> dict[str, Any] | None:
            shown = (await api.get(WARMUP, key=key)).json()
            return shown if shown["status"] == "paused" else None

        shown = await wait_until(paused, timeout=10)
        assert shown, "the throttling replies did not pause the warmup"
        assert shown["paused_reason"].startswith(
            "receiver throttling: 2 throttling replies within 1h, the last: 421 4.7.0"
        )
        # The pause fires a warmup_paused event; a webhook receives it.
        assert await wait_until(lambda: bool(receiver.events), timeout=10)
        sent = receiver.events[0]
        assert (sent["type"], sent["message_id"], sent["pool"]) == ("warmup_paused", "", SINK_POOL)
        assert sent["warmup"] == {
            "kind": "pool",
            "id": POOL_ID,
            "name": SINK_POOL,
            "reason": shown["paused_reason"],
        }

        # Their retries (1 s on) meet the paused warmup and wait, attempts kept.
        async def held() -> list[dict[str, Any]]:
            rows = await waiting(api)
            said = [r["last_response"] or "" for r in rows]
            return rows if len(rows) == 2 and all("paused: receiver" in s for s in said) else []

        rows = await wait_until(held, timeout=10)
        assert rows, await waiting(api)
        assert [r["attempts"] for r in rows] == [1, 1] and len(sink.messages) == 1
        # Resumed elsewhere (the CLI, another node): this node forgets the pause within
        # its 2 s follow and sends what waited, with no API call here.
        resumed = await stored.resume(api.svc.db, "pool", POOL_ID, clock.now, SINK_POOL,
                                      wall=time.time())  # fmt: skip
        assert resumed is not None and resumed.status == "active"
        await settled(api, sink, delivered=3, left=0)
        # Clearing the warmup: no limit any more.
        cleared = await api.http.delete(WARMUP, headers=auth(key))
        assert cleared.json() == {"success": True}
        assert (await api.get(WARMUP, key=key)).status_code == 404
        assert len(receiver.events) == 1  # one pause, one event
    finally:
        await receiver.stop()
        await api.http.aclose()
