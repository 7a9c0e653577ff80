"""/api/v1/aliases (seed 002): a verified domain first, a verification message through the
normal intake, a single-use expiring link, and the seed's rules (only name / is_default /
ip_pool change; one default; 404, 409 while queued mail references it, 403 for the only
verified alias)."""

from __future__ import annotations

import time

import pytest
from sqlalchemy import update

from storage import mail_accounts
from storage.models import AliasToken
from tests.support.api import Api, payload
from tests.support.resources import (
    ALIASES,
    call,
    create,
    link_for,
    verified_alias,
    verified_domain,
    verify,
)
from tests.support.rows import wait_for_status
from tests.support.sink import Sink

pytestmark = pytest.mark.timeout(60)


async def test_the_domain_must_be_verified(api: Api) -> None:
    key = await api.key("aliases")
    body = {"email": "hello@yourdomain.test"}
    refused = await call(api, "POST", ALIASES, key, body)
    assert (refused.status_code, refused.json()["code"]) == (422, "domain_not_verified")
    domains_key = await api.key("domains")
    await call(
        api,
        "POST",
        "/api/v1/domains",
        domains_key,
        {"domain": "yourdomain.test", "algorithm": "ed25519"},
    )
    refused = await call(api, "POST", ALIASES, key, body)
    assert refused.status_code == 422  # added, not verified yet
    await verified_domain(api, "other.test")
    assert (await call(api, "POST", ALIASES, key, {"email": "a@other.test"})).status_code == 201


async def test_a_connected_accounts_address_needs_no_verified_domain(api: Api) -> None:
    """Seed 002: an alias "must be on a verified custom domain or be a connected IMAP
    account"."""
    key = await api.key("aliases")
    values = {
        "email": "me@personal.test", "name": "", "imap_host": "127.0.0.1", "imap_port": 993,
        "imap_security": "ssl", "smtp_host": "127.0.0.1", "smtp_port": 465,
        "smtp_security": "ssl", "tls_verify": True, "username": "me",
    }  # fmt: skip
    await mail_accounts.create_account(api.svc.db, values, lambda _: "sealed", "usr_a", 10)
    made = await call(api, "POST", ALIASES, key, {"email": "me@personal.test"})
    assert made.status_code == 201, made.text
    refused = await call(api, "POST", ALIASES, key, {"email": "other@personal.test"})
    assert refused.status_code == 422


async def test_creation_sends_a_link_that_verifies_once(api: Api, sink: Sink) -> None:
    await verified_domain(api)
    key = await api.key("aliases")
    created = await create(api, key, ip_pool="marketing")
    alias = created["alias"]
    assert set(alias) >= {"id", "email", "name", "is_default", "is_verified", "ip_pool"}
    assert alias["id"].startswith("ali_") and alias["is_verified"] is False
    assert (alias["email"], alias["ip_pool"]) == ("marketing@yourdomain.test", "marketing")
    message_id = created["verification_message_id"]
    await wait_for_status(api.svc, message_id, {"delivered"})  # stored and relayed like any mail
    got = sink.messages[0]
    assert got.mail_from == "no-reply@yourdomain.test"
    link = await link_for(sink, "marketing@yourdomain.test")
    assert link.startswith(f"http://127.0.0.1:{api.svc.config.http.listen[1]}/")

    verified = await verify(api, link)
    assert verified["alias"]["is_verified"] is True and verified["alias"]["id"] == alias["id"]
    again = await api.http.get(link.split(str(api.svc.config.http.listen[1]), 1)[1])
    assert (again.status_code, again.json()["code"]) == (404, "invalid_token")  # used
    shown = await call(api, "GET", f"{ALIASES}/{alias['id']}", key)
    assert shown.json()["alias"]["is_verified"] is True
    listed = (await call(api, "GET", ALIASES, key)).json()
    assert listed["success"] is True and [a["id"] for a in listed["aliases"]] == [alias["id"]]


async def test_bad_and_expired_tokens(api: Api, sink: Sink) -> None:
    await verified_domain(api)
    key = await api.key("aliases")
    await create(api, key)
    link = await link_for(sink, "marketing@yourdomain.test")
    for query in ("", "?token=", "?token=" + "x" * 300, "?token=caf%C3%A9"):  # malformed
        bad = await api.http.get(ALIASES + "/verify" + query)
        assert (bad.status_code, bad.json()["code"]) == (400, "invalid_token")
    # Well-formed, as /openapi.json describes a token, but naming nothing: like an unknown id.
    unknown = await api.http.get(ALIASES + "/verify?token=nope")
    assert (unknown.status_code, unknown.json()["code"]) == (404, "invalid_token")
    table = AliasToken
    await api.svc.db.transaction(
        lambda conn: conn.execute(update(table).values(expires_at=time.time() - 1))
    )
    expired = await api.http.get("/" + link.split("://", 1)[1].split("/", 1)[1])
    assert expired.status_code == 404


async def test_resend_sends_a_new_link_and_the_old_one_stops_working(api: Api, sink: Sink) -> None:
    await verified_domain(api)
    key = await api.key("aliases")
    alias_id = (await create(api, key))["alias"]["id"]
    first = await link_for(sink, "marketing@yourdomain.test")
    sink.messages.clear()
    resent = await call(api, "POST", f"{ALIASES}/{alias_id}/resend", key)
    assert resent.status_code == 200, resent.text
    body = resent.json()
    assert body["success"] is True and body["verification_message_id"]
    assert (body["alias"]["id"], body["alias"]["is_verified"]) == (alias_id, False)
    second = await link_for(sink, "marketing@yourdomain.test")
    assert second != first
    old = await api.http.get("/" + first.split("://", 1)[1].split("/", 1)[1])
    assert (old.status_code, old.json()["code"]) == (404, "invalid_token")
    assert (await verify(api, second))["alias"]["is_verified"] is True

    again = await call(api, "POST", f"{ALIASES}/{alias_id}/resend", key)
    assert (again.status_code, again.json()["code"]) == (409, "alias_verified")
    assert "verified already" in again.json()["error"]


async def test_resend_of_an_alias_not_seen_is_a_404(api: Api) -> None:
    await verified_domain(api)
    key = await api.key("aliases")
    unknown = await call(api, "POST", f"{ALIASES}/ali_nope/resend", key)
    assert (unknown.status_code, unknown.json()["code"]) == (404, "not_found")
    alias_id = (await create(api, key, email="gone@yourdomain.test"))["alias"]["id"]
    assert (await call(api, "DELETE", f"{ALIASES}/{alias_id}", key)).status_code == 200
    gone = await call(api, "POST", f"{ALIASES}/{alias_id}/resend", key)
    assert gone.status_code == 404
    sender = await api.key("send")
    assert (await call(api, "POST", f"{ALIASES}/{alias_id}/resend", sender)).status_code == 403


async def test_only_name_is_default_and_ip_pool_change(api: Api) -> None:
    await verified_domain(api)
    key = await api.key("aliases")
    alias_id = (await create(api, key))["alias"]["id"]
    path = f"{ALIASES}/{alias_id}"
    changed = await call(
        api, "PATCH", path, key, {"is_default": True, "ip_pool": "transactional", "name": "X"}
    )
    assert changed.status_code == 200
    assert {k: changed.json()["alias"][k] for k in ("is_default", "ip_pool", "name")} == {
        "is_default": True, "ip_pool": "transactional", "name": "X",
    }  # fmt: skip
    for body in ({"email": "other@yourdomain.test"}, {"is_verified": True}, {"id": "ali_x"}):
        refused = await call(api, "PATCH", path, key, body)
        assert refused.status_code == 400 and "only name, is_default and ip_pool" in refused.text
    for body in ({"name": "a\r\nBcc: x@y"}, {"ip_pool": "a b"}, {"is_default": None}):
        assert (await call(api, "PATCH", path, key, body)).status_code == 400
    assert (await call(api, "PATCH", f"{ALIASES}/ali_nope", key, {"name": "x"})).status_code == 404


async def test_one_default(api: Api) -> None:
    await verified_domain(api)
    key = await api.key("aliases")
    first = (await create(api, key, email="a@yourdomain.test", is_default=True))["alias"]
    second = (await create(api, key, email="b@yourdomain.test", is_default=True))["alias"]
    shown = {
        a["id"]: a["is_default"] for a in (await call(api, "GET", ALIASES, key)).json()["aliases"]
    }
    assert shown == {first["id"]: False, second["id"]: True}
    await call(api, "PATCH", f"{ALIASES}/{first['id']}", key, {"is_default": True})
    shown = {
        a["id"]: a["is_default"] for a in (await call(api, "GET", ALIASES, key)).json()["aliases"]
    }
    assert shown == {first["id"]: True, second["id"]: False}


async def test_duplicates_and_bad_addresses(api: Api) -> None:
    await verified_domain(api)
    key = await api.key("aliases")
    await create(api, key)
    twin = await call(api, "POST", ALIASES, key, {"email": "Marketing@YourDomain.test"})
    assert (twin.status_code, twin.json()["code"]) == (409, "conflict")
    for address in ("not-an-address", "a\r\n@yourdomain.test", "a@yourdomain.test\x00"):
        assert (await call(api, "POST", ALIASES, key, {"email": address})).status_code == 400


async def test_delete_rules(api: Api, sink: Sink) -> None:
    await verified_domain(api)
    key = await api.key("aliases", "send")
    assert (await call(api, "DELETE", f"{ALIASES}/ali_nope", key)).status_code == 404
    only = await verified_alias(api, sink, key, "only@yourdomain.test")
    last = await call(api, "DELETE", f"{ALIASES}/{only}", key)
    assert (last.status_code, last.json()["code"]) == (403, "last_verified_alias")

    busy = await verified_alias(api, sink, key, "busy@yourdomain.test")
    sink.fail("rcpt", "451 4.3.0 not now")  # the message stays deferred, naming the alias
    sent = await api.send(payload(alias_id=busy), key=key)
    assert sent.status_code == 202, sent.text
    in_use = await call(api, "DELETE", f"{ALIASES}/{busy}", key)
    assert (in_use.status_code, in_use.json()["code"]) == (409, "alias_in_use")

    spare = (await create(api, key, email="spare@yourdomain.test"))["alias"]["id"]
    assert (await call(api, "DELETE", f"{ALIASES}/{spare}", key)).json() == {"success": True}
    assert (await call(api, "GET", f"{ALIASES}/{spare}", key)).status_code == 404


async def test_scope_aliases_is_needed(api: Api) -> None:
    sender = await api.key("send")
    assert (await call(api, "GET", ALIASES, sender)).status_code == 403
    assert (await call(api, "POST", ALIASES, sender, {"email": "a@b.test"})).status_code == 403
    assert (await call(api, "GET", ALIASES, None)).status_code == 401
