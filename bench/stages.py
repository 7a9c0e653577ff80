#!/usr/bin/env python3
"""Where one client's time goes: each command's reply time, and the calls each message costs.

    python bench/stages.py                      # 3000 messages, one client, workers = 1
    python bench/stages.py --workers auto --messages 5000
    python bench/stages.py --cprofile calls.prof --top 40
    python bench/stages.py --spans

One client sends 1 KB messages without pipelining, as smtp-source does (MAIL, RCPT, DATA,
the content), to Postern relaying into bench/relay.py's sink, and prints each reply's time
(p50, p90, mean; the first 10 % left out as warm-up). With one client every step waits for
the one before, so these add up to the message's round trip: what `compare_postfix.py`'s
C=1 column measures, taken apart.

`--cprofile FILE` runs `serve` (one process: workers = 1) under cProfile, whose overhead
inflates Python code about twofold, and prints the functions by their own time per message
with their calls per message: a count that does not depend on the machine's load, for
before/after comparisons of what one message costs the event loop (cProfile sees the main
thread only). Wall figures move ±15 % from minute to minute here: interleave runs.

`--spans` runs `serve` (workers = 1) with the steps of the final dot's critical path timed
in the server (a wrapper around each method, this script's alone): the DATA command from
its line to its reply, the handler's submit, intake's store, the writer's transaction as
the loop waits for it, and on the write thread the SQL and the COMMIT (wall and CPU), with
delivery's attempt and its upstream send beside them. The writer's spans count every
commit, not only the dot's (attempts' records, claims, background writes). Mean and p50
per span with the first 10 % left out; the count is of all.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import pstats
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import relay

STEPS = (("MAIL", relay.MAIL_FROM), ("RCPT", relay.RCPT_TO), ("DATA", b"DATA\r\n"))
PROFILER = """\
import cProfile, sys
from gateway.process import cli
profile = cProfile.Profile()
profile.enable()
try:
    status = cli.main(sys.argv[2:])
finally:
    profile.disable()
    profile.dump_stats(sys.argv[1])
sys.exit(status)
"""

SPANS = """\
import atexit, functools, json, sys, time
from collections import defaultdict

spans = defaultdict(list)


def timed(owner, name, label):
    method = getattr(owner, name)

    @functools.wraps(method)  # (aiosmtpd reads its command methods' attributes)
    async def wrapper(*args, **kwargs):
        began = time.perf_counter()
        try:
            return await method(*args, **kwargs)
        finally:
            spans[label].append(time.perf_counter() - began)

    setattr(owner, name, wrapper)


from sqlalchemy.engine.base import Transaction
from gateway.delivery import upstream, workers
from gateway.intake import pipeline
from gateway.process import cli
from gateway.smtpd import server
from storage import db, writer

timed(server.PosternSMTP, "smtp_DATA", "DATA to its reply")
timed(server.PosternHandler, "_submit", "  handler submit")
timed(pipeline.Intake, "_store", "    intake store")
timed(writer.Writer, "_transaction", "      writer transaction")
timed(workers.Delivery, "deliver", "delivery attempt")
timed(upstream.UpstreamPool, "send", "  upstream send")


def on_thread(name, call, *args):  # call(*args) on the write thread, timed as `name`
    began, cpu = time.perf_counter(), time.thread_time()
    try:
        return call(*args)
    finally:
        spans[f"        {name} (thread)"].append(time.perf_counter() - began)
        spans[f"        {name} (thread CPU)"].append(time.thread_time() - cpu)


transaction = db.Database.transaction


async def thread_timed(self, work, **kwargs):
    return await transaction(self, lambda conn: on_thread("SQL", work, conn), **kwargs)


db.Database.transaction = thread_timed
commit = Transaction.commit


def commit_timed(self):
    return on_thread("COMMIT", commit, self)


Transaction.commit = commit_timed


def dump():
    with open(sys.argv[1], "w") as out:
        json.dump(spans, out)


atexit.register(dump)
sys.exit(cli.main(sys.argv[2:]))
"""


async def one_client(port: int, messages: int, size: int) -> dict[str, list[float]]:
    client = await relay.SmtpClient.connect(port)
    client.pipelining = False  # as smtp-source: one command, one reply
    times: dict[str, list[float]] = {name: [] for name in ("MAIL", "RCPT", "DATA", "end", "all")}
    content = relay.build_message(0, size, "stages", "Mon, 7 Dec 2026 05:00:00 +0000")
    for _ in range(messages):
        began = time.perf_counter()
        for name, command in STEPS:
            sent = time.perf_counter()
            client.writer.write(command)
            await client.code()
            times[name].append(time.perf_counter() - sent)
        sent = time.perf_counter()
        client.writer.write(content + b".\r\n")
        code = await client.code()
        if code != 250:
            raise relay.BenchError(f"the content was answered {code}")
        ended = time.perf_counter()
        times["end"].append(ended - sent)
        times["all"].append(ended - began)
    await client.close(polite=True)
    return times


def report(times: dict[str, list[float]]) -> None:
    print("reply to   p50 ms   p90 ms  mean ms")
    for name, values in times.items():
        kept = sorted(values[len(values) // 10 :])
        p90 = kept[int(len(kept) * 0.9)]
        label = "the dot" if name == "end" else name
        print(
            f"{label:8} {statistics.median(kept) * 1e3:8.3f} {p90 * 1e3:8.3f}"
            f" {statistics.mean(kept) * 1e3:8.3f}"
        )


def print_profile(path: Path, messages: int, top: int) -> None:
    stats = pstats.Stats(str(path)).stats  # type: ignore[attr-defined]
    # Called less than once in ten messages: start-up and shutdown (imports, the awaiting
    # of the whole service), not what a message costs.
    per_message = [item for item in stats.items() if item[1][1] >= messages / 10]
    rows = sorted(per_message, key=lambda item: -item[1][2])
    print(f"\ncProfile, main thread, per message ({messages}); own ms, total ms, calls:")
    for (filename, line, function), (_, calls, own, total, _) in rows[:top]:
        where = filename.split("site-packages/")[-1].replace(str(relay.REPO_ROOT) + "/", "")
        print(
            f"{own / messages * 1e3:7.4f} {total / messages * 1e3:7.3f}"
            f" {calls / messages:6.1f}  {where}:{line} {function}"
        )


SPAN_ORDER = (
    "DATA to its reply",
    "  handler submit",
    "    intake store",
    "      writer transaction",
    "        SQL (thread)",
    "        SQL (thread CPU)",
    "        COMMIT (thread)",
    "        COMMIT (thread CPU)",
    "delivery attempt",
    "  upstream send",
)


def print_spans(spans: dict[str, list[float]]) -> None:
    print(f"\n{'in the server, ms:':28} {'mean':>7}  {'p50':>7}  {'count':>6}")
    rank = {name: index for index, name in enumerate(SPAN_ORDER)}
    for label in sorted(spans, key=lambda name: rank.get(name, len(rank))):
        values = spans[label]
        kept = sorted(values[len(values) // 10 :]) or [0.0]
        print(
            f"{label:28} {statistics.mean(kept) * 1e3:7.3f}  {statistics.median(kept) * 1e3:7.3f}"
            f"  {len(values):6}"
        )


def run(args: argparse.Namespace) -> int:
    tmp = Path(tempfile.mkdtemp(prefix="postern-stages-"))
    command: Sequence[str] = args.postern_cmd
    workers: str | int = int(args.workers) if args.workers.isdigit() else args.workers
    if args.cprofile:
        script = tmp / "profiled_serve.py"
        script.write_text(PROFILER)
        command = (command[0], str(script), str(args.cprofile.resolve()), "serve")
        workers = 1
    spans = tmp / "spans.json"
    if args.spans:
        script = tmp / "timed_serve.py"
        script.write_text(SPANS)
        command = (command[0], str(script), str(spans), "serve")
        workers = 1
    sink = relay.Sink()
    postern = relay.Postern(command, tmp, sink.port, 20, workers=workers)
    try:
        postern.wait_ready(time.monotonic() + 60)
        times = asyncio.run(one_client(postern.smtp_port, args.messages, args.size))
        postern.stop()  # (its spans are written as it exits)
        if args.spans and not spans.exists():
            raise relay.BenchError(f"serve wrote no spans{postern.log_tail()}")
        timed = json.loads(spans.read_text()) if args.spans else {}
    finally:
        postern.stop()
        sink.close()
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"one client, {args.messages} messages of {args.size} bytes, workers = {workers}")
    report(times)
    if args.spans:
        print_spans(timed)
    if args.cprofile:
        print_profile(args.cprofile, args.messages, args.top)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", "-n", type=int, default=3000)
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--workers", default="1", help='`[server] workers`: a number or "auto"')
    how = parser.add_mutually_exclusive_group()  # (each runs serve under its own wrapper)
    how.add_argument("--cprofile", type=Path, help="profile `serve` into this file")
    parser.add_argument("--top", type=int, default=30, help="functions shown with --cprofile")
    how.add_argument(
        "--spans", action="store_true", help="time the final dot's steps in the server"
    )
    relay.add_postern_cmd(parser)
    args = parser.parse_args(argv)
    try:
        return run(args)
    except relay.BenchError as error:
        print(f"stages: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
