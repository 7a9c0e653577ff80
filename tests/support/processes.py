"""What tests that run `postern` as a real process share: the repo root, a free loopback
port, and the child's environment. Free of pytest, so that bench/soak.py can use it too."""

from __future__ import annotations

import os
import random
import selectors
import socket
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
LOOPBACK = "127.0.0.1"


# Below Linux's ephemeral range (32768-60999): a port the kernel hands out with bind(0) is one it
# may also give to an outgoing connection before the test listens on it (seen in CI: "Address
# already in use" on a port bound and released a moment earlier). Ports given out by this process
# are not given again, so two listeners of one test never collide either.
_ALL_PORTS = range(20000, 32768)


def _ports_of_this_process() -> range:
    """Under pytest-xdist, this worker's own slice of the range: a port is free when it is
    handed out, but only taken when the child process binds it, and another worker must not
    hand it out in between."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")  # "gw3"
    count = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if not worker.startswith("gw") or count < 2:
        return _ALL_PORTS
    size = len(_ALL_PORTS) // count
    start = _ALL_PORTS.start + int(worker[2:]) % count * size
    return range(start, start + size)


_PORTS = _ports_of_this_process()
# The ports handed out, oldest first; past half the slice the oldest are handed out again (their
# tests are long over): a worker's slice is a quarter of the range and thousands of tests ask.
_given: dict[int, None] = {}


def free_port() -> int:
    """A loopback TCP port nobody listens on, outside the range outgoing connections use."""
    for _ in range(200):
        port = random.choice(_PORTS)
        if port in _given:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind((LOOPBACK, port))
            except OSError:
                continue
        _given[port] = None
        if len(_given) > len(_PORTS) // 2:
            del _given[next(iter(_given))]
        return port
    raise RuntimeError("no free loopback port below the ephemeral range")


# Set (as .ci/run sets it) to an installed `postern` executable, the child processes run that
# program, from outside the checkout, so that what users install is what the tests exercise.
INSTALLED = os.environ.get("POSTERN_BIN") or None


def postern_argv() -> list[str]:
    """The command that runs `postern`: the installed one, or this checkout's."""
    return [INSTALLED] if INSTALLED else [sys.executable, "-m", "gateway.process.cli"]


def child_cwd() -> Path:
    """Where a `postern` child runs: the checkout, or for an installed one a folder outside
    it (so nothing can import the source tree by accident)."""
    return Path(os.sep) if INSTALLED else REPO


def child_env() -> dict[str, str]:
    """This environment for a `postern` child: the checkout first on the path (unless the
    installed program runs), no inherited POSTERN_CONFIG, unbuffered output."""
    env = dict(os.environ)
    env.pop("POSTERN_CONFIG", None)
    if not INSTALLED:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    env["PYTHONUNBUFFERED"] = "1"
    return env


def spawn_serve(config: Path, log: Path) -> subprocess.Popen[bytes]:
    """`postern serve --config CONFIG`, its output to `log`, in a session of its own (a
    Ctrl-C at the terminal does not reach it)."""
    with open(log, "wb") as out:
        return subprocess.Popen(
            [*postern_argv(), "serve", "--config", str(config)],
            cwd=child_cwd(),
            env=child_env(),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=out,
            start_new_session=True,
        )


def line_within(child: subprocess.Popen[bytes], deadline: float) -> bytes:
    """The next line `child` prints on stdout, waited for until `deadline` (monotonic)."""
    assert child.stdout is not None
    with selectors.DefaultSelector() as chosen:
        chosen.register(child.stdout, selectors.EVENT_READ)
        while time.monotonic() < deadline:
            if chosen.select(timeout=0.2):
                return child.stdout.readline()
    raise AssertionError("no line printed in time")


def children_running(parent: int, word: bytes) -> list[int]:
    """The pids of `parent`'s children with `word` among the words of their command line."""
    found = []
    for task in Path(f"/proc/{parent}/task").iterdir():
        try:
            children = (task / "children").read_text().split()
        except OSError:
            continue
        for child in map(int, children):
            try:
                argv = Path(f"/proc/{child}/cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if word in argv:
                found.append(child)
    return sorted(found)


def writer_process_of(supervisor: int) -> int | None:
    """The pid of a supervisor's writer process (gateway.process.node_writer, SQLite with
    several workers), or None (there is none, or it is being started again)."""
    found = children_running(supervisor, b"gateway.process.node_writer")
    return found[0] if found else None
