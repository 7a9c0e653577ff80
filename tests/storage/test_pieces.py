"""Large bodies in pieces (storage.pieces, schema 11): on SQLite a body of 1 MiB or more is
written as pieces (of 512 KiB) before its message row, read whole, deleted with its body,
and pieces no message row came for (a crash between them, a refused message) are
invisible and swept. PostgreSQL stores every body whole (as before), and reads and sweeps
pieces all the same."""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace
from functools import partial
from typing import Any

import pytest
from sqlalchemy import Connection, inspect, text

from gateway.message import DeliveryResult, Outcome, Route
from gateway.queue.idempotency import Duplicate
from gateway.queue.retention import Retention
from gateway.queue.store import AttemptRecord, Queue
from storage import pieces, queue_sql
from storage.db import Database, create_schema
from storage.messages import message_state
from storage.models import SCHEMA_VERSION
from storage.writer import Batch, Writer
from tests.support.stored import fetch, message_row, submission

ROUTE = Route(ip_pool="transactional")
DELIVERED = DeliveryResult(Outcome.DELIVERED, 250, "2.0.0", "ok")
CONTENT_SMALL = b"From: app@example.com\r\nSubject: small\r\n\r\nhello\r\n"


def large(size: int, mark: bytes = b"a") -> bytes:
    """A message of about `size` bytes, CRLF lines under 998, each line numbered (a piece
    out of order or missing would show)."""
    head = b"From: app@example.com\r\nSubject: large " + mark + b"\r\n\r\n"
    lines = b"".join(b"%s %09d %s\r\n" % (mark, i, b"." * 50) for i in range(size // 64))
    return head + lines


def split_in(db: Database, *contents: bytes) -> int:
    """How many pieces these bodies have on `db` together: on SQLite, a body of PIECED
    bytes or more in pieces of PIECE bytes, the last one what is left; PostgreSQL none."""
    pieced = [len(content) for content in contents if len(content) >= pieces.PIECED]
    return sum(-(-size // pieces.PIECE) for size in pieced) if db.is_sqlite else 0


async def piece_count(db: Database, message_id: str) -> int:
    found = await fetch(db, "SELECT count(*) AS n FROM message_piece WHERE message_id = :id",
                        id=message_id)  # fmt: skip
    return int(found[0].n)


async def largest_piece(db: Database, message_id: str) -> int:
    query = "SELECT max(length(data)) AS n FROM message_piece WHERE message_id = :id"
    found = await fetch(db, query, id=message_id)
    return int(found[0].n or 0)


async def body_size(db: Database, message_id: str) -> int | None:
    found = await fetch(db, "SELECT length(data) AS n FROM message_body WHERE message_id = :id",
                        id=message_id)  # fmt: skip
    return int(found[0].n) if found else None


async def age_pieces(db: Database, seconds: float) -> None:
    """Every piece written `seconds` earlier than it was."""
    await db.transaction(
        lambda conn: conn.execute(
            text("UPDATE message_piece SET created_at = created_at - :s"), {"s": seconds}
        )
    )


async def test_a_large_body_is_stored_in_pieces_and_read_whole(
    backend: Database, queue: Queue
) -> None:
    content = large(3_500_000)
    small = await queue.enqueue(submission(), ROUTE, claim=False)
    queued = await queue.enqueue(submission(content=content), ROUTE, claim=False)
    assert await piece_count(backend, queued.id) == split_in(backend, content)
    assert await largest_piece(backend, queued.id) == (pieces.PIECE if backend.is_sqlite else 0)
    # named, empty: the pieces hold it (PostgreSQL: whole in its row)
    assert await body_size(backend, queued.id) == (0 if backend.is_sqlite else len(content))
    assert (await message_row(backend, queued.id)).size == len(content)
    assert await piece_count(backend, small.id) == 0  # a small body stays in its row

    bodies = await backend.read(lambda conn: queue_sql.bodies_of(conn, [queued.id, small.id]))
    assert bodies == {queued.id: content, small.id: small.content}
    head = await backend.read(lambda conn: queue_sql.body_prefix(conn, queued.id, 40))
    assert head == content[:40]
    claimed = {message.id: message.content for message in await queue.claim_due(10)}
    assert claimed == {queued.id: content, small.id: small.content}


async def test_the_pieces_of_concurrent_large_bodies_go_one_per_commit(
    backend: Database, queue: Queue, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two large messages stored at once: each piece is submitted as one (storage.writer),
    so no commit carries two pieces (a small message waits out one piece at most)."""
    if not backend.is_sqlite:
        pytest.skip("PostgreSQL stores a large body whole, in its message's transaction")
    pieces_in: list[int] = []  # pieces each commit carried
    writer = queue._writer
    transaction = writer._transaction

    async def counted(jobs: list[Any]) -> Any:
        pieces_in.append(sum(job.piece for job in jobs))
        return await transaction(jobs)

    monkeypatch.setattr(writer, "_transaction", counted)
    first, second = large(1_600_000, b"f"), large(2_100_000, b"s")
    await asyncio.gather(
        queue.enqueue(submission(content=first), ROUTE, claim=False),
        queue.enqueue(submission(content=second), ROUTE, claim=False),
    )
    assert sum(pieces_in) == split_in(backend, first, second)
    assert max(pieces_in) == 1


async def test_the_sweep_deletes_pieces_alone(
    backend: Database, queue: Queue, writer: Writer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Deleting pieces costs what writing them did: each of the sweep's transactions
    commits alone (storage.writer's large), after the small jobs waiting."""
    lost, content = "msg_swept_alone", large(2_200_000)  # 5 pieces: a sweep of 4, then 1
    for row in pieces.rows(lost, content, time.time()):
        batch = Batch()
        batch.add(pieces.INSERT_PIECE, row)
        await writer.submit(batch, size=len(row["data"]), piece=True)
    await age_pieces(backend, pieces.ORPHAN_AGE + 60)
    sizes: list[int] = []
    submit = writer.submit

    async def noted(work: Any, **options: Any) -> Any:
        sizes.append(options.get("size", 0))
        return await submit(work, **options)

    monkeypatch.setattr(writer, "submit", noted)
    assert await Retention(writer, keep=86400).sweep_pieces() == pieces.count(content)
    assert sizes and min(sizes) >= writer.large


async def test_a_body_just_under_a_mebibyte_is_not_pieced(backend: Database, queue: Queue) -> None:
    content = large(pieces.PIECED)[: pieces.PIECED - 1]
    queued = await queue.enqueue(submission(content=content), ROUTE, claim=False)
    assert await piece_count(backend, queued.id) == 0
    assert await body_size(backend, queued.id) == len(content)
    exact = large(pieces.PIECED * 2)[: pieces.PIECED * 2]
    pieced = await queue.enqueue(submission(content=exact), ROUTE, claim=False)
    assert await piece_count(backend, pieced.id) == split_in(backend, exact)
    bodies = await backend.read(lambda conn: queue_sql.bodies_of(conn, [queued.id, pieced.id]))
    assert bodies == {queued.id: content, pieced.id: exact}


async def test_retention_and_body_retention_delete_the_pieces(
    backend: Database, queue: Queue, writer: Writer
) -> None:
    kept, bodyless, purged = [
        await queue.enqueue(submission(content=large(2_500_000, mark)), ROUTE, claim=True)
        for mark in (b"k", b"b", b"p")
    ]
    for message in (bodyless, purged):
        await queue.record(
            AttemptRecord(message, dict.fromkeys(message.recipients, DELIVERED), "p")
        )
    # body_retention: the body of a final message goes; its pieces go with the sweep at once
    # (its message row is still there: that body can never be stored again).
    assert await Retention(writer, keep=86400, body_keep=0).sweep_bodies() == 2
    swept = split_in(backend, bodyless.content, purged.content)
    assert await Retention(writer, keep=86400).sweep_pieces() == swept
    assert await piece_count(backend, bodyless.id) == 0
    assert await piece_count(backend, kept.id) == split_in(backend, kept.content)  # untouched
    ids = [kept.id, bodyless.id]
    assert await backend.read(lambda conn: queue_sql.bodies_of(conn, ids)) == {
        kept.id: kept.content
    }
    # retention: the message goes, then its (already swept) pieces; a kept one stays whole.
    assert await Retention(writer, keep=0).sweep() == 2
    assert await piece_count(backend, kept.id) == split_in(backend, kept.content)
    assert await message_state(backend, purged.id) is None


async def test_pieces_of_a_message_purged_whole_are_swept_once_old(
    backend: Database, queue: Queue, writer: Writer
) -> None:
    """Retention deleting the message row and body leaves its pieces named by nothing:
    swept once older than ORPHAN_AGE (as they are, retention being days)."""
    queued = await queue.enqueue(submission(content=large(1_500_000)), ROUTE, claim=True)
    await queue.record(AttemptRecord(queued, dict.fromkeys(queued.recipients, DELIVERED), "p"))
    assert await Retention(writer, keep=0).sweep() == 1
    assert await piece_count(backend, queued.id) == split_in(backend, queued.content)
    await age_pieces(backend, pieces.ORPHAN_AGE + 60)
    assert await Retention(writer, keep=0).sweep_pieces() == split_in(backend, queued.content)
    assert await piece_count(backend, queued.id) == 0


async def test_pieces_with_no_message_row_are_invisible_and_swept(
    backend: Database, queue: Queue, writer: Writer
) -> None:
    """A crash between the pieces and the message row: the pieces are committed, nothing
    else is. Nothing reads them, the message does not exist, and the sweep deletes them once
    no storing transaction can still come for them (ORPHAN_AGE), never before."""
    content = large(3_000_000)
    lost = "msg_crashed_between"
    for row in pieces.rows(lost, content, time.time()):
        batch = Batch()
        batch.add(pieces.INSERT_PIECE, row)
        await writer.submit(batch, size=len(row["data"]))  # as Queue._store_pieces writes them
    written = pieces.count(content)
    assert await piece_count(backend, lost) == written > 1
    assert await backend.read(lambda conn: queue_sql.bodies_of(conn, [lost])) == {}
    assert await backend.read(lambda conn: queue_sql.body_prefix(conn, lost, 10)) is None
    assert await message_state(backend, lost) is None
    assert await queue.claim_due(10) == []

    assert await Retention(writer, keep=86400).sweep_pieces() == 0  # could still be in flight
    assert await piece_count(backend, lost) == written
    await age_pieces(backend, pieces.ORPHAN_AGE + 60)
    other = await queue.enqueue(submission(content=large(1_200_000)), ROUTE, claim=False)
    await age_pieces(backend, pieces.ORPHAN_AGE + 60)  # old too, but its message names them
    assert await Retention(writer, keep=86400).sweep_pieces() == written
    assert await piece_count(backend, lost) == 0
    assert await piece_count(backend, other.id) == split_in(backend, other.content)
    bodies = await backend.read(lambda conn: queue_sql.bodies_of(conn, [other.id]))
    assert bodies == {other.id: other.content}


async def test_a_refused_large_message_leaves_only_orphans(
    backend: Database, queue: Queue, writer: Writer
) -> None:
    """A second message under the same idempotency key is refused after its pieces were
    written: nothing of it is stored but the pieces, which the sweep deletes."""
    if not backend.is_sqlite:
        pytest.skip("PostgreSQL stores a large body whole, in its message's transaction")
    mail = replace(submission(content=large(1_300_000)), idempotency_key="k-1", request_hash="h")
    first = await queue.enqueue(mail, ROUTE, claim=False)
    with pytest.raises(Duplicate):
        await queue.enqueue(mail, ROUTE, claim=False)
    assert len(await fetch(backend, "SELECT id FROM message")) == 1
    rows = await fetch(backend, "SELECT DISTINCT message_id FROM message_piece")
    assert {row.message_id for row in rows} - {first.id}  # the refused one's
    await age_pieces(backend, pieces.ORPHAN_AGE + 60)
    assert await Retention(writer, keep=86400).sweep_pieces() == split_in(backend, mail.content)
    rows = await fetch(backend, "SELECT DISTINCT message_id FROM message_piece")
    assert {row.message_id for row in rows} == {first.id}


async def test_a_message_whose_pieces_are_not_all_there_is_not_stored(
    backend: Database, writer: Writer
) -> None:
    """The storing transaction checks the pieces it names (a sweep, a lost write): a
    message missing one is refused (StorageUnavailable: 451, the client retries), and a body
    that does not add up to its size is never read as a shorter one: it is not read."""
    content = large(2_200_000)
    rows = list(pieces.rows("msg_short", content, time.time()))
    await backend.transaction(lambda conn: conn.execute(pieces.INSERT_PIECE, rows[:-1]))
    with pytest.raises(pieces.PiecesMissing):
        await writer.submit(lambda conn: pieces.check(conn, {"msg_short": len(rows)}))

    def named(conn: Connection) -> None:  # a body row naming pieces one short of its size
        conn.execute(
            text(
                "INSERT INTO message (id, status, source, mail_from, attempts, size,"
                " created_at, updated_at) VALUES ('msg_short', 'delivered', 'smtp', '', 0,"
                " :size, 0, 0)"
            ),
            {"size": len(content)},
        )
        conn.execute(
            text("INSERT INTO message_body (message_id, data) VALUES ('msg_short', :e)"),
            {"e": b""},
        )

    await backend.transaction(named)
    assert await backend.read(lambda conn: queue_sql.bodies_of(conn, ["msg_short"])) == {}


async def test_a_message_whose_body_cannot_be_read_whole_is_held_not_sent(
    backend: Database, queue: Queue
) -> None:
    """Every piece of a large body gone (its empty row left): the body is not read as the
    empty message its row holds, and the claim holds that message (as `postern queue hold`
    does, an event saying why) while the message claimed with it is delivered."""
    small = await queue.enqueue(submission(), ROUTE, claim=False)
    broken = await queue.enqueue(submission(content=large(2_500_000)), ROUTE, claim=False)
    await backend.transaction(
        lambda conn: conn.execute(
            text("DELETE FROM message_piece WHERE message_id = :m"), {"m": broken.id}
        )
    )
    if backend.is_sqlite:  # (PostgreSQL keeps the body whole: nothing to lose)
        read = await backend.read(lambda conn: queue_sql.bodies_of(conn, [broken.id, small.id]))
        assert list(read) == [small.id]
        prefix = await backend.read(lambda conn: queue_sql.body_prefix(conn, broken.id, 100))
        assert prefix is None
    claimed = await queue.claim_due(10)
    if not backend.is_sqlite:
        assert sorted(m.id for m in claimed) == sorted([small.id, broken.id])
        return
    assert [m.id for m in claimed] == [small.id]
    row = await message_row(backend, broken.id)
    assert (row.status, row.claimed_by) == ("held", None)
    said = await fetch(
        backend, "SELECT type, response FROM event WHERE message_id = :m", m=broken.id
    )
    assert ("held", "held: its stored body cannot be read whole") in [tuple(e) for e in said]
    assert await queue.claim_due(10) == []  # never claimed while held
    assert (await queue.release_held([broken.id])).done == [broken.id]  # an operator's call


async def test_a_schema_10_database_gains_the_pieces_table(backend: Database, queue: Queue) -> None:
    """An existing schema 10 database file (no message_piece) is upgraded at start: the
    table and its index come from create_all, the version becomes 11, the mail stored
    before reads as it did and a large message is stored in pieces."""
    before = await queue.enqueue(submission(content=large(1_100_000)[:900_000]), ROUTE, False)

    def to_schema_10(conn: Connection) -> None:
        conn.execute(text("DROP TABLE message_piece"))
        conn.execute(text("UPDATE postern_meta SET value = '10' WHERE key = 'schema_version'"))

    await backend.transaction(to_schema_10)
    assert "message_piece" not in await backend.read(lambda c: inspect(c).get_table_names())
    await create_schema(backend)

    def piece_indexes(conn: Connection) -> set[str]:
        return {str(i["name"]) for i in inspect(conn).get_indexes("message_piece")}

    # (on the connection that upgraded: a pooled SQLite reader may answer PRAGMA index_list
    # from the schema it read before)
    assert "ix_message_piece_created" in await backend.transaction(piece_indexes)
    version = await fetch(backend, "SELECT value FROM postern_meta WHERE key = 'schema_version'")
    assert version[0].value == str(SCHEMA_VERSION)
    after = await queue.enqueue(submission(content=large(2_000_000)), ROUTE, False)
    assert await piece_count(backend, after.id) == split_in(backend, after.content)
    bodies = await backend.read(lambda conn: queue_sql.bodies_of(conn, [before.id, after.id]))
    assert bodies == {before.id: before.content, after.id: after.content}


async def test_a_body_in_pieces_of_an_earlier_size_reads_whole(
    backend: Database, queue: Queue, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Pieces were 1 MiB before 2026-12-07 (now storage.pieces.PIECE): a body an earlier
    release stored that way reads whole, its prefix too, next to one stored now."""
    if not backend.is_sqlite:
        pytest.skip("PostgreSQL stores a large body whole, in its message's transaction")
    with monkeypatch.context() as earlier:
        earlier.setattr(pieces, "PIECE", 1 << 20)
        old = await queue.enqueue(submission(content=large(2_600_000, b"o")), ROUTE, False)
    new = await queue.enqueue(submission(content=large(2_600_000, b"n")), ROUTE, False)
    assert (await piece_count(backend, old.id), await piece_count(backend, new.id)) == (
        3,
        split_in(backend, new.content),
    )
    bodies = await backend.read(lambda conn: queue_sql.bodies_of(conn, [old.id, new.id]))
    assert bodies == {old.id: old.content, new.id: new.content}
    for message in (old, new):
        head = await backend.read(
            partial(queue_sql.body_prefix, message_id=message.id, length=600_000)
        )
        assert head == message.content[:600_000]


async def test_a_batch_stores_its_large_messages_in_pieces(backend: Database, queue: Queue) -> None:
    """A batch send (one transaction for every message) writes the pieces of its large ones
    first, like a single message, and reads back each body as it was sent."""
    contents = [large(1_600_000, b"x"), CONTENT_SMALL, large(2_300_000, b"y")]
    results = await queue.enqueue_many([[(submission(content=c), ROUTE)] for c in contents])
    ids = [result[0].id for result in results if isinstance(result, list)]
    assert len(ids) == 3
    assert [await piece_count(backend, m_id) for m_id in ids] == [
        split_in(backend, content) for content in contents
    ]
    bodies = await backend.read(lambda conn: queue_sql.bodies_of(conn, ids))
    assert [bodies[m_id] for m_id in ids] == contents


async def test_a_body_missing_its_first_piece_has_no_prefix(
    backend: Database, queue: Queue
) -> None:
    """The header a DSN or the sandbox page quotes is the body's first bytes: with piece 0
    gone, piece 1's bytes are not taken for them."""
    if not backend.is_sqlite:
        pytest.skip("PostgreSQL stores a large body whole, in its message's transaction")
    queued = await queue.enqueue(submission(content=large(2_500_000)), ROUTE, claim=False)
    await backend.transaction(
        lambda conn: conn.execute(
            text("DELETE FROM message_piece WHERE message_id = :m AND seq = 0"), {"m": queued.id}
        )
    )
    assert await backend.read(lambda conn: queue_sql.body_prefix(conn, queued.id, 100)) is None
    assert await backend.read(lambda conn: queue_sql.bodies_of(conn, [queued.id])) == {}


async def test_an_unreadable_body_with_nothing_left_to_send_is_not_held(
    backend: Database, queue: Queue
) -> None:
    """A late report bounced every recipient while the message was claimable: delivery
    settles it without a body (nothing is sent), so it is handed over, not held for good."""
    if not backend.is_sqlite:
        pytest.skip("PostgreSQL stores a large body whole, in its message's transaction")
    queued = await queue.enqueue(submission(content=large(2_500_000)), ROUTE, claim=False)

    def lose_and_bounce(conn: Connection) -> None:
        conn.execute(text("DELETE FROM message_piece WHERE message_id = :m"), {"m": queued.id})
        conn.execute(
            text("UPDATE recipient SET status = 'bounced' WHERE message_id = :m"), {"m": queued.id}
        )

    await backend.transaction(lose_and_bounce)
    [claimed] = await queue.claim_due(10)
    assert (claimed.id, claimed.recipients, claimed.content) == (queued.id, [], b"")
    assert (await message_row(backend, queued.id)).status != "held"
