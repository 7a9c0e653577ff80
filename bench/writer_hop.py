"""What the hop to the node's writer process costs one commit at a time (issue 22).

Commits small batches one after another through a Writer on a fresh SQLite file, either
in the worker's own write thread (`local`) or through a real writer process
(gateway.process.node_writer, as the supervisor starts it), and prints the wall time a
commit and the CPU of each side. Nothing else runs: this is the hop's cost, not a
throughput.

    python bench/writer_hop.py [--commits 2000] [--rounds 2]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import uvloop
from sqlalchemy import insert

from storage.db import create_schema, database_url, open_database
from storage.models import Meta
from storage.writer import Batch, Writer
from storage.writer_link import WriterLink

INSERT = insert(Meta)


def put(key: str) -> Batch:
    batch = Batch()
    batch.add(INSERT, {"key": key, "value": "v"})
    return batch


async def measure(through_process: bool, commits: int) -> str:
    folder = Path(tempfile.mkdtemp(prefix="postern-hop-"))
    db = open_database(database_url("", folder))
    await create_schema(db)
    link = proc = listener = None
    if through_process:
        path = str(folder / "socket")
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(path)
        listener.listen(4)
        fd = listener.fileno()
        proc = subprocess.Popen(
            [sys.executable, "-m", "gateway.process.node_writer", "--parent", str(os.getpid()),
             "--fd", str(fd), "--database", str(folder / "postern.db"), "--log-level", "warning"],
            pass_fds=[fd],
        )  # fmt: skip
        dialect = db.write_dialect
        assert dialect is not None
        link = WriterLink(path, dialect, on_lost=lambda n: None)
        assert await link.connect()
    writer = Writer(db, link=link)
    writer.start()
    for i in range(50):  # warm: the process's connection, the plans
        await writer.submit(put(f"warm{i}"))
    began, cpu = time.perf_counter(), time.process_time()
    for i in range(commits):
        await writer.submit(put(f"k{i}"))
    wall, cpu = time.perf_counter() - began, time.process_time() - cpu
    await writer.stop()
    await db.dispose()
    line = (
        f"{'process' if through_process else 'local':8} {wall / commits * 1e6:6.0f} us a commit, "
    )
    line += f"this process's CPU {cpu / commits * 1e6:4.0f} us"
    if proc is not None and listener is not None:
        fields = Path(f"/proc/{proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        ticks = int(fields[11]) + int(fields[12])  # utime + stime, its start included
        seconds = ticks / os.sysconf("SC_CLK_TCK")
        line += f", the writer process's {seconds / (commits + 50) * 1e6:4.0f} us"
        proc.send_signal(signal.SIGUSR1)
        proc.wait(10)
        listener.close()
    return line


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--commits", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    uvloop.install()
    for _ in range(args.rounds):
        for through_process in (False, True):
            print(asyncio.run(measure(through_process, args.commits)), flush=True)


if __name__ == "__main__":
    main()
