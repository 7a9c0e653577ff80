#!/usr/bin/env python3
"""One hostile SMTP client against a real `postern serve`: does it stall or exhaust it?

    python bench/smtp_attacks.py                        # every attack, one Postern each
    python bench/smtp_attacks.py --only blank-data --connections 2
    python bench/smtp_attacks.py --fold-lines 300000 --blank-mib 24 --json

Attacks (each against a fresh Postern, so that its peak RSS is the attack's own):

- fold-bomb: a header field `X-Fold: a` followed by `--fold-lines` continuation lines
  (` a`), then a From and a short body: a header parser that joins folded lines one at a
  time is quadratic in them.
- blank-data: `--blank-mib` MiB of empty lines as the message: a DATA reader that keeps
  one object per line multiplies the memory by ~40, and one per-line loop holds the event
  loop for seconds.
- dot-data: as many MiB of lines of a single dot (sent doubled, `..`): every line is
  unstuffed on the way in and stuffed again on the way out to the upstream.

The From domain has a DKIM key (`--dkim`), so that the signer parses the header too.

While an attack runs, two probe threads GET /metrics and /healthz every `--probe-ms` ms
(every door shares the event loop, so the worst latency of /metrics, answered from memory,
is the worst stall any client saw; /healthz also waits for a database read, behind the
attack's write) and one samples the process's VmRSS. Printed per attack: the reply to the
final dot and the seconds from the dot to it, RSS before and at its peak (VmHWM), and each
probe's worst and median latency.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import socket
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import relay  # bench/ is on sys.path when run as a script
from relay import HOST, BenchError

REPLY_TIMEOUT = 300.0  # seconds for the reply to the final dot (the unfixed gateway is slow)
FROM = b"From: attacker@client.bench.test\r\nTo: rcpt@sink.bench.test\r\n"


def fold_bomb(lines: int) -> bytes:
    return b"X-Fold: a\r\n" + b" a\r\n" * lines + FROM + b"Subject: fold\r\n\r\nbody\r\n"


def blank_data(mib: int) -> bytes:
    return b"\r\n" * (mib * 1024 * 1024 // 2)


def dot_data(mib: int) -> bytes:
    return FROM + b"\r\n" + b"..\r\n" * (mib * 1024 * 1024 // 4)


@dataclass
class Probe:
    """GET `path` every `interval` s, and sample VmRSS, on a thread of its own."""

    port: int
    path: str
    pid: int
    interval: float
    latencies: list[float] = field(default_factory=list)
    failures: int = 0
    rss_kb: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def __enter__(self) -> Probe:
        self._thread = threading.Thread(target=self._run, name="probe", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(REPLY_TIMEOUT)

    def _run(self) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                conn = http.client.HTTPConnection(HOST, self.port, timeout=REPLY_TIMEOUT)
                conn.request("GET", self.path)
                conn.getresponse().read()
                conn.close()
                self.latencies.append(time.monotonic() - started)
            except OSError:
                self.failures += 1
            self.rss_kb = max(self.rss_kb, vm(self.pid, "VmRSS"))
            self._stop.wait(max(0.0, self.interval - (time.monotonic() - started)))


def vm(pid: int, name: str) -> int:
    """A /proc/PID/status figure in kB (0 when the process is gone)."""
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(name + ":"):
                return int(line.split()[1])
    return 0


class Client:
    """A blocking SMTP client that sends exactly the bytes it is given."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection((HOST, port), timeout=REPLY_TIMEOUT)
        self.file = self.sock.makefile("rb")
        self.reply()

    def reply(self) -> str:
        while True:
            line = self.file.readline()
            if not line:
                raise BenchError("the server closed the connection")
            if line[3:4] != b"-":
                return line.decode("utf-8", "replace").rstrip()

    def command(self, line: bytes) -> str:
        self.sock.sendall(line + b"\r\n")
        return self.reply()

    def send_message(self, content: bytes) -> tuple[str, float]:
        """The reply to the final dot, and the seconds from the dot to it."""
        for line in (b"EHLO attacker.bench.test", b"MAIL FROM:<attacker@client.bench.test>",
                     b"RCPT TO:<rcpt@sink.bench.test>", b"DATA"):  # fmt: skip
            reply = self.command(line)
            if not reply.startswith(("250", "354")):
                return reply, 0.0
        self.sock.sendall(content)
        self.sock.sendall(b".\r\n")
        dot = time.monotonic()
        return self.reply(), time.monotonic() - dot

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()


@dataclass
class Outcome:
    attack: str
    size_mb: float
    connections: int
    replies: list[str]
    dot_to_reply_s: float
    rss_before_mb: float
    rss_peak_mb: float
    metrics_max_ms: float  # the worst stall of the event loop
    metrics_p50_ms: float
    healthz_max_ms: float  # the same, plus a database read
    healthz_p50_ms: float
    probes: int
    probe_failures: int


def run(attack: str, content: bytes, args: argparse.Namespace) -> Outcome:
    tmp = Path(tempfile.mkdtemp(prefix=f"postern-attack-{attack}-"))
    sink = relay.Sink()
    try:
        dkim = None if args.dkim == "none" else args.dkim
        postern = relay.Postern(args.postern_cmd, tmp, sink.port, 2, dkim)
        try:
            postern.wait_ready(time.monotonic() + relay.READY_TIMEOUT)
            pid = postern.proc.pid
            time.sleep(0.5)  # let start-up settle before the baseline
            before = vm(pid, "VmRSS")
            results: list[tuple[str, float]] = []
            loop_probe = Probe(postern.http_port, "/metrics", pid, args.probe_ms / 1000)
            health_probe = Probe(postern.http_port, "/healthz", pid, args.probe_ms / 1000)
            with loop_probe, health_probe:
                time.sleep(0.3)  # a few probes of the quiet baseline
                threads = [
                    threading.Thread(target=_attack_one, args=(postern.smtp_port, content, results))
                    for _ in range(args.connections)
                ]
                for thread in threads:
                    thread.start()
                for thread in threads:
                    thread.join(REPLY_TIMEOUT + 60)
                time.sleep(0.3)
            peak = max(vm(pid, "VmHWM"), loop_probe.rss_kb, health_probe.rss_kb)
        finally:
            postern.stop()
    finally:
        sink.close()
    loop = loop_probe.latencies or [0.0]
    health = health_probe.latencies or [0.0]
    return Outcome(
        attack=attack,
        size_mb=round(len(content) / 1e6, 2),
        connections=args.connections,
        replies=[reply for reply, _ in results],
        dot_to_reply_s=round(max((s for _, s in results), default=0.0), 3),
        rss_before_mb=round(before / 1024, 1),
        rss_peak_mb=round(peak / 1024, 1),
        metrics_max_ms=round(max(loop) * 1000, 1),
        metrics_p50_ms=round(statistics.median(loop) * 1000, 1),
        healthz_max_ms=round(max(health) * 1000, 1),
        healthz_p50_ms=round(statistics.median(health) * 1000, 1),
        probes=len(loop_probe.latencies) + len(health_probe.latencies),
        probe_failures=loop_probe.failures + health_probe.failures,
    )


def _attack_one(port: int, content: bytes, results: list[tuple[str, float]]) -> None:
    client = Client(port)
    try:
        results.append(client.send_message(content))
    except (OSError, BenchError) as error:
        results.append((f"error: {error}", 0.0))
    finally:
        client.close()


def line(outcome: Outcome) -> str:
    replies = "; ".join(sorted(set(r[:60] for r in outcome.replies)))
    return (
        f"{outcome.attack:<10} {outcome.size_mb:>6.2f} MB x{outcome.connections}"
        f"  dot->reply={outcome.dot_to_reply_s:.3f}s"
        f"  rss={outcome.rss_before_mb:.0f}->{outcome.rss_peak_mb:.0f}MB"
        f"  /metrics max={outcome.metrics_max_ms:.0f}ms p50={outcome.metrics_p50_ms:.0f}ms"
        f"  /healthz max={outcome.healthz_max_ms:.0f}ms p50={outcome.healthz_p50_ms:.0f}ms"
        f" (n={outcome.probes}, failed={outcome.probe_failures})  reply: {replies}"
    )


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--only", choices=("fold-bomb", "blank-data", "dot-data"), help="one attack"
    )
    parser.add_argument("--fold-lines", type=int, default=300_000)
    parser.add_argument("--blank-mib", type=int, default=24, help="MiB of blank-data and dot-data")
    parser.add_argument("--connections", type=int, default=1, help="attackers at once")
    parser.add_argument(
        "--dkim",
        choices=("ed25519", "rsa", "none"),
        default="ed25519",
        help="sign the attacker's From domain, so that the DKIM parser runs too",
    )
    parser.add_argument("--probe-ms", type=float, default=25.0, help="probe period")
    relay.add_postern_cmd(parser)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    attacks: dict[str, Callable[[], bytes]] = {
        "fold-bomb": lambda: fold_bomb(args.fold_lines),
        "blank-data": lambda: blank_data(args.blank_mib),
        "dot-data": lambda: dot_data(args.blank_mib),
    }
    for name, make in attacks.items():
        if args.only and name != args.only:
            continue
        try:
            outcome = run(name, make(), args)
        except BenchError as error:
            print(f"{name}: {error}", file=sys.stderr)
            return 1
        print(json.dumps(asdict(outcome)) if args.json else line(outcome), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
