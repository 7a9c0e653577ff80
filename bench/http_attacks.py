#!/usr/bin/env python3
"""Attacks on Postern's doors, measured (never collected by pytest).

    python bench/http_attacks.py                       # every phase, server at 1024 fds
    python bench/http_attacks.py --phases slowloris --slowloris 40 --seconds 60
    python bench/http_attacks.py --nofile 1024:4096 --json

Starts a real `postern serve` (its open-file limit set with --nofile) relaying to the test
sink, then runs each phase while two probe threads time GET /healthz and a full SMTP relay
(connect → 220 → EHLO/MAIL/RCPT/DATA → 250 → QUIT) every 0.25 s and 0.5 s:

- slowloris: N HTTP connections that send a request head one byte a second;
- http-flood: F such connections at once (reopened when the server closes one): the
  descriptor exhaustion that once took SMTP down with HTTP;
- smtp-flood: F SMTP connections that say EHLO and then nothing.

For each phase it prints how long the attack connections stayed open (those still open at
the end with their age), the most descriptors the server held, and the probes'
successes and latencies: a latency spike is the server's event loop lagging, a failure a
door that stopped answering. Loopback only; everything it starts is stopped.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import http.client
import json
import os
import resource
import signal
import smtplib
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import relay  # bench/ is sys.path[0] when run as a script

from tests.support.processes import child_env, free_port
from tests.support.sink import Sink

HOST = "127.0.0.1"
REPO = Path(__file__).resolve().parents[1]
HEAD = b"GET /healthz HTTP/1.1\r\nHost: bench\r\nX-Padding: " + b"a" * 4000 + b"\r\n\r\n"
PROBE_TIMEOUT = 5.0

CONFIG = """\
[server]
hostname = "postern.bench.test"
data_dir = "{data_dir}"

[smtp]
listen = ["{host}:{smtp_port}"]

[http]
listen = "{host}:{http_port}"

[policy]
sender = "any"

[[pools]]
name = "sink"
host = "{host}"
port = {sink_port}
encryption = "none"
is_default = true
"""


# --- probes: a thread each, blocking sockets, independent of the attackers' loop --------


@dataclass
class Probe:
    ok: list[float] = field(default_factory=list)  # seconds each successful probe took
    failures: list[str] = field(default_factory=list)

    def summary(self) -> dict[str, object]:
        ms = sorted(1000 * s for s in self.ok)
        return {
            "ok": len(ms),
            "failed": len(self.failures),
            "p50_ms": round(statistics.median(ms), 1) if ms else None,
            "max_ms": round(ms[-1], 1) if ms else None,
            "first_failure": self.failures[0] if self.failures else None,
        }


def probe_healthz(port: int) -> None:
    conn = http.client.HTTPConnection(HOST, port, timeout=PROBE_TIMEOUT)
    try:
        conn.request("GET", "/healthz")
        response = conn.getresponse()
        response.read()
        if response.status != 200:
            raise RuntimeError(f"HTTP {response.status}")
    finally:
        conn.close()


def probe_smtp(port: int, seq: int) -> None:
    with smtplib.SMTP(HOST, port, local_hostname="probe.bench.test", timeout=PROBE_TIMEOUT) as c:
        body = f"From: probe@bench.test\r\nTo: r@sink.test\r\nSubject: probe {seq}\r\n\r\nx\r\n"
        c.sendmail("probe@bench.test", ["r@sink.test"], body.encode())


class Prober:
    def __init__(self, http_port: int, smtp_port: int) -> None:
        self.http_port, self.smtp_port = http_port, smtp_port
        self.http, self.smtp = Probe(), Probe()
        self.relayed = 0
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._loop, args=(self.http, 0.25, self._http), daemon=True),
            threading.Thread(target=self._loop, args=(self.smtp, 0.5, self._smtp), daemon=True),
        ]

    def _http(self) -> None:
        probe_healthz(self.http_port)

    def _smtp(self) -> None:
        probe_smtp(self.smtp_port, self.relayed)
        self.relayed += 1

    def _loop(self, probe: Probe, every: float, work: object) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                work()  # type: ignore[operator]
                probe.ok.append(time.monotonic() - started)
            except Exception as error:
                probe.failures.append(f"{type(error).__name__}: {error}"[:120])
            self._stop.wait(max(0.0, every - (time.monotonic() - started)))

    def __enter__(self) -> Prober:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(PROBE_TIMEOUT * 3)


# --- attackers ---------------------------------------------------------------------------


@dataclass
class Attack:
    connects: int = 0
    refused: int = 0  # the connect itself failed
    closed_after: list[float] = field(default_factory=list)  # seconds until the server closed
    open_for: list[float] = field(default_factory=list)  # age of those open at the phase's end

    def summary(self) -> dict[str, object]:
        held = sorted(self.closed_after + self.open_for)
        return {
            "connects": self.connects,
            "connect_failed": self.refused,
            "closed_by_server": len(self.closed_after),
            "still_open_at_end": len(self.open_for),
            "held_median_s": round(statistics.median(held), 1) if held else None,
            "held_max_s": round(held[-1], 1) if held else None,
        }


async def slow_connection(
    port: int, first: bytes, trickle: bytes, deadline: float, attack: Attack
) -> bool:
    """One connection: `first`, then a byte of `trickle` a second until the server closes
    it (True) or the deadline passes (False)."""
    loop = asyncio.get_running_loop()
    attack.connects += 1
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(HOST, port), 5.0)
    except (OSError, TimeoutError):
        attack.refused += 1
        return True
    opened = loop.time()
    try:
        if first:
            writer.write(first)
        index = 0
        while loop.time() < deadline:
            try:
                data = await asyncio.wait_for(reader.read(4096), 1.0)
            except TimeoutError:
                if trickle:
                    writer.write(trickle[index % len(trickle) : index % len(trickle) + 1])
                    index += 1
                continue
            if not data:  # EOF: the server closed it
                attack.closed_after.append(loop.time() - opened)
                return True
        attack.open_for.append(loop.time() - opened)
        return False
    except OSError:
        attack.closed_after.append(loop.time() - opened)
        return True
    finally:
        writer.close()


async def hold(
    port: int, count: int, seconds: float, first: bytes, trickle: bytes, reopen: bool
) -> Attack:
    """`count` slow connections for `seconds`; with `reopen`, each closed one is replaced."""
    attack = Attack()
    deadline = asyncio.get_running_loop().time() + seconds

    async def one() -> None:
        while await slow_connection(port, first, trickle, deadline, attack) and reopen:
            await asyncio.sleep(0.2)
            if asyncio.get_running_loop().time() >= deadline:
                return

    await asyncio.gather(*(one() for _ in range(count)))
    return attack


# --- the server --------------------------------------------------------------------------


class Server:
    def __init__(self, command: Sequence[str], tmp: Path, sink_port: int, nofile: tuple[int, int]):
        self.smtp_port, self.http_port = free_port(), free_port()
        config = tmp / "postern.toml"
        config.write_text(
            CONFIG.format(
                host=HOST, data_dir=tmp / "var", smtp_port=self.smtp_port,
                http_port=self.http_port, sink_port=sink_port,
            )
        )  # fmt: skip
        self.log = tmp / "postern.log"
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(
                [*command, "--config", str(config)],
                cwd=REPO,
                env=child_env(),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, nofile),
            )
        self.max_fds = 0

    def wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"postern exited at start:\n{self.log.read_text()[-2000:]}")
            with contextlib.suppress(Exception):
                probe_healthz(self.http_port)
                return
            time.sleep(0.1)
        raise SystemExit("postern did not answer /healthz within 30 s")

    def fds(self) -> int:
        try:
            count = len(os.listdir(f"/proc/{self.proc.pid}/fd"))
        except OSError:
            return 0
        self.max_fds = max(self.max_fds, count)
        return count

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


async def watch_fds(server: Server, stop: asyncio.Event) -> None:
    while not stop.is_set():
        server.fds()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 0.2)


async def run_phase(name: str, server: Server, args: argparse.Namespace) -> dict[str, object]:
    slow = (server.http_port, HEAD[:20], HEAD[20:])  # "GET /healthz HTTP/1." then a byte/s
    if name == "slowloris":
        (port, first, trickle), count, reopen = slow, args.slowloris, False
    elif name == "http-flood":
        (port, first, trickle), count, reopen = slow, args.flood, True
    else:  # smtp-flood: EHLO, then silence (an idle session)
        port, first, trickle, count, reopen = server.smtp_port, b"EHLO x\r\n", b"", args.flood, True
    server.max_fds = 0
    stop = asyncio.Event()
    watcher = asyncio.create_task(watch_fds(server, stop))
    with Prober(server.http_port, server.smtp_port) as prober:
        started = time.monotonic()
        attack = await hold(port, count, args.seconds, first, trickle, reopen)
        elapsed = time.monotonic() - started
    stop.set()
    await watcher
    return {
        "phase": name,
        "connections": count,
        "seconds": round(elapsed, 1),
        "attack": attack.summary(),
        "server_max_fds": server.max_fds,
        "healthz": prober.http.summary(),
        "smtp_relay": prober.smtp.summary(),
    }


def line(result: dict[str, object]) -> str:
    a, h, s = result["attack"], result["healthz"], result["smtp_relay"]
    return (
        f"{result['phase']:<11} n={result['connections']} {result['seconds']}s  "
        f"attack: held median={a['held_median_s']}s max={a['held_max_s']}s "  # type: ignore[index]
        f"closed={a['closed_by_server']} open_at_end={a['still_open_at_end']} "  # type: ignore[index]
        f"connects={a['connects']} connect_failed={a['connect_failed']}  "  # type: ignore[index]
        f"server_fds_max={result['server_max_fds']}\n"
        f"{'':<11} /healthz ok={h['ok']} failed={h['failed']} p50={h['p50_ms']}ms "  # type: ignore[index]
        f"max={h['max_ms']}ms   smtp relay ok={s['ok']} failed={s['failed']} "  # type: ignore[index]
        f"p50={s['p50_ms']}ms max={s['max_ms']}ms"  # type: ignore[index]
        + (f"\n{'':<11} first smtp failure: {s['first_failure']}" if s["failed"] else "")  # type: ignore[index]
        + (f"\n{'':<11} first /healthz failure: {h['first_failure']}" if h["failed"] else "")  # type: ignore[index]
    )


async def main_async(args: argparse.Namespace, server: Server) -> list[dict[str, object]]:
    results = []
    for name in args.phases.split(","):
        results.append(await run_phase(name.strip(), server, args))
        if not args.json:
            print(line(results[-1]), flush=True)
        await asyncio.sleep(args.pause)  # let the server close what is left before the next
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--phases", default="slowloris,http-flood,smtp-flood")
    parser.add_argument("--slowloris", type=int, default=40, help="slowloris connections")
    parser.add_argument("--flood", type=int, default=1100, help="connections of each flood")
    parser.add_argument("--seconds", type=float, default=30.0, help="length of each phase")
    parser.add_argument("--pause", type=float, default=5.0, help="seconds between phases")
    parser.add_argument("--nofile", default="1024:1024", help="server's RLIMIT_NOFILE soft:hard")
    relay.add_postern_cmd(parser)
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (log, db)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    soft, _, hard = args.nofile.partition(":")
    nofile = (int(soft), int(hard or soft))
    own_hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    resource.setrlimit(resource.RLIMIT_NOFILE, (own_hard, own_hard))  # the attacker's own fds

    tmp = Path(tempfile.mkdtemp(prefix="postern-attacks-"))
    sink = Sink().start()
    server = Server(args.postern_cmd, tmp, sink.port, nofile)
    try:
        server.wait_ready()
        if not args.json:
            print(f"postern pid {server.proc.pid}, RLIMIT_NOFILE {nofile[0]}:{nofile[1]}")
        results = asyncio.run(main_async(args, server))
    finally:
        server.stop()
        sink.stop()
    if args.json:
        print(json.dumps({"nofile": args.nofile, "phases": results}, indent=2))
    print(f"sink received {len(sink.messages)} probe messages", file=sys.stderr)
    if args.keep:
        print(f"kept {tmp}", file=sys.stderr)
    else:
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
