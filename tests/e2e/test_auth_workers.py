"""SMTP AUTH failure budgets with `[server] workers = 2` (issue 22's leftover): the kernel
spreads connections over the workers (SO_REUSEPORT), and the budget of a client address
holds across them, counted in storage: a guesser gets the budget, not twice it. On SQLite
and on PostgreSQL (a real `postern serve`, real SMTP)."""

from __future__ import annotations

import asyncio
import base64
import os
from pathlib import Path

import pytest

from tests.e2e.test_workers import storage_url, workers_of  # noqa: F401  (a fixture)
from tests.support.serve import MakePostern, Postern, start_workers

pytestmark = pytest.mark.timeout(120)

BUDGET = 5  # failures per address per hour: the 535 delays then sum to under 8 s
READ_TIMEOUT = 20.0


def _serve(postern_process: MakePostern, storage: str) -> Postern:
    extra = f'\n[storage]\nurl = "{storage}"\n' if storage else ""
    postern = postern_process(None, extra=extra, start=False)
    return start_workers(postern, 2, "smtp", f'auth_failures_per_address = "{BUDGET}/h"')


def _socket_inodes(pid: int) -> set[str]:
    found = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            found.add(target[8:-1])
    return found


def _serving(pids: list[int], local_ports: set[int]) -> set[int]:
    """The workers holding the server end of connections from `local_ports` (the clients')."""
    inodes: dict[str, int] = {}
    for name in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(name).read_text().splitlines()[1:]:
            fields = line.split()
            remote_port = int(fields[2].rsplit(":", 1)[1], 16)
            if remote_port in local_ports:
                inodes[fields[9]] = remote_port
    return {pid for pid in pids if _socket_inodes(pid) & inodes.keys()}


class Client:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.port: int = writer.get_extra_info("sockname")[1]

    @classmethod
    async def open(cls, port: int) -> Client:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        client = cls(reader, writer)
        assert await client.reply() == 220
        assert await client.say("EHLO guesser.test") == 250
        return client

    async def reply(self) -> int:
        """The reply's code; 0 when the server closed the connection."""
        while True:
            raw = await asyncio.wait_for(self.reader.readline(), READ_TIMEOUT)
            if not raw:
                return 0
            if raw[3:4] != b"-":
                return int(raw[:3])

    async def say(self, line: str) -> int:
        self.writer.write(line.encode() + b"\r\n")
        await self.writer.drain()
        return await self.reply()

    async def guess(self, attempts: int) -> list[int]:
        """Reply codes to `attempts` wrong keys, until one is not a 535."""
        codes = []
        for attempt in range(attempts):
            secret = base64.b64encode(f"\0user\0msk_wrong_{self.port}_{attempt}".encode())
            codes.append(await self.say(f"AUTH PLAIN {secret.decode()}"))
            if codes[-1] != 535:
                break
        return codes


async def _guess_everywhere(postern: Postern, connections: int, spread: bool) -> list[list[int]]:
    clients = await asyncio.gather(*(Client.open(postern.smtp_port) for _ in range(connections)))
    try:
        if spread:  # 16 connections all on one worker: 1 in 32,768
            workers = workers_of(postern.pid)
            serving = _serving(workers, {client.port for client in clients})
            assert serving == set(workers), f"connections on {serving} of {workers}"
        return list(await asyncio.gather(*(client.guess(3) for client in clients)))
    finally:
        for client in clients:
            client.writer.close()


def test_the_address_budget_holds_across_workers(
    postern_process: MakePostern,
    storage_url: str,  # noqa: F811
) -> None:
    """16 connections from one address, spread over both workers, three wrong keys each:
    exactly BUDGET are checked (535), every other attempt is 421 4.7.0 unchecked. With a
    budget in each worker's memory, up to twice BUDGET were checked."""
    postern = _serve(postern_process, storage_url)
    results = asyncio.run(_guess_everywhere(postern, 16, spread=True))
    codes = [code for result in results for code in result]
    assert codes.count(535) == BUDGET, results
    assert set(codes) == {535, 421}, results
    # The next connections, to whichever worker, are refused before their guess is checked.
    later = asyncio.run(_guess_everywhere(postern, 4, spread=False))
    assert later == [[421]] * 4, later
