"""/api/v1/smtp/configs, the MailSage view (seed 003) over the same pool records: pages,
PUT, use_tls <-> encryption, and the seed's error codes."""

from __future__ import annotations

from typing import Any

import pytest

from tests.support.api import Api, ApiFactory
from tests.support.resources import POOLS, call, live_pools

pytestmark = pytest.mark.timeout(60)
CONFIGS = "/api/v1/smtp/configs"
SEED_FIELDS = {"id", "name", "host", "port", "username", "from_email", "is_default", "created_at"}


def config(**fields: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "name": "Primary SMTP",
        "host": "localhost",
        "port": 587,
        "username": "your-email@example.com",
        "password": "your-password",
        "use_tls": True,
        "from_email": "noreply@yourdomain.test",
        "is_default": True,
    }
    body.update(fields)
    return body


async def test_create_shows_the_seed_fields_and_maps_use_tls(api: Api) -> None:
    key = await api.key("pools")
    created = await call(api, "POST", CONFIGS, key, config())
    assert created.status_code == 201
    body = created.json()
    assert set(body) >= SEED_FIELDS and "password" not in body
    assert (body["name"], body["from_email"], body["is_default"]) == (
        "Primary SMTP", "noreply@yourdomain.test", True,
    )  # fmt: skip
    assert body["use_tls"] is True
    # The same record in the seed 000 view.
    pool = (await call(api, "GET", f"{POOLS}/{body['id']}", key)).json()
    assert (pool["encryption"], pool["has_password"], pool["source"]) == ("tls", True, "api")
    assert live_pools(api)["Primary SMTP"].encryption == "tls"

    implicit = (await call(api, "POST", CONFIGS, key, config(name="ssl", port=465))).json()
    assert (await call(api, "GET", f"{POOLS}/{implicit['id']}", key)).json()["encryption"] == "ssl"
    plain = (
        await call(
            api, "POST", CONFIGS, key, config(name="lan", use_tls=False, username="", password=None)
        )
    ).json()
    assert plain["use_tls"] is False
    assert (await call(api, "GET", f"{POOLS}/{plain['id']}", key)).json()["encryption"] == "none"


async def test_pages(api: Api) -> None:
    key = await api.key("pools")
    for n in range(4):
        await call(api, "POST", CONFIGS, key, config(name=f"c{n}", is_default=False))
    first = (await call(api, "GET", f"{CONFIGS}?page=1&per_page=2", key)).json()
    assert len(first["data"]) == 2
    assert first["meta"] == {"current_page": 1, "total_pages": 3, "total_items": 5, "per_page": 2}
    last = (await call(api, "GET", f"{CONFIGS}?page=3&per_page=2", key)).json()
    assert len(last["data"]) == 1 and last["meta"]["current_page"] == 3
    everything = (await call(api, "GET", CONFIGS, key)).json()
    assert everything["meta"]["per_page"] == 20 and len(everything["data"]) == 5
    names = {item["name"] for item in everything["data"]}
    assert names == {"sink", "c0", "c1", "c2", "c3"}  # config-file pools too
    beyond = (await call(api, "GET", f"{CONFIGS}?page=9", key)).json()
    assert beyond["data"] == []
    for query in ("page=0", "per_page=0", "per_page=101", "page=x", "per_page=-1"):
        bad = await call(api, "GET", f"{CONFIGS}?{query}", key)
        assert (bad.status_code, bad.json()["code"]) == (400, "invalid_request")


async def test_put_changes_only_what_is_given(api: Api) -> None:
    key = await api.key("pools")
    created = (await call(api, "POST", CONFIGS, key, config())).json()
    path = f"{CONFIGS}/{created['id']}"
    updated = await call(
        api, "PUT", path, key, {"name": "Updated SMTP", "from_email": "new-sender@yourdomain.test"}
    )
    assert updated.status_code == 200
    body = updated.json()
    assert body["updated_at"].endswith("Z")
    assert {k: v for k, v in body.items() if k != "updated_at"} == {
        **created, "name": "Updated SMTP", "from_email": "new-sender@yourdomain.test",
    }  # fmt: skip
    await call(api, "PUT", path, key, {"port": 465})  # TLS on 465 is implicit TLS
    assert (await call(api, "GET", f"{POOLS}/{created['id']}", key)).json()["encryption"] == "ssl"
    await call(api, "PUT", path, key, {"use_tls": False, "username": ""})
    assert live_pools(api)["Updated SMTP"].encryption == "none"
    assert (await call(api, "GET", path, key)).json()["use_tls"] is False


async def test_delete_and_404(api: Api) -> None:
    key = await api.key("pools")
    created = (await call(api, "POST", CONFIGS, key, config())).json()
    path = f"{CONFIGS}/{created['id']}"
    deleted = await call(api, "DELETE", path, key)
    assert deleted.json() == {"message": "SMTP configuration deleted successfully"}
    for method, body in (("GET", None), ("PUT", {"name": "x"}), ("DELETE", None)):
        missing = await call(api, method, path, key, body)
        assert (missing.status_code, missing.json()["code"]) == (404, "not_found")


@pytest.mark.parametrize(
    "fields",
    [{"from_email": None}, {"name": None}, {"use_tls": "yes"}, {"port": "587"}, {"host": "a b"}],
)
async def test_invalid_requests(api: Api, fields: dict[str, Any]) -> None:
    key = await api.key("pools")
    body = {k: v for k, v in config(**fields).items() if v is not None}
    response = await call(api, "POST", CONFIGS, key, body)
    assert (response.status_code, response.json()["code"]) == (400, "invalid_request")


async def test_seed_error_codes_for_auth_and_rate_limit(api_client: ApiFactory) -> None:
    api = await api_client(http={"rate_limit": "2/s"})
    assert (await call(api, "GET", CONFIGS, "msk_wrong")).json()["code"] == "unauthorized"
    sender = await api.key("send")
    assert (await call(api, "GET", CONFIGS, sender)).json()["code"] == "forbidden"
    key = await api.key("pools")
    answers = [await call(api, "GET", CONFIGS, key) for _ in range(4)]
    limited = [a for a in answers if a.status_code == 429]
    assert limited, "the rate limit never applied"
    assert limited[0].json()["code"] == "rate_limit"
    assert limited[0].json()["retry_after"] >= 1 and limited[0].headers["Retry-After"]
