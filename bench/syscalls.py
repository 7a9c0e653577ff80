#!/usr/bin/env python3
"""The serving process's writes and syncs per message (issue 22; never collected by pytest).

    python bench/syscalls.py --messages 3000 --clients 1
    python bench/syscalls.py --messages 3000 --clients 10 --workers 1

bench/relay.py's run (its sink, its Postern with `[server] workers`, its SMTP load), with
`strace -c -f` attached to every process of Postern once it is ready and detached once the
sink holds every message: start-up and shutdown are left out. Prints the counts of the
syscalls named by --trace (pwrite64: SQLite's WAL frames and checkpoint; fdatasync: its
commits' syncs) per accepted message, and relay.py's line. Counts barely move with the
machine's load (the group commits' sizes do, a little); strace's stops slow Postern down,
so the times printed are not Postern's.
"""

from __future__ import annotations

import argparse
import contextlib
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import relay

TRACE = "pwrite64,fdatasync,fsync,pwritev,write"


def counts(summary: str) -> dict[str, int]:
    """syscall -> calls, from strace -c's table."""
    found: dict[str, int] = {}
    for line in summary.splitlines():
        fields = line.split()
        if len(fields) >= 5 and re.fullmatch(r"[\d.]+", fields[0]) and fields[3].isdigit():
            found[fields[-1]] = int(fields[3])
    return found


def traced_run(case: relay.Case, workers: str, trace: str) -> tuple[relay.Result, str]:
    deadline = time.monotonic() + case.timeout
    tmp = Path(tempfile.mkdtemp(prefix="postern-syscalls-"))
    out = tmp / "strace.txt"
    try:
        with contextlib.ExitStack() as stack:
            sink = relay.Sink()
            stack.callback(sink.close)
            postern = relay.Postern(
                case.postern_cmd, tmp, sink.port, case.upstream_connections, workers=workers
            )
            stack.callback(postern.stop)
            postern.wait_ready(deadline)
            pids = relay.proc_tree(postern.proc.pid)
            attach = [arg for pid in pids for arg in ("-p", str(pid))]
            strace = subprocess.Popen(
                ["strace", "-f", "-c", "-o", str(out), "-e",
                 f"trace={trace}", *attach],
                stderr=subprocess.DEVNULL,
            )  # fmt: skip
            time.sleep(1.0)  # attached (strace has no "ready" signal)
            measured = relay.measure(case, sink, postern.smtp_port, postern.proc.pid, deadline)
            strace.send_signal(signal.SIGINT)  # detach, write the summary
            try:
                strace.wait(30)
            except subprocess.TimeoutExpired:
                strace.kill()  # never left attached
                strace.wait()
                raise
            return relay.summarize(case, measured), out.read_text()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", "-n", type=int, default=3000)
    parser.add_argument("--clients", "-c", type=int, default=1)
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--workers", default="1", help="[server] workers (a count or auto)")
    parser.add_argument("--trace", default=TRACE, help="the syscalls to count")
    parser.add_argument("--timeout", type=float, default=600.0)
    relay.add_postern_cmd(parser)
    args = parser.parse_args()
    case = relay.Case(
        args.messages, args.clients, args.size, False, args.postern_cmd, 10, args.timeout, False
    )
    workers = args.workers if args.workers == "auto" else int(args.workers)
    result, summary = traced_run(case, workers, args.trace)  # type: ignore[arg-type]
    accepted = max(result.messages - result.refused, 1)
    per = "  ".join(f"{name}={n / accepted:.2f}" for name, n in sorted(counts(summary).items()))
    print(f"syscalls  N={args.messages} C={args.clients} workers={args.workers}  per msg: {per}")
    print(relay.line(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
