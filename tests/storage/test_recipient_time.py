"""Each recipient row carries its message's created_at (schema 10), so the search by
recipient reads its pages in time order from ix_recipient_email_time; a schema 9 database
gains the column, filled in from its messages, and the index replaces ix_recipient_email."""

from __future__ import annotations

from sqlalchemy import Connection, inspect, text

from gateway.message import Route
from gateway.queue.store import Queue
from storage.db import Database, create_schema
from storage.models import SCHEMA_VERSION
from tests.support.stored import message_row, submission

ROUTE = Route(ip_pool="transactional")


def _times(conn: Connection) -> dict[str, float]:
    rows = conn.execute(text("SELECT email, message_created_at FROM recipient"))
    return {str(email): float(at) for email, at in rows}


async def test_enqueue_copies_the_message_time(backend: Database, queue: Queue) -> None:
    queued = await queue.enqueue(submission(), ROUTE, claim=False)
    created = (await message_row(backend, queued.id)).created_at
    assert set((await backend.read(_times)).values()) == {created}


async def test_a_schema_9_database_gains_the_time_and_the_index(
    backend: Database, queue: Queue
) -> None:
    queued = await queue.enqueue(submission(), ROUTE, claim=False)
    created = (await message_row(backend, queued.id)).created_at

    def to_schema_9(conn: Connection) -> None:
        conn.execute(text("DROP INDEX IF EXISTS ix_recipient_email_time"))
        conn.execute(text("ALTER TABLE recipient DROP COLUMN message_created_at"))
        conn.execute(text("CREATE INDEX ix_recipient_email ON recipient (email)"))
        conn.execute(text("UPDATE postern_meta SET value = '9' WHERE key = 'schema_version'"))

    await backend.transaction(to_schema_9)
    await create_schema(backend)

    def indexes(conn: Connection) -> set[str]:
        return {str(i["name"]) for i in inspect(conn).get_indexes("recipient")}

    found = await backend.read(indexes)
    assert "ix_recipient_email_time" in found and "ix_recipient_email" not in found
    assert set((await backend.read(_times)).values()) == {created}
    version = await backend.read(
        lambda conn: conn.execute(
            text("SELECT value FROM postern_meta WHERE key = 'schema_version'")
        ).scalar()
    )
    assert version == str(SCHEMA_VERSION)


async def test_pages_end_even_when_a_row_lacks_its_time(backend: Database, queue: Queue) -> None:
    """A recipient row an older node wrote during an upgrade has time 0: its message comes
    last, and the pages still cover every message once and end (the cursor is the page's
    own order, not the message's time)."""
    from storage.message_search import MessageFilter, search

    made = [await queue.enqueue(submission("r@example.com"), ROUTE, claim=False) for _ in range(5)]
    await backend.transaction(
        lambda conn: conn.execute(
            text("UPDATE recipient SET message_created_at = 0 WHERE message_id = :id"),
            {"id": made[2].id},
        )
    )
    seen: list[str] = []
    cursor: str | None = None
    for _ in range(10):
        page, cursor = await search(backend, MessageFilter(recipient="r@example.com"), 2, cursor)
        seen += [m.id for m in page]
        if cursor is None:
            break
    assert cursor is None and sorted(seen) == sorted(m.id for m in made)
    assert seen[-1] == made[2].id
