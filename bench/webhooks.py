#!/usr/bin/env python3
"""Webhook delivery benchmark (never collected by pytest).

    python bench/webhooks.py                      # 20,000 events, SQLite in a temp dir
    python bench/webhooks.py --events 50000 --batch 100
    python bench/webhooks.py --db postgresql+asyncpg://postgres@127.0.0.1/test  # drops tables!

Stores N pending events in the outbox, points one webhook at a receiver on loopback (uvicorn
in a process of its own, checking every signature), starts the node's webhook machinery
(the sender, as `postern serve` runs it) and times until the receiver holds all N
events. Prints events/s (the target is >= 1,000). Bounded by --timeout; stops what it starts.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))
HOST = "127.0.0.1"
MP = mp.get_context("spawn")


def receive(port: int, secret: str, counter: Any, bad: Any) -> None:
    """The receiver process: verify, count, answer 200."""
    import uvicorn

    from gateway.webhooks.signing import verify

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        headers = dict(scope["headers"])
        ok = verify(secret, headers.get(b"postern-signature", b"").decode(), body, time.time())
        if ok:
            with counter.get_lock():
                counter.value += len(json.loads(body)["events"])
        else:
            with bad.get_lock():
                bad.value += 1
        await send({"type": "http.response.start", "status": 200 if ok else 400, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})

    uvicorn.run(app, host=HOST, port=port, log_level="warning", access_log=False, lifespan="off")


class PlainBox:
    """The bench needs no encryption at rest."""

    def encrypt(self, data: bytes | str, associated: bytes = b"") -> str:
        return data if isinstance(data, str) else data.decode()

    def decrypt(self, token: str, associated: bytes = b"") -> bytes:
        return token.encode()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


async def wait_port(port: int, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            _, writer = await asyncio.open_connection(HOST, port)
        except OSError:
            await asyncio.sleep(0.05)
            continue
        writer.close()
        return
    raise RuntimeError("the receiver did not start")


async def run(args: argparse.Namespace, data_dir: Path) -> dict[str, Any]:
    from gateway.queue import events
    from gateway.security.hostguard import HostGuard
    from gateway.webhooks.node import Webhooks, WebhookSettings
    from gateway.webhooks.signing import new_secret
    from storage.db import create_schema, database_url, open_database
    from storage.models import metadata
    from storage.webhooks import create_webhook
    from storage.writer import Writer

    db = open_database(database_url(args.db, data_dir))
    if not db.is_sqlite:
        await db.transaction(metadata.drop_all)
    await create_schema(db)
    secret = new_secret()
    port = free_port()
    counter, bad = MP.Value("q", 0), MP.Value("q", 0)
    receiver = MP.Process(target=receive, args=(port, secret, counter, bad), daemon=True)
    receiver.start()
    writer = Writer(db)
    writer.start()
    webhooks: Webhooks | None = None
    try:
        await wait_port(port)
        await create_webhook(db, {"url": f"http://{HOST}:{port}/hook"}, lambda _: secret)
        now = time.time()
        for start in range(0, args.events, 5000):
            rows = [
                events.row("delivered", f"msg_{n // 2}", "delivered", now, f"r{n}@bench.test")
                for n in range(start, min(start + 5000, args.events))
            ]
            await db.transaction(lambda conn, rows=rows: conn.execute(events.INSERT_EVENT, rows))
        settings = WebhookSettings(batch_size=args.batch, timeout=10.0)
        webhooks = Webhooks(db, writer, PlainBox(), HostGuard(), "bench", settings)
        started = time.perf_counter()
        cpu_before = time.process_time()
        await webhooks.start()
        deadline = started + args.timeout
        while counter.value < args.events and time.perf_counter() < deadline:
            await asyncio.sleep(0.01)
        elapsed = time.perf_counter() - started
        cpu = time.process_time() - cpu_before
        return {
            "events": args.events,
            "received": counter.value,
            "bad_signatures": bad.value,
            "batch": args.batch,
            "database": db.dialect,
            "seconds": round(elapsed, 2),
            "events_per_second": round(counter.value / elapsed),
            "cpu_us_per_event": round(cpu * 1e6 / max(counter.value, 1), 1),
        }
    finally:
        if webhooks is not None:
            await webhooks.stop()
        await writer.stop()
        await db.dispose()
        receiver.terminate()
        receiver.join(5)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument(
        "--batch", type=int, default=500, help="events per POST (the default [webhooks] batch_size)"
    )
    parser.add_argument("--db", default="", help='"" = SQLite in a temp dir')
    parser.add_argument("--timeout", type=float, default=120.0)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if not 0 < args.events <= 1_000_000:
        parser.error("--events: 1 to 1,000,000")
    with tempfile.TemporaryDirectory(prefix="postern-bench-") as tmp:
        result = asyncio.run(run(args, Path(tmp)))
    if args.json:
        print(json.dumps(result))
    else:
        print(
            f"{result['received']}/{result['events']} events in {result['seconds']} s "
            f"({result['database']}, {result['batch']} per POST): "
            f"{result['events_per_second']} events/s, {result['cpu_us_per_event']} µs CPU per"
            f" event in the sending process; bad signatures {result['bad_signatures']}"
        )
    complete = result["received"] >= result["events"] and not result["bad_signatures"]
    return 0 if complete else 1


if __name__ == "__main__":
    sys.exit(main())
