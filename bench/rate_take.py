"""What one per-key rate-limit take costs (issue 22): RateLimiter in memory (one process) vs
SharedRateLimiter (the table a node's workers share), alone and with other processes
taking from the same table at the same time. Microseconds per take, best of 5 rounds.

    python bench/rate_take.py [--takes 200000] [--keys 100] [--others 1]
"""

from __future__ import annotations

import argparse
import multiprocessing
import multiprocessing.synchronize
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gateway.security.ratelimit import RateLimiter
from gateway.security.shared_rate import SharedRateLimiter, create_table

RATE = "1000000/s"  # never refused: the cost of a grant, the common case


def per_take(limiter: RateLimiter, takes: int, keys: int) -> float:
    names = [f"key_{n}" for n in range(keys)]
    best = float("inf")
    for _ in range(5):
        started = time.perf_counter()
        for n in range(takes):
            limiter.take(names[n % keys])
        best = min(best, time.perf_counter() - started)
    return best / takes * 1e6


def hammer(fd: int, stop: multiprocessing.synchronize.Event) -> None:
    limiter = SharedRateLimiter(RATE, fd)
    while not stop.is_set():
        for _ in range(1000):
            limiter.take("key_0")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--takes", type=int, default=200_000)
    parser.add_argument("--keys", type=int, default=100)
    parser.add_argument("--others", type=int, default=1, help="processes taking meanwhile")
    args = parser.parse_args()
    fd = create_table()
    memory = per_take(RateLimiter(RATE), args.takes, args.keys)
    shared = per_take(SharedRateLimiter(RATE, fd), args.takes, args.keys)
    context = multiprocessing.get_context("fork")
    stop = context.Event()
    others = [context.Process(target=hammer, args=(fd, stop)) for _ in range(args.others)]
    for other in others:
        other.start()
    try:
        contended = per_take(SharedRateLimiter(RATE, fd), args.takes, args.keys)
    finally:
        stop.set()
        for other in others:
            other.join()
        os.close(fd)
    print(
        f"take(), µs: in memory {memory:.2f}; shared {shared:.2f}; "
        f"shared with {args.others} other process(es) taking {contended:.2f} "
        f"({os.cpu_count()} CPUs, {args.keys} keys, {args.takes} takes, best of 5)"
    )


if __name__ == "__main__":
    main()
