"""An in-process Service for a test: a config pointing at a sink, a Service that may be
stopped twice, a factory that stops every Service it started, and the small utilities tests
of it poll and measure with.

Nothing here ever blocks the event loop the Service runs on.
"""

from __future__ import annotations

import asyncio
import copy
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from prometheus_client import REGISTRY

from gateway.config import Config, from_dict
from gateway.process.service import Service
from tests.support.processes import LOOPBACK, free_port
from tests.support.sink import Sink

SINK_POOL = "sink"
START_WAIT = 30.0  # seconds for the reputation watch's first pass after a start


# --- polling and metrics ----------------------------------------------------------------------


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


def merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """`base` with `extra`'s tables merged in, key by key (copies: neither is changed)."""
    merged = copy.deepcopy(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = merge(merged[key], value)
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
        # No DNSBL queries to the real lists from a test's service (a test turns it on).
        "blocklists": {"enabled": False},
    }
    if sink is not None:
        raw["pools"] = [sink_pool(sink, **(pool or {}))]
    raw = merge(raw, overrides)
    return from_dict(raw)


ConfigFactory = Callable[..., Config]


class ManagedService(Service):
    """A Service whose stop() may be called by the test and again at teardown, and whose
    start() returns once the reputation watch's own first pass has ended."""

    stopped = False

    async def start(self) -> None:
        # In service that pass (at start, by the real clock) ends long before anything
        # else happens; here a test's first steps would overlap it, and one that moves the
        # watch's clock on would see it roll up past the sends it records next.
        self._evaluated = asyncio.Event()
        await super().start()
        if self.reputation is not None:
            await asyncio.wait_for(self._evaluated.wait(), START_WAIT)

    async def _evaluate(self) -> None:
        try:
            await super()._evaluate()
        finally:
            self._evaluated.set()

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
            if svc.writer is None:
                continue  # start() failed before anything needed stopping
            try:
                await asyncio.wait_for(svc.stop(), timeout=30)
            except BaseException as error:  # stop every service, then report
                errors.append(error)
        if errors:
            raise errors[0]
