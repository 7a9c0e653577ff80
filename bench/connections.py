#!/usr/bin/env python3
"""What a new SMTP connection costs Postern: the time from connect to its 220 greeting.

    python bench/connections.py                     # workers = 1, 400 one at a time, 50 at once
    python bench/connections.py --workers auto --sequential 2000 --burst 200 --rounds 3

Most application libraries open a connection for every message they send, so a session's
set-up is paid once a message (compare_postfix.py --no-reuse measures the whole of it).
Postern relays to bench/relay.py's sink; this script, on its own loop-less sockets:
- **one at a time**: connects, reads the greeting, says QUIT, closes; the p50 and p90 of
  connect-to-220 (the first eighth left out as warm-up);
- **at once**: opens `--burst` connections together and times until every greeting came
  (the last one waits for the set-up of all those before it on the worker's loop).
Each round is a fresh Postern. Wall figures move ±15 % from minute to minute on a shared
machine: interleave trees (`--postern-cmd`, or PYTHONPATH and a worktree) to compare.
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import relay
from relay import HOST, BenchError

TIMEOUT = 10.0  # seconds for any one greeting


def read_greeting(sock: socket.socket) -> None:
    """Read the server's first line: a 220, or BenchError."""
    line = b""
    while not line.endswith(b"\n"):
        chunk = sock.recv(1024)
        if not chunk:
            raise BenchError(f"connection closed before the greeting: {line!r}")
        line += chunk
    if not line.startswith(b"220"):
        raise BenchError(f"not a greeting: {line!r}")


def greeted(port: int) -> tuple[socket.socket, float]:
    """A connection and its seconds from connect to the end of the 220 line."""
    started = time.perf_counter()
    sock = socket.create_connection((HOST, port), timeout=TIMEOUT)
    try:
        read_greeting(sock)
    except BaseException:
        sock.close()
        raise
    return sock, time.perf_counter() - started


def quit_(sock: socket.socket) -> None:
    try:
        sock.sendall(b"QUIT\r\n")
        sock.recv(1024)
    except OSError:
        pass
    finally:
        sock.close()


def one_at_a_time(port: int, count: int) -> list[float]:
    times = []
    for _ in range(count):
        sock, seconds = greeted(port)
        times.append(seconds)
        quit_(sock)
    return times[count // 8 :]


def at_once(port: int, count: int) -> float:
    started = time.perf_counter()
    socks = [socket.create_connection((HOST, port), timeout=TIMEOUT) for _ in range(count)]
    try:
        for sock in socks:
            read_greeting(sock)
        return time.perf_counter() - started
    finally:
        for sock in socks:
            quit_(sock)


def measure(args: argparse.Namespace) -> dict[str, float]:
    workers: str | int = int(args.workers) if args.workers.isdigit() else args.workers
    with tempfile.TemporaryDirectory(prefix="postern-connections-") as tmp:
        sink = relay.Sink()
        postern = relay.Postern(args.postern_cmd, Path(tmp), sink.port, 20, workers=workers)
        try:
            postern.wait_ready(time.monotonic() + 60)
            times = sorted(one_at_a_time(postern.smtp_port, args.sequential))
            burst = at_once(postern.smtp_port, args.burst)
        finally:
            postern.stop()
            sink.close()
    return {
        "p50_ms": statistics.median(times) * 1000,
        "p90_ms": times[int(len(times) * 0.9)] * 1000,
        "burst_ms": burst * 1000,
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", default="1", help='`[server] workers`: a count or "auto"')
    parser.add_argument("--sequential", type=int, default=400, help="connections one at a time")
    parser.add_argument("--burst", type=int, default=50, help="connections opened together")
    parser.add_argument("--rounds", type=int, default=1, help="fresh Postern each round")
    parser.add_argument("--json", action="store_true")
    relay.add_postern_cmd(parser)
    args = parser.parse_args(argv)
    if args.sequential < 8 or args.burst < 1 or args.rounds < 1:
        parser.error("--sequential must be 8 or more, --burst and --rounds 1 or more")
    try:
        results = [measure(args) for _ in range(args.rounds)]
    except (BenchError, OSError) as error:
        print(f"connections: {error}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(results))
        return 0
    print(f"workers={args.workers}  one at a time: {args.sequential}  at once: {args.burst}")
    for result in results:
        print(
            f"connect to 220: p50 {result['p50_ms']:.3f} ms  p90 {result['p90_ms']:.3f} ms;"
            f"  {args.burst} at once, all greeted in {result['burst_ms']:.1f} ms"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
