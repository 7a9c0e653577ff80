"""/api/v1/keys (scope `keys`): create (the secret shown once), list, show, revoke; a key
cannot grant scopes it lacks; every route needs the scope.
"""

from __future__ import annotations

import pytest

from api.schemas import CreatedKeyResponse, KeyList, KeyResponse
from tests.support.api import Api, auth

pytestmark = pytest.mark.timeout(30)


async def test_create_list_show_and_revoke(api: Api) -> None:
    admin = await api.key("keys", "send", "sandbox")
    created = await api.http.post(
        "/api/v1/keys", json={"name": "ci", "scopes": ["sandbox"]}, headers=auth(admin)
    )
    assert created.status_code == 201
    CreatedKeyResponse.model_validate(created.json())
    new = created.json()["key"]
    assert new["key"].startswith("msk_") and new["key"].startswith(new["prefix"])
    assert new["scopes"] == ["sandbox"] and new["revoked_at"] is None

    listed = await api.get("/api/v1/keys", key=admin)
    KeyList.model_validate(listed.json())
    assert new["id"] in [k["id"] for k in listed.json()["keys"]]
    assert all("key" not in k and "hash" not in k for k in listed.json()["keys"])
    assert new["key"] not in listed.text

    shown = await api.get(f"/api/v1/keys/{new['id']}", key=admin)
    KeyResponse.model_validate(shown.json())
    assert "key" not in shown.json()["key"]

    sandboxed = await api.send(key=new["key"], headers={"X-MisarMail-Sandbox": "true"})
    assert sandboxed.status_code == 200
    revoked = await api.http.delete(f"/api/v1/keys/{new['id']}", headers=auth(admin))
    assert revoked.status_code == 200 and revoked.json()["key"]["revoked_at"]
    after = await api.send(key=new["key"], headers={"X-MisarMail-Sandbox": "true"})
    assert after.status_code == 401


async def test_a_key_cannot_grant_scopes_it_lacks(api: Api) -> None:
    keys_only = await api.key("keys")
    for scopes in (["admin"], ["send"], ["keys", "suppressions"]):
        response = await api.http.post(
            "/api/v1/keys", json={"name": "x", "scopes": scopes}, headers=auth(keys_only)
        )
        assert response.status_code == 403, scopes
    admin = await api.key("admin")
    response = await api.http.post(
        "/api/v1/keys", json={"name": "x", "scopes": ["admin"]}, headers=auth(admin)
    )
    assert response.status_code == 201


@pytest.mark.parametrize(
    "body",
    [
        {"name": "x", "scopes": ["root"]},
        {"name": "x", "scopes": []},
        {"name": "", "scopes": ["send"]},
        {"name": "a\r\nb", "scopes": ["send"]},
        {"scopes": ["send"]},
        {"name": "x", "scopes": "send"},
    ],
)
async def test_bad_key_requests_are_400(api: Api, body: dict[str, object]) -> None:
    admin = await api.key("admin")
    response = await api.http.post("/api/v1/keys", json=body, headers=auth(admin))
    assert response.status_code == 400
    assert response.json()["code"] == "invalid_request"


async def test_keys_routes_need_the_keys_scope_and_unknown_ids_are_404(api: Api) -> None:
    sender = await api.key("send")
    assert (await api.get("/api/v1/keys", key=sender)).status_code == 403
    assert (await api.http.delete("/api/v1/keys/key_x", headers=auth(sender))).status_code == 403
    admin = await api.key("keys")
    assert (await api.get("/api/v1/keys/key_nope", key=admin)).status_code == 404
    assert (await api.http.delete("/api/v1/keys/key_nope", headers=auth(admin))).status_code == 404


async def test_a_keys_key_cannot_revoke_a_stronger_key(api: Api) -> None:
    keeper = await api.key("keys")
    admin_id, _ = await api.key_record("admin", name="root")
    refused = await api.http.delete(f"/api/v1/keys/{admin_id}", headers=auth(keeper))
    assert refused.status_code == 403 and refused.json()["code"] == "forbidden"
    weaker_id, _ = await api.key_record("keys", name="peer")
    assert (
        await api.http.delete(f"/api/v1/keys/{weaker_id}", headers=auth(keeper))
    ).status_code == 200
