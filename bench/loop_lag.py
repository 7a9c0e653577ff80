#!/usr/bin/env python3
"""Large messages must not stall anyone (issue 22): 10 clients each sending a 20 MB message
at once, and beside them 50 clients sending small messages one after another. Reports the
small clients' latencies and how late Postern's event loops ran during the load.

    python bench/loop_lag.py                        # [server] workers = 1
    python bench/loop_lag.py --workers auto         # one worker per CPU
    python bench/loop_lag.py --workers 2 --pin-postern 0,1 --json
    python bench/loop_lag.py --quick                # smoke run: 2 x 5 MB, 10 small clients
    python bench/loop_lag.py --workers auto --dkim rsa   # every message DKIM-signed

What is measured, from this process (one asyncio loop; the upstream sink is bench/relay.py's,
in a process of its own):
- **small clients' accept latency**: for each small message, from MAIL FROM sent to the 250
  after its final dot (p50, p99, max), and the greeting (connect to 220) of each client;
- **event-loop lag** inside Postern: its probe (gateway.tasks.watch_lag) times a 50 ms
  sleep in every process and counts the lateness in `postern_event_loop_lag_seconds`; this
  script reads that histogram from /metrics (summed over the workers) before and after the
  load, so start-up is left out: how many looks were over 100 ms, and the bucket the worst
  one fell in.

Bars (issue 22): small clients' p99 accept latency under 100 ms, no lag over 100 ms.
Postern runs with `[smtp] max_data_in_flight` = 256 MB so that all ten large messages are
taken at once (the default, 100 MB, would make some wait: that is a limit, not a stall).
With `--dkim rsa|ed25519` every message is signed: a large one is hashed in a thread, and
each one's private-key operation (0.2-0.5 ms with RSA-2048) runs on the worker's loop.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing
import statistics
import sys
import tempfile
import time
import urllib.request
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import relay
from relay import HOST, BenchError, filler

MB = 1 << 20
LAG_BAR = 0.1  # seconds
LATENCY_BAR = 0.1
LAG_METRIC = "postern_event_loop_lag_seconds"


@dataclass
class Outcome:
    workers: str
    big: int
    big_size_mb: float
    small_clients: int
    dkim: str = "none"
    small_sent: int = 0
    small_failed: int = 0
    big_failed: int = 0
    greeting_p99_ms: float = 0.0
    accept_p50_ms: float = 0.0
    accept_p99_ms: float = 0.0
    accept_max_ms: float = 0.0
    big_seconds_max: float = 0.0
    lag_looks: int = 0
    lag_over_100ms: int = 0
    lag_worst_bucket: str = ""
    lag_max_since_start_ms: float = 0.0
    errors: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return (
            self.accept_p99_ms < LATENCY_BAR * 1000
            and self.lag_over_100ms == 0
            and not self.small_failed
            and not self.big_failed
        )


class Client:
    """One plain SMTP session (no pipelining: each step is timed on its own)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def connect(cls, port: int) -> tuple[Client, float]:
        started = time.monotonic()
        reader, writer = await asyncio.open_connection(HOST, port, limit=1 << 20)
        client = cls(reader, writer)
        await client.expect(220)
        greeting = time.monotonic() - started
        await client.command(b"EHLO client.bench.test\r\n", 250)
        return client, greeting

    async def reply(self) -> int:
        while True:
            line = await self.reader.readline()
            if not line.endswith(b"\n"):
                raise ConnectionError("connection closed by the server")
            if line[3:4] != b"-":
                return int(line[:3])

    async def expect(self, wanted: int) -> None:
        code = await self.reply()
        if code != wanted:
            raise ConnectionError(f"expected {wanted}, got {code}")

    async def command(self, line: bytes, wanted: int) -> None:
        self.writer.write(line)
        await self.expect(wanted)

    async def send(self, body: bytes) -> None:
        """One message, MAIL to the 250 after the final dot (body: CRLF lines, no dot)."""
        await self.command(b"MAIL FROM:<bench@client.bench.test>\r\n", 250)
        await self.command(b"RCPT TO:<rcpt@sink.bench.test>\r\n", 250)
        await self.command(b"DATA\r\n", 354)
        self.writer.write(body)
        self.writer.write(b".\r\n")
        await self.writer.drain()
        await self.expect(250)

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            self.writer.write(b"QUIT\r\n")
            await self.writer.drain()
            self.writer.close()
            await self.writer.wait_closed()


def message(subject: str, size: int) -> bytes:
    head = (
        "From: Bench <bench@client.bench.test>\r\n"
        "To: Sink <rcpt@sink.bench.test>\r\n"
        f"Subject: {subject}\r\n"
        "\r\n"
    ).encode()
    return head + filler(size - len(head))


def big_load(port: int, count: int, size_mb: float) -> tuple[list[float], list[str]]:
    """The large senders, in a process of their own: pushing 200 MB through one asyncio loop
    makes that loop late, and the small clients' latencies must be Postern's, not ours."""
    body = message("large", int(size_mb * MB))
    times: list[float] = []
    errors: list[str] = []

    async def big_sender() -> None:
        try:
            client, _ = await Client.connect(port)
            started = time.monotonic()
            await client.send(body)
            times.append(time.monotonic() - started)
            await client.close()
        except (OSError, ConnectionError) as error:
            errors.append(f"large: {error}")

    async def all_of_them() -> None:
        await asyncio.gather(*(big_sender() for _ in range(count)))

    asyncio.run(all_of_them())
    return times, errors


async def load(port: int, args: argparse.Namespace, outcome: Outcome) -> None:
    small_body = message("small", args.small_size)
    big_done = asyncio.Event()
    greetings: list[float] = []
    accepts: list[float] = []

    async def small_sender() -> None:
        try:
            client, greeting = await Client.connect(port)
            greetings.append(greeting)
            sent = 0
            while sent < args.small_messages or not big_done.is_set():
                started = time.monotonic()
                await client.send(small_body)
                accepts.append(time.monotonic() - started)
                sent += 1
                await asyncio.sleep(args.pace)
            await client.close()
        except (OSError, ConnectionError) as error:
            outcome.small_failed += 1
            outcome.errors.append(f"small: {error}")

    spawn = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(1, mp_context=spawn) as senders:
        bigs = asyncio.get_running_loop().run_in_executor(
            senders, big_load, port, args.big, args.big_size
        )
        await asyncio.sleep(1.0)  # the child started and the large transfers are under way
        smalls = [asyncio.create_task(small_sender()) for _ in range(args.small_clients)]
        big_times, big_errors = await bigs
        big_done.set()
        await asyncio.gather(*smalls)
    outcome.big_failed += len(big_errors)
    outcome.errors.extend(big_errors)
    accepts.sort()
    outcome.small_sent = len(accepts)
    if accepts:
        outcome.accept_p50_ms = statistics.median(accepts) * 1000
        outcome.accept_p99_ms = accepts[min(len(accepts) - 1, int(len(accepts) * 0.99))] * 1000
        outcome.accept_max_ms = accepts[-1] * 1000
    if greetings:
        greetings.sort()
        index = min(len(greetings) - 1, int(len(greetings) * 0.99))
        outcome.greeting_p99_ms = greetings[index] * 1000
    outcome.big_seconds_max = max(big_times, default=0.0)


def lag_histogram(http_port: int) -> tuple[dict[float, float], float]:
    """(cumulative count by bucket bound, the max gauge) from /metrics."""
    url = f"http://{HOST}:{http_port}/metrics"
    with urllib.request.urlopen(url, timeout=10) as response:
        text = response.read().decode()
    buckets: dict[float, float] = {}
    worst = 0.0
    for line in text.splitlines():
        if line.startswith(f"{LAG_METRIC}_bucket"):
            bound = line.split('le="', 1)[1].split('"', 1)[0]
            key = float("inf") if bound == "+Inf" else float(bound)
            buckets[key] = buckets.get(key, 0.0) + float(line.rsplit(" ", 1)[1])
        elif line.startswith("postern_event_loop_lag_max_seconds"):
            worst = max(worst, float(line.rsplit(" ", 1)[1]))
    return buckets, worst


def judge_lag(before: dict[float, float], after: dict[float, float], outcome: Outcome) -> None:
    bounds = sorted(after)
    delta = {bound: after[bound] - before.get(bound, 0.0) for bound in bounds}
    total = delta.get(float("inf"), 0.0)
    outcome.lag_looks = int(total)
    under = max((delta[b] for b in bounds if b <= LAG_BAR), default=0.0)
    outcome.lag_over_100ms = int(total - under)
    previous = 0.0
    for bound in bounds:  # the first bucket that holds every look
        if delta[bound] >= total:
            outcome.lag_worst_bucket = (
                f"<= {bound * 1000:g} ms" if bound != float("inf") else f"> {previous * 1000:g} ms"
            )
            break
        previous = bound


def run(args: argparse.Namespace) -> Outcome:
    outcome = Outcome(
        str(args.workers), args.big, args.big_size, args.small_clients, args.dkim or "none"
    )
    with tempfile.TemporaryDirectory(prefix="postern-looplag-") as tmp_name:
        tmp = Path(tmp_name)
        sink = relay.Sink()
        postern = None
        try:
            postern = relay.Postern(
                args.postern_cmd, tmp, sink.port, 20, args.dkim, workers=args.workers,
                pin=args.pin_postern, smtp_extra=f"max_data_in_flight = {256 * MB}",
                storage_url=args.storage_url,
            )  # fmt: skip
            postern.wait_ready(time.monotonic() + 60)
            before, _ = lag_histogram(postern.http_port)
            asyncio.run(asyncio.wait_for(load(postern.smtp_port, args, outcome), args.timeout))
            after, worst = lag_histogram(postern.http_port)
            judge_lag(before, after, outcome)
            outcome.lag_max_since_start_ms = worst * 1000
        except (BenchError, TimeoutError) as error:
            outcome.errors.append(str(error) or "timed out")
        finally:
            if postern is not None:
                postern.stop()
            sink.close()
    return outcome


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="large messages beside small ones: lag")
    parser.add_argument("--workers", default="1", help='[server] workers: a count or "auto"')
    parser.add_argument("--pin-postern", metavar="CPUS", help="run Postern under taskset -c")
    parser.add_argument("--big", type=int, default=10, help="large messages at once (10)")
    parser.add_argument("--big-size", type=float, default=20.0, help="their size in MB (20)")
    parser.add_argument("--small-clients", type=int, default=50, help="small clients (50)")
    parser.add_argument("--small-messages", type=int, default=20, help="each, at least (20)")
    parser.add_argument("--small-size", type=int, default=2048, help="bytes (2048)")
    parser.add_argument("--pace", type=float, default=0.01, help="seconds between two (0.01)")
    parser.add_argument("--quick", action="store_true", help="smoke: 2 x 5 MB, 10 small")
    parser.add_argument(
        "--dkim", choices=("rsa", "ed25519"), help="DKIM-sign every message with such a key"
    )
    relay.add_postern_cmd(parser)
    parser.add_argument(
        "--storage-url", default="", help='[storage] url ("": SQLite in a fresh data dir)'
    )
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds for the load")
    parser.add_argument("--json", action="store_true", help="print JSON")
    args = parser.parse_args(argv)
    if args.workers != "auto":
        args.workers = int(args.workers)
    if args.quick:
        args.big, args.big_size, args.small_clients, args.small_messages = 2, 5.0, 10, 5
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    outcome = run(args)
    if args.json:
        print(json.dumps({**asdict(outcome), "passed": outcome.passed}))
    else:
        print(
            f"loop_lag  workers={outcome.workers}  DKIM {outcome.dkim}"
            f"  {outcome.big} x {outcome.big_size_mb:g} MB"
            f" + {outcome.small_clients} small clients ({outcome.small_sent} messages)\n"
            f"  small accept latency p50={outcome.accept_p50_ms:.1f}ms"
            f" p99={outcome.accept_p99_ms:.1f}ms max={outcome.accept_max_ms:.1f}ms;"
            f" greeting p99={outcome.greeting_p99_ms:.1f}ms\n"
            f"  largest transfer {outcome.big_seconds_max:.2f}s\n"
            f"  event loop: {outcome.lag_looks} looks, {outcome.lag_over_100ms} over 100 ms,"
            f" worst {outcome.lag_worst_bucket or '-'}"
            f" (max since start {outcome.lag_max_since_start_ms:.0f} ms)\n"
            f"  failed: small {outcome.small_failed}, large {outcome.big_failed}"
            f"  -> {'PASS' if outcome.passed else 'FAIL'} (bars: p99 < 100 ms, no lag > 100 ms)"
        )
        for error in outcome.errors[:10]:
            print(f"  error: {error}")
    return 0 if not outcome.errors else 1


if __name__ == "__main__":
    sys.exit(main())
