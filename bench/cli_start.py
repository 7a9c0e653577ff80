#!/usr/bin/env python3
"""How long `postern` takes to start and finish a simple command (never collected by pytest).

    python bench/cli_start.py [--runs 5] [--json]

Runs each command below as a subprocess (`python -m gateway.process.cli`, this checkout
first on the path) against a fresh data_dir, `--runs` times, and prints the median wall
time. The database is created by one untimed run first, so the figures are start-up and
the command, not the first schema.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
COMMANDS = (
    ("--help",),
    ("check-config",),
    ("users", "list", "--json"),
    ("pools", "list", "--json"),
    ("queue", "list", "--json"),
    ("keys", "list", "--json"),
    ("routes", "list", "--json"),
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


def _once(argv: list[str], env: dict[str, str]) -> float:
    started = time.perf_counter()
    subprocess.run(argv, env=env, cwd=REPO, check=True, stdout=subprocess.DEVNULL, timeout=60)
    return time.perf_counter() - started


def measure(runs: int) -> dict[str, float]:
    env = _env()
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "postern.toml"
        config.write_text(f'[server]\ndata_dir = "{Path(tmp) / "var"}"\n')
        base = [sys.executable, "-m", "gateway.process.cli", "--config", str(config)]
        _once([*base, "users", "list"], env)  # the schema, untimed
        return {
            " ".join(words): statistics.median(_once([*base, *words], env) for _ in range(runs))
            for words in COMMANDS
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    results = measure(args.runs)
    if args.json:
        print(json.dumps({name: round(value, 3) for name, value in results.items()}))
        return
    for name, seconds in results.items():
        print(f"postern {name:<24} {seconds:6.3f} s  (median of {args.runs})")


if __name__ == "__main__":
    main()
