"""Fixtures for the attack reproductions: a real `postern serve` with the config each attack
needs, a loopback DNS server the attacker controls, and the process's own measurements.

`serve(tables)` writes a config from plain dicts (merged over a small base: loopback ports,
retry every second, `sender = "any"`) and starts a `tests.e2e.conftest.Postern`; every
process started is killed at teardown. Every wait is bounded.
"""

from __future__ import annotations

import ipaddress
import json
import smtplib
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import Postern, run_cli
from tests.support.dnsserver import DnsServer
from tests.support.processes import free_port

Tables = dict[str, dict[str, Any]]
Serve = Callable[..., Postern]


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    return json.dumps(value)  # strings and lists of strings: valid TOML too


def config_text(tables: Tables, pools: list[dict[str, Any]]) -> str:
    lines: list[str] = []
    for table, keys in tables.items():
        lines.append(f"[{table}]")
        lines.extend(f"{key} = {_toml(value)}" for key, value in keys.items())
        lines.append("")
    for pool in pools:
        lines.append("[[pools]]")
        lines.extend(f"{key} = {_toml(value)}" for key, value in pool.items())
        lines.append("")
    return "\n".join(lines)


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Serve]:
    """`serve(tables=None, pools=())` -> a started Postern; `tables` merge over the base."""
    made: list[Postern] = []

    def make(tables: Tables | None = None, pools: list[dict[str, Any]] | None = None) -> Postern:
        log_dir = tmp_path / f"postern{len(made)}"
        log_dir.mkdir()
        smtp_port, http_port = free_port(), free_port()
        base: Tables = {
            "server": {"hostname": "postern.security.test", "data_dir": str(log_dir / "var")},
            "smtp": {"listen": [f"127.0.0.1:{smtp_port}"]},
            "http": {"listen": f"127.0.0.1:{http_port}"},
            "delivery": {"retry_schedule": ["1s"], "connect_timeout": "2s", "idle_timeout": "2s"},
            "policy": {"sender": "any"},
        }
        for table, keys in (tables or {}).items():
            base.setdefault(table, {}).update(keys)
        config = log_dir / "postern.toml"
        config.write_text(config_text(base, pools or []))
        postern = Postern(config, smtp_port, http_port, log_dir)
        made.append(postern)
        postern.start()
        return postern

    try:
        yield make
    finally:
        for postern in made:
            postern.close_client()
            postern.kill()


@pytest.fixture
def dns() -> Iterator[DnsServer]:
    with DnsServer() as server:
        yield server


def rss_mb(pid: int) -> float:
    """The process's resident set now (VmRSS), in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmRSS for {pid}")


def cli_json(postern: Postern, *args: str) -> Any:
    """`postern ARGS --json --config <its config>`, parsed; fails the test on an error."""
    done = run_cli(*args, "--json", "--config", str(postern.config))
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def admin_key(postern: Postern) -> str:
    created = cli_json(postern, "keys", "create", "--name", "attacker", "--scope", "admin")
    return str(created["key"])


def message_state(postern: Postern, message_id: str) -> dict[str, Any]:
    shown: dict[str, Any] = cli_json(postern, "queue", "show", message_id)
    return shown


def http(
    postern: Postern, method: str, path: str, key: str, body: Any = None
) -> tuple[int, dict[str, Any]]:
    """One request to the process's HTTP API: (status, JSON body)."""
    request = urllib.request.Request(
        f"http://127.0.0.1:{postern.http_port}{path}",
        method=method,
        data=None if body is None else json.dumps(body).encode(),
        headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=20) as response:
            return response.status, json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"{}")


class HealthProbe(threading.Thread):
    """Asks /healthz every `every` seconds while an attack runs; counts what went unanswered."""

    def __init__(self, postern: Postern, every: float = 0.1) -> None:
        super().__init__(daemon=True)
        self.postern = postern
        self.every = every
        self.answered = 0
        self.failed = 0
        self._done = threading.Event()

    def run(self) -> None:
        while not self._done.is_set():
            if self.postern.healthy():  # 1 s timeout
                self.answered += 1
            else:
                self.failed += 1
            self._done.wait(self.every)

    def __enter__(self) -> HealthProbe:
        self.start()
        return self

    def __exit__(self, *_exc: Any) -> None:
        self._done.set()
        self.join(5)


class Tripwire:
    """Every socket connect seen (`seen`) and those refused as not loopback (`outside`)."""

    def __init__(self) -> None:
        self.seen: list[Any] = []
        self.outside: list[Any] = []

    def allows(self, address: Any) -> bool:
        self.seen.append(address)
        if not isinstance(address, tuple):
            return True  # AF_UNIX
        try:
            loopback = ipaddress.ip_address(str(address[0]).split("%", 1)[0]).is_loopback
        except ValueError:
            loopback = False
        if not loopback:
            self.outside.append(address)
        return loopback


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


def wait_for(condition: Callable[[], Any], timeout: float, interval: float = 0.1) -> Any:
    """Poll until `condition()` is truthy (its value) or `timeout` passes (its last value)."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value or time.monotonic() >= deadline:
            return value
        time.sleep(interval)


def submit(postern: Postern, rcpt: str) -> str:
    """One message over SMTP; its id, from the 250 after the final dot."""
    with smtplib.SMTP("127.0.0.1", postern.smtp_port, timeout=10) as client:
        client.ehlo("client.test")
        assert client.mail("app@example.com")[0] == 250
        assert client.rcpt(rcpt)[0] == 250
        body = f"From: app@example.com\r\nTo: {rcpt}\r\nSubject: hi\r\n\r\nhi\r\n"
        code, reply = client.data(body.encode())
    assert code == 250, (code, reply)
    return reply.decode().rsplit(" ", 1)[-1]


def assert_deferred(postern: Postern, message_id: str, reason: str) -> None:
    state = wait_for(
        lambda: (s := message_state(postern, message_id))["status"] == "deferred" and s,
        timeout=10,
    )
    assert state and state["status"] == "deferred", state
    responses = " ".join(str(r.get("response")) for r in state["recipients"])
    assert reason in responses.lower() or reason in postern.stderr().lower(), responses
