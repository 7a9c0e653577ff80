"""The client's own Message-ID, stored with the message (schema 9): normalised, bounded,
NULL without one; a schema 8 database gains the column and its index."""

from __future__ import annotations

from sqlalchemy import Connection, inspect, text

from gateway.message import Route
from gateway.queue.store import Queue
from storage.db import Database, create_schema
from storage.models import SCHEMA_VERSION
from tests.support.stored import message_row, submission

ROUTE = Route(ip_pool="transactional")


async def test_enqueue_records_the_normalised_message_id(backend: Database, queue: Queue) -> None:
    content = b"From: a@example.com\r\nMessage-Id:\r\n  <Client.1@App.Example>\r\n\r\nbody\r\n"
    queued = await queue.enqueue(submission(content=content), ROUTE, claim=False)
    assert (await message_row(backend, queued.id)).header_message_id == "<Client.1@App.Example>"


async def test_no_message_id_is_null_and_a_long_one_is_bounded(
    backend: Database, queue: Queue
) -> None:
    plain = await queue.enqueue(submission(), ROUTE, claim=False)
    assert (await message_row(backend, plain.id)).header_message_id is None
    long = b"Message-ID: <" + b"x" * 400 + b"@example.com>\r\nFrom: a@example.com\r\n\r\nb\r\n"
    queued = await queue.enqueue(submission(content=long), ROUTE, claim=False)
    stored = (await message_row(backend, queued.id)).header_message_id
    assert stored == "<" + "x" * 254


async def test_a_schema_8_database_gains_the_column_and_its_index(backend: Database) -> None:
    def to_schema_8(conn: Connection) -> None:
        conn.execute(text("DROP INDEX IF EXISTS ix_message_header_id"))
        conn.execute(text("ALTER TABLE message DROP COLUMN header_message_id"))
        conn.execute(text("UPDATE postern_meta SET value = '8' WHERE key = 'schema_version'"))

    await backend.transaction(to_schema_8)
    await create_schema(backend)

    def found(conn: Connection) -> tuple[set[str], set[str], str]:
        seen = inspect(conn)
        columns = {c["name"] for c in seen.get_columns("message")}
        indexes = {str(i["name"]) for i in seen.get_indexes("message")}
        query = text("SELECT value FROM postern_meta WHERE key = 'schema_version'")
        return columns, indexes, str(conn.execute(query).scalar())

    columns, indexes, version = await backend.read(found)
    assert "header_message_id" in columns and "ix_message_header_id" in indexes
    assert version == str(SCHEMA_VERSION)


async def test_a_schema_9_database_gains_scheduled_at(backend: Database) -> None:
    def to_schema_9(conn: Connection) -> None:
        conn.execute(text("ALTER TABLE message DROP COLUMN scheduled_at"))
        conn.execute(text("UPDATE postern_meta SET value = '9' WHERE key = 'schema_version'"))

    await backend.transaction(to_schema_9)
    await create_schema(backend)

    def columns(conn: Connection) -> set[str]:
        return {c["name"] for c in inspect(conn).get_columns("message")}

    assert "scheduled_at" in await backend.read(columns)
