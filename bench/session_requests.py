#!/usr/bin/env python3
"""What a logged-in request costs, against an API key's: database statements and latency.

    python3 bench/session_requests.py                 # SQLite, 2000 requests each
    python3 bench/session_requests.py -n 5000 --storage postgresql+asyncpg://...

Starts Postern's Service in this process (real uvicorn on loopback, real storage), signs a
user in through POST /auth/login (timed: one argon2 verification), then sends GET /auth/me
with the session cookie and GET /v1/messages?limit=1 with the cookie and with a key, one
request at a time on a keep-alive connection. Prints per case the median and p99 latency and
the SQL statements per request, counted on the engine: the session's lookup is one indexed
read, cached for 2 s, so a busy browser costs a fraction of one.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import event

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gateway.config import from_dict
from gateway.people.passwords import Passwords
from gateway.people.users import Users
from gateway.process.service import Service
from storage.keys import create_key
from tests.support.processes import free_port

PASSWORD = "correct horse battery staple"


class StatementCount:
    def __init__(self, service: Service) -> None:
        assert service.db is not None
        engine: Any = service.db._sync or service.db._async  # a bench may probe inside
        self.count = 0
        event.listen(getattr(engine, "sync_engine", engine), "before_cursor_execute", self._one)

    def _one(self, *_: Any) -> None:
        self.count += 1


async def timed(http: httpx.AsyncClient, path: str, n: int, **kwargs: Any) -> list[float]:
    spent = []
    for _ in range(n):
        started = time.perf_counter()
        answer = await http.get(path, **kwargs)
        spent.append((time.perf_counter() - started) * 1000)
        assert answer.status_code == 200, answer.text
    return spent


def line(label: str, spent: list[float], statements: int) -> str:
    p99 = sorted(spent)[int(len(spent) * 0.99) - 1]
    return (
        f"{label:<28} median {statistics.median(spent):6.2f} ms  p99 {p99:6.2f} ms"
        f"  SQL/request {statements / len(spent):.3f}  (n={len(spent)})"
    )


async def run(n: int, storage_url: str) -> None:
    with tempfile.TemporaryDirectory() as data_dir:
        port = free_port()
        config = from_dict({
            "server": {"hostname": "bench.test", "data_dir": data_dir},
            "smtp": {"listen": [f"127.0.0.1:{free_port()}"]},
            "http": {"listen": f"127.0.0.1:{port}", "rate_limit": "1000000/s"},
            "storage": {"url": storage_url} if storage_url else {},
        })  # fmt: skip
        service = Service(config)
        await service.start()
        try:
            await measure(service, f"http://127.0.0.1:{port}", n)
        finally:
            await service.stop()


async def measure(service: Service, base: str, n: int) -> None:
    assert service.db is not None
    user = await Users(service.db, Passwords()).create("bench@example.com", "owner", PASSWORD)
    _, key = await create_key(service.db, "bench", ("admin",))
    counter = StatementCount(service)
    async with httpx.AsyncClient(base_url=base) as browser, httpx.AsyncClient(base_url=base) as app:
        started = time.perf_counter()
        login = await browser.post("/auth/login", json={"email": user.email, "password": PASSWORD})
        assert login.status_code == 200, login.text
        print(f"{'login (argon2id + session)':<28} {(time.perf_counter() - started) * 1000:.1f} ms")
        for label, client, path, headers in (
            ("GET /auth/me, session", browser, "/auth/me", {}),
            ("GET /v1/messages, session", browser, "/v1/messages?limit=1", {}),
            ("GET /v1/messages, API key", app, "/v1/messages?limit=1",
             {"Authorization": f"Bearer {key}"}),
        ):  # fmt: skip
            await timed(client, path, 20, headers=headers)  # warm up
            before = counter.count
            spent = await timed(client, path, n, headers=headers)
            print(line(label, spent, counter.count - before))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=2000, help="requests per case")
    parser.add_argument("--storage", default="", help="a storage.url (default: SQLite)")
    args = parser.parse_args()
    print(f"{time.strftime('%Y-%m-%d %H:%M')}  storage: {args.storage or 'SQLite'}")
    asyncio.run(run(args.n, args.storage))


if __name__ == "__main__":
    main()
