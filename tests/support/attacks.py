"""What the attack reproductions poke a running `postern serve` with and measure it by: its
CLI and HTTP API as an attacker with an admin key would use them, one message over SMTP,
its memory, a /healthz probe running alongside an attack, and the tripwire that tells a
loopback connection from one that would leave the machine. Every wait is bounded.
"""

from __future__ import annotations

import ipaddress
import json
import smtplib
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.support.serve import Postern, run_cli


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
