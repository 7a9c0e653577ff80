#!/usr/bin/env python3
"""What a successful SMTP AUTH costs: one client, one connection per round, against a real
`postern serve` (its pool a bench sink).

    python bench/smtp_auth.py                          # 300 rounds on SQLite
    python bench/smtp_auth.py --rounds 500 --workers 2
    python bench/smtp_auth.py --storage-url postgresql+asyncpg://postgres@127.0.0.1/bench_db

A round: connect, EHLO, AUTH PLAIN with a valid API key (scope `send`), MAIL, RCPT, DATA,
a 1 KB message, QUIT. Printed: the median and 99th percentile of the AUTH command alone
(sent → 235) and of the whole round (connect → 250 after the final dot); the first
`--warmup` rounds are left out. Rounds start at least 25 ms apart (the key's 50/s rate
limit counts its SMTP messages).
"""

from __future__ import annotations

import argparse
import base64
import json
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import relay  # bench/ is on sys.path when run as a script
from relay import HOST, REPO_ROOT, BenchError

MESSAGE = (
    b"From: bench@client.bench.test\r\nTo: rcpt@sink.bench.test\r\nSubject: auth\r\n\r\n"
    + relay.filler(1024)
    + b".\r\n"
)


PACE = 0.025  # seconds from one round's start to the next's, at least


class Client:
    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection((HOST, port), timeout=30)
        self.file = self.sock.makefile("rb")

    def reply(self) -> int:
        while True:
            line = self.file.readline()
            if not line:
                raise BenchError("connection closed by the server")
            if line[3:4] != b"-":
                return int(line[:3])

    def say(self, line: bytes) -> int:
        self.sock.sendall(line + b"\r\n")
        return self.reply()

    def close(self) -> None:
        self.file.close()
        self.sock.close()


def one_round(port: int, plain: bytes, send: bool = True) -> tuple[float, float]:
    """(AUTH seconds, round seconds); `send` False: no message after the AUTH."""
    started = time.perf_counter()
    client = Client(port)
    try:
        if client.reply() != 220 or client.say(b"EHLO client.bench.test") != 250:
            raise BenchError("no greeting")
        asked = time.perf_counter()
        code = client.say(b"AUTH PLAIN " + plain)
        authed = time.perf_counter()
        if code != 235:
            raise BenchError(f"AUTH answered {code}")
        if not send:
            client.say(b"QUIT")
            return authed - asked, authed - started
        for command, wanted in (
            (b"MAIL FROM:<bench@client.bench.test>", 250),
            (b"RCPT TO:<rcpt@sink.bench.test>", 250),
            (b"DATA", 354),
        ):
            code = client.say(command)
            if code != wanted:
                raise BenchError(f"{command!r} answered {code}")
        client.sock.sendall(MESSAGE)
        if client.reply() != 250:
            raise BenchError("message refused")
        done = time.perf_counter()
        client.say(b"QUIT")
        return authed - asked, done - started
    finally:
        client.close()


def api_key(command: Sequence[str], config: Path) -> str:
    made = subprocess.run(
        [*command[:-1], "keys", "create", "--config", str(config),
         "--name", "bench", "--scope", "send", "--json"],
        check=True, cwd=REPO_ROOT, capture_output=True, text=True,
    )  # fmt: skip
    key: str = json.loads(made.stdout)["key"]
    return key


def ms(values: Sequence[float], fraction: float) -> float:
    return round(relay.percentile(sorted(values), fraction) * 1000, 2)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="postern-auth-"))
    sink = relay.Sink()
    try:
        postern = relay.Postern(
            args.postern_cmd, tmp, sink.port, 2, workers=args.workers,
            storage_url=args.storage_url,
        )  # fmt: skip
        try:
            postern.wait_ready(time.monotonic() + relay.READY_TIMEOUT)
            secret = api_key(args.postern_cmd, tmp / "postern.toml")
            plain = base64.b64encode(f"\0bench\0{secret}".encode())
            rounds = []
            for _ in range(args.warmup + args.rounds):
                started = time.monotonic()
                rounds.append(one_round(postern.smtp_port, plain, not args.auth_only))
                # Under the key's `http.rate_limit` (50/s), which counts its SMTP messages.
                time.sleep(max(0.0, PACE - (time.monotonic() - started)))
        finally:
            postern.stop()
    finally:
        sink.close()
    auth = [a for a, _ in rounds[args.warmup :]]
    whole = [r for _, r in rounds[args.warmup :]]
    result = {
        "rounds": args.rounds,
        "workers": args.workers,
        "storage": "postgresql" if args.storage_url else "sqlite",
        "auth_p50_ms": ms(auth, 0.5),
        "auth_p99_ms": ms(auth, 0.99),
        "round_p50_ms": ms(whole, 0.5),
        "round_p99_ms": ms(whole, 0.99),
        "round_mean_ms": round(statistics.fmean(whole) * 1000, 2),
    }
    if args.json:
        print(json.dumps(result))
    else:
        print("  ".join(f"{name}={value}" for name, value in result.items()))
    return 0


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=300)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--auth-only", action="store_true", help="no message after AUTH")
    parser.add_argument("--storage-url", default="", help='"" = SQLite in the data dir')
    relay.add_postern_cmd(parser)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    return args


if __name__ == "__main__":
    sys.exit(main())
