"""/api/v1/smtp-pools (and /api/smtp-pools), seed 000: CRUD, config-file pools shown and
read-only, one default, field checks, SSRF refusals, and the live pools following every
change."""

from __future__ import annotations

from typing import Any

import pytest

from tests.support.api import Api, ApiFactory, payload
from tests.support.resources import (
    POOLS,
    call,
    create_pool,
    live_pools,
    pool_body,
    verified_alias,
    verified_domain,
)
from tests.support.rows import wait_for_status
from tests.support.sink import Sink

pytestmark = pytest.mark.timeout(60)

SEED_FIELDS = {"id", "name", "host", "port", "username", "encryption", "is_active", "created_at"}
CONFIGS = "/api/v1/smtp/configs"
OUR_FIELDS = {"ip_pool", "priority", "max_connections", "is_default", "from_email", "tls_verify"}


async def test_create_list_get_patch_delete(api: Api) -> None:
    key = await api.key("pools")
    created = await create_pool(
        api, key, name="Amazon SES — us-east-1", host="localhost", port=587,
        username="AKIAIOSFODNN7EXAMPLE", password="pw", encryption="tls",
    )  # fmt: skip
    assert set(created) >= SEED_FIELDS | OUR_FIELDS
    assert created["id"].startswith("smtp_") and created["source"] == "api"
    assert created["created_at"].endswith("Z") and created["has_password"] is True
    assert (created["ip_pool"], created["priority"], created["is_default"]) == (
        "transactional", 100, False,
    )  # fmt: skip
    pool_id = created["id"]
    for prefix in (POOLS, "/api/smtp-pools"):
        listed = await call(api, "GET", prefix, key)
        assert listed.status_code == 200
        [shown] = [p for p in listed.json() if p["id"] == pool_id]
        assert shown == created
        assert (await call(api, "GET", f"{prefix}/{pool_id}", key)).json() == created

    changed = await call(api, "PATCH", f"/api/smtp-pools/{pool_id}", key, {"priority": 5})
    assert changed.status_code == 200
    assert changed.json() == {**created, "priority": 5}
    assert live_pools(api)["Amazon SES — us-east-1"].priority == 5

    assert (await call(api, "DELETE", f"{POOLS}/{pool_id}", key)).json() == {"success": True}
    assert (await call(api, "GET", f"{POOLS}/{pool_id}", key)).status_code == 404
    assert (await call(api, "DELETE", f"{POOLS}/{pool_id}", key)).status_code == 404
    assert "Amazon SES — us-east-1" not in live_pools(api)


async def test_username_and_password_are_optional(api: Api) -> None:
    key = await api.key("pools")
    created = await create_pool(api, key)
    assert (created["username"], created["has_password"]) == ("", False)
    assert live_pools(api)["relay"].password == ""


async def test_the_password_can_be_replaced_and_removed(api: Api) -> None:
    key = await api.key("pools")
    pool_id = (await create_pool(api, key, username="u", password="one"))["id"]
    await call(api, "PATCH", f"{POOLS}/{pool_id}", key, {"password": "two"})
    assert live_pools(api)["relay"].password == "two"
    kept = await call(api, "PATCH", f"{POOLS}/{pool_id}", key, {"priority": 1})
    assert kept.json()["has_password"] and live_pools(api)["relay"].password == "two"
    gone = await call(api, "PATCH", f"{POOLS}/{pool_id}", key, {"password": None})
    assert gone.json()["has_password"] is False and live_pools(api)["relay"].password == ""


async def test_config_file_pools_are_listed_marked_and_read_only(
    api_client: ApiFactory, sink: Sink
) -> None:
    api = await api_client()  # the default sink pool comes from the config
    key = await api.key("pools")
    [config_pool] = (await call(api, "GET", POOLS, key)).json()
    assert config_pool["source"] == "config" and config_pool["name"] == "sink"
    path = f"{POOLS}/{config_pool['id']}"
    for method, body in (("PATCH", {"priority": 1}), ("DELETE", None)):
        refused = await call(api, method, path, key, body)
        assert refused.status_code == 409
        assert refused.json()["code"] == "config_pool" and "config file" in refused.json()["error"]
    mailsage = await call(api, "PUT", f"/api/v1/smtp/configs/{config_pool['id']}", key, {"port": 1})
    assert mailsage.status_code == 409
    assert (await call(api, "GET", path, key)).json() == config_pool


async def test_only_one_default(api: Api) -> None:
    key = await api.key("pools")
    first = await create_pool(api, key, name="a", is_default=True)
    second = await create_pool(api, key, name="b", is_default=True)
    pools = {p["name"]: p["is_default"] for p in (await call(api, "GET", POOLS, key)).json()}
    assert pools == {"sink": False, "a": False, "b": True}
    await call(api, "PATCH", f"{POOLS}/{first['id']}", key, {"is_default": True})
    assert [p.name for p in live_pools(api).values() if p.is_default] == ["a"]
    assert second["id"]


async def test_a_config_default_cannot_be_taken_over(api_client: ApiFactory, sink: Sink) -> None:
    api = await api_client(pool={"is_default": True})
    key = await api.key("pools")
    refused = await call(api, "POST", POOLS, key, pool_body(name="b", is_default=True))
    assert refused.status_code == 409 and refused.json()["code"] == "config_pool"


async def test_names_are_unique(api: Api) -> None:
    key = await api.key("pools")
    await create_pool(api, key, name="a")
    taken = await call(api, "POST", POOLS, key, pool_body(name="a"))
    assert (taken.status_code, taken.json()["code"]) == (409, "conflict")
    taken = await call(api, "POST", POOLS, key, pool_body(name="sink"))  # the config pool's
    assert taken.status_code == 409


@pytest.mark.parametrize(
    "fields",
    [
        {"encryption": "starttls"},
        {"port": 0},
        {"port": "587"},
        {"port": 70000},
        {"host": "smtp.example.com\r\nRCPT TO:<x@y>"},
        {"host": "a b"},
        {"host": "smtp.example.com\n"},
        {"host": "[::1"},
        {"host": ""},
        {"name": ""},
        {"name": "a\nb"},
        {"ip_pool": "has space"},
        {"max_connections": 0},
        {"from_email": "not-an-address"},
        {"password": "a\r\nb"},
        {"unknown": 1},
        {"username": "u", "password": "p", "host": "smtp.example.com", "encryption": "none"},
    ],
)
async def test_bad_fields_are_400(api: Api, fields: dict[str, Any]) -> None:
    key = await api.key("pools")
    response = await call(api, "POST", POOLS, key, pool_body(**fields))
    assert response.status_code == 400, response.text
    assert response.json()["code"] == "invalid_request"


async def test_patch_refuses_nulls_and_bad_fields(api: Api) -> None:
    key = await api.key("pools")
    pool_id = (await create_pool(api, key))["id"]
    for body in ({"port": None}, {"encryption": "starttls"}, {"host": "x y"}):
        assert (await call(api, "PATCH", f"{POOLS}/{pool_id}", key, body)).status_code == 400
    # AUTH in clear off loopback: a 400 when the body says it all (as /openapi.json states),
    # a 409 when it comes of the pool's stored encryption ("none" here).
    clear = {"username": "u", "host": "smtp.example.com"}
    conflict = await call(api, "PATCH", f"{POOLS}/{pool_id}", key, clear)
    assert (conflict.status_code, conflict.json()["code"]) == (409, "conflict"), conflict.text
    whole = {**clear, "encryption": "none"}
    assert (await call(api, "PATCH", f"{POOLS}/{pool_id}", key, whole)).status_code == 400


async def test_scope_pools_is_needed(api: Api) -> None:
    sender = await api.key("send")
    assert (await call(api, "GET", POOLS, sender)).status_code == 403
    assert (await call(api, "POST", POOLS, sender, pool_body())).status_code == 403
    assert (await call(api, "GET", POOLS, None)).status_code == 401
    admin = await api.key("admin")
    assert (await call(api, "GET", POOLS, admin)).status_code == 200


@pytest.mark.parametrize(
    "host",
    [
        "169.254.169.254",
        "169.254.1.1",
        "metadata.google.internal",
        "fe80::1",
        "[fe80::1]",
        "2852039166",  # 169.254.169.254 in decimal
        "100.100.100.200",
    ],
)
async def test_ssrf_hosts_are_refused_on_create_and_patch(api: Api, host: str) -> None:
    key = await api.key("pools")
    refused = await call(api, "POST", POOLS, key, pool_body(host=host))
    assert refused.status_code == 400, refused.text
    assert refused.json()["code"] == "host_not_allowed"
    pool_id = (await create_pool(api, key))["id"]
    refused = await call(api, "PATCH", f"{POOLS}/{pool_id}", key, {"host": host})
    assert (refused.status_code, refused.json()["code"]) == (400, "host_not_allowed")
    assert live_pools(api)["relay"].host == "127.0.0.1"


async def test_loopback_is_allowed_and_operators_can_deny_more(api_client: ApiFactory) -> None:
    api = await api_client(security={"deny_networks": ["10.0.0.0/8"]})
    key = await api.key("pools")
    for name, host in (("v4", "127.0.0.1"), ("name", "localhost"), ("private", "192.168.0.10")):
        await create_pool(api, key, name=name, host=host)
    v6 = await create_pool(api, key, name="v6", host="[::1]")
    assert v6["host"] == "::1"  # as the connection wants it
    refused = await call(api, "POST", POOLS, key, pool_body(name="lan", host="10.1.2.3"))
    assert refused.json()["code"] == "host_not_allowed" and "10.0.0.0/8" in refused.text


async def test_a_host_that_does_not_resolve_yet_can_be_stored(api: Api) -> None:
    key = await api.key("pools")
    created = await create_pool(api, key, host="email-smtp.us-east-1.amazonaws.com.invalid")
    assert created["host"] == "email-smtp.us-east-1.amazonaws.com.invalid"


async def test_deactivating_and_regrouping_reach_the_live_pools(api: Api) -> None:
    key = await api.key("pools")
    pool_id = (await create_pool(api, key, ip_pool="marketing", max_connections=2))["id"]
    live = live_pools(api)["relay"]
    assert (live.ip_pool, live.max_connections, live.is_active) == ("marketing", 2, True)
    await call(api, "PATCH", f"{POOLS}/{pool_id}", key, {"is_active": False, "ip_pool": "news"})
    live = live_pools(api)["relay"]
    assert (live.ip_pool, live.is_active) == ("news", False)


async def test_pools_changed_elsewhere_reach_the_live_pools(api: Api) -> None:
    """Another node (same database) or a script: the watcher reloads within seconds."""
    from storage import pools
    from tests.support.service import wait_until

    api.svc.loops.every(0.05, api.svc.pool_sync.look, "fast look")  # the node's: every 5 s
    record = await pools.create_pool(
        api.svc.db, pool_body(name="elsewhere", port=2600), lambda _: ""
    )
    assert await wait_until(lambda: "elsewhere" in live_pools(api), timeout=5)
    await pools.update_pool(api.svc.db, record.id, {"port": 2601})
    assert await wait_until(lambda: live_pools(api)["elsewhere"].port == 2601, timeout=5)


async def test_deleting_a_pool_that_queued_mail_needs_is_refused_unless_moved(
    api_client: ApiFactory, sink: Sink
) -> None:
    api = await api_client(pools=[])
    key = await api.key("pools", "send")
    other = Sink().start()
    try:
        old = (await create_pool(api, key, other, name="old", ip_pool="marketing"))["id"]
        new = (await create_pool(api, key, sink, name="new", ip_pool="transactional"))["id"]
        other.fail("mail", "451 4.3.0 not now")  # the message stays queued for `old`
        sent = await api.send(payload(alias_id=old), key=key)
        assert sent.status_code == 202, sent.text
        message_id = sent.json()["message_id"]

        for path in (f"{POOLS}/{old}", f"{CONFIGS}/{old}"):
            in_use = await call(api, "DELETE", path, key)
            assert (in_use.status_code, in_use.json()["code"]) == (409, "pool_in_use")
            assert "move_to" in in_use.json()["error"]
        for target in ("smtp_nope", old):
            bad = await call(api, "DELETE", f"{POOLS}/{old}?move_to={target}", key)
            assert (bad.status_code, bad.json()["details"][0]["field"]) == (400, "move_to")
        assert (await call(api, "GET", f"{POOLS}/{old}", key)).status_code == 200  # still there

        moved = await call(api, "DELETE", f"{POOLS}/{old}?move_to={new}", key)
        assert moved.status_code == 200, moved.text
        assert moved.json() == {"success": True, "moved": 1}
        row = await wait_for_status(api.svc, message_id, {"delivered"})
        assert (row["pool_id"], row["last_pool"]) == (new, "new")
        assert len(sink.messages) == 1
    finally:
        other.stop()


async def test_the_last_pool_of_a_group_that_queued_mail_names_is_in_use(
    api_client: ApiFactory, sink: Sink
) -> None:
    api = await api_client(pools=[])
    key = await api.key("pools", "send", "aliases", "domains")
    other = Sink().start()
    try:
        await create_pool(api, key, sink, name="main", ip_pool="transactional")
        news = (await create_pool(api, key, other, name="news", ip_pool="newsletter"))["id"]
        await verified_domain(api, "brand.test")
        alias_id = await verified_alias(api, sink, key, "news@brand.test", ip_pool="newsletter")
        other.fail("mail", "451 4.3.0 not now")
        sent = await api.send(payload(alias_id=alias_id), key=key)
        assert sent.status_code == 202, sent.text
        in_use = await call(api, "DELETE", f"{CONFIGS}/{news}", key)
        assert (in_use.status_code, in_use.json()["code"]) == (409, "pool_in_use")
        # A second pool in the group takes the mail over: the first may go.
        spare = (await create_pool(api, key, other, name="spare", ip_pool="newsletter"))["id"]
        deleted = await call(api, "DELETE", f"{CONFIGS}/{news}", key)
        assert deleted.json() == {"message": "SMTP configuration deleted successfully"}
        in_use = await call(api, "DELETE", f"{POOLS}/{spare}", key)
        assert (in_use.status_code, in_use.json()["code"]) == (409, "pool_in_use")
    finally:
        other.stop()
