#!/usr/bin/env python3
"""How long `postern` takes to start and finish a simple command (never collected by pytest).

    python bench/cli_start.py [--runs 5] [--program PATH] [--json]

Runs each command below as a subprocess (`python -m gateway.process.cli`, this checkout
first on the path, or with `--program` an installed `postern`, as users run it) against a
fresh data_dir, `--runs` times, and prints the median wall time and the median CPU time
(user + system) of the command's process: the CPU time moves less than the wall time when
the machine carries other work. The database is created by one untimed run first, so the
figures are start-up and the command, not the first schema.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
COMMANDS = (
    ("--help",),
    ("check-config",),
    # Every group's read: each imports its own module, storage and SQLAlchemy.
    ("users", "list", "--json"),
    ("keys", "list", "--json"),
    ("suppressions", "list", "--json"),
    ("dkim", "list", "--json"),
    ("domains", "list", "--json"),
    ("pools", "list", "--json"),
    ("aliases", "list", "--json"),
    ("webhooks", "list", "--json"),
    ("queue", "list", "--json"),
    ("routes", "list", "--json"),
    ("bounces", "list", "--json"),
    ("blocklists", "status", "--json"),
    ("warmup", "list", "--json"),
)


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("POSTERN_CONFIG", None)
    # An installed Postern runs from bytecode pip compiled; with PYTHONDONTWRITEBYTECODE set
    # (a CI or container habit) every run would compile the checkout's sources again
    # (~0.1 s). The untimed first run writes the caches.
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return env


def _once(argv: list[str], env: dict[str, str]) -> tuple[float, float]:
    """(wall, CPU) seconds of one run. Waited for with a blocking wait4, which also gives
    the child's own CPU time: subprocess's wait with a timeout polls with sleeps of up to
    50 ms, which rounded every wall time up to the next 50 ms step. A timer still bounds it."""
    started = time.perf_counter()
    child = subprocess.Popen(argv, env=env, cwd=REPO, stdout=subprocess.DEVNULL)
    watchdog = threading.Timer(60.0, child.kill)
    watchdog.start()
    try:
        _, status, used = os.wait4(child.pid, 0)
    finally:
        watchdog.cancel()
    wall = time.perf_counter() - started
    child.returncode = os.waitstatus_to_exitcode(status)  # reaped here, not by Popen
    if child.returncode != 0:
        raise subprocess.CalledProcessError(child.returncode, argv)
    return wall, used.ru_utime + used.ru_stime


def measure(runs: int, program: str | None = None) -> dict[str, tuple[float, float]]:
    """Each command's median (wall, CPU) seconds."""
    env = _env()
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "postern.toml"
        config.write_text(f'[server]\ndata_dir = "{Path(tmp) / "var"}"\n')
        start = [program] if program else [sys.executable, "-m", "gateway.process.cli"]
        base = [*start, "--config", str(config)]
        _once([*base, "users", "list"], env)  # the schema, untimed
        results = {}
        for words in COMMANDS:
            walls, cpus = zip(*(_once([*base, *words], env) for _ in range(runs)), strict=True)
            results[" ".join(words)] = (statistics.median(walls), statistics.median(cpus))
        return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--program", help="an installed `postern` to run instead of this checkout")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    results = measure(args.runs, args.program)
    if args.json:
        rounded = {
            name: {"wall": round(w, 3), "cpu": round(c, 3)} for name, (w, c) in results.items()
        }
        print(json.dumps(rounded))
        return
    for name, (wall, cpu) in results.items():
        print(f"postern {name:<24} {wall:6.3f} s wall, {cpu:6.3f} s CPU  (median of {args.runs})")


if __name__ == "__main__":
    main()
