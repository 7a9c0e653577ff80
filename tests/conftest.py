"""Fixtures every test folder may use: a fault-injecting upstream sink, configs pointing at
it, in-process Services started (and always stopped) in the test's own event loop, their
HTTP API with a client, and real `postern serve` processes.

The code behind them lives in tests/support/; only the fixtures are here.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from gateway.config import Config
from tests.support.api import Api, ApiClients, ApiFactory
from tests.support.databases import drop_worker_database
from tests.support.serve import Launcher, MakePostern, Postern, config_text
from tests.support.service import ConfigFactory, ServiceFactory, make_config
from tests.support.sink import Sink


@pytest.fixture(scope="session", autouse=True)
def worker_database() -> Iterator[None]:
    """Under pytest-xdist, the worker's own PostgreSQL database (made by its first PostgreSQL
    test, tests/support/databases.py) is dropped when the worker is done."""
    yield
    drop_worker_database()


@pytest.fixture
def sink() -> Iterator[Sink]:
    """A running upstream sink on its own thread; stopped after the test."""
    running = Sink().start()
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture
def config_factory(tmp_path: Path, sink: Sink) -> ConfigFactory:
    """`config_factory(**overrides)`: make_config bound to this test's tmp_path and sink."""

    def build(**overrides: Any) -> Config:
        return make_config(tmp_path, sink, **overrides)

    return build


@pytest.fixture
async def service(config_factory: ConfigFactory) -> AsyncIterator[ServiceFactory]:
    """Start Services in the test's loop; every one of them is stopped at teardown."""
    factory = ServiceFactory(config_factory)
    try:
        yield factory
    finally:
        await factory.stop_all()


@pytest.fixture
async def api_client(service: ServiceFactory) -> AsyncIterator[ApiFactory]:
    """`await api_client(**config_overrides)`: a started Service and an httpx client."""
    clients = ApiClients(service)
    try:
        yield clients
    finally:
        await clients.aclose()


@pytest.fixture
async def api(api_client: ApiFactory) -> Api:
    """A Service on the defaults of tests.support.api (handoff_timeout 3 s, a generous rate
    limit)."""
    return await api_client()


@pytest.fixture
def postern_process(tmp_path: Path) -> Iterator[MakePostern]:
    """Factory: `make(sink_port, extra="")` -> a started Postern. All are killed at teardown."""
    launcher = Launcher(tmp_path)

    def make(sink_port: int | None, extra: str = "", start: bool = True) -> Postern:
        def write(log_dir: Path, smtp_port: int, http_port: int) -> str:
            return config_text(
                data_dir=log_dir / "var",
                smtp_port=smtp_port,
                http_port=http_port,
                sink_port=sink_port,
                extra=extra,
            )

        return launcher.launch(write, start=start)

    try:
        yield make
    finally:
        launcher.close()
