"""The doors' limits, against a real `postern serve`: slow request heads are cut off, each
door has a connection cap under the open-file limit (so a flood on one leaves the other
answering), and /metrics can live on its own listener or ask for a key.

Every wait is bounded; the configs use short timeouts so that each test takes seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import resource
import select
import smtplib
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from gateway.smtpd import replies
from storage.db import database_url, open_database
from storage.keys import create_key
from tests.support.processes import child_cwd, child_env, free_port, postern_argv
from tests.support.serve import START_TIMEOUT, Launcher, Postern, config_text, message
from tests.support.sink import Sink

HEAD = b"GET /healthz HTTP/1.1\r\nHost: t\r\nX-Slow: " + b"a" * 200 + b"\r\n\r\n"
Start = Callable[..., Postern]


@pytest.fixture
def start(tmp_path: Path) -> Iterator[Start]:
    """start(sink_port, http="", smtp="", nofile=None) -> a running Postern whose [http] and
    [smtp] tables get the extra lines, with RLIMIT_NOFILE (soft, hard) if given."""
    launcher = Launcher(tmp_path)

    def make(
        sink_port: int | None = None,
        http: str = "",
        smtp: str = "",
        extra: str = "",
        nofile: tuple[int, int] | None = None,
    ) -> Postern:
        def write(log_dir: Path, smtp_port: int, http_port: int) -> str:
            text = config_text(
                data_dir=log_dir / "var", smtp_port=smtp_port, http_port=http_port,
                sink_port=sink_port, extra=extra,
            )  # fmt: skip
            text = text.replace(
                f'listen = "127.0.0.1:{http_port}"\n', f'listen = "127.0.0.1:{http_port}"\n{http}\n'
            )
            return text.replace(
                f'listen = ["127.0.0.1:{smtp_port}"]\n',
                f'listen = ["127.0.0.1:{smtp_port}"]\n{smtp}\n',
            )

        postern = launcher.launch(write, start=False)
        spawn(postern, nofile)
        return postern

    try:
        yield make
    finally:
        launcher.close()


def spawn(postern: Postern, nofile: tuple[int, int] | None) -> None:
    """Postern.start, with the child's open-file limit set first."""

    def limit() -> None:
        if nofile is not None:
            resource.setrlimit(resource.RLIMIT_NOFILE, nofile)

    postern.stderr_path = postern.log_dir / "postern.stderr"
    with open(postern.stderr_path, "wb") as out:
        postern.proc = subprocess.Popen(
            [*postern_argv(), "serve", "--config", str(postern.config)],
            cwd=child_cwd(), env=child_env(), stdin=subprocess.DEVNULL, stdout=out,
            stderr=out, start_new_session=True, preexec_fn=limit,
        )  # fmt: skip
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        assert postern.proc.poll() is None, f"postern exited:\n{postern.stderr()}"
        if postern.healthy():
            return
        time.sleep(0.05)
    raise AssertionError(f"postern not healthy within {START_TIMEOUT}s:\n{postern.stderr()}")


def get(port: int, path: str, key: str | None = None) -> tuple[int, bytes]:
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}")
    if key:
        request.add_header("Authorization", f"Bearer {key}")
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def connect(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    sock.setblocking(False)
    return sock


def drain(sock: socket.socket) -> tuple[bytes, bool]:
    """What the server sent so far, and whether it closed the connection."""
    data = b""
    while True:
        try:
            chunk = sock.recv(65536)
        except BlockingIOError:
            return data, False
        except ConnectionError:
            return data, True
        if not chunk:
            return data, True
        data += chunk


def trickle(
    socks: list[socket.socket],
    first: bytes,
    seconds: float,
    every: float = 1.0,
    meanwhile: Callable[[], None] = lambda: None,
) -> dict[socket.socket, tuple[float, bytes]]:
    """Send `first`, then a byte of the rest of HEAD every `every` s on each socket (calling
    `meanwhile` each time), until the server has closed them all or `seconds` pass;
    {socket: (seconds until closed, what it sent)}."""
    started = time.monotonic()
    for sock in socks:
        if first:
            sock.sendall(first)
    closed: dict[socket.socket, tuple[float, bytes]] = {}
    received = {sock: b"" for sock in socks}
    position, next_byte = len(first), started + every
    while len(closed) < len(socks) and time.monotonic() < started + seconds:
        select.select([s for s in socks if s not in closed], [], [], 0.1)
        for sock in socks:
            if sock in closed:
                continue
            data, gone = drain(sock)
            received[sock] += data
            if gone:
                closed[sock] = (time.monotonic() - started, received[sock])
        if first and time.monotonic() >= next_byte:
            for sock in socks:
                if sock not in closed:
                    with contextlib.suppress(OSError):
                        sock.send(HEAD[position : position + 1])
            position, next_byte = position + 1, next_byte + every
            meanwhile()
    return closed


def code_of(answer: bytes) -> tuple[int, str]:
    head, _, body = answer.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(body)["code"]


def relay_one(postern: Postern, sink: Sink, tag: str) -> None:
    with smtplib.SMTP("127.0.0.1", postern.smtp_port, timeout=10) as client:
        client.send_message(message(0, tag))
    assert sink.wait_for(1, timeout=10), "the message did not reach the sink"


# --- slow request heads ---------------------------------------------------------------------


def test_slowloris_is_closed_after_header_timeout_and_healthz_answers(start: Start) -> None:
    postern = start(http='header_timeout = "2s"')
    slow = [connect(postern.http_port) for _ in range(20)]
    silent = [connect(postern.http_port) for _ in range(5)]
    healthz: list[int] = []

    def probe() -> None:
        healthz.append(get(postern.http_port, "/healthz")[0])

    closed = trickle(slow, HEAD[:10], seconds=6.0, meanwhile=probe)
    closed_silent = trickle(silent, b"", seconds=1.0)
    assert len(closed) == len(slow), "slow heads still open after 6 s (header_timeout 2 s)"
    for after, answer in closed.values():
        assert after < 5.0
        assert code_of(answer) == (408, "request_timeout")
    assert len(closed_silent) == len(silent)
    assert all(answer == b"" for _, answer in closed_silent.values())  # idle: closed quietly
    assert healthz and set(healthz) == {200}
    for sock in slow + silent:
        sock.close()


def test_trickled_second_request_on_a_kept_alive_connection_is_closed(start: Start) -> None:
    # uvicorn's keep-alive timer stops at the first byte of the next request: the next head
    # has the same deadline as the first one.
    postern = start(http='header_timeout = "2s"')
    sock = connect(postern.http_port)
    sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
    answer = b""
    deadline = time.monotonic() + 5
    while b'"ok"' not in answer and time.monotonic() < deadline:
        select.select([sock], [], [], 0.1)
        answer += drain(sock)[0]
    assert answer.startswith(b"HTTP/1.1 200")
    closed = trickle([sock], HEAD[:5], seconds=6.0)
    assert sock in closed and closed[sock][0] < 5.0
    assert code_of(closed[sock][1]) == (408, "request_timeout")
    sock.close()


def test_requests_inside_the_header_timeout_are_served(start: Start) -> None:
    # Heads sent in pieces within the timeout, one after another on a kept-alive connection
    # (each within header_timeout of the previous answer).
    postern = start(http='header_timeout = "3s"')
    sock = socket.create_connection(("127.0.0.1", postern.http_port), timeout=5)
    for _ in range(3):
        for piece in (HEAD[:20], HEAD[20:60], HEAD[60:]):
            sock.sendall(piece)
            time.sleep(0.3)
        answer = b""
        while b'"ok"' not in answer:
            chunk = sock.recv(65536)
            assert chunk, "closed while requests came in time"
            answer += chunk
        assert answer.startswith(b"HTTP/1.1 200")
        time.sleep(0.8)  # idle between requests: the next head is complete 1.7 s after
    sock.close()


# --- connection caps and the open-file limit ------------------------------------------------


def test_http_past_its_cap_gets_503_at_once_and_smtp_relays(start: Start, sink: Sink) -> None:
    postern = start(sink.port, http="max_connections = 5")
    held = [connect(postern.http_port) for _ in range(5)]
    for sock in held:
        sock.sendall(HEAD[:10])
    time.sleep(0.3)  # let the server take them
    extra = connect(postern.http_port)
    closed = trickle([extra], b"", seconds=3.0)
    assert extra in closed, "a connection past http.max_connections was kept"
    assert code_of(closed[extra][1]) == (503, "too_many_connections")
    relay_one(postern, sink, "capped-http")
    held.pop().close()
    time.sleep(0.3)
    assert get(postern.http_port, "/healthz")[0] == 200  # a freed slot is usable again
    for sock in [*held, extra]:
        sock.close()
    _, text = get(postern.http_port, "/metrics")
    assert b'postern_connections_refused_total{door="http"} 1.0' in text


def test_http_flood_leaves_smtp_relaying_under_a_low_file_limit(start: Start, sink: Sink) -> None:
    # The attack that took SMTP down: more HTTP connections than the process has
    # descriptors. The default caps (1000 each) do not fit in 512: they are lowered.
    postern = start(sink.port, nofile=(512, 512))
    flood = []
    for _ in range(600):
        try:
            flood.append(connect(postern.http_port))
        except OSError:
            break
    for sock in flood:
        with contextlib.suppress(OSError):
            sock.send(HEAD[:10])
    time.sleep(0.5)
    relay_one(postern, sink, "http-flood")
    for sock in flood:
        sock.close()
    assert "too low for the configured connection caps" in postern.stderr()


def test_smtp_flood_leaves_http_answering_under_a_low_file_limit(start: Start) -> None:
    postern = start(nofile=(512, 512))
    flood = []
    for _ in range(600):
        try:
            flood.append(connect(postern.smtp_port))
        except OSError:
            break
    time.sleep(0.5)
    assert get(postern.http_port, "/healthz")[0] == 200
    cap = f"{replies.TOO_MANY_CONNECTIONS.code} {replies.TOO_MANY_CONNECTIONS.enhanced}"
    refused = [sock for sock in flood if drain(sock)[0].startswith(cap.encode())]
    assert refused, "no SMTP connection was refused at the cap"
    for sock in flood:
        sock.close()


def test_soft_file_limit_is_raised_to_the_hard_limit(start: Start) -> None:
    postern = start(nofile=(512, 4096))
    limits = Path(f"/proc/{postern.pid}/limits").read_text()
    [line] = [line for line in limits.splitlines() if line.startswith("Max open files")]
    assert line.split()[3:5] == ["4096", "4096"]
    assert "too low" not in postern.stderr()


# --- /metrics -------------------------------------------------------------------------------


def admin_key(postern: Postern) -> str:
    """An admin key, stored straight into the running node's SQLite database."""

    async def create() -> str:
        db = open_database(database_url("", postern.log_dir / "var"))
        try:
            return (await create_key(db, "admin", ["admin"]))[1]
        finally:
            await db.dispose()

    return asyncio.run(create())


def make_key(postern: Postern, admin: str, scope: str) -> str:
    """A key with `scope`, made through the API with the admin key (no CLI start-up)."""
    request = urllib.request.Request(
        f"http://127.0.0.1:{postern.http_port}/api/v1/keys",
        data=json.dumps({"name": scope, "scopes": [scope]}).encode(),
        headers={"Authorization": f"Bearer {admin}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=5) as response:
        return str(json.loads(response.read())["key"]["key"])


def test_metrics_listen_serves_metrics_alone(start: Start) -> None:
    metrics_port = free_port()
    postern = start(http=f'metrics_listen = "127.0.0.1:{metrics_port}"')
    status, text = get(metrics_port, "/metrics")
    assert status == 200 and b"postern_smtp_sessions" in text
    assert get(metrics_port, "/healthz")[0] == 404
    assert get(postern.http_port, "/metrics")[0] == 404
    assert get(postern.http_port, "/healthz")[0] == 200


def test_metrics_auth_asks_for_a_key_with_the_metrics_scope(start: Start) -> None:
    postern = start(http="metrics_auth = true")
    admin = admin_key(postern)
    assert get(postern.http_port, "/metrics")[0] == 401
    assert get(postern.http_port, "/metrics", make_key(postern, admin, "send"))[0] == 403
    for key in (make_key(postern, admin, "metrics"), admin):
        status, text = get(postern.http_port, "/metrics", key)
        assert status == 200 and b"postern_smtp_sessions" in text
    assert get(postern.http_port, "/healthz")[0] == 200  # the probes stay open


def test_metrics_auth_applies_on_the_metrics_listener(start: Start) -> None:
    metrics_port = free_port()
    postern = start(http=f'metrics_listen = "127.0.0.1:{metrics_port}"\nmetrics_auth = true')
    assert get(metrics_port, "/metrics")[0] == 401
    assert get(metrics_port, "/metrics", admin_key(postern))[0] == 200
