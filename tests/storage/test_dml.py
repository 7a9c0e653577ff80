"""storage.dml.run does what conn.execute does: the same rows, byte for byte, the same
row counts and the same errors. It binds the rows itself, on SQLite and on PostgreSQL."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Connection, create_engine, delete, func, insert, select, text, update
from sqlalchemy.exc import (
    DatabaseError,
    DBAPIError,
    IntegrityError,
    InvalidRequestError,
    StatementError,
)
from sqlalchemy.sql import Executable

from gateway.message import Route, Submission
from gateway.queue import events
from gateway.queue.store import new_message_rows
from storage import dml
from storage import queue_sql as sql
from storage import suppressions as stored_suppressions
from storage.db import Database, create_schema, open_database
from storage.errors import database_failed
from storage.models import Message, Meta, Recipient, metadata

NOW = 1_700_000_000.25
TABLES = ("message", "message_body", "recipient", "event", "postern_meta", "suppression")
Step = tuple[Executable, Any]


def content(n: int) -> bytes:
    return (
        f"From: <a@b.test>\r\nSubject: dml {n} \xe9t\xe9\r\nMessage-ID: <{n}@b.test>\r\n\r\n"
        "body\r\n"
    ).encode() + bytes(range(256))


def steps(is_sqlite: bool = True) -> list[Step]:
    """An intake of five messages (one claimed, one sandbox, one with a suppressed
    recipient), then an attempt's record, a postponement and rows that lean on a column's
    default: each statement of the write path, its rows as the queue builds them."""
    out: list[Step] = []
    for n, sandbox in ((1, False), (2, True), (3, False), (4, False), (5, False)):
        submission = Submission(
            mail_from="a@b.test",
            recipients=("x@y.test", "z@y.test"),
            content=content(n),
            source="smtp",
            sandbox=sandbox,
            suppressed=("s@y.test",) if n == 3 else (),
            client_address="192.0.2.1",
        )
        route = Route(pool_id="p1", default=n == 1)
        batch = new_message_rows(submission, route, f"m{n}", NOW, NOW + 600, "node-a")
        out += batch.steps
    record = {
        "m_id": "m1", "node": "node-a", "status": "delivered", "due": None, "pool": "p1",
        "response": "250 2.0.0 ok", "now": NOW + 1, "forced": 0,
    }  # fmt: skip
    stamp = {"m_id": "m1", "stamp_at": NOW + 1, "stamp_attempt": 1}
    out.append((sql.UPDATE_MESSAGE, record))
    out.append((sql.UPDATE_MESSAGE, {**record, "m_id": "m3", "node": "node-b"}))  # not held
    out.append(
        (
            sql.RECORD_RECIPIENT,
            [
                {"m_email": email, "status": "delivered", "code": 250, "response": "ok",
                 "now": NOW + 1, **stamp}
                for email in ("x@y.test", "z@y.test", "gone@y.test")
            ],
        )
    )  # fmt: skip
    rows = [
        {**events.row(events.DELIVERED, "m1", "delivered", NOW + 1, r, pool="p1", attempt=1),
         **stamp}
        for r in ("x@y.test", "z@y.test")
    ]  # fmt: skip
    out.append((sql.RECORD_EVENT, rows))
    out.append((sql.RECORD_EVENT, [{**rows[0], "stamp_attempt": 2}]))  # no stamp: no row
    postpone = {"m_id": "m3", "node": "node-a", "due": NOW + 60, "why": "rate", "now": NOW}
    out.append((sql.POSTPONE, postpone))
    # `attempts` left out: its scalar default (0) is the statement's own bound value.
    out.append(
        (
            sql.INSERT_RECIPIENT,
            [{"message_id": "m2", "email": f"d{i}@y.test", "status": "pending",
              "code": None, "response": None, "updated_at": NOW} for i in range(3)],
        )
    )  # fmt: skip
    out += record_steps(is_sqlite)
    # Rows of different keys: conn.execute's business (the first row's keys decide).
    out.append((insert(Meta), [{"key": "k1", "value": "1"}, {"key": "k2", "value": "2"}]))
    return out


def record_steps(is_sqlite: bool) -> list[Step]:
    """The rest of an attempt's record (gateway.queue.store.record), each statement matching
    a row and matching none: m4, whose z a report bounced while the attempt ran, is settled
    bounced (SETTLE_TAKEN); m5, all of whose recipients a report bounced, is settled without
    an attempt (SETTLE_CLAIMED); claims given back (RELEASE_ONE); suppressions added."""
    out: list[Step] = []
    bounce = {"status": "bounced", "response": "550 5.1.1 gone (report)", "updated_at": NOW}
    for m_id, emails in (("m4", ("z@y.test",)), ("m5", ("x@y.test", "z@y.test"))):
        where = (Recipient.c.message_id == m_id, Recipient.c.email.in_(emails))
        out.append((update(Recipient).where(*where).values(**bounce), {}))
    stamp = {"m_id": "m4", "stamp_at": NOW + 2, "stamp_attempt": 1}
    record = {
        "m_id": "m4", "node": "node-a", "status": "delivered", "due": None, "pool": "p1",
        "response": "250 2.0.0 ok", "now": NOW + 2, "forced": 0,
    }  # fmt: skip
    out.append((sql.UPDATE_MESSAGE, record))
    out.append(
        (
            sql.RECORD_RECIPIENT,
            [
                {"m_id": "m4", "m_email": email, "status": "delivered", "code": 250,
                 "response": "ok", "now": NOW + 2, **stamp}
                for email in ("x@y.test", "z@y.test")
            ],
        )
    )  # fmt: skip
    m1 = {"m_id": "m1", "stamp_at": NOW + 1, "stamp_attempt": 1}
    out.append((sql.SETTLE_TAKEN, stamp))  # matches: bounced, as the report's reply says
    out.append((sql.SETTLE_TAKEN, m1))  # nothing bounced: none
    out.append((sql.SETTLE_TAKEN, [m1, {**stamp, "stamp_attempt": 2}]))  # none (a group)
    events_of = [
        {**events.row(events.DELIVERED, m_id, "delivered", at, r, pool="p1", attempt=1),
         **stamps}
        for m_id, at, stamps in (("m1", NOW + 1, m1), ("m4", NOW + 2, stamp))
        for r in ("x@y.test", "z@y.test", "gone@y.test")
    ]  # fmt: skip
    # m1's x and z, m4's x: each stamped by its attempt; m4's z (the report's) and "gone" not.
    out.append((sql.RECORD_RESULT_EVENT, events_of))
    out.append((sql.RECORD_RESULT_EVENT, events_of[-1]))  # one row, none
    settle = {**record, "m_id": "m5", "status": "bounced", "now": NOW + 3}
    out.append((sql.SETTLE_CLAIMED, settle))  # matches: its last response the bounce's
    out.append((sql.SETTLE_CLAIMED, {**settle, "m_id": "m3"}))  # postponed: held by no one
    release = [{"m_id": m_id, "node": "node-a", "due": NOW + 4} for m_id in ("m2", "m3")]
    out.append((sql.RELEASE_ONE, release))  # as Queue._release: m2 given back, m3 none
    out.append((sql.RELEASE_ONE, {**release[0], "node": "node-b"}))  # as Queue.release: none
    suppress = stored_suppressions.add_if_absent(is_sqlite)
    reasons = (("x@y.test", "bounced"), ("z@y.test", "complaint"), ("x@y.test", "bounced"))
    listed = [{"email": email, "reason": why, "created_at": NOW + 2} for email, why in reasons]
    out.append((suppress, listed))  # two new, the repeated one left as it is
    out.append((suppress, {**listed[1], "reason": "bounced"}))  # listed already: none
    return out


def dump(conn: Connection) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of the write path's tables, each value with its SQLite storage class."""
    out: dict[str, list[tuple[Any, ...]]] = {}
    for table in TABLES:
        columns = [row[1] for row in conn.exec_driver_sql(f"PRAGMA table_info({table})")]
        picks = ", ".join(f"{c}, typeof({c})" for c in columns)
        query = f"SELECT {picks} FROM {table} ORDER BY rowid"
        out[table] = [tuple(row) for row in conn.exec_driver_sql(query)]
    return out


@pytest.fixture
async def two(tmp_path: Path) -> AsyncIterator[tuple[Database, Database]]:
    """Two fresh SQLite databases with the Postern schema."""
    made = []
    for name in ("a", "b"):
        db = open_database(f"sqlite:///{tmp_path / name}.db")
        await create_schema(db)
        made.append(db)
    try:
        yield made[0], made[1]
    finally:
        for db in made:
            await db.dispose()


Runner = Callable[[Connection, Executable, Any], int]


def execute(conn: Connection, statement: Executable, rows: Any) -> int:
    return conn.execute(statement, rows).rowcount


Reader = Callable[[Connection], dict[str, list[tuple[Any, ...]]]]


async def apply(
    db: Database, runner: Runner, read: Reader = dump
) -> tuple[list[int], dict[str, Any]]:
    """The write path's steps through `runner` in one transaction: their counts, and the
    rows then (`read`)."""

    def work(conn: Connection) -> list[int]:
        return [runner(conn, statement, rows) for statement, rows in steps(db.is_sqlite)]

    counts = await db.transaction(work)
    return counts, await db.read(read)


async def test_the_same_rows_and_counts_as_conn_execute(two: tuple[Database, Database]) -> None:
    fast, slow = two
    counts, rows = await apply(fast, dml.run)
    expected_counts, expected_rows = await apply(slow, execute)
    assert counts == expected_counts
    assert counts[:2] != [0, 0] and 0 in counts  # (the steps do write, and do miss)
    assert rows == expected_rows
    assert rows["message_body"][0][:4] == ("m1", "text", content(1), "blob")


def snapshot(conn: Connection) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of the write path's tables, in the order of all their columns, on either
    backend; left out what the database sets and the two passes cannot share: a table's own
    counter, and an event's transaction id (PostgreSQL's, a new one each pass)."""
    out: dict[str, list[tuple[Any, ...]]] = {}
    for name in TABLES:
        table = metadata.tables[name]
        columns = [c for c in table.c if c is not table.autoincrement_column and c.name != "txid"]
        out[name] = [tuple(row) for row in conn.execute(select(*columns).order_by(*columns))]
    return out


def clear(conn: Connection) -> None:
    """Every row the steps wrote gone (the schema's version kept)."""
    for table in reversed(metadata.sorted_tables):
        if table is Meta:
            conn.execute(delete(Meta).where(Meta.c.key != "schema_version"))
        else:
            conn.execute(delete(table))


async def test_the_same_rows_and_counts_on_both_backends(backend: Database) -> None:
    """The write path's steps through dml.run, then (the rows cleared) through conn.execute,
    on one database: the same row counts, the same rows."""
    counts, rows = await apply(backend, dml.run, snapshot)
    await backend.transaction(clear)
    expected_counts, expected_rows = await apply(backend, execute, snapshot)
    assert counts == expected_counts
    assert rows == expected_rows
    assert rows["message"] and rows["recipient"] and rows["event"]


# What record_steps change, step by step: each statement matches a row, and matches none.
RECORD_COUNTS = [1, 2, 1, 1, 1, 0, 0, 3, 0, 1, 0, 1, 0, 2, 0]


async def test_an_attempts_record_matches_the_same_rows_on_both_backends(
    backend: Database,
) -> None:
    """The record's statements (through dml.run) change the rows they are meant to, and
    leave the same state on both backends."""
    all_steps = steps(backend.is_sqlite)
    tail = len(record_steps(backend.is_sqlite)) + 1  # (and the Meta rows after them)

    def work(conn: Connection) -> list[int]:
        return [dml.run(conn, statement, rows) for statement, rows in all_steps]

    counts = await backend.transaction(work)
    if not backend.is_sqlite:  # asyncpg's executemany counts no rows (-1): one row's only
        several = [isinstance(rows, list) and len(rows) > 1 for _, rows in all_steps]
        counts = [-1 if many else n for n, many in zip(counts, several, strict=True)]
        expected = [
            -1 if many else n for n, many in zip(RECORD_COUNTS, several[-tail:-1], strict=True)
        ]
    else:
        expected = RECORD_COUNTS
    assert counts[-tail:-1] == expected

    def state(conn: Connection) -> tuple[list[Any], ...]:
        messages = conn.execute(
            select(Message.c.id, Message.c.status, Message.c.claimed_by, Message.c.due_at,
                   Message.c.last_response).order_by(Message.c.id)
        )  # fmt: skip
        query = "SELECT message_id, recipient, type, message_status FROM event ORDER BY id"
        found = conn.exec_driver_sql(query)
        listed = conn.exec_driver_sql("SELECT email, reason FROM suppression ORDER BY email")
        return list(map(tuple, messages)), list(map(tuple, found)), list(map(tuple, listed))

    messages, found, listed = await backend.read(state)
    assert messages == [
        ("m1", "delivered", None, None, "250 2.0.0 ok"),
        ("m2", "sandbox", None, NOW + 4, None),
        ("m3", "deferred", None, NOW + 60, "rate"),
        ("m4", "bounced", None, None, "550 5.1.1 gone (report)"),
        ("m5", "bounced", None, None, "550 5.1.1 gone (report)"),
    ]
    assert found[-3:] == [
        ("m1", "x@y.test", "delivered", "delivered"),
        ("m1", "z@y.test", "delivered", "delivered"),
        ("m4", "x@y.test", "delivered", "bounced"),  # as SETTLE_TAKEN left the message
    ]
    assert listed == [("x@y.test", "bounced"), ("z@y.test", "complaint")]


async def test_the_hot_statements_are_bound_by_dml_itself(backend: Database) -> None:
    """Not a silent fall-back to conn.execute: each statement of the write path has a plan
    on both backends, for one row and for several (a newer SQLAlchemy that moved what dml
    reads would show here; PostgreSQL's one-row INSERT, with its implicit RETURNING, had
    none)."""
    dml._plans.clear()
    one_recipient = {
        "message_id": "m2", "email": "one@y.test", "status": "pending", "code": None,
        "response": None, "updated_at": NOW,
    }  # fmt: skip
    one_event = events.row(events.DELIVERED, "m1", "delivered", NOW + 5, "one@y.test")

    def work(conn: Connection) -> list[int]:
        for statement, rows in steps(backend.is_sqlite):
            dml.run(conn, statement, rows)
        return [
            dml.run(conn, sql.INSERT_RECIPIENT, one_recipient),
            dml.run(conn, events.INSERT_EVENT, one_event),
        ]

    assert await backend.transaction(work) == [1, 1]
    shapes = {
        (statement, many): plan
        for dialect, plans in dml._plans.items()
        if dialect.name == backend.dialect
        for (statement, _, many), plan in plans.items()
    }
    hot = {
        sql.INSERT_MESSAGE, sql.INSERT_BODY, sql.INSERT_RECIPIENT, events.INSERT_EVENT,
        sql.UPDATE_MESSAGE, sql.RECORD_RECIPIENT, sql.RECORD_EVENT, sql.POSTPONE,
        sql.RECORD_RESULT_EVENT, sql.SETTLE_TAKEN, sql.SETTLE_CLAIMED, sql.RELEASE_ONE,
        stored_suppressions.add_if_absent(backend.is_sqlite),
    }  # fmt: skip
    assert hot <= {statement for statement, _ in shapes}
    assert [shape for shape, plan in shapes.items() if shape[0] in hot and plan is None] == []
    for statement in (sql.INSERT_RECIPIENT, events.INSERT_EVENT):
        assert shapes[statement, False] is not None and shapes[statement, True] is not None
    one_row = shapes[events.INSERT_EVENT, False]  # (PostgreSQL's had an implicit RETURNING)
    assert one_row is not None and "RETURNING" not in one_row.sql.upper()


async def errors_of(db: Database, runner: Runner, statement: Executable, rows: Any) -> Exception:
    def work(conn: Connection) -> None:
        runner(conn, statement, rows)

    with pytest.raises(Exception) as caught:
        await db.transaction(work)
    return caught.value


@pytest.mark.parametrize(
    "statement, rows",
    [
        (insert(Meta), [{"key": "dup", "value": "1"}, {"key": "dup", "value": "2"}]),
        (insert(Meta), {"key": "schema_version", "value": "1"}),  # one row, execute
        (sql.UPDATE_MESSAGE, [{"m_id": "m1"}]),  # values missing
        (insert(Meta), [{"key": "k"}, {"key": "l", "value": 2, "other": 3}]),
        # A value its type refuses (Boolean): refused before any SQL runs, by SQLAlchemy.
        (insert(Message), [{"id": "b1", "route_default": "yes"}, {"id": "b2", "route_default": 1}]),
    ],
)
async def test_the_same_errors_as_conn_execute(
    backend: Database, statement: Executable, rows: Any
) -> None:
    error = await errors_of(backend, dml.run, statement, rows)  # (each rolled back)
    expected = await errors_of(backend, execute, statement, rows)
    assert type(error) is type(expected)
    assert str(error) == str(expected)
    assert isinstance(error, IntegrityError | InvalidRequestError | StatementError)


async def test_a_clash_is_sqlalchemys_integrity_error_on_both_backends(
    backend: Database,
) -> None:
    """What storage.errors.database_failed tells from a failed database: one write's bad
    data, so the writer retries its neighbours one by one."""

    def work(conn: Connection) -> int:
        changed = dml.run(conn, insert(Meta), [{"key": "dml1", "value": "1"}])
        changed += dml.run(conn, insert(Meta), [{"key": "dml2", "value": "2"}] * 2)
        return changed

    with pytest.raises(IntegrityError):
        await backend.transaction(work)
    count = await backend.read(
        lambda conn: conn.execute(select(func.count()).select_from(Meta)).scalar()
    )
    assert count == 1  # the schema version alone: the transaction rolled back
    ok = await backend.transaction(
        lambda conn: dml.run(conn, insert(Meta), [{"key": "dml1", "value": "1"}])
    )
    assert ok == 1


@pytest.mark.parametrize("count", [1, 2])  # asyncpg's execute, and its executemany
async def test_a_lost_postgresql_connection_is_invalidated(backend: Database, count: int) -> None:
    """The server ends the session mid-transaction: dml.run's failure is SQLAlchemy's own
    (a DBAPIError that invalidated the connection, so the pool does not hand it out again)
    and the next transaction works."""
    if backend.is_sqlite:
        pytest.skip("SQLite has no connection to lose")
    rows = [{"key": f"lost{n}", "value": "1"} for n in range(count)]

    def work(conn: Connection) -> None:
        conn.exec_driver_sql("SET LOCAL idle_in_transaction_session_timeout = '50ms'")
        time.sleep(2.0)  # (the server ends the idle session meanwhile)
        dml.run(conn, insert(Meta), rows)

    with pytest.raises(DBAPIError) as lost:
        await backend.transaction(work)
    assert lost.value.connection_invalidated
    await backend.transaction(lambda conn: dml.run(conn, insert(Meta), rows))
    stored = await backend.read(
        lambda conn: conn.execute(
            select(func.count()).select_from(Meta).where(Meta.c.key.like("lost%"))
        ).scalar()
    )
    assert stored == count


def test_a_corrupt_sqlite_file_is_a_database_failure(tmp_path: Path) -> None:
    """SQLITE_NOTADB through SQLAlchemy (a DatabaseError, not an OperationalError): the
    writer fails every job of the commit and remembers it (readiness, the metric), as for a
    locked or full database, rather than retrying each job as if its data were wrong."""
    bogus = tmp_path / "bogus.db"
    bogus.write_bytes(b"not a database at all, " * 100)
    engine = create_engine(f"sqlite:///{bogus}")
    try:
        with pytest.raises(DatabaseError) as corrupt, engine.connect() as conn:
            conn.execute(text("SELECT * FROM sqlite_master")).fetchall()
    finally:
        engine.dispose()
    assert database_failed(corrupt.value)
    assert not database_failed(IntegrityError("INSERT", {}, Exception("UNIQUE")))
