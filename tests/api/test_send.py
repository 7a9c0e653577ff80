"""POST /v1/send through a real uvicorn into a real sink: every status code it answers.

SPEC "HTTP API" and seed 001: 200 accepted upstream, 202 queued (then delivered once the
upstream is back), 422 suppressed / upstream_rejected, 400 unknown alias_id, 401, 403, 405,
413, and the message the sink receives (headers, multipart, no Bcc).
"""

from __future__ import annotations

import asyncio
import email
import email.policy
import re

import dkim as dkimpy
import pytest

from tests.support.api import RCPT, SENDER, Api, ApiFactory, auth, payload
from tests.support.dkim import published, signed_names
from tests.support.resources import call
from tests.support.rows import query
from tests.support.service import SINK_POOL, metric, sink_pool, wait_until
from tests.support.sink import Sink

pytestmark = pytest.mark.timeout(30)

MESSAGE_ID = re.compile(r"^msg_[0-9a-f]+$")
TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


def error_shape(body: dict[str, object], code: str) -> None:
    assert body["success"] is False
    assert body["code"] == code
    assert isinstance(body["error"], str) and body["error"]
    assert isinstance(body["details"], list)


# --- 200 ---------------------------------------------------------------------------------


async def test_accepted_upstream_is_200_with_seed_fields_and_the_sink_has_it(
    api: Api, sink: Sink
) -> None:
    key = await api.key("send")
    body = payload(
        cc=[{"email": "cc@example.test"}],
        bcc=[{"email": "hidden@example.test"}],
        reply_to={"email": "replies@sender.test", "name": "Replies"},
        html="<h1>Welcome!</h1>",
        text="Welcome!",
    )
    response = await api.send(body, key=key)

    assert response.status_code == 200, response.text
    data = response.json()
    assert data["success"] is True
    assert MESSAGE_ID.match(data["message_id"])
    assert data["provider"] == "smtp"
    assert TIMESTAMP.match(data["timestamp"])
    assert "idempotent" not in data
    [got] = sink.messages
    assert got.mail_from == SENDER
    assert got.rcpt_tos == [RCPT, "cc@example.test", "hidden@example.test"]
    parsed = email.message_from_bytes(got.data, policy=email.policy.default)
    assert parsed["From"] == f"App <{SENDER}>"
    assert parsed["To"] == f"Someone <{RCPT}>"
    assert parsed["Cc"] == "cc@example.test"
    assert parsed["Reply-To"] == "Replies <replies@sender.test>"
    assert parsed["Subject"] == "Hello"
    assert parsed["Bcc"] is None and b"hidden@" not in got.data
    assert parsed["Message-ID"].endswith("@postern.test>")
    assert parsed["Date"]
    assert parsed.get_content_type() == "multipart/alternative"
    parts = {p.get_content_type(): p.get_content().rstrip() for p in parsed.iter_parts()}
    assert parts == {"text/plain": "Welcome!", "text/html": "<h1>Welcome!</h1>"}


async def test_the_date_and_message_id_are_signed_and_no_bcc_is_sent(api: Api, sink: Sink) -> None:
    """The HTTP door builds Date and Message-ID itself; DKIM covers both, Bcc is never sent."""
    admin = await api.key("admin")
    body = {"domain": "sender.test", "verified": True, "algorithm": "ed25519"}
    added = await call(api, "POST", "/api/v1/domains", admin, body)
    assert added.status_code == 201, added.text
    [record] = [r for r in added.json()["domain"]["records"] if r["purpose"] == "dkim"]
    await api.svc.signers.reload()  # a running node picks the key up within its refresh
    hidden = payload(bcc=[{"email": "hidden@example.test", "name": "Hidden"}])
    assert (await api.send(hidden, key=await api.key("send"))).status_code == 200
    [got] = sink.messages
    assert got.rcpt_tos == [RCPT, "hidden@example.test"]
    assert b"hidden" not in got.data.lower() and b"\nbcc" not in got.data.lower()
    assert dkimpy.verify(got.data, dnsfunc=published(record))
    assert {"date", "message-id"} <= signed_names(got.data)


@pytest.mark.parametrize("path", ["/mail/v1/send", "/api/v1/send"])
async def test_send_is_also_served_at_the_seed_paths(api: Api, sink: Sink, path: str) -> None:
    response = await api.send(key=await api.key(), path=path)
    assert response.status_code == 200
    assert await sink.wait_for_async(1, timeout=5)


async def test_names_and_subjects_are_encoded_per_rfc_2047(api: Api, sink: Sink) -> None:
    body = payload(
        from_={"email": SENDER, "name": "Zoë Müller"},
        subject="Grüße, café ☕",
        text="Ünïcode body",
    )
    response = await api.send(body, key=await api.key())
    assert response.status_code == 200
    data = sink.messages[0].data
    assert data.isascii()  # 7-bit clean: encoded-words, quoted-printable body
    assert b"=?utf-8?" in data
    parsed = email.message_from_bytes(data, policy=email.policy.default)
    assert parsed["From"].addresses[0].display_name == "Zoë Müller"
    assert parsed["Subject"] == "Grüße, café ☕"
    assert parsed.get_content().rstrip() == "Ünïcode body"


async def test_idn_domains_become_a_labels_and_utf8_local_parts_are_kept(
    api: Api, sink: Sink
) -> None:
    key = await api.key()
    body = payload(to=[{"email": "user@bücher.example"}, {"email": "josé@example.test"}])
    response = await api.send(body, key=key)
    assert response.status_code == 200, response.text
    assert sink.messages[0].rcpt_tos[0] == "user@xn--bcher-kva.example"
    status = (await api.get(f"/v1/messages/{response.json()['message_id']}", key=key)).json()
    # Whether josé@ is delivered depends on the upstream's SMTPUTF8: not this test's subject.
    assert [r["email"] for r in status["recipients"]] == [
        "user@xn--bcher-kva.example",
        "josé@example.test",
    ]


# --- 202, then delivered ------------------------------------------------------------------


async def test_upstream_down_is_202_queued_then_delivered_and_visible_in_status(
    api: Api, sink: Sink
) -> None:
    key = await api.key()
    sink.stop()
    response = await api.send(key=key)

    assert response.status_code == 202, response.text
    data = response.json()
    assert data["success"] is False and data["queued"] is True
    assert data["message"] == "Email queued for retry"
    message_id = data["message_id"]
    status = (await api.get(f"/v1/messages/{message_id}", key=key)).json()
    assert status["status"] in ("queued", "deferred")

    sink.start()
    assert await sink.wait_for_async(1, timeout=10)

    async def delivered() -> bool:
        body = (await api.get(f"/v1/messages/{message_id}", key=key)).json()
        return bool(body["status"] == "delivered")

    assert await wait_until(delivered, timeout=5)
    final = (await api.get(f"/v1/messages/{message_id}", key=key)).json()
    assert final["attempts"] >= 2
    assert final["recipients"] == [
        {"email": RCPT, "status": "delivered", "response": "250 2.0.0 OK queued"}
    ]


async def test_upstream_slower_than_handoff_timeout_is_202(api_client: ApiFactory, sink: Sink):
    api = await api_client(delivery={"handoff_timeout": "0.3s"})
    sink.hang("eom", seconds=1.0, times=1)
    response = await api.send(key=await api.key())
    assert response.status_code == 202
    assert await sink.wait_for_async(1, timeout=5)


# --- 422 -----------------------------------------------------------------------------------


async def test_every_recipient_suppressed_is_422_and_nothing_is_stored(
    api: Api, sink: Sink
) -> None:
    key = await api.key("send", "suppressions")
    added = await api.http.post(
        "/api/v1/suppressions", json={"email": RCPT, "reason": "unsubscribed"}, headers=auth(key)
    )
    assert added.status_code == 201
    before = len(await query(api.svc, "SELECT id FROM message"))

    response = await api.send(key=key)

    assert response.status_code == 422
    data = response.json()
    error_shape(data, "suppressed")
    assert data["suppressed"] is True
    assert len(await query(api.svc, "SELECT id FROM message")) == before
    assert sink.messages == []


async def test_some_recipients_suppressed_sends_the_rest_and_lists_them(
    api: Api, sink: Sink
) -> None:
    key = await api.key("send", "suppressions")
    await api.http.post(
        "/api/v1/suppressions", json={"email": "gone@EXAMPLE.test"}, headers=auth(key)
    )
    body = payload(to=[{"email": RCPT}, {"email": "gone@example.TEST"}])
    response = await api.send(body, key=key)

    assert response.status_code == 200
    # `suppressed` is seed 001's boolean (the 422); the addresses have a field of their own.
    assert response.json()["suppressed_recipients"] == ["gone@example.TEST"]
    assert "suppressed" not in response.json()
    assert sink.messages[0].rcpt_tos == [RCPT]
    status = (await api.get(f"/v1/messages/{response.json()['message_id']}", key=key)).json()
    assert {r["email"]: r["status"] for r in status["recipients"]} == {
        RCPT: "delivered",
        "gone@example.TEST": "suppressed",
    }


async def test_permanent_upstream_refusal_is_422_upstream_rejected_and_bounced(
    api: Api, sink: Sink
) -> None:
    sink.fail("rcpt", "550 5.1.1 no such user")
    key = await api.key()
    response = await api.send(key=key)

    assert response.status_code == 422
    data = response.json()
    error_shape(data, "upstream_rejected")
    assert "550 5.1.1 no such user" in data["error"]
    assert data["details"] == [{"email": RCPT, "response": "550 5.1.1 no such user"}]
    status = (await api.get(f"/v1/messages/{data['message_id']}", key=key)).json()
    assert status["status"] == "bounced"


async def test_one_recipient_refused_is_200_listing_the_rejected(api: Api, sink: Sink) -> None:
    sink.fail("rcpt", "550 5.1.1 no such user", match="bad@example.test")
    body = payload(to=[{"email": RCPT}, {"email": "bad@example.test"}])
    response = await api.send(body, key=await api.key())
    assert response.status_code == 200
    assert response.json()["rejected"] == [
        {"email": "bad@example.test", "response": "550 5.1.1 no such user"}
    ]


# --- 400: routing ---------------------------------------------------------------------------


async def test_unknown_alias_id_is_400_never_a_fallback(api: Api, sink: Sink) -> None:
    response = await api.send(payload(alias_id="smtp_nope"), key=await api.key())
    assert response.status_code == 400
    error_shape(response.json(), "unknown_alias")
    assert response.json()["details"][0]["field"] == "alias_id"
    assert sink.messages == []


async def test_alias_id_naming_a_pool_routes_through_it(api: Api, sink: Sink) -> None:
    [pool] = await query(api.svc, "SELECT id FROM smtp_pool WHERE name = ?", SINK_POOL)
    response = await api.send(payload(alias_id=pool["id"]), key=await api.key())
    assert response.status_code == 200
    assert response.json()["provider"] == "smtp"


# --- 401 / 403 -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "header",
    [None, "Bearer", "Bearer msk_not_a_real_key", "Basic dXNlcjpwYXNz", "msk_without_scheme"],
)
async def test_missing_or_invalid_key_is_401(api: Api, header: str | None) -> None:
    headers = {"Authorization": header} if header else {}
    response = await api.http.post("/v1/send", json=payload(), headers=headers)
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"] == "Bearer"
    error_shape(response.json(), "unauthorized")


async def test_revoked_key_is_401(api: Api) -> None:
    admin = await api.key("keys", "send")
    key_id, secret = await api.key_record("send")
    revoked = await api.http.delete(f"/api/v1/keys/{key_id}", headers=auth(admin))
    assert revoked.status_code == 200
    assert (await api.send(key=secret)).status_code == 401


async def test_key_without_a_send_scope_is_403(api: Api, sink: Sink) -> None:
    response = await api.send(key=await api.key("suppressions"))
    assert response.status_code == 403
    error_shape(response.json(), "forbidden")
    assert sink.messages == []


async def test_pool_limited_scope_keeps_the_key_in_its_ip_pool(
    api_client: ApiFactory, sink: Sink
) -> None:
    other = Sink().start()
    try:
        pools = [
            sink_pool(sink, name="tx", ip_pool="transactional", is_default=True),
            sink_pool(other, name="mkt", ip_pool="marketing"),
        ]
        api = await api_client(pools=pools)
        ids = {row["name"]: row["id"] for row in await query(api.svc, "SELECT * FROM smtp_pool")}
        marketing = await api.key("send:marketing")

        routed = await api.send(key=marketing)  # no alias_id: its own group, not the default
        assert routed.status_code == 200
        assert len(other.messages) == 1 and sink.messages == []

        refused = await api.send(payload(alias_id=ids["tx"]), key=marketing)
        assert refused.status_code == 403
        assert "marketing" in refused.json()["error"]

        transactional = await api.send(key=await api.key("send:transactional"))
        assert transactional.status_code == 200
        assert len(sink.messages) == 1
    finally:
        other.stop()


# --- transport-level errors ---------------------------------------------------------------


async def test_declared_body_over_max_body_size_is_413_before_it_is_read(
    api_client: ApiFactory,
) -> None:
    api = await api_client(http={"max_body_size": 2048})
    host, port = api.svc.config.http.listen
    reader, writer = await asyncio.open_connection(host, port)
    # Headers only: a server that waited for the body would never answer.
    writer.write(
        b"POST /v1/send HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: 999999999\r\n\r\n"
    )
    await writer.drain()
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout=5)
    writer.close()
    assert head.startswith(b"HTTP/1.1 413 ")


async def test_chunked_body_over_max_body_size_is_cut_off_with_413(
    api_client: ApiFactory,
) -> None:
    api = await api_client(http={"max_body_size": 2048})
    key = await api.key()

    async def chunks():  # no Content-Length: httpx sends it chunked
        for _ in range(100):
            yield b" " * 1000

    response = await api.http.post("/v1/send", content=chunks(), headers=auth(key))
    assert response.status_code == 413
    error_shape(response.json(), "payload_too_large")


async def test_body_at_max_body_size_is_read(api_client: ApiFactory) -> None:
    api = await api_client(http={"max_body_size": 2048})
    body = b'{"x": "' + b"a" * (2048 - 9) + b'"}'
    assert len(body) == 2048
    response = await api.http.post("/v1/send", content=body, headers=auth(await api.key()))
    assert response.status_code == 400  # read and parsed: an unknown field, not a 413


async def test_wrong_method_and_unknown_path_answer_json(api: Api) -> None:
    wrong = await api.http.get("/v1/send")
    assert wrong.status_code == 405
    error_shape(wrong.json(), "method_not_allowed")
    missing = await api.http.get("/v1/nothing-here")
    assert missing.status_code == 404
    error_shape(missing.json(), "not_found")


async def test_send_metrics_are_observed_by_route_template(api: Api) -> None:
    before = metric("postern_http_request_seconds_count", route="/v1/send", status="200")
    received = metric("postern_messages_received_total", source="http")
    await api.send(key=await api.key())
    assert metric("postern_http_request_seconds_count", route="/v1/send", status="200") == (
        before + 1
    )
    assert metric("postern_messages_received_total", source="http") == received + 1


async def test_storage_failure_is_503_with_retry_after_never_500(api: Api, sink: Sink) -> None:
    key = await api.key()
    await api.svc.writer.stop()  # every write now fails as StorageUnavailable
    response = await api.send(key=key)
    assert response.status_code == 503
    assert response.headers["Retry-After"] == "1"
    error_shape(response.json(), "unavailable")
    assert sink.messages == []
