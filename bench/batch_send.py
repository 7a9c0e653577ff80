#!/usr/bin/env python3
"""Batch send benchmark for Postern (never collected by pytest).

    python bench/batch_send.py --requests 100 --batch 100 --clients 4 --size 1024

C keep-alive HTTP/1.1 connections (a raw asyncio client in its own process) post
/v1/send/batch arrays of --batch messages to a `postern serve` whose one pool points at
bench/relay.py's fast sink process (bench/http_send.py's set-up). Prints requests/s,
messages/s accepted, latency p50/p99 per request, the statuses, how many the sink got and
Postern's CPU per message. Bounded by --timeout; Postern and the sink are stopped whatever
happens.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing as mp
import shutil
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import http_send  # bench/http_send.py: the HTTP client loop and the Postern handle
import relay  # bench/relay.py: the sink process, helpers

HOST = relay.HOST


@dataclass(frozen=True)
class Case:
    requests: int
    batch: int
    clients: int
    size: int
    timeout: float


def request_bytes(seq: int, case: Case, key: str) -> bytes:
    text = relay.filler(case.size).decode()
    items = [
        {
            "from": {"email": "bench@client.bench.test", "name": "Bench"},
            "to": [{"email": f"rcpt{n}@sink.bench.test"}],
            "subject": f"postern batch bench {seq}.{n}",
            "text": text,
            "tags": ["bench"],
        }
        for n in range(case.batch)
    ]
    payload = json.dumps(items).encode()
    head = (
        f"POST /v1/send/batch HTTP/1.1\r\nHost: {HOST}\r\nAuthorization: Bearer {key}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n\r\n"
    )
    return head.encode() + payload


async def run_load(port: int, case: Case, key: str) -> list[http_send.Sample]:
    out: list[http_send.Sample] = []
    seqs = iter(range(case.requests))

    def make(seq: int) -> bytes:
        return request_bytes(seq, case, key)

    await asyncio.gather(*(http_send.client(port, seqs, make, out) for _ in range(case.clients)))
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


def drive(port: int, case: Case, key: str, deadline: float) -> list[http_send.Sample]:
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


def run(case: Case) -> str:
    deadline = time.monotonic() + case.timeout
    tmp = Path(tempfile.mkdtemp(prefix="postern-batch-bench-"))
    try:
        with contextlib.ExitStack() as stack:
            sink = relay.Sink()
            stack.callback(sink.close)
            command = (sys.executable, "-m", "gateway.process.cli", "serve")
            postern = http_send.HttpPostern(command, tmp, sink.port, 10)
            stack.callback(postern.stop)
            postern.wait_ready(deadline)
            cpu_before = relay.tree_cpu_seconds(postern.proc.pid)
            samples = drive(postern.http_port, case, postern.key, deadline)
            cpu = relay.tree_cpu_seconds(postern.proc.pid) - cpu_before
            statuses = Counter(status for _, _, status in samples)
            accepted = statuses[200] * case.batch
            delivered = len(sink.wait_for(accepted, deadline))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    latencies = sorted(end - start for start, end, _ in samples)
    first = min((start for start, _, _ in samples), default=0.0)
    last = max((end for _, end, _ in samples), default=first)
    seconds = last - first
    codes = ",".join(f"{code}x{n}" for code, n in sorted(statuses.items()))
    return (
        f"batch_send  N={case.requests} batch={case.batch} C={case.clients} size={case.size}"
        f"  req/s={relay.rate(len(samples), seconds):.1f}"
        f"  messages/s={relay.rate(accepted, seconds):.0f}"
        f"  p50={relay.ms(relay.percentile(latencies, 0.5) * 1000)}"
        f" p99={relay.ms(relay.percentile(latencies, 0.99) * 1000)}"
        f"  statuses={codes}  delivered={delivered}/{accepted}"
        f"  cpu={cpu * 1000 / max(accepted, 1):.2f}ms/message"
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Postern batch send benchmark")
    parser.add_argument("--requests", "-n", type=int, default=100)
    parser.add_argument("--batch", "-b", type=int, default=100, help="messages per request")
    parser.add_argument("--clients", "-c", type=int, default=4)
    parser.add_argument("--size", type=int, default=1024, help="text body size in bytes")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds for the run")
    args = parser.parse_args(argv)
    if min(args.requests, args.clients, args.size) < 1 or not 1 <= args.batch <= 100:
        parser.error("--requests, --clients, --size >= 1; --batch 1 to 100")
    case = Case(args.requests, args.batch, args.clients, args.size, args.timeout)
    try:
        print(run(case))
    except relay.BenchError as error:
        print(f"FAILED: {error}")
        return 1
    return 0


if __name__ == "__main__":
    mp.set_start_method("spawn", force=True)
    sys.exit(main())
