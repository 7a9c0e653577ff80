"""Large bodies in pieces (schema 11): written before their message, read joined, swept.

A 20 MB body committed in one transaction holds the group-commit writer for 100-300 ms
(SQLite, WAL, synchronous=FULL: ~6 ms per MB on this project's 2-core machine; PostgreSQL
~340 ms for 20 MB through asyncpg), and every small message arriving meanwhile waits for
it. A body of PIECED bytes or more is therefore written first as pieces of PIECE bytes in
`message_piece`, one after another, each in one of the small messages' group commits
(storage.writer takes one piece per commit, with the small jobs waiting then), and
only then the message row, its recipients and an empty `message_body` row, in the normal
storing transaction, which checks that every piece is there (`check`). Nothing is
acknowledged before that transaction commits; a crash before it leaves pieces no
`message_body` row names, invisible to every reader and swept by the retention pass.

On SQLite only. PostgreSQL keeps a large body in its message's transaction, which the
writer commits alone after the small jobs waiting (storage.writer), as before schema 11:
measured with bench/loop_lag.py --workers auto on PostgreSQL (3 runs each, interleaved,
load average 3-4), the small clients' p99 was 273-1031 ms in pieces against 583-1250 ms
whole, no clear difference on this machine, while the ten 20 MB transfers took 7.8-12.8 s
instead of 4.0-4.4 s; and nodes sharing one PostgreSQL database upgrade one at a time: a
node of schema 10 would read a pieced body's empty row as an empty message and relay it.
The readers and the sweep work on both backends all the same.

Why a body of 1 MiB or more, in pieces of 512 KiB: a small message waits at most about one
piece's commit behind a large one, and a 512 KiB piece commits in less than half the time of
a 1 MiB one (one insert and commit, WAL, FULL, medians of 9, 2-core EPYC, 2026-12-07:
2 KB 0.2 ms, 256 KiB 1.3-1.4 ms, 512 KiB 1.5 ms, 1 MiB 3.5 ms, 2 MiB 7.4-7.6 ms), so the
pieces of 20 MB cost less in all too (60 ms against 70). bench/loop_lag.py --workers auto,
seven runs each way, interleaved (load 1.1-1.5): the small clients' p99 72-104 ms (median
85) with 512 KiB pieces against 87-132 ms (median 104) with 1 MiB pieces, the 100 ms bar
held in five runs against two (the ten 20 MB transfers took 2.7-5.1 s against 2.6-3.7 s:
more turns among the small commits; bench/README "Pieces of 512 KiB"). Smaller
pieces would cost more fsyncs for little less wait (256 KiB commits in about what 512 KiB
does). Bodies under 1 MiB (nearly all mail) keep the one-transaction path they had, in the
small messages' group commits (storage.writer's `large` stays 1 MiB; a piece is marked as
one when submitted). Pieces of 1 MiB, written before 2026-12-07, read as any others:
readers join pieces by their sequence, whatever their size (`prefix` counts by PIECE, so
it may read more of them than it needs, never fewer: no piece was ever smaller than PIECE
but a body's last). Reads turn to SQLite's blob I/O at 1 MiB (storage.queue_sql.LARGE_BODY).

Readers see a body whole or not at all: storage.queue_sql.bodies_of joins the pieces in
the read's own snapshot (SQLite: one read transaction, each piece read with blob I/O, the
GIL let go; PostgreSQL: one statement) and checks them against the message's `size`: a
body whose pieces do not add up (none at all included) cannot be read, and is left out of
what the read returns, as a body gone is: never a shorter body. Delivery holds such a
message (gateway.queue.store.Queue.claim_due), the others claimed with it go on.

Deleting: retention and body_retention delete the `message_body` row (with the message, or
alone) as before; the pieces it named are then orphans, and `purge_orphans` deletes them a
few at a time (a delete costs about what the write did). A piece is an orphan when no
`message_body` row names its message and either its message row exists (the body was
purged: it can never come back) or it is older than ORPHAN_AGE (a storing transaction that
never came: a crash, a refused message, the database failing); found by a read, deleted a
few per transaction, each checked again as it goes. ORPHAN_AGE is far past any
SMTP or HTTP transfer, and `check` would refuse a message whose pieces were swept anyway
(on PostgreSQL its FOR SHARE and the sweep's SKIP LOCKED keep the two apart).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator, Sequence
from typing import Any

from sqlalchemy import Connection, delete, exists, func, insert, select, text, tuple_
from sqlalchemy.exc import OperationalError
from sqlalchemy.sql.elements import ColumnElement

from storage.errors import StorageUnavailable
from storage.models import Message, MessageBody, MessagePiece

P = MessagePiece
B = MessageBody
M = Message

PIECED = 1 << 20  # a body of this many bytes or more is stored in pieces
PIECE = 1 << 19  # bytes per piece (the last one: what is left)
ORPHAN_AGE = 3600.0  # seconds before pieces no storing transaction claimed may be swept
SWEEP_PIECES = 4  # pieces deleted per transaction: ~6-10 ms of the writer on SQLite
SCAN = 1000  # orphan pieces found per read of the sweep

INSERT_PIECE = insert(P)

Key = tuple[str, int]  # a piece: (message_id, seq)


class PiecesMissing(StorageUnavailable):
    """A large body's pieces were not all there when its message was stored (swept, or a
    write lost): the message is not stored, and the client is told to try again."""


def pieced(content: bytes, dialect: str) -> bool:
    """Whether a body is stored in pieces: a large one, on SQLite (module docstring)."""
    return dialect == "sqlite" and len(content) >= PIECED


def rows(message_id: str, content: bytes, now: float) -> Iterator[dict[str, Any]]:
    """The `message_piece` rows of a body, in order, one at a time; each piece a view of
    `content`, not a copy (the driver binds a memoryview as it is): a 20 MB body is not
    held twice while its pieces are written."""
    view = memoryview(content)
    for seq, at in enumerate(range(0, len(content), PIECE)):
        piece = view[at : at + PIECE]
        yield {"message_id": message_id, "seq": seq, "data": piece, "created_at": now}


def count(content: bytes) -> int:
    """How many pieces `rows` makes of `content`."""
    return -(-len(content) // PIECE)


def check(conn: Connection, expected: dict[str, int]) -> None:
    """Inside a storing transaction: each message of `expected` has its number of pieces
    (locked on PostgreSQL until the commit, so that no sweep deletes them meanwhile), else
    PiecesMissing."""
    if not expected:
        return
    query = select(P.c.message_id, P.c.seq).where(P.c.message_id.in_(list(expected)))
    if conn.dialect.name == "postgresql":
        query = query.with_for_update(read=True)
    found: dict[str, int] = dict.fromkeys(expected, 0)
    for row in conn.execute(query):
        found[row.message_id] += 1
    short = [message_id for message_id, n in expected.items() if found[message_id] != n]
    if short:
        raise PiecesMissing(f"the pieces of message {short[0]}'s body are not all stored")


def joined(parts: list[tuple[int, bytes]], size: int | None) -> bytes | None:
    """The pieces, in order, checked: numbered from 0 with no gap, `size` bytes in all;
    None when they are not (a body that cannot be read whole is never read shorter). No
    piece at all is a whole body only when it is empty (`size` 0)."""
    if [seq for seq, _ in parts] != list(range(len(parts))):
        return None
    body = b"".join(data for _, data in parts)
    return body if size is not None and len(body) == size else None


Parts = dict[str, list[tuple[int, bytes]]]  # each message's pieces read: (seq, data)


def whole_bodies(parts: Parts, sizes: dict[str, int | None]) -> dict[str, bytes]:
    """The bodies `joined` makes of each message's pieces against its size; those that do
    not add up are left out."""
    bodies = ((m_id, joined(found, sizes[m_id])) for m_id, found in parts.items())
    return {m_id: body for m_id, body in bodies if body is not None}


def read_sqlite(
    conn: Connection, driver: sqlite3.Connection, ids: Sequence[str]
) -> dict[str, bytes]:
    """The bodies of these messages (each with an empty message_body row), joined from
    their pieces inside the caller's read transaction, each piece read with blob I/O (the
    GIL let go, as storage.queue_sql reads a large body). A body whose pieces do not add
    up to its message's size (`joined`) is left out: it cannot be read."""
    if not ids:
        return {}
    query = (
        select(M.c.id, M.c.size, P.c.seq, text("message_piece.rowid"))
        .select_from(M.outerjoin(P, P.c.message_id == M.c.id))
        .where(M.c.id.in_(list(ids)))
        .order_by(M.c.id, P.c.seq)
    )
    parts: Parts = {}
    sizes: dict[str, int | None] = {}
    for message_id, size, seq, rowid in conn.execute(query).all():
        sizes[message_id] = size
        found = parts.setdefault(message_id, [])
        if seq is None:  # no piece
            continue
        try:
            with driver.blobopen(P.name, "data", rowid, readonly=True) as blob:
                found.append((seq, blob.read()))
        except sqlite3.Error as error:
            raise OperationalError("blob read of message_piece", None, error) from error
    return whole_bodies(parts, sizes)


def prefix(conn: Connection, message_id: str, length: int) -> bytes | None:
    """The first `length` bytes of a body stored in pieces, reading only the pieces that
    hold them; None when it has none, or its first pieces are not all there (never the
    bytes of a later piece taken for the start). Shorter than `length` when a piece after
    the first is missing: still the body's true first bytes, all a header quote needs."""
    head = func.substr(P.c.data, 1, length, type_=P.c.data.type)
    found = conn.execute(
        select(P.c.seq, head)
        .where(P.c.message_id == message_id)
        .order_by(P.c.seq)
        .limit(max(1, -(-length // PIECE)))
    ).all()
    if not found or [seq for seq, _ in found] != list(range(len(found))):
        return None
    return b"".join(bytes(part) for _, part in found)[:length]


def _orphaned(before: float) -> ColumnElement[bool]:
    """Pieces no message_body row names whose message row exists or that are older than
    `before` (module docstring)."""
    body = exists().where(B.c.message_id == P.c.message_id)
    message = exists().where(M.c.id == P.c.message_id)
    return ~body & (message | (P.c.created_at < before))


def orphans(conn: Connection, before: float, limit: int = SCAN) -> list[Key]:
    """Up to `limit` orphan pieces (module docstring), read without a lock: a scan of the
    pieces table (no index serves the OR), run as a read, off the writer. Each is checked
    again as it is deleted (`purge_orphans`)."""
    found = select(P.c.message_id, P.c.seq).where(_orphaned(before)).limit(limit)
    return [(str(m_id), int(seq)) for m_id, seq in conn.execute(found)]


def purge_orphans(conn: Connection, before: float, keys: Sequence[Key]) -> int:
    """Delete those of the pieces `keys` (a few: SWEEP_PIECES) that are still orphans; how
    many went. On PostgreSQL a piece a storing transaction's `check` holds is skipped."""
    if not keys:
        return 0
    found = select(P.c.message_id, P.c.seq).where(
        tuple_(P.c.message_id, P.c.seq).in_(list(keys)), _orphaned(before)
    )
    if conn.dialect.name == "postgresql":
        found = found.with_for_update(of=P, skip_locked=True)
    gone = [tuple(row) for row in conn.execute(found)]
    if gone:
        conn.execute(delete(P).where(tuple_(P.c.message_id, P.c.seq).in_(gone)))
    return len(gone)
