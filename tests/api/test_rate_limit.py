"""`[http] rate_limit` per API key: past it, 429 `rate_limit` (seed 003's code, on every
route) with `Retry-After` and `retry_after`; another key is unaffected; the bucket refills.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from tests.support.api import ApiFactory

pytestmark = pytest.mark.timeout(30)


async def test_over_the_limit_is_429_with_retry_after_and_other_keys_go_on(
    api_client: ApiFactory,
) -> None:
    api = await api_client(http={"rate_limit": "2/minute"})  # the pools' grammar
    busy, calm = await api.key(name="busy"), await api.key(name="calm")
    codes = [(await api.send(key=busy)).status_code for _ in range(2)]
    assert codes == [200, 200]

    limited = await api.send(key=busy)
    assert limited.status_code == 429
    body = limited.json()
    assert body["success"] is False and body["code"] == "rate_limit"
    assert 1 <= body["retry_after"] <= 30
    assert limited.headers["Retry-After"] == str(body["retry_after"])
    assert (await api.send(key=calm)).status_code == 200


async def test_the_bucket_refills(api_client: ApiFactory) -> None:
    api = await api_client(http={"rate_limit": "5/s"})
    key = await api.key()
    started = time.monotonic()
    responses = await asyncio.gather(*(api.get("/v1/messages/msg_x", key=key) for _ in range(20)))
    refilled = 5 * (time.monotonic() - started)  # a slow machine refills during the burst
    codes = sorted(r.status_code for r in responses)
    assert set(codes) == {404, 429}
    assert 5 <= codes.count(404) <= 5 + refilled + 1, (codes, refilled)
    await asyncio.sleep(0.5)  # 5/s: room for two more
    assert (await api.get("/v1/messages/msg_x", key=key)).status_code == 404
