#!/usr/bin/env python3
"""HTTP send benchmark for Postern (never collected by pytest).

    python bench/http_send.py --requests 2000 --clients 10 --size 1024
    python bench/http_send.py --matrix [--json]          # C in (10, 50)
    python bench/http_send.py --idempotency              # a unique idempotency_key each

C keep-alive HTTP/1.1 connections (a raw asyncio client in its own process, so the harness
costs little CPU) post /v1/send to a `postern serve` whose one pool points at bench/relay.py's
fast sink process. Prints requests/s, latency p50/p99/max, the share of 200 (the upstream
accepted within handoff_timeout) and 202 (queued), and Postern's CPU per request. Every run
is bounded by --timeout; Postern and the sink are stopped whatever happens.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing as mp
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from multiprocessing.connection import Connection
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import relay  # bench/relay.py: the sink process, the Postern handle, helpers

HOST = relay.HOST
MATRIX_CLIENTS = (10, 50)
Sample = tuple[float, float, int]  # (send start, response end, HTTP status; 0 = I/O error)


# --- load generator ---------------------------------------------------------------------


def request_bytes(seq: int, size: int, key: str, run_id: str, idempotent: bool) -> bytes:
    text = relay.filler(size).decode()
    body: dict[str, object] = {
        "from": {"email": "bench@client.bench.test", "name": "Bench"},
        "to": [{"email": "rcpt@sink.bench.test"}],
        "subject": f"postern http bench {seq}",
        "text": text,
        "tags": ["bench"],
    }
    if idempotent:
        body["idempotency_key"] = f"{run_id}-{seq}"
    payload = json.dumps(body).encode()
    head = (
        f"POST /v1/send HTTP/1.1\r\nHost: {HOST}\r\nAuthorization: Bearer {key}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n\r\n"
    )
    return head.encode() + payload


async def read_status(reader: asyncio.StreamReader) -> int:
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    await reader.readexactly(length)
    return status


async def client(
    port: int,
    seqs: Iterator[int],
    make: Callable[[int], bytes],
    out: list[Sample],
    due: Callable[[int], float] | None = None,
) -> None:
    """Send requests one after another on one keep-alive connection.

    With `due` (open loop, --rate) request `seq` waits for its scheduled time and its
    latency counts from that time, so a slow answer delays the schedule visibly instead of
    hiding in a lower offered load (no coordinated omission)."""
    reader, writer = await asyncio.open_connection(HOST, port, limit=1 << 20)
    try:
        for seq in seqs:
            data = make(seq)
            start = time.time()
            if due is not None:
                start = due(seq)
                await asyncio.sleep(max(0.0, start - time.time()))
            try:
                writer.write(data)
                status = await read_status(reader)
            except (OSError, asyncio.IncompleteReadError, ValueError):
                out.append((start, time.time(), 0))
                writer.close()
                reader, writer = await asyncio.open_connection(HOST, port, limit=1 << 20)
                continue
            out.append((start, time.time(), status))
    finally:
        writer.close()


async def run_load(port: int, case: Case, key: str) -> list[Sample]:
    run_id = f"{time.time_ns()}"
    out: list[Sample] = []
    seqs = iter(range(case.requests))

    def make(seq: int) -> bytes:
        return request_bytes(seq, case.size, key, run_id, case.idempotency)

    due: Callable[[int], float] | None = None
    if case.rate:
        begin = time.time() + 0.2
        rate = case.rate

        def due(seq: int) -> float:
            return begin + seq / rate

    await asyncio.gather(*(client(port, seqs, make, out, due) for _ in range(case.clients)))
    return out


def load_main(conn: Connection, port: int, case: Case, key: str) -> None:
    loop = relay.new_event_loop()
    asyncio.set_event_loop(loop)
    try:
        conn.send(loop.run_until_complete(run_load(port, case, key)))
    except Exception as error:
        conn.send(f"{type(error).__name__}: {error}")
    finally:
        loop.close()


def drive(port: int, case: Case, key: str, deadline: float) -> list[Sample]:
    conn, child = relay.MP.Pipe(duplex=False)
    proc = relay.MP.Process(target=load_main, args=(child, port, case, key), daemon=True)
    proc.start()
    child.close()
    try:
        if not conn.poll(max(deadline - time.monotonic(), 0)):
            raise relay.BenchError(f"timeout: the clients did not finish within {case.timeout:g}s")
        result = conn.recv()
    finally:
        proc.join(1.0)
        if proc.is_alive():
            proc.kill()
            proc.join()
        conn.close()
    if isinstance(result, str):
        raise relay.BenchError(f"load generator failed: {result}")
    return list(result)


# --- Postern ------------------------------------------------------------------------------


class HttpPostern(relay.Postern):
    """relay.Postern with an [http] section for the API, and an API key made by the CLI."""

    def __init__(self, command: Sequence[str], tmp: Path, sink_port: int, upstreams: int) -> None:
        self.smtp_port, self.http_port = relay.free_ports(2)
        self.workers = 1  # one process: relay.Postern.wait_ready looks for no workers
        text = relay.CONFIG_TEMPLATE.format(
            host=HOST,
            data_dir=json.dumps(str(tmp / "var")),
            smtp_port=self.smtp_port,
            http_port=self.http_port,
            sink_port=sink_port,
            upstream_connections=upstreams,
        )
        listen = f'listen = "{HOST}:{self.http_port}"\n'
        config = tmp / "postern.toml"
        config.write_text(text.replace(listen, listen + 'rate_limit = "1000000/s"\n', 1))
        made = subprocess.run(
            [sys.executable, "-m", "gateway.process.cli", "--config", str(config), "keys", "create",
             "--name", "bench", "--scope", "send", "--json"],
            cwd=relay.REPO_ROOT, capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        if made.returncode != 0:
            raise relay.BenchError(f"could not create an API key: {made.stderr.strip()}")
        self.key: str = json.loads(made.stdout)["key"]
        self.log_path = tmp / "postern.log"
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                [*command, "--config", str(config)],
                cwd=relay.REPO_ROOT,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )


# --- one run ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    requests: int
    clients: int
    size: int
    idempotency: bool
    postern_cmd: tuple[str, ...]
    upstream_connections: int
    timeout: float
    keep: bool
    rate: float = 0.0  # offered requests/s; 0 = closed loop (as fast as answers come)


@dataclass
class Result:
    requests: int
    clients: int
    size: int
    requests_per_s: float
    p50_ms: float
    p99_ms: float
    max_ms: float
    ok_200: float  # share of all requests
    queued_202: float
    other: dict[str, int]
    delivered: int
    cpu_ms_per_request: float
    offered_per_s: float = 0.0  # --rate; 0 = closed loop


def run_case(case: Case) -> Result:
    deadline = time.monotonic() + case.timeout
    tmp = Path(tempfile.mkdtemp(prefix="postern-http-bench-"))
    try:
        with contextlib.ExitStack() as stack:
            sink = relay.Sink()
            stack.callback(sink.close)
            postern = HttpPostern(case.postern_cmd, tmp, sink.port, case.upstream_connections)
            stack.callback(postern.stop)
            postern.wait_ready(deadline)
            cpu_before = relay.tree_cpu_seconds(postern.proc.pid)
            samples = drive(postern.http_port, case, postern.key, deadline)
            cpu = relay.tree_cpu_seconds(postern.proc.pid) - cpu_before
            accepted = sum(1 for _, _, status in samples if status in (200, 202))
            delivered = len(sink.wait_for(accepted, deadline))
    finally:
        if case.keep:
            print(f"kept {tmp}", file=sys.stderr)
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    return summarize(case, samples, delivered, cpu)


def summarize(case: Case, samples: list[Sample], delivered: int, cpu: float) -> Result:
    latencies = sorted(end - start for start, end, _ in samples)
    first = min((start for start, _, _ in samples), default=0.0)
    last = max((end for _, end, _ in samples), default=first)
    statuses = Counter(status for _, _, status in samples)
    total = max(len(samples), 1)
    other = {str(code): n for code, n in sorted(statuses.items()) if code not in (200, 202)}
    return Result(
        requests=case.requests,
        clients=case.clients,
        size=case.size,
        requests_per_s=relay.rate(len(samples), last - first),
        p50_ms=relay.percentile(latencies, 0.50) * 1000,
        p99_ms=relay.percentile(latencies, 0.99) * 1000,
        max_ms=(latencies[-1] if latencies else 0.0) * 1000,
        ok_200=statuses[200] / total,
        queued_202=statuses[202] / total,
        other=other,
        delivered=delivered,
        cpu_ms_per_request=cpu * 1000 / total,
        offered_per_s=case.rate,
    )


def line(result: Result) -> str:
    other = ",".join(f"{code}x{n}" for code, n in result.other.items()) or "0"
    return (
        f"http_send  N={result.requests} C={result.clients} size={result.size}"
        + (f"  offered={result.offered_per_s:.0f}/s" if result.offered_per_s else "")
        + f"  req/s={result.requests_per_s:.0f}"
        f"  p50={relay.ms(result.p50_ms)} p99={relay.ms(result.p99_ms)}"
        f" max={relay.ms(result.max_ms)}"
        f"  200={result.ok_200:.1%} 202={result.queued_202:.1%} other={other}"
        f"  delivered={result.delivered}  cpu={result.cpu_ms_per_request:.2f}ms/req"
    )


def as_json(result: Result) -> dict[str, object]:
    return {k: round(v, 3) if isinstance(v, float) else v for k, v in asdict(result).items()}


# --- command line -----------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Postern HTTP send benchmark")
    parser.add_argument("--requests", "-n", type=int, default=2000)
    parser.add_argument("--clients", "-c", type=int, default=10)
    parser.add_argument("--size", type=int, default=1024, help="text body size in bytes")
    parser.add_argument("--idempotency", action="store_true", help="a unique key per request")
    relay.add_postern_cmd(parser)
    parser.add_argument("--upstream-connections", type=int, default=10)
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds per run")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (config, log)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of text")
    parser.add_argument("--matrix", action="store_true", help="C in (10, 50)")
    parser.add_argument(
        "--rate", type=float, default=0.0, help="offered load in requests/s (open loop)"
    )
    args = parser.parse_args(argv)
    if min(args.requests, args.clients, args.size, args.upstream_connections) < 1:
        parser.error("--requests, --clients, --size and --upstream-connections must be >= 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    base = Case(
        requests=args.requests,
        clients=args.clients,
        size=args.size,
        idempotency=args.idempotency,
        postern_cmd=args.postern_cmd,
        upstream_connections=args.upstream_connections,
        timeout=args.timeout,
        keep=args.keep,
        rate=args.rate,
    )
    cases = (
        [Case(**{**asdict(base), "clients": c}) for c in MATRIX_CLIENTS] if args.matrix else [base]
    )
    results: list[Result | str] = []
    for case in cases:
        try:
            result: Result | str = run_case(case)
        except relay.BenchError as error:
            result = f"C={case.clients}: {error}"
            print(result, file=sys.stderr)
        results.append(result)
    if args.json:
        rows = [as_json(r) if isinstance(r, Result) else {"error": r} for r in results]
        print(json.dumps(rows if args.matrix else rows[0]))
    else:
        for result in results:
            print(line(result) if isinstance(result, Result) else f"FAILED: {result}")
    return 0 if all(isinstance(r, Result) for r in results) else 1


if __name__ == "__main__":
    mp.set_start_method("spawn", force=True)
    sys.exit(main())
