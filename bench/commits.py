#!/usr/bin/env python3
"""What the group commits cost under load, from Postern's own metrics (issue 22).

    python bench/commits.py                            # workers auto, 1 KB, C=1,10,50
    python bench/commits.py --workers 1 --clients 10 -n 8000

Postern relays `smtp-source`'s load into `smtp-sink`, as `compare_postfix.py` runs it; the
script reads /metrics (worker 0 sums the workers' files) before and after each case and
prints, per message and per commit, what the storage writers did:

    commits/msg    group commits a message cost (its intake, its attempt's record, claims)
    jobs/commit    writes that shared one fsync (postern_storage_commit_jobs_total)
    commit ms      a commit's mean time from starting it to its return on the event loop
    writer busy    commit time over wall time, averaged over the workers (1.0: never idle)
    lock wait      SQLite: the share of commit time spent waiting for another worker's lock
    lock busy      SQLite: the time the write lock was held, summed over the workers, over
                   wall time (1.0: never free; whatever the workers, writes queue on it);
                   counted between the scrapes, so a little over the load's own share

Commit time includes the hops between the loop and the write thread, so a loop that is slow
to take the result back makes a writer look busier than storage keeps it: writer busy is an
upper bound on how occupied storage is; a large lock-wait share says the workers queue on
the SQLite write lock. Counts from the server itself, no tracing; wall figures move ±15 %
from minute to minute here.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import tempfile
import time
import urllib.request
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import compare_postfix
import relay
from relay import HOST, BenchError, tree_cpu_seconds

SAMPLES = (
    "postern_storage_commit_seconds_count",
    "postern_storage_commit_seconds_sum",
    "postern_storage_commit_jobs_total",
    "postern_storage_lock_wait_seconds_total",
    "postern_storage_lock_held_seconds_total",
)


def scrape(http_port: int) -> dict[str, float]:
    """The samples above, from /metrics."""
    with urllib.request.urlopen(f"http://{HOST}:{http_port}/metrics", timeout=10) as response:
        text = response.read().decode()
    found = dict.fromkeys(SAMPLES, 0.0)
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        if name in found:
            found[name] += float(value)
    return found


def measure(args: argparse.Namespace, clients: int, tmp: Path) -> str:
    workers: str | int = int(args.workers) if args.workers.isdigit() else args.workers
    with contextlib.ExitStack() as stack:
        sink = compare_postfix.SmtpSink()
        stack.callback(sink.close)
        postern = relay.Postern(args.postern_cmd, tmp, sink.port, 20, workers=workers)
        stack.callback(postern.stop)
        deadline = time.monotonic() + args.timeout
        postern.wait_ready(deadline)
        before, base = scrape(postern.http_port), sink.count()
        cpu = tree_cpu_seconds(postern.proc.pid)
        case = compare_postfix.Case(args.size, clients, args.messages)
        settings = compare_postfix.Settings(
            runs=1, timeout=args.timeout, upstream_connections=20, reuse=True,
            sink="smtp-sink", postern_cmd=args.postern_cmd, keep=False, systems=("postern",),
        )  # fmt: skip
        start, _ = compare_postfix.drive(postern.smtp_port, case, settings, deadline)
        done = sink.wait_for(base + args.messages, deadline)
        cpu = tree_cpu_seconds(postern.proc.pid) - cpu
        after = scrape(postern.http_port)
    delta = {name: after[name] - before[name] for name in SAMPLES}
    commits = max(delta["postern_storage_commit_seconds_count"], 1.0)
    seconds = delta["postern_storage_commit_seconds_sum"]
    wall = done - start
    processes = workers if isinstance(workers, int) else len(os.sched_getaffinity(0))
    n = args.messages
    return (
        f"{clients:>4} {n / wall:8.0f} {cpu * 1000 / n:7.2f} {commits / n:11.2f}"
        f" {delta['postern_storage_commit_jobs_total'] / commits:11.2f}"
        f" {seconds * 1000 / commits:9.2f} {seconds / wall / processes:11.2f}"
        f" {delta['postern_storage_lock_wait_seconds_total'] / max(seconds, 1e-9):9.0%}"
        f" {delta['postern_storage_lock_held_seconds_total'] / wall:9.2f}"
    )


def run(args: argparse.Namespace) -> int:
    compare_postfix.ensure_postfix()  # smtp-source and smtp-sink come with it
    print(compare_postfix.machine())
    print(f"workers={args.workers} size={args.size} N={args.messages}")
    print(
        "   C    msg/s  cpu ms  commits/msg  jobs/commit commit ms writer busy lock wait lock busy"
    )
    for clients in args.clients:
        with tempfile.TemporaryDirectory(prefix="postern-commits-") as tmp:
            print(measure(args, clients, Path(tmp)), flush=True)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", "-n", type=int, default=5000)
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument(
        "--clients", type=lambda text: [int(c) for c in text.split(",")], default=[1, 10, 50]
    )
    parser.add_argument("--workers", default="auto", help='`[server] workers`: a count or "auto"')
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds per case")
    relay.add_postern_cmd(parser)
    args = parser.parse_args(argv)
    if args.workers != "auto" and not (args.workers.isdigit() and int(args.workers) > 0):
        parser.error('--workers: a positive count or "auto"')
    try:
        return run(args)
    except BenchError as error:
        print(f"commits: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
