"""Direct-MX connections: the per-destination cap is the node's, shared by its workers."""

from __future__ import annotations

import pytest

from gateway.delivery.direct import PER_DESTINATION, DirectRoutes
from gateway.delivery.mx import MxTarget
from gateway.delivery.upstream import SessionSettings
from gateway.dns import Resolver


@pytest.mark.parametrize(
    ("processes", "cap"), [(1, PER_DESTINATION), (2, 2), (3, 2), (4, 1), (16, 1)]
)
def test_each_worker_opens_its_share_of_the_cap(processes: int, cap: int) -> None:
    routes = DirectRoutes(Resolver(), SessionSettings("postern.test"), 25, processes=processes)
    pool = routes._pool(MxTarget("mx.example.com", "192.0.2.1", 25))
    assert pool.settings.max_connections == cap
