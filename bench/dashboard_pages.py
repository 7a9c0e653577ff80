#!/usr/bin/env python3
"""How long the dashboard's pages take, through real uvicorn: the sign-in page (no session)
and Settings → SMTP Pools (a signed-in owner), median and p99.

    python3 bench/dashboard_pages.py                   # SQLite, 20 pools, 1000 requests each
    python3 bench/dashboard_pages.py --pools 200 -n 500 --storage postgresql+asyncpg://...

Starts Postern's Service in this process (real uvicorn on loopback, real storage), makes the
pools through the API, signs an owner in through the sign-in form, then requests each page
one at a time on a keep-alive connection. The time is the whole answer as the client sees
it: session lookup, storage read, template rendering, headers.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gateway.config import from_dict
from gateway.people.passwords import Passwords
from gateway.people.users import Users
from gateway.process.service import Service
from storage.keys import create_key
from tests.support.processes import free_port

PASSWORD = "correct horse battery staple"


async def timed(http: httpx.AsyncClient, path: str, n: int) -> list[float]:
    spent = []
    for _ in range(n):
        started = time.perf_counter()
        answer = await http.get(path)
        spent.append((time.perf_counter() - started) * 1000)
        assert answer.status_code == 200, (path, answer.status_code)
    return spent


def line(label: str, spent: list[float]) -> str:
    p99 = sorted(spent)[max(0, int(len(spent) * 0.99) - 1)]
    median = statistics.median(spent)
    return f"{label:<34} median {median:6.2f} ms  p99 {p99:6.2f} ms  (n={len(spent)})"


async def make_pools(service: Service, base: str, count: int) -> None:
    assert service.db is not None
    _, key = await create_key(service.db, "bench", ("admin",))
    async with httpx.AsyncClient(base_url=base, headers={"Authorization": f"Bearer {key}"}) as api:
        for number in range(count):
            body = {
                "name": f"pool-{number}", "host": "127.0.0.1", "port": 20000 + number,
                "encryption": "none", "rate": "100/minute", "daily_limit": 10000,
            }  # fmt: skip
            answer = await api.post("/api/v1/smtp-pools", json=body)
            assert answer.status_code == 201, answer.text


async def measure(service: Service, base: str, n: int, pools: int) -> None:
    assert service.db is not None
    await make_pools(service, base, pools)
    user = await Users(service.db, Passwords()).create("bench@example.com", "owner", PASSWORD)
    async with (
        httpx.AsyncClient(base_url=base) as anonymous,
        httpx.AsyncClient(base_url=base) as owner,
    ):
        fields = {"email": user.email, "password": PASSWORD, "next": "/settings/pools"}
        signed = await owner.post("/login", data=fields)
        assert signed.status_code == 303, signed.text
        for label, client, path in (
            ("GET /login (signed out)", anonymous, "/login"),
            (f"GET /settings/pools ({pools} pools)", owner, "/settings/pools"),
            ("GET / (overview)", owner, "/"),
        ):
            await timed(client, path, 20)  # warm up
            print(line(label, await timed(client, path, n)))


async def run(n: int, pools: int, storage_url: str) -> None:
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
            await measure(service, f"http://127.0.0.1:{port}", n, pools)
        finally:
            await service.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=1000, help="requests per page")
    parser.add_argument("--pools", type=int, default=20, help="pools on the pools page")
    parser.add_argument("--storage", default="", help="a storage.url (default: SQLite)")
    args = parser.parse_args()
    print(f"{time.strftime('%Y-%m-%d %H:%M')}  storage: {args.storage or 'SQLite'}")
    asyncio.run(run(args.n, args.pools, args.storage))


if __name__ == "__main__":
    main()
