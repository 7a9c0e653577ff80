#!/usr/bin/env python3
"""SQLite's write amplification per message: WAL frames, by table and index (issue 22).

    python bench/wal_frames.py                       # N=2000, C=1 and C=10
    python bench/wal_frames.py --messages 3000 --clients 1,10 --size 1024 [--json]

The write path of bench/write_path.py (the real Queue over a started Writer: each message
stored as SMTP intake stores it, claimed here, then its attempt recorded delivered), on a
fresh SQLite file with the automatic checkpoint off, so that the WAL keeps every frame the
N messages wrote (after a warm-up of write_path.WARMUP messages, checkpointed away). Each
frame is one page written (one pwrite64 of 4 KB, plus its 24-byte header in the same call);
a commit frame ends each transaction. The frames are then told apart by the b-tree their
page belongs to (the `dbstat` table of the database as it ends: a page freed and taken by
another b-tree meanwhile counts for the later one, rare here).

`--keyed` sends them as the HTTP API does for a user's key: an API key and its user on the
message, a tag and a metadata entry (a message_meta row, a message_tag row).

Prints per message: frames, commits, and frames per b-tree (the table or index name).
Counts, not times: the same on a loaded machine as on an idle one.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import sqlite3
import struct
import sys
import tempfile
from pathlib import Path
from typing import Any

from sqlalchemy import event

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import write_path

from gateway.message import QueuedMessage, Sender, Submission
from gateway.queue.store import AttemptRecord, Queue
from storage.db import create_schema, database_url, open_database
from storage.writer import Writer

WAL_HEADER = 32
FRAME_HEADER = 24


def _no_autocheckpoint(dbapi_connection: Any, _record: Any) -> None:
    dbapi_connection.execute("PRAGMA wal_autocheckpoint=0")


def frames(wal: Path) -> list[tuple[int, bool]]:
    """(page number, is a commit) of each frame of the WAL file, in order."""
    data = wal.read_bytes()
    (page_size,) = struct.unpack(">I", data[8:12])
    step = FRAME_HEADER + page_size
    found = []
    for offset in range(WAL_HEADER, len(data) - step + 1, step):
        page, size_after = struct.unpack(">II", data[offset : offset + 8])
        found.append((page, size_after != 0))
    return found


KEY = Sender("key_bench", may_send=True, may_sandbox=False, user_id="usr_bench")


def submission(seq: int, size: int, keyed: bool) -> Submission:
    """write_path's SMTP message, or with `keyed` the HTTP API's with a key, tag, metadata."""
    content = write_path.content(seq, size)
    if not keyed:
        return Submission(write_path.MAIL_FROM, (write_path.RCPT,), content, "smtp")
    return Submission(
        write_path.MAIL_FROM, (write_path.RCPT,), content, "http", sender=KEY,
        tags=("welcome",), metadata={"order": str(seq)},
    )  # fmt: skip


async def client(queue: Queue, seqs: list[int], size: int, keyed: bool) -> None:
    """write_path.client's: a message stored, its attempt's record overlapping the next."""
    record: asyncio.Task[str | None] | None = None
    for seq in seqs:
        message: QueuedMessage = await queue.enqueue(
            submission(seq, size, keyed), write_path.ROUTE, claim=True
        )
        if record is not None:
            await record
        attempt = AttemptRecord(message, {write_path.RCPT: write_path.DELIVERED}, "sink")
        record = asyncio.create_task(queue.record(attempt, patient=True))
        await asyncio.sleep(0)
    if record is not None:
        await record


async def drive(queue: Queue, first: int, count: int, clients: int, size: int, keyed: bool) -> None:
    seqs = list(range(first, first + count))
    await asyncio.gather(*(client(queue, seqs[c::clients], size, keyed) for c in range(clients)))


def owners(database: Path) -> dict[int, str]:
    """Each page's b-tree (its table or index name), as the database ends."""
    conn = sqlite3.connect(database)
    try:
        return dict(conn.execute("SELECT pageno, name FROM dbstat"))
    finally:
        conn.close()


async def one_run(
    directory: Path, messages: int, clients: int, size: int, keyed: bool
) -> dict[str, Any]:
    db = open_database(database_url("", directory))
    event.listen(db._writes, "connect", _no_autocheckpoint)  # (after storage.db's pragmas)
    await create_schema(db)
    writer = Writer(db)
    writer.start()
    queue = Queue(db, writer, "node_bench", write_path.SCHEDULE, 5 * 86400.0, 120.0)
    database = directory / "postern.db"
    try:
        await drive(queue, 0, write_path.WARMUP, clients, size, keyed)
        checkpoint = sqlite3.connect(database)
        busy, _, _ = checkpoint.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        checkpoint.close()
        if busy:
            raise RuntimeError("the checkpoint after the warm-up could not complete")
        commits0 = writer.commits
        await drive(queue, write_path.WARMUP, messages, clients, size, keyed)
        commits = writer.commits - commits0
        # Read while the database is open: the last connection to close checkpoints the
        # WAL and deletes it.
        written = frames(Path(f"{database}-wal"))
        pages = owners(database)
    finally:
        await writer.stop()
        await db.dispose()
    by_tree = collections.Counter(pages.get(page, "(other)") for page, _ in written)
    return {
        "clients": clients,
        "messages": messages,
        "frames_per_msg": len(written) / messages,
        "commit_frames_per_msg": sum(commit for _, commit in written) / messages,
        "writer_commits_per_msg": commits / messages,
        "by_tree": {name: count / messages for name, count in by_tree.most_common()},
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", "-n", type=int, default=2000)
    parser.add_argument("--clients", "-c", default="1,10", help="comma-separated C values")
    parser.add_argument("--size", type=int, default=1024, help="message bytes")
    parser.add_argument("--keyed", action="store_true", help="as the HTTP API, with a key")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    rows = []
    for clients in args.clients.split(","):
        with tempfile.TemporaryDirectory(prefix="wal-frames-") as tmp:
            run = one_run(Path(tmp), args.messages, int(clients), args.size, args.keyed)
            rows.append(asyncio.run(run))
    if args.json:
        print(json.dumps(rows))
        return 0
    for row in rows:
        print(
            f"wal_frames  N={row['messages']} C={row['clients']} size={args.size}"
            f"{' keyed' if args.keyed else ''}"
            f"  frames={row['frames_per_msg']:.2f}/msg"
            f"  commits={row['commit_frames_per_msg']:.2f}/msg"
        )
        for name, count in row["by_tree"].items():
            print(f"    {count:6.2f}  {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
