"""What tests that run `postern` as a real process share: the repo root, a free loopback
port, and the child's environment. Free of pytest, so that bench/soak.py can use it too."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    """A loopback TCP port nobody listens on (bound then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def child_env() -> dict[str, str]:
    """This environment for a `python -m gateway.cli` child: the checkout first on the
    path, no inherited POSTERN_CONFIG, unbuffered output."""
    env = dict(os.environ)
    env.pop("POSTERN_CONFIG", None)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    env["PYTHONUNBUFFERED"] = "1"
    return env


def spawn_serve(config: Path, log: Path) -> subprocess.Popen[bytes]:
    """`postern serve --config CONFIG` from this checkout, its output to `log`, in a session
    of its own (a Ctrl-C at the terminal does not reach it)."""
    with open(log, "wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "gateway.cli", "serve", "--config", str(config)],
            cwd=REPO,
            env=child_env(),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=out,
            start_new_session=True,
        )
