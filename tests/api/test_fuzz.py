"""Hypothesis against the live API: no payload, however odd, gets a 5xx or a non-JSON answer.

The Service runs on its own thread and loop here, so that hypothesis can drive it from a
plain synchronous test with a blocking httpx client.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from socket import IPPROTO_TCP, TCP_NODELAY
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from storage.keys import create_key
from tests.support.api import DEFAULTS
from tests.support.service import ManagedService, make_config
from tests.support.sink import Sink

pytestmark = pytest.mark.timeout(120)
FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@dataclass
class Live:
    client: httpx.Client
    key: str


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    sink = Sink().start()
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="fuzz-service", daemon=True)
    thread.start()

    def run(coroutine: Any, timeout: float = 30) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, loop).result(timeout)

    config = make_config(tmp_path_factory.mktemp("fuzz"), sink, **DEFAULTS)
    svc = ManagedService(config)
    try:
        run(svc.start())
        _, key = run(create_key(svc.db, "fuzz", ["send", "sandbox"]))
        host, port = config.http.listen
        # TCP_NODELAY: otherwise every POST waits out a delayed ACK (about 40 ms).
        nodelay = httpx.HTTPTransport(socket_options=[(IPPROTO_TCP, TCP_NODELAY, 1)])
        base_url = f"http://{host}:{port}"
        with httpx.Client(base_url=base_url, timeout=15, transport=nodelay) as client:
            yield Live(client, key)
    finally:
        if hasattr(svc, "writer"):
            run(svc.stop())
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()
        sink.stop()


def check(response: httpx.Response) -> None:
    assert response.status_code < 500, response.text
    body = response.json()
    assert isinstance(body, dict) and "success" in body
    if response.status_code >= 400:
        assert body["success"] is False and body["code"] and isinstance(body["details"], list)


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=12,
)
addresses = st.one_of(
    st.emails().map(str),
    st.text(max_size=40),
    st.builds(lambda a, b: f"{a}@{b}", st.text(max_size=12), st.text(max_size=12)),
)
mailbox = st.fixed_dictionaries({"email": addresses}, optional={"name": st.text(max_size=40)})
payloads = st.fixed_dictionaries(
    {"from": mailbox, "to": st.lists(mailbox, min_size=1, max_size=3), "subject": st.text()},
    optional={
        "cc": st.lists(mailbox, max_size=2),
        "bcc": st.lists(mailbox, max_size=2),
        "reply_to": mailbox,
        "text": st.text(),
        "html": st.text(),
        "alias_id": st.text(max_size=20),
        "idempotency_key": st.text(max_size=20),
        "tags": st.lists(st.text(max_size=10), max_size=3),
        "metadata": st.dictionaries(st.text(max_size=10), st.text(max_size=20), max_size=3),
    },
)


@FUZZ
@given(body=json_values)
def test_any_json_value_is_answered_without_a_5xx(live: Live, body: Any) -> None:
    check(live.client.post("/v1/send", json=body, headers={"Authorization": f"Bearer {live.key}"}))


@FUZZ
@given(raw=st.binary(max_size=200))
def test_any_bytes_are_answered_without_a_5xx(live: Live, raw: bytes) -> None:
    headers = {"Authorization": f"Bearer {live.key}", "Content-Type": "application/json"}
    check(live.client.post("/v1/send", content=raw, headers=headers))


@FUZZ
@given(body=payloads, sandbox=st.booleans())
def test_send_shaped_payloads_are_answered_without_a_5xx(
    live: Live, body: dict[str, Any], sandbox: bool
) -> None:
    headers = {"Authorization": f"Bearer {live.key}", "X-Postern-Sandbox": str(sandbox).lower()}
    response = live.client.post("/v1/send", content=json.dumps(body), headers=headers)
    check(response)


@FUZZ
@given(path=st.text(max_size=30), key=st.text(max_size=60))
def test_odd_paths_and_keys_are_answered_without_a_5xx(live: Live, path: str, key: str) -> None:
    try:
        response = live.client.get(
            f"/v1/messages/{path}", headers={"Authorization": f"Bearer {key}"}
        )
    except (httpx.InvalidURL, httpx.LocalProtocolError, UnicodeEncodeError):
        return  # the client itself refuses to send it
    check(response)
