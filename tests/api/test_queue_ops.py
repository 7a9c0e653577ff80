"""/v1/messages search and operations through a real Service on loopback: filters and
cursor pagination over 1,000 messages, another key's mail invisible, retry of a deferred
message until it is delivered, cancel (events, body gone, status), bulk retry/cancel with a
dry run, a capped bulk says how many are left and where to go on, a message being
delivered answers 409, bad filters answer 400.
"""

from __future__ import annotations

import time
from typing import Any

import pytest
from sqlalchemy import Connection, select, update

from api.schemas import BulkResult, MessageList, MessageStatus
from gateway.queue import operations as queue_ops
from gateway.queue.operations import make_filter
from storage.message_search import encode_cursor
from storage.models import Message, MessageBody
from tests.support.api import Api, ApiFactory, auth, payload
from tests.support.service import SINK_POOL, wait_until
from tests.support.sink import Sink
from tests.support.stored import seed

pytestmark = pytest.mark.timeout(90)

M = Message
B = MessageBody
LATER = {"delivery": {"retry_schedule": ["1h"], "handoff_timeout": "3s"}}


async def _all_pages(api: Api, key: str, limit: int = 100, **filters: Any) -> list[str]:
    ids: list[str] = []
    cursor: str | None = None
    while True:
        params = {**filters, "limit": limit, **({"cursor": cursor} if cursor else {})}
        response = await api.get("/v1/messages", key=key, **params)
        assert response.status_code == 200, response.text
        body = response.json()
        MessageList.model_validate(body)
        ids += [m["message_id"] for m in body["data"]]
        cursor = body["next_cursor"]
        if cursor is None:
            return ids


def _newest_first(rows: list[dict[str, Any]]) -> list[str]:
    return [r["id"] for r in sorted(rows, key=lambda r: (r["created_at"], r["id"]), reverse=True)]


async def _post(api: Api, path: str, key: str, body: Any = None) -> Any:
    return await api.http.post(path, headers=auth(key), json=body)


async def test_search_filters_and_pages_over_1000_messages(api: Api) -> None:
    admin = await api.key("admin")
    owner_id, owner = await api.key_record("send", name="owner")
    rows = await seed(api.svc.db, 1000, [owner_id])

    everything = await _all_pages(api, admin)
    assert everything[:1000] == _newest_first(rows)  # seeded mail is the oldest
    assert len(everything) == len(set(everything)) == 1000

    cases: list[tuple[dict[str, Any], list[dict[str, Any]]]] = [
        ({"status": "deferred"}, [r for r in rows if r["status"] == "deferred"]),
        ({"status": "queued,deferred"}, [r for r in rows if r["status"] in ("queued", "deferred")]),
        ({"pool": SINK_POOL}, rows[1::2]),
        ({"recipient": "r7@example.test"}, rows[7::10]),
        ({"from": "s3@sender.test"}, rows[3::5]),
        ({"tag": "t4"}, rows[4::10]),
        ({"tag": "t4", "status": "queued"}, rows[4::20]),
        ({"since": rows[600]["created_at"]}, rows[600:]),
        (
            {"since": rows[100]["created_at"], "until": _iso(rows[200]["created_at"])},
            rows[100:200],
        ),
    ]
    for filters, expected in cases:
        found = await _all_pages(api, owner, limit=37, **filters)
        assert found == _newest_first(expected), filters

    first = (await api.get("/v1/messages", key=owner, limit=3)).json()
    assert [m["message_id"] for m in first["data"]] == _newest_first(rows)[:3]
    summary = first["data"][0]
    assert summary["from"] and summary["recipients"] and summary["tags"]
    assert summary["next_attempt_at"] is None or summary["status"] in ("queued", "deferred")


def _iso(seconds: float) -> str:
    from datetime import UTC, datetime

    return datetime.fromtimestamp(seconds, UTC).isoformat()


async def test_a_key_sees_and_acts_on_only_its_own_mail(api: Api) -> None:
    a_id, a = await api.key_record("send", name="a")
    b_id, b = await api.key_record("send", name="b")
    rows = await seed(api.svc.db, 40, [a_id, b_id])
    mine = _newest_first(rows[0::2])
    assert await _all_pages(api, a) == mine
    assert await _all_pages(api, b) == _newest_first(rows[1::2])
    assert await _all_pages(api, await api.key(name="stranger")) == []

    others = rows[1]["id"]
    assert (await api.get(f"/v1/messages/{others}", key=a)).status_code == 404
    for action in ("retry", "cancel"):
        response = await _post(api, f"/v1/messages/{others}/{action}", a)
        assert response.status_code == 404, response.text
    counted = await _post(api, "/v1/messages/cancel", a, {"filter": {"all": True}, "dry_run": True})
    active_mine = [r for r in rows[0::2] if r["status"] in ("queued", "deferred")]
    assert counted.json() == {
        "matched": len(active_mine), "cancelled": 0, "busy": 0, "dry_run": True
    }  # fmt: skip
    done = (await _post(api, "/v1/messages/cancel", a, {"filter": {"all": True}})).json()
    assert done["cancelled"] == len(active_mine)
    still = await _all_pages(api, b, status="queued,deferred")
    assert len(still) == len([r for r in rows[1::2] if r["status"] in ("queued", "deferred")])


async def test_retry_makes_a_deferred_message_due_and_it_is_delivered(
    api_client: ApiFactory, sink: Sink
) -> None:
    api = await api_client(**LATER)
    key = await api.key()
    sink.fail("rcpt", "451 4.3.0 try later")
    sent = await api.send(key=key)
    assert sent.status_code == 202, sent.text
    message_id = sent.json()["message_id"]
    path = f"/v1/messages/{message_id}"

    status = (await api.get(path, key=key)).json()
    MessageStatus.model_validate(status)
    assert status["status"] == "deferred"
    assert status["last_response"] == "451 4.3.0 try later"
    assert status["next_attempt_at"] > _iso(time.time() + 3000)[:19]
    assert [e["type"] for e in status["events"]] == ["queued", "deferred"]

    sink.clear()
    retried = await _post(api, f"{path}/retry", key)
    assert retried.status_code == 200 and retried.json() == {
        "message_id": message_id, "retried": True
    }  # fmt: skip

    async def delivered() -> bool:
        return bool((await api.get(path, key=key)).json()["status"] == "delivered")

    assert await wait_until(delivered, timeout=10)
    final = (await api.get(path, key=key)).json()
    assert final["next_attempt_at"] is None and final["attempts"] == 2
    assert [e["type"] for e in final["events"]] == ["queued", "deferred", "delivered"]
    again = await _post(api, f"{path}/retry", key)
    assert again.status_code == 409 and again.json()["code"] == "message_final"


async def test_cancel_records_events_keeps_the_body_for_body_retention_and_shows_cancelled(
    api_client: ApiFactory, sink: Sink
) -> None:
    api = await api_client(**LATER)
    key = await api.key()
    sink.fail("rcpt", "451 4.3.0 try later")
    body = payload(to=[{"email": "a@example.test"}, {"email": "b@example.test"}])
    message_id = (await api.send(body, key=key)).json()["message_id"]
    path = f"/v1/messages/{message_id}"

    cancelled = await _post(api, f"{path}/cancel", key)
    assert cancelled.status_code == 200, cancelled.text
    assert cancelled.json() == {"message_id": message_id, "status": "cancelled"}

    status = (await api.get(path, key=key)).json()
    MessageStatus.model_validate(status)
    assert status["status"] == "cancelled" and status["next_attempt_at"] is None
    assert {r["status"] for r in status["recipients"]} == {"cancelled"}
    cancel_events = [e for e in status["events"] if e["type"] == "cancelled"]
    assert {e["recipient"] for e in cancel_events} == {"a@example.test", "b@example.test"}
    bodies = await api.svc.db.read(
        lambda conn: conn.execute(select(B.c.message_id).where(B.c.message_id == message_id)).all()
    )
    assert len(bodies) == 1  # final: kept for storage.body_retention, then the sweep's
    listed = (await api.get("/v1/messages", key=key, status="cancelled")).json()["data"]
    assert [m["message_id"] for m in listed] == [message_id]

    for action in ("cancel", "retry"):
        again = await _post(api, f"{path}/{action}", key)
        assert again.status_code == 409 and again.json()["code"] == "message_final"


async def test_bulk_retry_and_cancel_with_dry_run(api_client: ApiFactory, sink: Sink) -> None:
    api = await api_client(**LATER)
    key = await api.key()
    sink.fail("rcpt", "451 4.3.0 try later")
    ids = []
    for _ in range(5):
        sent = await api.send(payload(tags=["bulk"]), key=key)
        assert sent.status_code == 202
        ids.append(sent.json()["message_id"])
    other = (await api.send(payload(tags=["keep"]), key=key)).json()["message_id"]
    bulk = {"filter": {"tag": "bulk", "status": "deferred"}}

    dry = await _post(api, "/v1/messages/retry", key, {**bulk, "dry_run": True})
    assert dry.status_code == 200
    BulkResult.model_validate(dry.json())
    assert dry.json() == {"matched": 5, "retried": 0, "busy": 0, "dry_run": True}

    retried = (await _post(api, "/v1/messages/retry", key, bulk)).json()
    assert retried == {"matched": 5, "retried": 5, "busy": 0, "dry_run": False}

    async def attempted_twice() -> bool:
        for message_id in ids:
            state = (await api.get(f"/v1/messages/{message_id}", key=key)).json()
            if state["attempts"] < 2 or state["next_attempt_at"] is None:
                return False
        return True

    assert await wait_until(attempted_twice, timeout=10)

    dry = (await _post(api, "/v1/messages/cancel", key, {**bulk, "dry_run": True})).json()
    assert dry == {"matched": 5, "cancelled": 0, "busy": 0, "dry_run": True}
    done = (await _post(api, "/v1/messages/cancel", key, bulk)).json()
    assert done == {"matched": 5, "cancelled": 5, "busy": 0, "dry_run": False}
    assert await _all_pages(api, key, status="cancelled") == list(reversed(ids))
    left = (await api.get(f"/v1/messages/{other}", key=key)).json()
    assert left["status"] == "deferred"

    whole = await _post(api, "/v1/messages/cancel", key, {"filter": {}})
    assert whole.status_code == 400 and whole.json()["code"] == "invalid_request"


async def test_a_message_being_delivered_is_busy(api: Api) -> None:
    key_id, key = await api.key_record()
    rows = await seed(api.svc.db, 4, [key_id])
    held = rows[1]["id"]  # deferred

    def hold(conn: Connection) -> None:
        conn.execute(
            update(M).where(M.c.id == held).values(claimed_by="node-x", due_at=time.time() + 600)
        )

    await api.svc.db.transaction(hold)
    for action in ("retry", "cancel"):
        response = await _post(api, f"/v1/messages/{held}/{action}", key)
        assert response.status_code == 409, response.text
        assert response.json()["code"] == "message_busy"
    bulk = (await _post(api, "/v1/messages/cancel", key, {"filter": {"all": True}})).json()
    assert bulk == {"matched": 2, "cancelled": 1, "busy": 1, "dry_run": False}
    status = (await api.get(f"/v1/messages/{held}", key=key)).json()
    assert status["status"] == "deferred" and status["next_attempt_at"] is None


async def test_bulk_acts_on_at_most_max_bulk_and_says_how_many_are_left(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(queue_ops, "MAX_BULK", 20)
    key_id, key = await api.key_record()
    rows = await seed(api.svc.db, 100, [key_id])  # 50 active
    active = _newest_first([r for r in rows if r["status"] in ("queued", "deferred")])
    everything = {"filter": {"all": True}}

    dry = (await _post(api, "/v1/messages/cancel", key, {**everything, "dry_run": True})).json()
    assert dry == {"matched": 50, "cancelled": 0, "busy": 0, "dry_run": True}  # counts all
    first = (await _post(api, "/v1/messages/cancel", key, everything)).json()
    BulkResult.model_validate(first)
    assert first["matched"] == first["cancelled"] == 20 and first["remaining"] == 30
    assert first["next_cursor"]
    cancelled = await _all_pages(api, key, status="cancelled")
    assert sorted(cancelled) == sorted(active[:20])  # the newest first
    second = (await _post(api, "/v1/messages/cancel", key, everything)).json()
    assert second["cancelled"] == 20 and second["remaining"] == 10  # a repeat goes on
    last = (await _post(api, "/v1/messages/cancel", key, everything)).json()
    assert last == {"matched": 10, "cancelled": 10, "busy": 0, "dry_run": False}


async def test_a_capped_bulk_retry_goes_on_from_its_cursor(api: Api) -> None:
    """A retried message keeps work left, so a repeated retry would start over: the cursor
    of a capped one goes on where it stopped, and every message is retried once."""
    key_id, _ = await api.key_record()
    rows = await seed(api.svc.db, 100, [key_id])
    active = _newest_first([r for r in rows if r["status"] in ("queued", "deferred")])
    queue, db, flt = api.svc.queue, api.svc.db, make_filter({}, key_id)
    retried: list[int] = []
    cursor: str | None = None
    while True:
        result = await queue_ops.bulk(queue, db, flt, "retry", False, limit=15, cursor=cursor)
        retried.append(result.done)
        if not result.remaining:
            assert result.next_cursor is None
            break
        assert result.remaining == 50 - sum(retried)
        cursor = result.next_cursor
    assert retried == [15, 15, 15, 5]
    due = await db.read(
        lambda conn: conn.execute(
            select(M.c.id).where(M.c.id.in_(active), M.c.due_at <= time.time())
        ).all()
    )
    assert len(due) == 50
    rest = await queue_ops.bulk(
        queue,
        db,
        flt,
        "retry",
        True,
        cursor=encode_cursor((rows[20]["created_at"], rows[20]["id"])),
    )
    assert rest.matched == len([r for r in rows[:20] if r["status"] in ("queued", "deferred")])


@pytest.mark.parametrize(
    "params",
    [
        {"status": "lost"},
        {"status": ""},
        {"since": "yesterday"},
        {"until": "2026-13-01"},
        {"since": "2026-02-30"},  # the grammar /openapi.json states: real dates only
        {"until": "1e9"},
        {"limit": "0"},
        {"limit": "101"},
        {"limit": "ten"},
        {"cursor": "not-a-cursor"},
        {"recipient": "no-at-sign"},
        {"from": "a\r\nb@x.test"},
        {"colour": "blue"},
    ],
)
async def test_bad_search_parameters_are_400(api: Api, params: dict[str, str]) -> None:
    response = await api.get("/v1/messages", key=await api.key(), **params)
    assert response.status_code == 400, (params, response.text)
    body = response.json()
    assert body["code"] == "invalid_request" and body["details"][0]["field"] in params


async def test_an_empty_time_range_matches_nothing(api: Api) -> None:
    """until <= since is a well-formed query (the schema cannot tell): no error, no match."""
    key = await api.key()
    assert (await api.send(key=key)).status_code == 200
    response = await api.get("/v1/messages", key=key, since="2026-01-02", until="2026-01-01")
    assert response.status_code == 200 and response.json()["data"] == []


@pytest.mark.parametrize(
    "body",
    [
        {"filter": {"status": "lost"}},
        {"filter": {"since": "soon"}},
        {"filter": {"tag": 5}},
        {"filter": {"colour": "blue"}},
        {"filter": {}},
        {"dry_run": True},
        {"filter": {"all": True}, "dry_run": "yes"},
        [],
    ],
)
async def test_bad_bulk_bodies_are_400(api: Api, body: Any) -> None:
    for action in ("retry", "cancel"):
        response = await _post(api, f"/v1/messages/{action}", await api.key(), body)
        assert response.status_code == 400, (body, response.text)
        assert response.json()["code"] == "invalid_request"


async def test_search_needs_a_key(api: Api) -> None:
    assert (await api.get("/v1/messages", key=None)).status_code == 401
    response = await _post(api, "/v1/messages/retry", "msk_nope", {"filter": {"all": True}})
    assert response.status_code == 401
