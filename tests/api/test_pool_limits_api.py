"""Pool `rate` and `daily_limit` over the API (seed 000 fields plus ours): stored, shown,
reaching the live pools, and refused with a 400 naming the field when malformed."""

from __future__ import annotations

from typing import Any

import pytest

from tests.support.api import Api
from tests.support.resources import POOLS, call, create_pool, live_pools, pool_body

pytestmark = pytest.mark.timeout(60)


async def test_limits_are_stored_shown_and_live(api: Api) -> None:
    key = await api.key("pools")
    default = await create_pool(api, key, name="plain")
    assert (default["rate"], default["daily_limit"]) == ("", 0)
    created = await create_pool(api, key, rate="100/min", daily_limit=5000)
    assert (created["rate"], created["daily_limit"]) == ("100/min", 5000)
    assert (await call(api, "GET", f"{POOLS}/{created['id']}", key)).json() == created
    live = live_pools(api)["relay"]
    assert (live.rate, live.daily_limit) == ("100/min", 5000)

    changed = await call(
        api, "PATCH", f"{POOLS}/{created['id']}", key, {"rate": "20/10s", "daily_limit": 0}
    )
    assert changed.status_code == 200
    assert (changed.json()["rate"], changed.json()["daily_limit"]) == ("20/10s", 0)
    assert live_pools(api)["relay"].rate == "20/10s"
    cleared = await call(api, "PATCH", f"{POOLS}/{created['id']}", key, {"rate": ""})
    assert cleared.json()["rate"] == "" and live_pools(api)["relay"].rate == ""


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"rate": "100"}, "rate"),
        ({"rate": "0/min"}, "rate"),
        ({"rate": "10/fortnight"}, "rate"),
        ({"rate": "1/48h"}, "rate"),
        ({"rate": 100}, "rate"),
        ({"daily_limit": -1}, "daily_limit"),
        ({"daily_limit": "many"}, "daily_limit"),
        ({"daily_limit": 1.5}, "daily_limit"),
    ],
)
async def test_bad_limits_are_400(api: Api, fields: dict[str, Any], field: str) -> None:
    key = await api.key("pools")
    response = await call(api, "POST", POOLS, key, pool_body(**fields))
    assert response.status_code == 400, response.text
    body = response.json()
    assert body["code"] == "invalid_request"
    assert field in body["error"] or any(field in str(d) for d in body["details"])
    created = await create_pool(api, key, name="ok")
    patched = await call(api, "PATCH", f"{POOLS}/{created['id']}", key, fields)
    assert patched.status_code == 400
    assert "ok" in live_pools(api) and live_pools(api)["ok"].rate == ""


async def test_mailsage_view_leaves_limits_alone(api: Api) -> None:
    key = await api.key("pools")
    created = await create_pool(api, key, rate="5/s")
    listed = await call(api, "GET", "/api/v1/smtp/configs", key)
    assert listed.status_code == 200
    assert (await call(api, "GET", f"{POOLS}/{created['id']}", key)).json()["rate"] == "5/s"
