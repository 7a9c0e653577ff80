"""storage.dml.run does what conn.execute does: the same rows, byte for byte, the same
row counts and the same errors. On SQLite it binds the rows itself; on PostgreSQL it is
conn.execute."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Connection, func, insert, select
from sqlalchemy.exc import IntegrityError, InvalidRequestError, StatementError
from sqlalchemy.sql import Executable

from gateway.message import Route, Submission
from gateway.queue import events
from gateway.queue.store import new_message_rows
from storage import dml
from storage import queue_sql as sql
from storage.db import Database, create_schema, open_database
from storage.models import Message, Meta

NOW = 1_700_000_000.25
TABLES = ("message", "message_body", "recipient", "event", "postern_meta")
Step = tuple[Executable, Any]


def content(n: int) -> bytes:
    return (
        f"From: <a@b.test>\r\nSubject: dml {n} \xe9t\xe9\r\nMessage-ID: <{n}@b.test>\r\n\r\n"
        "body\r\n"
    ).encode() + bytes(range(256))


def steps() -> list[Step]:
    """An intake of three messages (one claimed, one sandbox, one with a suppressed
    recipient), then an attempt's record, a postponement and rows that lean on a column's
    default: each statement of the write path, its rows as the queue builds them."""
    out: list[Step] = []
    for n, sandbox in ((1, False), (2, True), (3, False)):
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
    # Rows of different keys: conn.execute's business (the first row's keys decide).
    out.append((insert(Meta), [{"key": "k1", "value": "1"}, {"key": "k2", "value": "2"}]))
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


async def apply(db: Database, runner: Runner) -> tuple[list[int], dict[str, Any]]:
    def work(conn: Connection) -> list[int]:
        return [runner(conn, statement, rows) for statement, rows in steps()]

    counts = await db.transaction(work)
    return counts, await db.read(dump)


async def test_the_same_rows_and_counts_as_conn_execute(two: tuple[Database, Database]) -> None:
    fast, slow = two
    counts, rows = await apply(fast, dml.run)
    expected_counts, expected_rows = await apply(slow, execute)
    assert counts == expected_counts
    assert counts[:2] != [0, 0] and 0 in counts  # (the steps do write, and do miss)
    assert rows == expected_rows
    assert rows["message_body"][0][:4] == ("m1", "text", content(1), "blob")


async def test_the_hot_statements_are_bound_by_dml_itself(two: tuple[Database, Database]) -> None:
    """Not a silent fall-back to conn.execute: each statement of the write path has a plan
    (a newer SQLAlchemy that moved what dml reads would show here)."""
    db = two[0]
    await apply(db, dml.run)
    planned = {
        statement
        for plans in dml._plans.values()
        for (statement, _, _), plan in plans.items()
        if plan is not None
    }
    hot = {
        sql.INSERT_MESSAGE, sql.INSERT_BODY, sql.INSERT_RECIPIENT, events.INSERT_EVENT,
        sql.UPDATE_MESSAGE, sql.RECORD_RECIPIENT, sql.RECORD_EVENT, sql.POSTPONE,
    }  # fmt: skip
    assert hot <= planned


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
    two: tuple[Database, Database], statement: Executable, rows: Any
) -> None:
    fast, slow = two
    error = await errors_of(fast, dml.run, statement, rows)
    expected = await errors_of(slow, execute, statement, rows)
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
