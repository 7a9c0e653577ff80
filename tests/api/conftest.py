"""The API tests' own fixture: one Service shared by a whole module (the per-test ones,
`api` and `api_client`, are in tests/conftest.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from tests.support.api import Shared, shared_service


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def shared(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Shared]:
    """Its tests must run in the module's loop: `pytest.mark.asyncio(loop_scope="module")`."""
    async with shared_service(tmp_path_factory.mktemp("shared")) as running:
        yield running
