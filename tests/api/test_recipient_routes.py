"""Routes by recipient domain through their real doors: a message split across two sinks
over HTTP (one idempotency key for the whole request: a replay sends nothing) and over
SMTP, /api/v1/routes (this node follows a change at once; the config's entry wins), and
the refusals."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from api.route_schemas import RouteList, RouteResponse
from api.schemas import SendResponse
from tests.support.api import Api, ApiFactory, auth, payload
from tests.support.service import sink_pool
from tests.support.sink import Sink
from tests.support.smtp import SENDER, message, smtp_send

pytestmark = pytest.mark.timeout(90)


@pytest.fixture
def second() -> Iterator[Sink]:
    running = Sink().start()
    try:
        yield running
    finally:
        running.stop()


def _config(sink: Sink, second: Sink) -> dict[str, Any]:
    return {
        "pools": [
            sink_pool(sink, is_default=True),
            sink_pool(second, name="second", ip_pool="second-group"),
        ],
        "routes": [{"recipient_domain": "gmail.test", "pool": "second"}],
    }


def _to(*emails: str) -> list[dict[str, str]]:
    return [{"email": email} for email in emails]


async def test_a_message_to_two_routes_is_split_across_two_sinks_once(
    api_client: ApiFactory, sink: Sink, second: Sink
) -> None:
    api = await api_client(**_config(sink, second))
    key = await api.key()
    body = payload(to=_to("a@gmail.test", "b@other.test", "c@GMAIL.test"))
    headers = {"Idempotency-Key": "split-1"}
    sent = await api.send(body | {"idempotency_key": "split-1"}, key=key)
    assert sent.status_code == 200, sent.text
    answer = sent.json()
    SendResponse.model_validate(answer)
    parts = answer["message_ids"]
    assert len(parts) == 2 and answer["message_id"] == parts[0]
    assert await sink.wait_for_async(1) and await second.wait_for_async(1)
    assert [m.rcpt_tos for m in second.messages] == [["a@gmail.test", "c@GMAIL.test"]]
    assert [m.rcpt_tos for m in sink.messages] == [["b@other.test"]]
    shown = {part: (await api.get(f"/v1/messages/{part}", key=key)).json() for part in parts}
    assert {s["status"] for s in shown.values()} == {"delivered"}
    assert sorted(len(s["recipients"]) for s in shown.values()) == [1, 2]

    again = await api.send(body | {"idempotency_key": "split-1"}, key=key, headers=headers)
    assert again.status_code == 200 and again.json()["idempotent"] is True
    assert again.json()["message_ids"] == parts
    assert len(sink.messages) == 1 and len(second.messages) == 1


async def test_an_smtp_message_is_split_and_its_reply_names_every_part(
    api_client: ApiFactory, sink: Sink, second: Sink
) -> None:
    api = await api_client(**_config(sink, second))
    port = api.svc.smtp_port
    code, text = await smtp_send(port, SENDER, ["x@other.test", "y@gmail.test"], message("split"))
    assert code == 250, text
    ids = text.split("queued as ", 1)[1].split()
    assert len(ids) == 2 and all(part.startswith("msg_") for part in ids)
    assert await sink.wait_for_async(1) and await second.wait_for_async(1)
    assert second.messages[0].rcpt_tos == ["y@gmail.test"]
    assert sink.messages[0].rcpt_tos == ["x@other.test"]


async def _post(api: Api, key: str, body: Any) -> Any:
    return await api.http.post("/api/v1/routes", headers=auth(key), json=body)


async def test_routes_over_the_api_apply_at_once_and_the_config_wins(
    api_client: ApiFactory, sink: Sink, second: Sink
) -> None:
    api = await api_client(**_config(sink, second))
    admin = await api.key("admin")
    listed = (await api.get("/api/v1/routes", key=admin)).json()
    RouteList.model_validate(listed)
    assert listed["routes"] == [
        {"id": None, "recipient_domain": "gmail.test", "pool": "second", "ip_pool": None,
         "source": "config", "shadowed": False, "created_at": None}
    ]  # fmt: skip

    made = await _post(api, admin, {"recipient_domain": ".Example.test", "ip_pool": "second-group"})
    assert made.status_code == 201, made.text
    RouteResponse.model_validate(made.json())
    route = made.json()["route"]
    assert route["recipient_domain"] == ".example.test" and route["id"].startswith("rte_")

    sent = await api.send(payload(to=_to("x@mx.example.test")), key=await api.key())
    assert sent.status_code == 200, sent.text
    assert await second.wait_for_async(1)
    assert second.messages[0].rcpt_tos == ["x@mx.example.test"] and sink.messages == []

    refusals = [
        ({"recipient_domain": "gmail.test", "pool": "second"}, 409, "route_in_config"),
        ({"recipient_domain": ".example.test", "pool": "second"}, 409, "route_exists"),
        ({"recipient_domain": "a.test", "pool": "nope"}, 422, "unknown_pool"),
        ({"recipient_domain": "a b.test", "pool": "second"}, 400, "invalid_request"),
        ({"recipient_domain": "a.test"}, 400, "invalid_request"),
        ({"recipient_domain": "a.test", "pool": "second", "ip_pool": "x"}, 400, "invalid_request"),
        ({"recipient_domain": "a.test", "pool": None, "ip_pool": "x"}, 400, "invalid_request"),
        ({"recipient_domain": "bücher.test", "pool": "second"}, 400, "invalid_request"),
    ]
    for body, status, code in refusals:
        refused = await _post(api, admin, body)
        assert (refused.status_code, refused.json()["code"]) == (status, code), body
    forbidden = await _post(
        api, await api.key("send"), {"recipient_domain": "b.test", "pool": "second"}
    )
    assert forbidden.status_code == 403

    gone = await api.http.delete(f"/api/v1/routes/{route['id']}", headers=auth(admin))
    assert gone.status_code == 200, gone.text
    again = await api.http.delete(f"/api/v1/routes/{route['id']}", headers=auth(admin))
    assert again.status_code == 404
    config_one = await api.http.delete("/api/v1/routes/gmail.test", headers=auth(admin))
    assert config_one.status_code == 409 and config_one.json()["code"] == "route_in_config"
    sent = await api.send(payload(to=_to("z@mx.example.test")), key=await api.key())
    assert sent.status_code == 200 and await sink.wait_for_async(1)
    assert sink.messages[0].rcpt_tos == ["z@mx.example.test"]


async def test_a_route_whose_pool_is_gone_refuses_the_message_at_the_door(
    api_client: ApiFactory, sink: Sink
) -> None:
    api = await api_client(routes=[{"recipient_domain": "gmail.test", "pool": "missing"}])
    sent = await api.send(payload(to=_to("a@gmail.test", "b@other.test")), key=await api.key())
    assert sent.status_code == 400 and sent.json()["code"] == "no_route", sent.text
    assert "missing" in sent.json()["error"]


async def test_a_batch_item_split_by_routes_names_every_part(
    api_client: ApiFactory, sink: Sink, second: Sink
) -> None:
    api = await api_client(**_config(sink, second))
    key = await api.key()
    items = [
        payload(to=_to("a@gmail.test", "b@other.test")) | {"idempotency_key": "b-split"},
        payload(to=_to("c@other.test")),
    ]
    sent = await api.http.post("/v1/send/batch", json=items, headers=auth(key))
    assert sent.status_code == 200, sent.text
    first, plain = sent.json()["results"]
    assert len(first["message_ids"]) == 2 and first["message_id"] == first["message_ids"][0]
    assert "message_ids" not in plain
    assert await sink.wait_for_async(2) and await second.wait_for_async(1)
    again = await api.http.post("/v1/send/batch", json=items[:1], headers=auth(key))
    assert again.json()["results"][0]["message_id"] == first["message_id"]
    assert len(second.messages) == 1  # the replayed item sent nothing again
