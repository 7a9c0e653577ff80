"""A webhook receiver for the benchmarks: answers 200 to every POST and counts the events.

Runs in its own process (a ThreadingHTTPServer on loopback) so that it takes no CPU from
the process being measured beyond what the machine shares. Used by `relay.py --webhook`.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import socket
import subprocess
import sys
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from multiprocessing.sharedctypes import Synchronized
from pathlib import Path
from typing import Any

HOST = "127.0.0.1"
MP = mp.get_context("spawn")


def _serve(sock: socket.socket, counter: Synchronized[int]) -> None:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            events = len(json.loads(body).get("events", []))
            with counter.get_lock():
                counter.value += events
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer((HOST, 0), Handler, bind_and_activate=False)
    server.socket = sock
    server.serve_forever()


class WebhookSink:
    def __init__(self) -> None:
        self._sock = socket.socket()
        self._sock.bind((HOST, 0))
        self._sock.listen(128)
        self.port = self._sock.getsockname()[1]
        self.events: Synchronized[int] = MP.Value("q", 0)
        self._proc = MP.Process(target=_serve, args=(self._sock, self.events), daemon=True)
        self._proc.start()

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}/hook"

    def wait_for(self, count: int, deadline: float) -> int:
        """Wait (bounded by `deadline`, a monotonic time) until `count` events arrived."""
        while self.events.value < count and time.monotonic() < deadline:
            time.sleep(0.05)
        return int(self.events.value)

    def close(self) -> None:
        self._proc.kill()
        self._proc.join()
        self._sock.close()


def subscribe(command: list[str], config: Path, http_port: int, url: str) -> None:
    """Create an API key with the CLI and a webhook for every event type with it."""
    made = subprocess.run(
        [*command, "--config", str(config), "keys", "create", "--name", "bench-hooks",
         "--scope", "webhooks", "--json"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    key = json.loads(made.stdout)["key"]
    request = urllib.request.Request(
        f"http://{HOST}:{http_port}/api/v1/webhooks",
        data=json.dumps({"url": url}).encode(),
        headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        if response.status != 201:
            sys.exit(f"creating the bench webhook answered {response.status}")
