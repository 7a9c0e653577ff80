"""/api/v1/warmup over the real HTTP door: a pool's warmup with the pools' rights, an
account's with the account's (its owner yes, another member 404, a send key 403), the
body's checks, and the document."""

from __future__ import annotations

from typing import Any

import pytest

from storage import mail_accounts
from storage.pools import config_pool_id
from storage.shares import put_share
from tests.support.api import Api, auth
from tests.support.people import Person, make_user, sign_in
from tests.support.service import SINK_POOL

POOL = f"/api/v1/warmup/pool/{config_pool_id(SINK_POOL)}"
VALUES = {
    "email": "me@personal.test", "name": "", "imap_host": "127.0.0.1", "imap_port": 993,
    "imap_security": "ssl", "smtp_host": "127.0.0.1", "smtp_port": 465,
    "smtp_security": "ssl", "tls_verify": True, "username": "me",
}  # fmt: skip


async def test_a_pools_warmup_set_shown_paused_resumed_cleared(api: Api) -> None:
    key = await api.key("pools")
    made = await api.http.put(POOL, json={"preset": "aggressive", "timezone": "Asia/Tokyo"},
                              headers=auth(key))  # fmt: skip
    assert made.status_code == 200, made.text
    body = made.json()
    assert body["kind"] == "pool" and body["name"] == SINK_POOL
    assert body["schedule"] == {
        "preset": "aggressive", "start": None, "step": None, "cap": None, "days": 14,
        "description": "preset aggressive",
    }  # fmt: skip
    assert (body["status"], body["day"], body["daily_limit"], body["hourly_limit"]) == (
        "active", 1, 50, 4,
    )  # fmt: skip
    assert body["timezone"] == "Asia/Tokyo" and body["sent_today"] == 0
    pool = (await api.get(f"/api/v1/smtp-pools/{body['id']}", key=key)).json()
    assert pool["warmup"] == {"status": "active", "daily_limit": 50, "sent_today": 0}
    [listed_pool] = (await api.get("/api/v1/smtp-pools", key=key)).json()
    assert listed_pool["warmup"]["status"] == "active"
    listed = await api.get("/api/v1/warmup/pool", key=key)
    assert [w["id"] for w in listed.json()["warmups"]] == [body["id"]]
    paused = await api.http.post(POOL + "/pause", json={"reason": "checking the lists"},
                                 headers=auth(key))  # fmt: skip
    assert (paused.json()["status"], paused.json()["paused_reason"]) == (
        "paused", "checking the lists",
    )  # fmt: skip
    resumed = await api.http.post(POOL + "/resume", headers=auth(key))
    assert resumed.json()["status"] == "active"
    ramp = {"start": 10, "step": 5, "cap": 30, "start_day": "2099-01-01"}
    later = await api.http.put(POOL, json=ramp, headers=auth(key))
    assert (later.json()["status"], later.json()["daily_limit"]) == ("not_started", None)
    assert (await api.http.delete(POOL, headers=auth(key))).json() == {"success": True}
    assert (await api.get(POOL, key=key)).status_code == 404
    assert (await api.http.delete(POOL, headers=auth(key))).status_code == 404
    pool = (await api.get(f"/api/v1/smtp-pools/{body['id']}", key=key)).json()
    assert pool["warmup"] is None


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({}, "preset"),
        ({"preset": "reckless"}, "preset"),
        ({"preset": "aggressive", "start": 5, "cap": 9}, "preset"),
        ({"start": 5}, "preset"),
        ({"start": 1, "step": 1, "cap": 5000}, "step"),
        ({"start": 10, "step": 1, "cap": 5}, "cap"),
        ({"preset": "aggressive", "timezone": "Mars/Base"}, "timezone"),
        ({"preset": "aggressive", "start_day": "2026-02-30"}, "start_day"),
        ({"preset": "aggressive", "colour": "red"}, "colour"),
    ],
)
async def test_bad_bodies_name_their_field(api: Api, body: dict[str, Any], field: str) -> None:
    key = await api.key("pools")
    answer = await api.http.put(POOL, json=body, headers=auth(key))
    assert answer.status_code == 400, answer.text
    assert answer.json()["details"][0]["field"] == field


async def test_who_may_touch_which_warmup(api: Api) -> None:
    send_key = await api.key("send")
    assert (await api.http.put(POOL, json={"preset": "aggressive"},
                               headers=auth(send_key))).status_code == 403  # fmt: skip
    pools_key = await api.key("pools")
    missing = await api.http.put("/api/v1/warmup/pool/smtp_nope", json={"preset": "aggressive"},
                                 headers=auth(pools_key))  # fmt: skip
    assert missing.status_code == 404
    assert (await api.get("/api/v1/warmup/planet/x", key=pools_key)).status_code == 404

    owner = await make_user(api.svc.db, "owner@example.com", "member")
    other = await make_user(api.svc.db, "other@example.com", "member")
    account = await mail_accounts.create_account(api.svc.db, VALUES, lambda _: "s", owner.id, 10)
    path = f"/api/v1/warmup/account/{account.id}"
    # A key given for sending never acts on a person's account.
    assert (await api.http.put(path, json={"preset": "conservative"},
                               headers=auth(pools_key))).status_code == 403  # fmt: skip
    people: list[Person] = []
    base = str(api.http.base_url)
    try:
        people = [await sign_in(base, owner), await sign_in(base, other)]
        mine, theirs = people
        refused = await theirs.call("PUT", path, json={"preset": "conservative"})
        assert refused.status_code == 404  # another's account is as none
        made = await mine.call("PUT", path, json={"preset": "conservative"})
        assert made.status_code == 200, made.text
        assert (made.json()["name"], made.json()["daily_limit"]) == ("me@personal.test", 20)
        accounts = (await mine.call("GET", "/api/v1/accounts")).json()["accounts"]
        assert accounts[0]["warmup"] == {"status": "active", "daily_limit": 20, "sent_today": 0}
        listed = await mine.call("GET", "/api/v1/warmup/account")
        assert [w["id"] for w in listed.json()["warmups"]] == [account.id]
        assert (await theirs.call("GET", "/api/v1/warmup/account")).json()["warmups"] == []
    finally:
        for person in people:
            await person.http.aclose()


async def test_the_document_names_every_warmup_route(api: Api) -> None:
    paths = (await api.http.get("/openapi.json")).json()["paths"]
    one = paths["/api/v1/warmup/{kind}/{id}"]
    assert set(one) >= {"get", "put", "delete"}
    assert "post" in paths["/api/v1/warmup/{kind}/{id}/resume"]
    assert "post" in paths["/api/v1/warmup/{kind}/{id}/pause"]
    assert "get" in paths["/api/v1/warmup/{kind}"]


async def test_a_member_it_is_shared_with_sees_but_may_not_change_it(api: Api) -> None:
    """An account shared with a member: they see its warmup, and setting, clearing,
    pausing or resuming it is 403 owner_required, as the account's own PATCH; shared as
    admin, they may."""
    owner = await make_user(api.svc.db, "owner@example.com", "member")
    member = await make_user(api.svc.db, "member@example.com", "member")
    helper = await make_user(api.svc.db, "helper@example.com", "member")
    account = await mail_accounts.create_account(api.svc.db, VALUES, lambda _: "s", owner.id, 10)
    for user, role in ((member, "member"), (helper, "admin")):
        await api.svc.db.transaction(
            lambda c, u=user, r=role: put_share(c, "account", account.id, u.id, r, 1.0, None)
        )
    path = f"/api/v1/warmup/account/{account.id}"
    people: list[Person] = []
    base = str(api.http.base_url)
    try:
        people = [await sign_in(base, who) for who in (owner, member, helper)]
        mine, seen_only, shared_admin = people
        made = await mine.call("PUT", path, json={"preset": "conservative"})
        assert made.status_code == 200, made.text
        assert (await seen_only.call("GET", path)).status_code == 200
        listed = (await seen_only.call("GET", "/api/v1/warmup/account")).json()["warmups"]
        assert [w["id"] for w in listed] == [account.id]
        for method, where, body in (
            ("PUT", path, {"preset": "aggressive"}),
            ("POST", f"{path}/pause", {"reason": "mine now"}),
            ("POST", f"{path}/resume", None),
            ("DELETE", path, None),
        ):
            refused = await seen_only.call(method, where, json=body)
            assert (refused.status_code, refused.json()["code"]) == (403, "owner_required")
        unchanged = (await mine.call("GET", path)).json()
        assert (unchanged["status"], unchanged["schedule"]["preset"]) == ("active", "conservative")
        paused = await shared_admin.call("POST", f"{path}/pause", json={"reason": "looking"})
        assert paused.status_code == 200 and paused.json()["status"] == "paused"
        assert (await shared_admin.call("POST", f"{path}/resume")).status_code == 200
        assert (await mine.call("DELETE", path)).status_code == 200
    finally:
        for person in people:
            await person.http.aclose()
