#!/usr/bin/env python3
"""What one login costs: the argon2id verification of gateway.people.passwords, with the
parameters Postern stores, timed in this process (no server, no database).

    python3 bench/login.py              # median of 20 verifications
    python3 bench/login.py -n 50

Prints the parameters, then the median, min and max time of one `Passwords.verify` of a
matching password and of an unknown user's (the dummy hash), which must cost the same.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gateway.people.passwords import PROFILE, Passwords


async def timings(passwords: Passwords, stored: str | None, count: int) -> list[float]:
    spent = []
    for _ in range(count):
        started = time.perf_counter()
        await passwords.verify(stored, "correct horse battery")
        spent.append((time.perf_counter() - started) * 1000)
    return spent


def report(label: str, spent: list[float]) -> None:
    print(
        f"{label:<14} median {statistics.median(spent):6.1f} ms"
        f"  min {min(spent):6.1f}  max {max(spent):6.1f}  (n={len(spent)})"
    )


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=20, help="verifications per case")
    args = parser.parse_args()
    passwords = Passwords()
    stored = passwords.hash("correct horse battery")
    print(
        f"argon2id: memory {PROFILE.memory_cost} KiB, time cost {PROFILE.time_cost},"
        f" parallelism {PROFILE.parallelism}"
    )
    report("known user", await timings(passwords, stored, args.n))
    report("unknown user", await timings(passwords, None, args.n))


if __name__ == "__main__":
    asyncio.run(main())
