"""Fixtures for the attack reproductions: a real `postern serve` with the config each attack
needs, a loopback DNS server the attacker controls, and a tripwire for in-process tests.

`serve(tables)` writes a config from plain dicts (merged over a small base: loopback ports,
retry every second, `sender = "any"`) and starts a `tests.support.serve.Postern`; every
process started is killed at teardown. The helpers the tests measure with are in
tests/support/attacks.py. Every wait is bounded.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.attacks import Tripwire
from tests.support.dnsserver import DnsServer
from tests.support.serve import Launcher, Postern, Serve, Tables, tables_text


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Serve]:
    """`serve(tables=None, pools=())` -> a started Postern; `tables` merge over the base."""
    launcher = Launcher(tmp_path)

    def make(tables: Tables | None = None, pools: list[dict[str, Any]] | None = None) -> Postern:
        def write(log_dir: Path, smtp_port: int, http_port: int) -> str:
            base: Tables = {
                "server": {"hostname": "postern.security.test", "data_dir": str(log_dir / "var")},
                "smtp": {"listen": [f"127.0.0.1:{smtp_port}"]},
                "http": {"listen": f"127.0.0.1:{http_port}"},
                "delivery": {
                    "retry_schedule": ["1s"],
                    "connect_timeout": "2s",
                    "idle_timeout": "2s",
                },
                "policy": {"sender": "any"},
            }
            for table, keys in (tables or {}).items():
                base.setdefault(table, {}).update(keys)
            return tables_text(base, pools or [])

        return launcher.launch(write)

    try:
        yield make
    finally:
        launcher.close()


@pytest.fixture
def dns() -> Iterator[DnsServer]:
    with DnsServer() as server:
        yield server


@pytest.fixture
def no_outside_connections(monkeypatch: pytest.MonkeyPatch) -> Iterator[Tripwire]:
    """In-process tests only: every socket connect to an address that is not loopback is
    refused before a packet leaves (and recorded), even if the code under test is wrong.
    asyncio's selector loop, and the stdlib clients, connect through socket.socket.connect."""
    wire = Tripwire()
    real_connect = socket.socket.connect
    real_connect_ex = socket.socket.connect_ex

    def connect(self: socket.socket, address: Any) -> None:
        if not wire.allows(address):
            raise ConnectionRefusedError(f"test tripwire: no connection to {address!r}")
        real_connect(self, address)

    def connect_ex(self: socket.socket, address: Any) -> int:
        if not wire.allows(address):
            return 111  # ECONNREFUSED
        return real_connect_ex(self, address)

    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(socket.socket, "connect_ex", connect_ex)
    yield wire
