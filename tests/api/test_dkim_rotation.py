"""/api/v1/domains/{id}/dkim-keys: a DKIM key rotated with no gap in signing. A new key is
pending beside the active one; it is activated only once a real DNS server on loopback
answers its record; one rotation at a time; a pending key can be cancelled."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from storage import dkim_keys
from storage.shares import put_share
from tests.support.api import Api, ApiFactory
from tests.support.dnsserver import DnsServer
from tests.support.people import make_user, sign_in
from tests.support.resources import call

pytestmark = pytest.mark.timeout(60)
DOMAINS = "/api/v1/domains"


@pytest.fixture
def dns() -> Iterator[DnsServer]:
    with DnsServer(negative_ttl=300) as server:
        yield server


def _txt(value: str) -> str:
    return " ".join(f'"{value[i : i + 255]}"' for i in range(0, len(value), 255))


async def _domain(api: Api, key: str) -> dict[str, Any]:
    body = {"domain": "example.test", "algorithm": "ed25519", "verified": True}
    response = await call(api, "POST", DOMAINS, key, body)
    assert response.status_code == 201, response.text
    return dict(response.json()["domain"])


async def test_rotation_waits_for_the_record_then_swaps_keys(
    api_client: ApiFactory, dns: DnsServer
) -> None:
    api = await api_client(dns={"nameservers": [dns.nameserver]})
    key = await api.key("domains", "admin")
    domain = await _domain(api, key)
    keys_path = f"{DOMAINS}/{domain['id']}/dkim-keys"
    [first] = (await call(api, "GET", keys_path, key)).json()["keys"]
    assert first["status"] == "active"

    started = await call(api, "POST", keys_path, key, {"algorithm": "ed25519"})
    assert started.status_code == 201, started.text
    new = started.json()["key"]
    assert new["status"] == "pending" and new["selector"] != first["selector"]
    assert new["record"]["name"] == f"{new['selector']}._domainkey.example.test"

    again = await call(api, "POST", keys_path, key, {})
    assert again.status_code == 409 and again.json()["code"] == "rotation_in_progress"

    activate = f"{keys_path}/{new['selector']}/activate"
    early = await call(api, "POST", activate, key)
    assert early.status_code == 409 and early.json()["code"] == "dkim_record_not_published"
    active = await dkim_keys.active_key(api.svc.db, api.svc.box, "example.test")
    assert active is not None and active.record.selector == first["selector"]  # still signs

    dns.add(new["record"]["name"], "TXT", _txt(new["record"]["value"]))
    done = await call(api, "POST", activate, key)
    assert done.status_code == 200, done.text
    assert done.json()["key"]["status"] == "active"
    listed = {
        k["selector"]: k["status"] for k in (await call(api, "GET", keys_path, key)).json()["keys"]
    }
    assert listed == {new["selector"]: "active", first["selector"]: "retired"}
    active = await dkim_keys.active_key(api.svc.db, api.svc.box, "example.test")
    assert active is not None and active.record.selector == new["selector"]

    twice = await call(api, "POST", activate, key)
    assert twice.status_code == 409 and twice.json()["code"] == "dkim_key_not_pending"


async def test_a_rotation_can_be_cancelled(api: Api) -> None:
    key = await api.key("domains", "admin")
    domain = await _domain(api, key)
    keys_path = f"{DOMAINS}/{domain['id']}/dkim-keys"
    new = (await call(api, "POST", keys_path, key, {"algorithm": "rsa"})).json()["key"]
    assert new["algorithm"] == "rsa"
    cancelled = await call(api, "POST", f"{keys_path}/{new['selector']}/cancel", key)
    assert cancelled.status_code == 200 and cancelled.json()["key"]["status"] == "retired"
    restarted = await call(api, "POST", keys_path, key, {"algorithm": "ed25519"})
    assert restarted.status_code == 201  # the cancelled one no longer blocks a rotation


async def test_bad_requests(api: Api) -> None:
    key = await api.key("domains", "admin")
    domain = await _domain(api, key)
    keys_path = f"{DOMAINS}/{domain['id']}/dkim-keys"
    for selector in ("nope", "bad selector!", "x" * 300):
        response = await call(api, "POST", f"{keys_path}/{selector}/activate", key)
        assert response.status_code == 404, (selector, response.text)
        assert response.json()["code"] == "not_found"
    wrong = await call(api, "POST", keys_path, key, {"algorithm": "dsa"})
    assert wrong.status_code == 400 and wrong.json()["code"] == "invalid_request"
    extra = await call(api, "POST", keys_path, key, {"bits": 4096})
    assert extra.status_code == 400
    assert (await call(api, "GET", f"{DOMAINS}/dom_nope/dkim-keys", key)).status_code == 404
    others = await api.key("send")  # no `domains` scope
    assert (await call(api, "GET", keys_path, others)).status_code == 403


async def test_a_rotation_started_with_no_active_key_stays_pending(api: Api) -> None:
    """Even a domain signing with no key gets a pending one: DNS has not seen it yet."""
    key = await api.key("domains", "admin")
    domain = await _domain(api, key)
    keys_path = f"{DOMAINS}/{domain['id']}/dkim-keys"
    [first] = (await call(api, "GET", keys_path, key)).json()["keys"]
    await dkim_keys.retire_key(api.svc.db, "example.test", first["selector"])
    new = (await call(api, "POST", keys_path, key, {"algorithm": "ed25519"})).json()["key"]
    assert new["status"] == "pending"
    assert await dkim_keys.active_key(api.svc.db, api.svc.box, "example.test") is None


async def test_a_key_changed_meanwhile_is_not_changed_again(api: Api) -> None:
    """Activate and cancel change a key only if it is still pending when they write (a
    cancel during an activation's DNS lookup, or the reverse, must not win twice)."""
    key = await api.key("domains", "admin")
    domain = await _domain(api, key)
    keys_path = f"{DOMAINS}/{domain['id']}/dkim-keys"
    new = (await call(api, "POST", keys_path, key, {"algorithm": "ed25519"})).json()["key"]
    await dkim_keys.retire_key(api.svc.db, "example.test", new["selector"])  # cancelled
    with pytest.raises(dkim_keys.DkimKeyMoved):
        await dkim_keys.activate_key(api.svc.db, "example.test", new["selector"], "pending")
    with pytest.raises(dkim_keys.DkimKeyMoved):
        await dkim_keys.retire_key(api.svc.db, "example.test", new["selector"], "pending")
    active = await dkim_keys.active_key(api.svc.db, api.svc.box, "example.test")
    assert active is not None and active.record.selector != new["selector"]


async def test_a_member_it_is_shared_with_may_not_rotate_or_remove(api: Api) -> None:
    """A member has no `domains` scope at all (403 before anything); a share does not give
    one, and domain_ops.may_manage would refuse a member's share besides."""
    admin_user = await make_user(api.svc.db, "boss@example.test", "admin")
    member_user = await make_user(api.svc.db, "member@example.test", "member")
    admin = await sign_in(str(api.http.base_url), admin_user)
    member = await sign_in(str(api.http.base_url), member_user)
    try:
        made = await admin.call("POST", DOMAINS, json={"domain": "mine.test"})
        assert made.status_code == 201, made.text
        domain_id = made.json()["domain"]["id"]
        await api.svc.db.transaction(
            lambda c: put_share(c, "domain", domain_id, member_user.id, "member", 1.0, None)
        )
        for method, path in (
            ("POST", f"{DOMAINS}/{domain_id}/dkim-keys"),
            ("DELETE", f"{DOMAINS}/{domain_id}"),
        ):
            refused = await member.call(method, path, json={} if method == "POST" else None)
            assert refused.status_code == 403, refused.text
        rotated = await admin.call("POST", f"{DOMAINS}/{domain_id}/dkim-keys", json={})
        assert rotated.status_code == 201, rotated.text
    finally:
        await admin.http.aclose()
        await member.http.aclose()
