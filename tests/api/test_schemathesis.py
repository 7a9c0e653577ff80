"""schemathesis against `/openapi.json` (issue 7): every operation the document describes,
driven with generated requests and an admin API key against the real uvicorn on loopback.
No answer may be a 5xx, and every answer must match the response schema the document
gives for its status. Bounded: a few examples per operation, no deadline.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import response_schema_conformance

from storage.keys import create_key
from tests.api.conftest import DEFAULTS
from tests.conftest import ManagedService, make_config
from tests.sink import Sink

pytestmark = pytest.mark.timeout(120)


@dataclass
class LiveApi:
    base_url: str
    admin_key: str


@pytest.fixture(scope="module")
def live_api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveApi]:
    """A Service on its own thread and loop, so that schemathesis can call it
    synchronously."""
    sink = Sink().start()
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="schemathesis-service", daemon=True)
    thread.start()

    def run(coroutine: Any, timeout: float = 30) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, loop).result(timeout)

    config = make_config(tmp_path_factory.mktemp("schemathesis"), sink, **DEFAULTS)
    svc = ManagedService(config)
    try:
        run(svc.start())
        _, key = run(create_key(svc.db, "schemathesis", ["admin"]))
        host, port = config.http.listen
        yield LiveApi(f"http://{host}:{port}", key)
    finally:
        if hasattr(svc, "writer"):
            run(svc.stop())
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        sink.stop()


@pytest.fixture(scope="module")
def openapi_schema(live_api: LiveApi) -> Any:
    return schemathesis.openapi.from_url(f"{live_api.base_url}/openapi.json")


schema = schemathesis.pytest.from_fixture("openapi_schema")


@schema.parametrize()
@settings(
    max_examples=5,
    deadline=None,
    phases=[Phase.explicit, Phase.generate],
    suppress_health_check=list(HealthCheck),
)
def test_no_server_error_and_responses_match_the_schema(case: Any, live_api: LiveApi) -> None:
    case.call_and_validate(
        base_url=live_api.base_url,
        headers={"Authorization": f"Bearer {live_api.admin_key}"},
        checks=[not_a_server_error, response_schema_conformance],
        timeout=15,
    )
