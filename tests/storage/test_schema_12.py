"""Schema 12: three indexes of `message` hold only the rows whose column is set (partial,
`col IS NOT NULL`), so that a message without a key, an owner or a claim
writes no entry for it. Every query that read them still does, with its values bound as
the server binds them (SQLite's `?`, PostgreSQL's generic plan of a prepared statement);
a schema 11 database trades its full indexes for the partial ones in place, once, however
many processes start on it together.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from sqlalchemy import Connection, bindparam, insert, select, text, update
from sqlalchemy.sql import Executable

from storage import queue_sql as sql
from storage.db import Database, create_schema
from storage.message_search import MessageFilter, count_query, ids_query, search_query
from storage.models import SCHEMA_VERSION, Message

PARTIAL = {
    "ix_message_claimed": "claimed_by",
    "ix_message_sent_by_key": "api_key_id",
    "ix_message_sent_by_user": "user_id",
}
# Schema 11's full indexes, as it created them.
SCHEMA_11 = {
    "ix_message_claimed_by": "message (claimed_by)",
    "ix_message_api_key": "message (api_key_id, created_at, id)",
    "ix_message_user": "message (user_id, created_at, id)",
}


async def _fill(db: Database, n: int = 3000) -> None:
    """n messages of every kind, most without a key or owner (as SMTP mail): a third
    deferred, a few of them claimed by node_a (in flight), the rest final; then statistics,
    as a live database has them."""
    now = time.time()

    def row(i: int) -> dict[str, Any]:
        active, claimed = i % 3 == 0, i % 60 == 0
        return {
            "id": f"msg_{i:06d}",
            "status": "deferred" if active else "delivered",
            "source": "smtp",
            "mail_from": "app@example.com",
            "size": 10,
            "created_at": now - n + i,
            "updated_at": now - n + i,
            "due_at": (now + 60 if claimed else now + 600) if active else None,
            "claimed_by": "node_a" if claimed else None,
            "api_key_id": f"key_{i % 3}" if i % 10 == 0 else None,
            "user_id": f"usr_{i % 3}" if i % 10 == 0 else None,
            "header_message_id": f"<{i}@app.example>" if i % 4 == 0 else None,
        }

    rows = [row(i) for i in range(n)]
    await db.transaction(lambda conn: conn.execute(insert(Message), rows))
    await db.transaction(lambda conn: conn.exec_driver_sql("ANALYZE"))


def _explain(conn: Connection, statement: Executable, params: dict[str, Any]) -> str:
    """The plan of `statement`, table scans discouraged on PostgreSQL (a small table is
    otherwise scanned whatever its indexes). With `params`, bound as parameters: SQLite
    plans a `?` once for every value; PostgreSQL's plan is then the generic plan of a
    prepared statement (the one a cached plan settles on). Without, its values inline on
    PostgreSQL (as the planner sees them in a statement's first, custom, plans)."""
    if conn.dialect.name == "postgresql":
        conn.exec_driver_sql("SET LOCAL enable_seqscan = off")
        if not params:
            inline = {"literal_binds": True, "render_postcompile": True}
            sql = str(statement.compile(dialect=conn.dialect, compile_kwargs=inline))
            return "\n".join(str(row[0]) for row in conn.exec_driver_sql("EXPLAIN " + sql))
    compiled = statement.compile(dialect=conn.dialect, compile_kwargs={"render_postcompile": True})
    values = compiled.construct_params(params)
    ordered = [values[name] for name in compiled.positiontup or ()]
    if conn.dialect.name == "sqlite":
        found = conn.exec_driver_sql("EXPLAIN QUERY PLAN " + str(compiled), tuple(ordered))
        return "\n".join(str(row[-1]) for row in found)
    conn.exec_driver_sql("SET LOCAL plan_cache_mode = force_generic_plan")
    conn.exec_driver_sql("PREPARE schema_12_plan AS " + str(compiled))
    literals = ", ".join(_literal(value) for value in ordered)
    found = conn.exec_driver_sql(f"EXPLAIN EXECUTE schema_12_plan({literals})")
    plan = "\n".join(str(row[0]) for row in found)
    conn.exec_driver_sql("DEALLOCATE schema_12_plan")
    return plan


def _literal(value: Any) -> str:
    if value is None:
        return "NULL"
    if isinstance(value, str):
        return "'" + value.replace("'", "''") + "'"
    return repr(value)


async def test_the_claims_of_a_node_and_a_returned_message_id_are_read_by_index(
    backend: Database,
) -> None:
    await _fill(backend)
    node = {"node": "node_a", "until": time.time(), "now": time.time()}
    # storage.bounce_reports.messages_by_header's query, its value a parameter
    by_header = (
        select(Message.c.id, Message.c.created_at)
        .where(Message.c.header_message_id == bindparam("header"))
        .order_by(Message.c.created_at.desc(), Message.c.id.desc())
        .limit(2)
    )
    cases = {
        "renew": (sql.RENEW, node, "ix_message_claimed"),
        "release": (sql.RELEASE, node, "ix_message_claimed"),
        "by header": (by_header, {"header": "<8@app.example>"}, "ix_message_header_id"),
    }
    for what, (statement, params, index) in cases.items():
        plan = await backend.transaction(lambda conn, s=statement, p=params: _explain(conn, s, p))
        assert index in plan, f"{what}:\n{plan}"


async def test_a_message_its_node_holds_is_updated_through_its_primary_key(
    backend: Database,
) -> None:
    """An attempt's record, a release, a postponement: `id = :m_id` and the node's claim.
    PostgreSQL's generic plan took ix_message_claimed for them (partial and small, so costed
    below the primary key), reading every message the node held to update one; the claim
    is compared so that no index serves it (storage.queue_sql.CLAIM_HELD)."""
    await _fill(backend)
    # Statistics taken when no message was in flight (autovacuum's ANALYZE at a quiet
    # moment): the claim index looks empty to the planner, whatever it holds later.
    claimed = await backend.read(
        lambda conn: (
            conn.execute(select(Message.c.id).where(Message.c.claimed_by.is_not(None)))
            .scalars()
            .all()
        )
    )
    await backend.transaction(lambda conn: conn.execute(update(Message).values(claimed_by=None)))
    await backend.transaction(lambda conn: conn.exec_driver_sql("ANALYZE"))
    again = update(Message).where(Message.c.id.in_(claimed)).values(claimed_by="node_a")
    await backend.transaction(lambda conn: conn.execute(again))
    now = time.time()
    held = {"m_id": "msg_000060", "node": "node_a", "now": now, "due": now + 60}
    attempt = {**held, "status": "deferred", "pool": "p", "response": "451", "forced": 0}
    cases = {
        "record": (sql.UPDATE_MESSAGE, attempt),
        "settle": (sql.SETTLE_CLAIMED, attempt),
        "release": (sql.RELEASE_ONE, held),
        "postpone": (sql.POSTPONE, {**held, "why": "over its rate"}),
    }
    for what, (statement, params) in cases.items():
        plan = await backend.transaction(lambda conn, s=statement, p=params: _explain(conn, s, p))
        assert "ix_message_claimed" not in plan, f"{what}:\n{plan}"
        primary = "message_pkey" if backend.dialect == "postgresql" else "(id=?)"
        assert primary in plan, f"{what}:\n{plan}"


async def test_only_the_node_holding_the_claim_updates_the_message(backend: Database) -> None:
    """CLAIM_HELD's coalesce() changes the plan, not the meaning: an unclaimed message
    matches no node (not even an empty id), a claimed one only its holder."""
    await _fill(backend)  # msg_000060 claimed by node_a, msg_000003 by nobody

    async def released(m_id: str, node: str) -> int:
        params = {"m_id": m_id, "node": node, "due": time.time() + 60}
        count: int = await backend.transaction(
            lambda conn: conn.execute(sql.RELEASE_ONE, params).rowcount
        )
        return count

    assert await released("msg_000003", "") == 0
    assert await released("msg_000003", "node_a") == 0
    assert await released("msg_000060", "node_b") == 0
    assert await released("msg_000060", "node_a") == 1


async def test_a_keys_and_a_members_pages_are_read_from_their_partial_index(
    backend: Database,
) -> None:
    await _fill(backend)
    filters = {
        "ix_message_sent_by_key": MessageFilter(api_key_id="key_1"),
        "ix_message_sent_by_user": MessageFilter(user_id="usr_1"),
    }
    for index, flt in filters.items():
        queries = {
            "page": search_query(flt, None, 50),
            "next page": search_query(flt, (time.time() - 100, "msg_002900"), 50),
            "count": count_query(flt),
            "chunk": ids_query(flt, None, 500),
        }
        for what, query in queries.items():
            assert query is not None
            plan = await backend.transaction(lambda conn, q=query: _explain(conn, q, {}))
            assert index in plan, f"{index} / {what}:\n{plan}"
            if backend.is_sqlite and what != "count":
                assert "TEMP B-TREE" not in plan, f"{index} / {what}:\n{plan}"


def _definitions(conn: Connection) -> dict[str, str]:
    if conn.dialect.name == "postgresql":
        query = "SELECT indexname, indexdef FROM pg_indexes WHERE tablename = 'message'"
    else:
        query = "SELECT name, sql FROM sqlite_master WHERE type = 'index' AND tbl_name = 'message'"
    return {str(name): str(definition) for name, definition in conn.execute(text(query))}


def _to_schema_11(conn: Connection) -> None:
    for name in PARTIAL:
        conn.execute(text(f"DROP INDEX {name}"))
    for name, on in SCHEMA_11.items():
        conn.execute(text(f"CREATE INDEX {name} ON {on}"))
    conn.execute(text("UPDATE postern_meta SET value = '11' WHERE key = 'schema_version'"))


def _version(conn: Connection) -> str:
    query = text("SELECT value FROM postern_meta WHERE key = 'schema_version'")
    return str(conn.execute(query).scalar())


def _assert_schema_12(found: dict[str, str]) -> None:
    assert not set(SCHEMA_11) & set(found), sorted(found)
    for name, column in PARTIAL.items():
        where = found[name].partition(" WHERE ")[2]
        assert column in where and "NOT NULL" in where.upper(), found[name]


async def test_a_schema_11_database_trades_its_full_indexes_for_partial_ones(
    backend: Database,
) -> None:
    await _fill(backend, 200)
    await backend.transaction(_to_schema_11)
    assert set(SCHEMA_11) <= set(await backend.read(_definitions))
    await create_schema(backend)
    _assert_schema_12(await backend.read(_definitions))
    assert await backend.read(_version) == str(SCHEMA_VERSION) == "12"
    await create_schema(backend)  # a later start: nothing left to do, nothing undone
    _assert_schema_12(await backend.read(_definitions))
    page = await backend.read(lambda conn: conn.execute(search_query(MessageFilter(
        api_key_id="key_1"), None, 100)).all())  # fmt: skip
    assert len(page) == len([i for i in range(200) if i % 10 == 0 and i % 3 == 1])


async def test_nodes_starting_together_on_a_schema_11_database_upgrade_it_once(
    backend: Database, other_db: Database
) -> None:
    await _fill(backend, 200)
    await backend.transaction(_to_schema_11)
    third = Database(backend.url)
    try:
        await asyncio.gather(create_schema(backend), create_schema(other_db), create_schema(third))
    finally:
        await third.dispose()
    _assert_schema_12(await backend.read(_definitions))
    assert await backend.read(_version) == str(SCHEMA_VERSION)
