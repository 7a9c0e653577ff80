"""The partial indexes (the claim path's `due_at IS NOT NULL`, the one default alias, the
one active DKIM key, schema 12's `col IS NOT NULL` of message...) are partial on both
backends. PostgreSQL's WHERE is set as the index is created there (storage.models._partial),
so that importing the tables loads no PostgreSQL dialect: this checks the database's own
definitions, at the first creation and at an upgrade that creates them again.
"""

from __future__ import annotations

import subprocess
import sys

from sqlalchemy import Connection, text

from storage.db import Database, create_schema
from storage.models import metadata
from tests.support.processes import REPO

# index -> its condition, as the tables declare it (SQLite's option: given at import)
PARTIAL = {
    index.name: str(index.dialect_options["sqlite"]["where"])
    for table in metadata.tables.values()
    for index in table.indexes
    if index.dialect_options["sqlite"]["where"] is not None
}


def _definitions(conn: Connection) -> dict[str, str]:
    if conn.dialect.name == "postgresql":
        rows = conn.execute(text("SELECT indexname, indexdef FROM pg_indexes"))
    else:
        rows = conn.execute(text("SELECT name, sql FROM sqlite_master WHERE type = 'index'"))
    return {name: definition for name, definition in rows if name in PARTIAL}


def _drop_and_downgrade(conn: Connection) -> None:
    for name in PARTIAL:
        conn.execute(text(f"DROP INDEX {name}"))
    conn.execute(text("UPDATE postern_meta SET value = '9' WHERE key = 'schema_version'"))


def _assert_partial(found: dict[str, str]) -> None:
    assert set(found) == set(PARTIAL)
    for name, definition in found.items():
        where = definition.partition(" WHERE ")[2]
        column = PARTIAL[name].split()[0]  # due_at, status, is_default, claimed_by...
        assert column in where, (name, definition)


def test_the_tables_declare_nine_partial_indexes() -> None:
    assert sorted(PARTIAL) == [
        "ix_message_active_status", "ix_message_claimed", "ix_message_due",
        "ix_message_sent_by_key", "ix_message_sent_by_user",
        "ux_dkim_key_active", "ux_invitations_pending", "ux_mail_account_default",
        "ux_sender_alias_default",
    ]  # fmt: skip


async def test_partial_indexes_are_partial_when_created_and_upgraded(backend: Database) -> None:
    _assert_partial(await backend.read(_definitions))
    await backend.transaction(_drop_and_downgrade)
    assert await backend.read(_definitions) == {}
    await create_schema(backend)  # the upgrade creates the indexes an old schema lacks
    _assert_partial(await backend.read(_definitions))


def test_the_tables_load_no_postgresql_dialect() -> None:
    probe = (
        "import sys, storage.db, storage.models; "
        "assert 'sqlalchemy.dialects.postgresql' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", probe], cwd=REPO, check=True)
