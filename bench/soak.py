#!/usr/bin/env python3
"""Crash-loop soak: `postern serve` SIGKILLed at random moments, for many rounds.

The loop of tests/e2e/test_crash_loop.py (tests/support/crashloop.py), for long runs: each round
gives the fault-injecting sink a few random upstream faults, starts postern on the same
data_dir, streams messages at it over SMTP and HTTP and kills it with SIGKILL at a random
moment. After the last round the sink is healed, postern drains the queue, and the run
checks that every acknowledged message (SMTP 250, HTTP 200/202) reached the sink and none
that was refused did.

    python3 bench/soak.py --rounds 1000 --seconds 3600
    python3 bench/soak.py --rounds 100 --seed 42 --verbose

Prints rounds, messages sent / acknowledged / delivered / lost / duplicated; exits 1 when a
message was lost (or a refused one delivered), 0 otherwise. Loopback only.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.support.crashloop import Settings, run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=1000, help="kill/restart rounds")
    parser.add_argument(
        "--seconds", type=float, default=3600.0, help="start no round after this (drain extra)"
    )
    parser.add_argument("--seed", type=int, default=None, help="random seed (printed)")
    parser.add_argument("--smtp-senders", type=int, default=1)
    parser.add_argument("--http-senders", type=int, default=1)
    parser.add_argument("--min-up", type=float, default=0.2, help="seconds alive, at least")
    parser.add_argument("--max-up", type=float, default=1.5, help="seconds alive, at most")
    parser.add_argument("--pace", type=float, default=0.01, help="mean pause between messages")
    parser.add_argument("--drain-timeout", type=float, default=120.0)
    parser.add_argument("--workdir", type=Path, default=None, help="kept; default: a temp dir")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (logs, db)")
    parser.add_argument("--verbose", action="store_true", help="one line per round")
    args = parser.parse_args(argv)

    settings = Settings(
        rounds=args.rounds,
        seconds=args.seconds,
        seed=args.seed,
        smtp_senders=args.smtp_senders,
        http_senders=args.http_senders,
        min_up=args.min_up,
        max_up=args.max_up,
        pace=args.pace,
        drain_timeout=args.drain_timeout,
        verbose=args.verbose,
    )
    temp = None
    workdir = args.workdir
    if workdir is None:
        temp = tempfile.mkdtemp(prefix="postern-soak-")
        workdir = Path(temp)
    report = run(settings, workdir, echo=lambda line: print(line, flush=True))
    for line in report.lines():
        print(line)
    failed = not report.ok or not report.drained
    if temp is not None and not args.keep and not failed:
        shutil.rmtree(temp, ignore_errors=True)
    elif temp is not None:
        print(f"kept {temp}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
