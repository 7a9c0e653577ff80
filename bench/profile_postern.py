#!/usr/bin/env python3
"""Where does Postern's event loop spend its time under smtp-source load? (py-spy)

    python bench/profile_postern.py                        # C=50, 1 KB, 20000 messages
    python bench/profile_postern.py --clients 10 --size 10240 --keep
    python bench/profile_postern.py --summarize FILE.txt    # re-read a raw py-spy file

Starts an `smtp-sink -c` upstream and Postern (bench/compare_postfix.py's sink, bench/
relay.py's Postern handle: pool "sink", `policy.sender = "any"`), attaches
`py-spy record --pid <postern> -f raw --threads --nolineno` (active samples only: a thread
waiting in epoll or on a lock is not sampled), runs `smtp-source -d -s C -m N -l SIZE`,
waits until the sink holds every message, stops py-spy, then prints per thread its busy
share of the wall time and, for the main thread (the event loop), the functions with the
most samples: "self" = the function itself was running, "total" = it was on the stack.
Percentages are of the main thread's samples (its busy time), unless marked "wall".
"""

from __future__ import annotations

import argparse
import collections
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import compare_postfix
import relay
from relay import BenchError
from webhook_sink import WebhookSink, subscribe


@dataclass
class Profile:
    threads: dict[str, int]  # thread name -> active samples
    tids: dict[str, int]  # thread name -> OS thread id
    self_counts: collections.Counter[str]  # main thread: leaf frame -> samples
    total_counts: collections.Counter[str]  # main thread: frame anywhere on the stack
    module_self: collections.Counter[str]  # main thread: leaf frame's file -> samples
    main_samples: int


def parse_raw(path: Path, main_thread: str = "MainThread") -> Profile:
    threads: collections.Counter[str] = collections.Counter()
    tids: dict[str, int] = {}
    self_counts: collections.Counter[str] = collections.Counter()
    total_counts: collections.Counter[str] = collections.Counter()
    module_self: collections.Counter[str] = collections.Counter()
    main_samples = 0
    for raw in path.read_text(errors="replace").splitlines():
        stack, _, count_text = raw.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = stack.split(";")
        thread = "?"
        if frames[0].startswith("thread ("):  # "thread (TID): NAME"
            tid_text, _, thread = frames[0][len("thread (") :].partition("): ")
            if tid_text.isdigit():
                tids[thread] = int(tid_text)
            frames = frames[1:]
        threads[thread] += count
        if thread != main_thread or not frames:
            continue
        main_samples += count
        self_counts[frames[-1]] += count
        module_self[_file(frames[-1])] += count
        for frame in set(frames):
            total_counts[frame] += count
    return Profile(dict(threads), tids, self_counts, total_counts, module_self, main_samples)


def thread_cpu(pid: int) -> dict[int, float]:
    """CPU seconds (utime+stime) of each thread of `pid`, by OS thread id."""
    out: dict[int, float] = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            text = (task / "stat").read_text()
        except OSError:
            continue
        fields = text[text.rindex(")") + 2 :].split()  # from field 3 (state) on
        out[int(task.name)] = (int(fields[11]) + int(fields[12])) / relay.CLK_TCK
    return out


def _file(frame: str) -> str:
    start = frame.rfind("(")
    return frame[start + 1 : -1] if start >= 0 and frame.endswith(")") else frame


def report(
    profile: Profile, rate: float, seconds: float, top: int, cpu: dict[int, float] | None = None
) -> str:
    possible = max(rate * seconds, 1.0)
    main = max(profile.main_samples, 1)
    out = [
        f"sampled {seconds:.1f}s at {rate:g} Hz; per thread: share of wall time in py-spy's"
        " active samples (a thread woken for the GIL or a queue counts as active) and, when"
        " known, its CPU time from /proc (utime+stime) as a share of wall time:"
    ]
    for name, samples in sorted(profile.threads.items(), key=lambda item: -item[1]):
        tid = profile.tids.get(name)
        used = f"  cpu {100 * cpu[tid] / seconds:5.1f}%" if cpu and tid in cpu else ""
        out.append(f"  {name:28} sampled {100 * samples / possible:5.1f}%{used}")
    if cpu:
        out.append(f"  {'(process, all threads)':28} cpu {100 * sum(cpu.values()) / seconds:5.1f}%")
    out += ["", f"event loop (MainThread), top {top} by self samples (% of its busy time):"]
    for frame, samples in profile.self_counts.most_common(top):
        total = profile.total_counts[frame]
        out.append(
            f"  self {100 * samples / main:5.1f}%  total {100 * total / main:5.1f}%  {frame}"
        )
    out += ["", f"event loop, top {top} by total samples (frame anywhere on the stack):"]
    for frame, samples in profile.total_counts.most_common(top):
        out.append(
            f"  total {100 * samples / main:5.1f}%  self"
            f" {100 * profile.self_counts[frame] / main:5.1f}%  {frame}"
        )
    out += ["", "event loop, self samples by file:"]
    for name, samples in profile.module_self.most_common(top):
        out.append(f"  {100 * samples / main:5.1f}%  {name}")
    return "\n".join(out)


def profile_run(args: argparse.Namespace, out_dir: Path) -> tuple[Path, float, dict[int, float]]:
    """Run the load under py-spy; the raw file, the seconds sampled, CPU s per thread."""
    raw = out_dir / "postern.pyspy.txt"
    command = args.postern_cmd
    sink = compare_postfix.SmtpSink()
    try:
        postern = relay.Postern(
            command,
            out_dir,
            sink.port,
            args.upstream_connections,
            args.dkim,
            storage_url=args.storage_url,
        )
        try:
            postern.wait_ready(time.monotonic() + 60)
            hooks = None
            if args.webhook:  # every event also POSTed to a receiver on loopback
                hooks = WebhookSink()
                subscribe([*command[:-1]], out_dir / "postern.toml", postern.http_port, hooks.url)
            spy = subprocess.Popen(
                [
                    shutil.which("py-spy") or "py-spy",
                    "record",
                    "--pid", str(postern.proc.pid),
                    "--rate", str(args.rate),
                    "--format", "raw",
                    "--threads",
                    "--nolineno",
                    *(["--native"] if args.native else []),
                    *(["--gil"] if args.gil else []),
                    "--output", str(raw),
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
            )  # fmt: skip
            time.sleep(1.0)  # let py-spy attach before the load starts
            if spy.poll() is not None:
                error = spy.stderr.read().decode(errors="replace") if spy.stderr else ""
                raise BenchError(f"py-spy exited at once: {error.strip()[:300]}")
            started = time.monotonic()
            cpu_before = thread_cpu(postern.proc.pid)
            try:
                case = compare_postfix.Case(args.size, args.clients, args.messages)
                settings = compare_postfix.Settings(
                    runs=1,
                    timeout=args.timeout,
                    upstream_connections=args.upstream_connections,
                    reuse=True,
                    sink="smtp-sink",
                    postern_cmd=command,
                    keep=False,
                    systems=("postern",),
                )
                base = sink.count()
                deadline = time.monotonic() + args.timeout
                start, accepted = compare_postfix.drive(postern.smtp_port, case, settings, deadline)
                delivered = sink.wait_for(base + args.messages, deadline)
                if hooks is not None:
                    got = hooks.wait_for(2 * args.messages, deadline)
                    print(f"webhook events received={got}", flush=True)
            finally:
                if hooks is not None:
                    hooks.close()
                seconds = time.monotonic() - started
                cpu = {
                    tid: used - cpu_before.get(tid, 0.0)
                    for tid, used in thread_cpu(postern.proc.pid).items()
                }
                spy.send_signal(signal.SIGINT)  # py-spy writes its file on SIGINT
                try:
                    spy.wait(60)
                except subprocess.TimeoutExpired:
                    spy.kill()
                    spy.wait()
                if spy.stderr is not None:
                    spy.stderr.close()
            n = args.messages
            print(
                f"load: N={n} C={args.clients} size={args.size}"
                f"  accepted/s={n / (accepted - start):.0f}"
                f"  delivered/s={n / (delivered - start):.0f}  (under py-spy)",
                flush=True,
            )
        finally:
            postern.stop()
    finally:
        sink.close()
    if not raw.exists():
        raise BenchError("py-spy wrote no output")
    return raw, seconds, cpu


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="py-spy profile of Postern under smtp-source")
    parser.add_argument("--clients", "-c", type=int, default=50)
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--messages", "-n", type=int, default=20000)
    parser.add_argument("--rate", type=int, default=200, help="py-spy samples per second")
    parser.add_argument("--upstream-connections", type=int, default=20)
    relay.add_postern_cmd(parser)
    parser.add_argument("--timeout", type=float, default=300.0)
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--native", action="store_true", help="py-spy --native (C frames too)")
    parser.add_argument(
        "--gil", action="store_true", help="py-spy --gil: only samples holding the GIL"
    )
    parser.add_argument("--keep", action="store_true", help="keep the raw file, config, log")
    parser.add_argument(
        "--webhook", action="store_true", help="POST every event to a receiver on loopback"
    )
    parser.add_argument(
        "--dkim", choices=("rsa", "ed25519"), help="DKIM-sign every message with such a key"
    )
    parser.add_argument(
        "--storage-url",
        default="",
        help="`[storage] url` (an empty PostgreSQL database: postgresql+asyncpg://...);"
        " SQLite in the temp dir by default",
    )
    parser.add_argument("--summarize", type=Path, help="only summarise this raw py-spy file")
    parser.add_argument("--seconds", type=float, help="with --summarize: seconds sampled")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.summarize:
        profile = parse_raw(args.summarize)
        seconds = args.seconds or max(profile.threads.values(), default=0) / args.rate
        print(report(profile, args.rate, seconds, args.top))
        return 0
    out_dir = Path(tempfile.mkdtemp(prefix="postern-profile-"))
    try:
        raw, seconds, cpu = profile_run(args, out_dir)
        print(report(parse_raw(raw), args.rate, seconds, args.top, cpu))
    except BenchError as error:
        print(f"profile_postern: {error}", file=sys.stderr)
        return 1
    finally:
        if args.keep:
            print(f"kept {out_dir}", file=sys.stderr)
        else:
            shutil.rmtree(out_dir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
