"""POST /api/v1/smtp-pools/{id}/test (seed 000) and /api/v1/smtp/configs/{id}/test (seed
003): the connection test through the API, each failure code, the test message sent through
the normal intake, and SSRF refusals at test time."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from storage import pools
from tests.support.api import Api, ApiFactory
from tests.support.processes import free_port
from tests.support.resources import POOLS, call, create_pool
from tests.support.rows import wait_for_status
from tests.support.sink import Sink

pytestmark = pytest.mark.timeout(60)
CONFIGS = "/api/v1/smtp/configs"


@pytest.fixture
def auth_sink() -> Iterator[Sink]:
    running = Sink(auth=("user", "right")).start()
    try:
        yield running
    finally:
        running.stop()


async def test_success_without_a_body(api: Api, sink: Sink) -> None:
    key = await api.key("pools")
    pool_id = (await create_pool(api, key, sink))["id"]
    for prefix in (POOLS, "/api/smtp-pools"):
        response = await call(api, "POST", f"{prefix}/{pool_id}/test", key)
        assert response.status_code == 200
        body = response.json()
        assert body["success"] is True and body["message"] == "SMTP connection successful"
        assert isinstance(body["latencyMs"], int) and "error" not in body
    assert sink.messages == []  # EHLO and QUIT only


async def test_with_a_recipient_a_test_message_goes_through_the_pool(api: Api, sink: Sink) -> None:
    key = await api.key("pools", "send")
    other = Sink().start()
    try:
        pool_id = (await create_pool(api, key, other, from_email="ops@sender.test"))["id"]
        response = await call(
            api, "POST", f"{POOLS}/{pool_id}/test", key, {"recipient": "me@example.test"}
        )
        body = response.json()
        assert body["success"] is True and body["message_id"].startswith("msg_")
        row = await wait_for_status(api.svc, body["message_id"], {"delivered"})
        assert row["last_pool"] == "relay"  # through this pool, not the default one
        assert await other.wait_for_async(1)
        got = other.messages[0]
        assert got.rcpt_tos == ["me@example.test"] and got.mail_from == "ops@sender.test"
        assert b"Postern test message through pool relay" in got.data
        assert sink.messages == []
        status = await api.get(f"/v1/messages/{body['message_id']}", key=key)
        assert status.status_code == 200 and status.json()["tags"] == ["pool-test"]
    finally:
        other.stop()


async def test_auth_failure(api: Api, auth_sink: Sink) -> None:
    key = await api.key("pools")
    pool_id = (await create_pool(api, key, auth_sink, username="user", password="wrong"))["id"]
    body = (await call(api, "POST", f"{POOLS}/{pool_id}/test", key)).json()
    assert (body["success"], body["code"]) == (False, "smtp_auth_error")
    assert body["message"] == "SMTP authentication failed" and "535" in body["error"]
    await call(api, "PATCH", f"{POOLS}/{pool_id}", key, {"password": "right"})
    assert (await call(api, "POST", f"{POOLS}/{pool_id}/test", key)).json()["success"]


async def test_connection_failure(api: Api) -> None:
    key = await api.key("pools")
    pool_id = (await create_pool(api, key, port=free_port()))["id"]
    body = (await call(api, "POST", f"{POOLS}/{pool_id}/test", key)).json()
    assert (body["success"], body["code"]) == (False, "smtp_connection_error")
    assert body["message"] == "SMTP connection failed" and "connect 127.0.0.1:" in body["error"]


async def test_tls_failure(api: Api, sink: Sink) -> None:
    key = await api.key("pools")
    pool_id = (await create_pool(api, key, sink, encryption="tls"))["id"]  # no STARTTLS there
    body = (await call(api, "POST", f"{POOLS}/{pool_id}/test", key)).json()
    assert (body["success"], body["code"]) == (False, "smtp_tls_error")


async def test_timeout(api_client: ApiFactory, sink: Sink) -> None:
    api = await api_client(delivery={"connect_timeout": "0.5s"})
    key = await api.key("pools")
    pool_id = (await create_pool(api, key, sink))["id"]
    sink.hang("connect", seconds=5)
    body = (await call(api, "POST", f"{POOLS}/{pool_id}/test", key)).json()
    assert (body["success"], body["code"]) == (False, "timeout")


async def test_a_stored_host_now_in_a_denied_network_is_refused_at_test_time(api: Api) -> None:
    key = await api.key("pools", "send")
    # Written behind the API's back (an old row, or a name that now resolves elsewhere).
    record = await pools.create_pool(
        api.svc.db,
        {"name": "imds", "host": "169.254.169.254", "port": 80, "encryption": "none"},
        lambda _: "",
    )
    for path in (f"{POOLS}/{record.id}/test", f"{CONFIGS}/{record.id}/test"):
        refused = await call(api, "POST", path, key, {"recipient": "me@example.test"})
        assert (refused.status_code, refused.json()["code"]) == (400, "host_not_allowed")


async def test_unknown_pool_and_bad_recipient(api: Api, sink: Sink) -> None:
    key = await api.key("pools")
    assert (await call(api, "POST", f"{POOLS}/smtp_nope/test", key)).status_code == 404
    pool_id = (await create_pool(api, key, sink))["id"]
    bad = await call(api, "POST", f"{POOLS}/{pool_id}/test", key, {"recipient": "a\r\nb@x"})
    assert bad.status_code == 400


async def test_mailsage_test_sends_and_names_failures_in_its_codes(
    api: Api, sink: Sink, auth_sink: Sink
) -> None:
    key = await api.key("pools", "send")
    ok = await call(
        api, "POST", CONFIGS, key,
        {"name": "ok", "host": "127.0.0.1", "port": sink.port, "use_tls": False,
         "from_email": "noreply@sender.test"},
    )  # fmt: skip
    sent = await call(
        api, "POST", f"{CONFIGS}/{ok.json()['id']}/test", key, {"recipient": "t@x.test"}
    )
    assert sent.status_code == 200
    assert sent.json()["message"] == "Test email sent successfully"
    assert sent.json()["delivery_id"].startswith("msg_")
    assert await sink.wait_for_async(1)

    bad = await call(
        api, "POST", CONFIGS, key,
        {"name": "bad", "host": "127.0.0.1", "port": auth_sink.port, "use_tls": False,
         "username": "user", "password": "wrong", "from_email": "noreply@sender.test"},
    )  # fmt: skip
    failed = await call(
        api, "POST", f"{CONFIGS}/{bad.json()['id']}/test", key, {"recipient": "t@x.test"}
    )
    assert failed.status_code == 400
    assert failed.json()["code"] == "smtp_auth_error"
    assert failed.json()["error"] == "SMTP authentication failed"
    assert "535" in failed.json()["message"]

    closed = await call(
        api, "POST", CONFIGS, key,
        {"name": "closed", "host": "127.0.0.1", "port": free_port(), "use_tls": False,
         "from_email": "noreply@sender.test"},
    )  # fmt: skip
    failed = await call(
        api, "POST", f"{CONFIGS}/{closed.json()['id']}/test", key, {"recipient": "t@x.test"}
    )
    assert (failed.status_code, failed.json()["code"]) == (400, "smtp_connection_error")
    assert failed.json()["error"] == "SMTP connection failed"
    missing = await call(api, "POST", f"{CONFIGS}/{ok.json()['id']}/test", key, {})
    assert missing.status_code == 400  # recipient is required in this view


async def test_the_test_message_and_the_sender_policy(api_client: ApiFactory, sink: Sink) -> None:
    api = await api_client(policy={"sender": "verified"})
    key = await api.key("pools", "send")
    own = (await create_pool(api, key, sink, name="own"))["id"]  # From postern@<hostname>
    sent = await call(api, "POST", f"{POOLS}/{own}/test", key, {"recipient": "me@example.test"})
    assert sent.status_code == 200 and sent.json()["message_id"]
    assert await sink.wait_for_async(1)
    assert sink.messages[0].mail_from == "postern@postern.test"
    theirs = await create_pool(api, key, sink, name="theirs", from_email="ops@unverified.test")
    refused = await call(
        api, "POST", f"{POOLS}/{theirs['id']}/test", key, {"recipient": "me@example.test"}
    )
    assert (refused.status_code, refused.json()["code"]) == (403, "unverified_sender")


# --- the test message: success only once the upstream has accepted it -------------------------


async def test_a_test_message_the_upstream_refuses_is_a_400_naming_its_reply(
    api: Api, sink: Sink
) -> None:
    key = await api.key("pools", "send")
    pool_id = (await create_pool(api, key, sink))["id"]
    sink.fail("rcpt", "550 5.7.1 relaying denied")  # not 5.1.x: the address stays usable
    for path in (f"{POOLS}/{pool_id}/test", f"{CONFIGS}/{pool_id}/test"):
        refused = await call(api, "POST", path, key, {"recipient": "me@example.test"})
        assert refused.status_code == 400, refused.text
        body = refused.json()
        assert body["code"] == "upstream_rejected" and body["message_id"].startswith("msg_")
        assert "550 5.7.1 relaying denied" in body["error"] and body["message"].startswith("550")


async def test_a_test_message_not_accepted_within_the_handoff_says_it_is_queued(
    api_client: ApiFactory, sink: Sink
) -> None:
    api = await api_client(delivery={"handoff_timeout": "0.5s", "command_timeout": "5s"})
    key = await api.key("pools", "send")
    pool_id = (await create_pool(api, key, sink))["id"]
    sink.fail("mail", "451 4.3.0 not now", times=1)  # deferred at once
    pending = await call(api, "POST", f"{POOLS}/{pool_id}/test", key, {"recipient": "a@x.test"})
    assert pending.status_code == 202, pending.text
    body = pending.json()
    assert (body["success"], body["queued"]) == (False, True)
    assert body["message_id"].startswith("msg_") and "handoff" in body["message"]

    sink.hang("mail", seconds=2)  # no answer at all within the handoff
    pending = await call(api, "POST", f"{CONFIGS}/{pool_id}/test", key, {"recipient": "b@x.test"})
    assert pending.status_code == 202, pending.text
    body = pending.json()
    assert body["queued"] is True and body["message_id"] == body["delivery_id"]
    assert body["message_id"].startswith("msg_")
