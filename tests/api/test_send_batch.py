"""POST /v1/send/batch: up to 100 /v1/send bodies, each checked and answered on its own in
order, the accepted ones stored in one transaction; 200 when all were accepted, 207 when
some were not; idempotency per message (an item's key, else Idempotency-Key + index).
Through real uvicorn and an aiosmtpd sink, on SQLite and PostgreSQL."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import text

from tests.support.api import Api, ApiFactory, auth, payload
from tests.support.sink import Sink

pytestmark = pytest.mark.timeout(60)
PATH = "/v1/send/batch"


@pytest.fixture
async def api(api_on_both: Api) -> Api:
    return api_on_both


async def post(api: Api, items: Any, key: str, **headers: str) -> Any:
    return await api.http.post(PATH, json=items, headers=auth(key) | headers)


async def stored(api: Api) -> int:
    """How many messages are stored (either database)."""
    count = "SELECT count(*) FROM message"
    return int(await api.svc.db.read(lambda conn: conn.execute(text(count)).scalar()))


def item(n: int, **fields: Any) -> dict[str, Any]:
    return payload(to=[{"email": f"r{n}@example.test"}], subject=f"batch {n}", **fields)


async def test_a_batch_is_stored_in_one_transaction_and_each_message_delivered(
    api: Api, sink: Sink
) -> None:
    key = await api.key()
    items = [item(n) for n in range(20)]
    answer = await post(api, items, key)
    body = answer.json()

    assert answer.status_code == 200, body
    assert body["success"] is True and body["accepted"] == 20 and body["refused"] == 0
    assert [r["index"] for r in body["results"]] == list(range(20))
    assert all(r["status"] == 202 and r["queued"] for r in body["results"])
    assert [d["id"] for d in body["data"]] == [r["message_id"] for r in body["results"]]
    assert body["errors"] == []
    # The 20 messages were one job of the writer (Queue.enqueue_many): one time for all.
    moments = "SELECT DISTINCT created_at FROM message"
    created = await api.svc.db.read(lambda conn: conn.execute(text(moments)).all())
    assert len(created) == 1
    assert await sink.wait_for_async(20)
    assert sorted(r for m in sink.messages for r in m.rcpt_tos) == sorted(
        f"r{n}@example.test" for n in range(20)
    )


async def test_one_invalid_message_is_answered_and_the_others_are_accepted(
    api: Api, sink: Sink
) -> None:
    key = await api.key()
    bad = item(1)
    bad["to"] = [{"email": "not an address"}]
    items = [item(0), bad, item(2), payload(subject="x\r\nBcc: evil@example.test")]
    answer = await post(api, items, key)
    body = answer.json()

    assert answer.status_code == 207, body
    assert body["success"] is False and body["accepted"] == 2 and body["refused"] == 2
    statuses = [r["status"] for r in body["results"]]
    assert statuses == [202, 400, 202, 400]
    assert body["results"][1]["code"] == "invalid_request"
    assert "to" in body["results"][1]["error"]
    assert [e["index"] for e in body["errors"]] == [1, 3]
    assert len(body["data"]) == 2
    assert await sink.wait_for_async(2)
    assert sorted(m.rcpt_tos[0] for m in sink.messages) == ["r0@example.test", "r2@example.test"]
    assert await stored(api) == 2


async def test_a_suppressed_message_is_refused_alone(api: Api, sink: Sink) -> None:
    key = await api.key()
    admin = await api.key("suppressions")
    added = await api.http.post(
        "/api/v1/suppressions",
        json={"email": "r1@example.test", "reason": "manual"},
        headers=auth(admin),
    )
    assert added.status_code in (200, 201), added.text
    answer = await post(api, [item(0), item(1)], key)
    body = answer.json()
    assert answer.status_code == 207
    assert [r["status"] for r in body["results"]] == [202, 422]
    assert body["results"][1]["code"] == "suppressed"


async def test_the_same_batch_again_with_an_idempotency_key_sends_nothing_twice(
    api: Api, sink: Sink
) -> None:
    key = await api.key()
    items = [item(0), item(1, idempotency_key="own-key"), item(2)]
    headers = {"Idempotency-Key": "batch-42"}
    first = (await post(api, items, key, **headers)).json()
    assert await sink.wait_for_async(3)
    again = await post(api, items, key, **headers)
    body = again.json()

    assert again.status_code == 200, body
    assert [r["message_id"] for r in body["results"]] == [r["message_id"] for r in first["results"]]
    assert all(r["idempotent"] is True for r in body["results"])
    assert await stored(api) == 3
    assert len(sink.messages) == 3
    # A different message under the same place in the batch is another request: 409.
    changed = [item(0), item(1, idempotency_key="own-key"), item(9)]
    third = (await post(api, changed, key, **headers)).json()
    assert [r["status"] for r in third["results"]] == [202, 202, 409]
    assert third["results"][2]["code"] == "idempotency_key_reused"


async def test_one_key_twice_in_a_batch_makes_one_message(api: Api, sink: Sink) -> None:
    key = await api.key()
    same = item(0, idempotency_key="twice")
    body = (await post(api, [same, same], key)).json()
    ids = {r["message_id"] for r in body["results"]}
    assert len(ids) == 1
    assert body["results"][1]["idempotent"] is True
    assert await stored(api) == 1


async def test_the_array_itself_is_checked(api: Api) -> None:
    key = await api.key()
    for bad in ({"from": "x"}, [], [item(n) for n in range(101)]):
        answer = await post(api, bad, key)
        assert answer.status_code == 400, answer.text
        assert answer.json()["code"] == "invalid_request"
    raw = await api.http.post(
        PATH, content=b"[{}", headers=auth(key) | {"Content-Type": "application/json"}
    )
    assert raw.status_code == 400
    bad_key = await post(api, [item(0)], key, **{"Idempotency-Key": "x" * 200})
    assert bad_key.status_code == 400


async def test_the_body_is_bounded_by_max_body_size(api_client: ApiFactory) -> None:
    api = await api_client(http={"max_body_size": 20_000})
    key = await api.key()
    items = [item(n, text="x" * 1000) for n in range(30)]
    answer = await post(api, items, key)
    assert answer.status_code == 413
    assert answer.json()["code"] == "payload_too_large"


async def test_a_sandbox_batch_needs_the_sandbox_scope_and_delivers_nothing(
    api: Api, sink: Sink
) -> None:
    sender = await api.key()
    refused = await post(api, [item(0)], sender, **{"X-Postern-Sandbox": "true"})
    assert refused.status_code == 403
    key = await api.key("sandbox")
    answer = await post(api, [item(0), item(1)], key, **{"X-Postern-Sandbox": "true"})
    body = answer.json()
    assert answer.status_code == 200, body
    assert [r["status"] for r in body["results"]] == [200, 200]
    assert all(r["provider"] == "sandbox" for r in body["results"])
    assert sink.messages == []


async def test_the_openapi_document_describes_the_batch(api: Api) -> None:
    document = (await api.http.get("/openapi.json")).json()
    operation = document["paths"][PATH]["post"]
    assert {"200", "207", "400", "413"} <= set(operation["responses"])
