"""The API tests' own fixtures: one Service shared by a whole module, and `backend` /
`api_on_both`, a test on SQLite and on a clean PostgreSQL (the per-test ones, `api` and
`api_client`, are in tests/conftest.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio

from tests.support.api import Api, ApiFactory, Shared, shared_service
from tests.support.databases import clean_postgresql


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def shared(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Shared]:
    """Its tests must run in the module's loop: `pytest.mark.asyncio(loop_scope="module")`."""
    async with shared_service(tmp_path_factory.mktemp("shared")) as running:
        yield running


@pytest.fixture(params=["sqlite", "postgresql"])
async def backend(request: pytest.FixtureRequest) -> AsyncIterator[dict[str, Any]]:
    """The configuration's [storage] table: SQLite in the data_dir, or a clean PostgreSQL."""
    if request.param == "sqlite":
        yield {}
        return
    async with clean_postgresql() as url:
        yield {"storage": {"url": url}}


@pytest.fixture
async def api_on_both(api_client: ApiFactory, backend: dict[str, Any]) -> Api:
    """An API on each backend in turn (a module that wants it names it `api`)."""
    return await api_client(**backend)
