"""Shared fixtures: a fault-injecting upstream sink, configs pointing at it, and in-process
Services started (and always stopped) in the test's own event loop.

Nothing here ever blocks the event loop the Service runs on: smtplib runs in a thread
(`asyncio.to_thread`), the sink runs on its own thread and loop.
"""

from __future__ import annotations

import asyncio
import copy
import smtplib
import sqlite3
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import REGISTRY

from gateway.config import Config, from_dict
from gateway.process.service import Service
from tests.support.processes import free_port
from tests.support.sink import Sink

LOOPBACK = "127.0.0.1"
CLIENT_HELO = "client.test"
SINK_POOL = "sink"


# --- small utilities ----------------------------------------------------------------------


def metric(name: str, **labels: str) -> float:
    """Current value of a Prometheus sample (0.0 when never observed).

    Metrics are process-global: tests compare values before and after, never absolutes.
    """
    value = REGISTRY.get_sample_value(name, labels)
    return 0.0 if value is None else value


async def wait_until(
    condition: Callable[[], Any] | Callable[[], Awaitable[Any]],
    timeout: float = 5.0,
    interval: float = 0.05,
) -> Any:
    """Poll `condition` (sync or async) until it returns something truthy; that value,
    or the last falsy value once `timeout` has passed."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if asyncio.iscoroutine(value):
            value = await value
        if value or time.monotonic() >= deadline:
            return value
        await asyncio.sleep(interval)


# --- configuration -----------------------------------------------------------------------


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    merged = copy.deepcopy(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def sink_pool(sink: Sink, **overrides: Any) -> dict[str, Any]:
    """A `[[pools]]` entry pointing at the sink."""
    pool: dict[str, Any] = {
        "name": SINK_POOL,
        "host": sink.host,
        "port": sink.port,
        "encryption": "none",
        "ip_pool": "transactional",
        "max_connections": 3,
    }
    pool.update(overrides)
    return pool


def make_config(
    tmp_path: Path,
    sink: Sink | None,
    *,
    pool: dict[str, Any] | None = None,
    **overrides: Any,
) -> Config:
    """A Config for one in-process Service.

    `overrides` are TOML sections merged into the defaults (`smtp={"max_recipients": 2}`);
    `pools=[...]` replaces the pool list; `pool={...}` edits the single default sink pool.
    Listen ports are fresh on every call; data_dir is always tmp_path/"var", so two
    configs built in one test share their storage.
    """
    raw: dict[str, Any] = {
        "server": {"hostname": "postern.test", "data_dir": str(tmp_path / "var")},
        "smtp": {"listen": [f"{LOOPBACK}:{free_port()}"]},
        "http": {"listen": f"{LOOPBACK}:{free_port()}"},
        "delivery": {
            "retry_schedule": ["1s"],
            "connect_timeout": "2s",
            "command_timeout": "2s",
        },
        "policy": {"sender": "any"},
    }
    if sink is not None:
        raw["pools"] = [sink_pool(sink, **(pool or {}))]
    raw = _merge(raw, overrides)
    return from_dict(raw)


# --- fixtures ----------------------------------------------------------------------------


@pytest.fixture
def sink() -> Iterator[Sink]:
    """A running upstream sink on its own thread; stopped after the test."""
    running = Sink().start()
    try:
        yield running
    finally:
        running.stop()


ConfigFactory = Callable[..., Config]


@pytest.fixture
def config_factory(tmp_path: Path, sink: Sink) -> ConfigFactory:
    """`config_factory(**overrides)`: make_config bound to this test's tmp_path and sink."""

    def build(**overrides: Any) -> Config:
        return make_config(tmp_path, sink, **overrides)

    return build


class ManagedService(Service):
    """A Service whose stop() may be called by the test and again at teardown."""

    stopped = False

    async def stop(self) -> None:
        if self.stopped:
            return
        self.stopped = True
        await super().stop()

    @property
    def smtp_port(self) -> int:
        return self.config.smtp.listen[0][1]


class ServiceFactory:
    """`await service()` / `await service(config)` / `await service(smtp={...})`."""

    def __init__(self, config_factory: ConfigFactory) -> None:
        self._config_factory = config_factory
        self.started: list[ManagedService] = []

    async def __call__(
        self, config: Config | None = None, *, drain_timeout: float = 5.0, **overrides: Any
    ) -> ManagedService:
        if config is None:
            config = self._config_factory(**overrides)
        elif overrides:
            raise TypeError("pass either a config or overrides, not both")
        svc = ManagedService(config, drain_timeout=drain_timeout)
        self.started.append(svc)
        await svc.start()
        return svc

    async def stop_all(self) -> None:
        errors: list[BaseException] = []
        for svc in reversed(self.started):
            if not hasattr(svc, "writer"):
                continue  # start() failed before anything needed stopping
            try:
                await asyncio.wait_for(svc.stop(), timeout=30)
            except BaseException as error:  # stop every service, then report
                errors.append(error)
        if errors:
            raise errors[0]


@pytest.fixture
async def service(config_factory: ConfigFactory) -> AsyncIterator[ServiceFactory]:
    """Start Services in the test's loop; every one of them is stopped at teardown."""
    factory = ServiceFactory(config_factory)
    try:
        yield factory
    finally:
        await factory.stop_all()


# --- clients -----------------------------------------------------------------------------


async def smtp_send(
    port: int,
    sender: str,
    recipients: Sequence[str],
    data: bytes,
    *,
    mail_options: Sequence[str] = (),
    timeout: float = 10.0,
) -> tuple[int, str]:
    """One SMTP transaction with the stdlib client, run in a thread (never on the loop).

    Returns the reply that ended it: DATA's final reply, or the first refusal of MAIL, or
    of RCPT when every recipient was refused.
    """

    def run() -> tuple[int, str]:
        with smtplib.SMTP(LOOPBACK, port, local_hostname=CLIENT_HELO, timeout=timeout) as client:
            client.ehlo()
            code, text = client.mail(sender, list(mail_options))
            if code != 250:
                return code, text.decode()
            refused: tuple[int, bytes] | None = None
            accepted = 0
            for rcpt in recipients:
                code, text = client.rcpt(rcpt)
                if code in (250, 251):
                    accepted += 1
                else:
                    refused = refused or (code, text)
            if not accepted:
                assert refused is not None
                return refused[0], refused[1].decode()
            code, text = client.data(data)
            return code, text.decode()

    return await asyncio.wait_for(asyncio.to_thread(run), timeout=timeout + 5)


# --- storage reads -----------------------------------------------------------------------
# Straight from the SQLite file with the stdlib driver, in a thread: independent of how the
# product wraps its database, and never on the Service's loop.


def _database_path(svc: Service) -> Path:
    return Path(svc.config.server.data_dir) / "postern.db"


async def query(svc: Service, sql: str, *params: Any) -> list[dict[str, Any]]:
    """Rows of one read-only query against the Service's SQLite database."""
    path = _database_path(svc)

    def run() -> list[dict[str, Any]]:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
        try:
            conn.row_factory = sqlite3.Row
            return [dict(row) for row in conn.execute(sql, params)]
        finally:
            conn.close()

    return await asyncio.to_thread(run)


async def message_row(svc: Service, message_id: str) -> dict[str, Any] | None:
    rows = await query(svc, "SELECT * FROM message WHERE id = ?", message_id)
    return rows[0] if rows else None


async def all_messages(svc: Service) -> list[dict[str, Any]]:
    return await query(svc, "SELECT * FROM message ORDER BY created_at")


async def recipient_rows(svc: Service, message_id: str) -> dict[str, dict[str, Any]]:
    rows = await query(svc, "SELECT * FROM recipient WHERE message_id = ?", message_id)
    return {row["email"]: row for row in rows}


async def has_body(svc: Service, message_id: str) -> bool:
    rows = await query(svc, "SELECT 1 FROM message_body WHERE message_id = ?", message_id)
    return bool(rows)


async def suppression_reason(svc: Service, email: str) -> str | None:
    rows = await query(svc, "SELECT reason FROM suppression WHERE email = ?", email)
    return rows[0]["reason"] if rows else None


async def wait_for_status(
    svc: Service, message_id: str, statuses: set[str], timeout: float = 8.0
) -> dict[str, Any]:
    """The message row once its status is one of `statuses` (assertion error on timeout)."""

    async def reached() -> dict[str, Any] | None:
        row = await message_row(svc, message_id)
        return row if row is not None and row["status"] in statuses else None

    row = await wait_until(reached, timeout=timeout)
    if not row:
        last = await message_row(svc, message_id)
        raise AssertionError(f"{message_id} never reached {sorted(statuses)}; last row: {last}")
    return row
