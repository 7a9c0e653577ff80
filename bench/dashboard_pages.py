#!/usr/bin/env python3
"""How long the dashboard's pages take, through real uvicorn: the sign-in page (no session),
Settings → SMTP Pools (a signed-in owner), and Messages (the search, a member's own mail, one
message's page) with --messages in storage, median and p99.

    python3 bench/dashboard_pages.py                   # SQLite, 20 pools, 100k messages
    python3 bench/dashboard_pages.py --pools 200 -n 500 --storage postgresql+asyncpg://...
    python3 bench/dashboard_pages.py --messages 1000000 --fill-seconds 600

Starts Postern's Service in this process (real uvicorn on loopback, real storage), makes the
pools through the API, signs an owner in through the sign-in form, then requests each page
one at a time on a keep-alive connection. The time is the whole answer as the client sees
it: session lookup, storage read, template rendering, headers. The messages are written
straight to storage (no delivery), for at most --fill-seconds: the figures say how many
there were.
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
from sqlalchemy import Connection, insert

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gateway.config import from_dict
from gateway.people.passwords import Passwords
from gateway.people.users import Users
from gateway.process.service import Service
from storage import event_minutes
from storage.db import Database
from storage.keys import create_key
from storage.models import Event, Message, MessageBody, MessageSubjectWord, Recipient
from storage.search_keys import address_key, subject_words
from storage.users import UserRecord
from storage.webhook_outbox import count_after
from tests.support.processes import free_port

PASSWORD = "correct horse battery staple"
BATCH = 5000  # messages per transaction while filling
STATUSES = ("delivered", "delivered", "delivered", "bounced", "deferred", "queued")
BODY = (
    b"From: App <app@sender.test>\r\nTo: r@example.test\r\nSubject: Your receipt\r\n"
    b"MIME-Version: 1.0\r\nContent-Type: multipart/alternative; boundary=b\r\n\r\n"
    b"--b\r\nContent-Type: text/plain\r\n\r\n" + b"Thank you for your order.\r\n" * 40
    + b"--b\r\nContent-Type: text/html\r\n\r\n" + b"<p>Thank you for your order.</p>\r\n" * 40
    + b"--b--\r\n"
)  # fmt: skip


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
    return f"{label:<38} median {median:6.2f} ms  p99 {p99:6.2f} ms  (n={len(spent)})"


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


def _rows(start: int, count: int, owners: list[str], first: float) -> dict[str, list[Any]]:
    """Messages start..start+count, 100 a second from `first`: one recipient and one event
    each (its outcome: the Live page's and the pools page's charts count them), a body while
    active, the words of the Subject "Your receipt {i % 5000}" (two in every message, one in
    5000), sent from one of 250 clients (198.51.100.{i % 250})."""
    rows: dict[str, list[Any]] = {
        "message": [], "recipient": [], "event": [], "body": [], "word": []
    }  # fmt: skip
    later = time.time() + 3600  # active mail is due after the run: delivery leaves it
    for i in range(start, start + count):
        message_id, status = f"msg_bench{i:08d}", STATUSES[i % len(STATUSES)]
        active, created = status in ("queued", "deferred"), first + i * 0.01
        rows["message"].append(
            {"id": message_id, "status": status, "source": "smtp",
             "mail_from": f"s{i % 50}@sender.test", "last_pool": f"pool-{i % 5}",
             "attempts": 1, "size": len(BODY), "created_at": created, "updated_at": created,
             "due_at": later if active else None, "user_id": owners[i % len(owners)],
             "last_response": "451 4.3.0 try later" if active else "250 2.0.0 OK",
             "client_address": address_key(f"198.51.100.{i % 250}")}
        )  # fmt: skip
        rows["word"] += [
            {"message_id": message_id, "word": word, "message_created_at": created}
            for word in subject_words(f"Your receipt {i % 5000}")
        ]
        rows["recipient"].append(
            {"message_id": message_id, "email": f"r{i % 1000}@example.test",
             "status": "pending" if active else status, "attempts": 1, "updated_at": created,
             "message_created_at": created}
        )  # fmt: skip
        rows["event"].append(
            {"type": status, "message_id": message_id, "recipient": f"r{i % 1000}@example.test",
             "attempt": 1, "message_status": status, "created_at": created,
             "pool": f"pool-{i % 5}", "upstream_seconds": 0.05 if status == "delivered" else None}
        )  # fmt: skip
        if active:
            rows["body"].append({"message_id": message_id, "data": BODY})
    return rows


TABLES = {
    "message": Message,
    "recipient": Recipient,
    "event": Event,
    "body": MessageBody,
    "word": MessageSubjectWord,
}


async def fill(db: Database, total: int, owners: list[str], seconds: float) -> int:
    """Up to `total` messages written straight to storage, for at most `seconds`."""
    # 100 messages a second, the last of them now: the last hour holds 360,000 (a busy
    # node's hour), what the Live page and the pools page chart.
    started, first, made = time.monotonic(), time.time() - total * 0.01, 0
    while made < total and time.monotonic() - started < seconds:
        rows = _rows(made, min(BATCH, total - made), owners, first)
        await db.transaction(
            lambda conn, rows=rows: [conn.execute(insert(TABLES[n]), rows[n]) for n in rows]
        )
        made += len(rows["message"])
    return made


async def rolled_up(db: Database, timeout: float = 600) -> float:
    """Seconds until serve's roller has counted every event written (storage.event_minutes):
    the pages are measured in the steady state, where the roll keeps up with the traffic."""
    started = time.monotonic()

    def behind(conn: Connection) -> int:
        at = event_minutes.position(conn)
        return 1 if at is None else count_after(conn, at, 1000)

    while await db.read(behind) and time.monotonic() - started < timeout:
        await asyncio.sleep(0.5)
    return time.monotonic() - started


async def sign_in(base: str, user: UserRecord, client: httpx.AsyncClient) -> None:
    fields = {"email": user.email, "password": PASSWORD, "next": "/"}
    signed = await client.post("/login", data=fields)
    assert signed.status_code == 303, signed.text


async def measure(
    service: Service, base: str, n: int, pools: int, messages: int, fill_s: float
) -> None:
    assert service.db is not None
    await make_pools(service, base, pools)
    users = Users(service.db, Passwords())
    user = await users.create("bench@example.com", "owner", PASSWORD)
    member = await users.create("member@example.com", "member", PASSWORD)
    others = [f"usr_other{k}" for k in range(8)]  # the member's mail is one message in ten
    made = await fill(service.db, messages, [member.id, *others, user.id], fill_s)
    caught = await rolled_up(service.db)
    print(f"filled {made:,} messages; the events rollup caught up {caught:.1f} s after")
    group = (made // len(STATUSES) - 1) * len(STATUSES)  # the last whole run of STATUSES
    one = f"msg_bench{group + STATUSES.index('deferred'):08d}"
    async with (
        httpx.AsyncClient(base_url=base) as anonymous,
        httpx.AsyncClient(base_url=base) as owner,
        httpx.AsyncClient(base_url=base) as mine,
    ):
        await sign_in(base, user, owner)
        await sign_in(base, member, mine)
        first = await owner.get("/messages?limit=50")
        older = first.text.split('rel="next"')[0].rsplit('href="', 1)[1].split('"')[0]
        for label, client, path in (
            ("GET /login (signed out)", anonymous, "/login"),
            (f"GET /settings/pools ({pools} pools)", owner, "/settings/pools"),
            ("GET / (overview)", owner, "/"),
            (f"GET /messages ({made:,} messages)", owner, "/messages"),
            ("GET /messages, the next page", owner, older.replace("&amp;", "&")),
            ("GET /messages?status=deferred", owner, "/messages?status=deferred"),
            ("GET /messages?recipient=r7@…", owner, "/messages?recipient=r7%40example.test"),
            ("GET /messages?subject=receipt", owner, "/messages?subject=receipt"),
            ("GET /messages?subject=receipt+1234", owner, "/messages?subject=receipt+1234"),
            ("GET /messages?client=198.51.100.7", owner, "/messages?client=198.51.100.7"),
            ("GET /messages?client=…/28 (16 clients)", owner, "/messages?client=198.51.100.0%2F28"),
            ("GET /messages (a member's own)", mine, "/messages"),
            ("GET /messages/{id} (deferred, body)", owner, f"/messages/{one}"),
            ("GET /live (the last hour charted)", owner, "/live"),
            ("GET /live (a member's own)", mine, "/live"),
        ):
            await timed(client, path, 20)  # warm up
            print(line(label, await timed(client, path, n)))


async def run(n: int, pools: int, storage_url: str, messages: int, fill_s: float) -> None:
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
            await measure(service, f"http://127.0.0.1:{port}", n, pools, messages, fill_s)
        finally:
            await service.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=1000, help="requests per page")
    parser.add_argument("--pools", type=int, default=20, help="pools on the pools page")
    parser.add_argument("--storage", default="", help="a storage.url (default: SQLite)")
    parser.add_argument("--messages", type=int, default=100_000, help="messages in storage")
    parser.add_argument("--fill-seconds", type=float, default=300, help="most time to fill")
    args = parser.parse_args()
    print(f"{time.strftime('%Y-%m-%d %H:%M')}  storage: {args.storage or 'SQLite'}")
    asyncio.run(run(args.n, args.pools, args.storage, args.messages, args.fill_seconds))


if __name__ == "__main__":
    main()
